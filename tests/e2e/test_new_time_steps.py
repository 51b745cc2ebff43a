"""A first request at a new T must not stall other models while its network compiles for that T
(embedded mode; the scenario and its measure are in tests/new_time_steps_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from new_time_steps_support import (
    MAX_DELAY_S,
    NEW_STEPS,
    compiling_env,
    run_new_time_steps,
    wait_until_prepared,
)
from server_process import ServerProcess
from tiny_zoo import build_tiny_registry

pytestmark = pytest.mark.slow


def test_a_new_time_steps_value_does_not_delay_another_model(tmp_path: Path) -> None:
    build_tiny_registry(tmp_path / "registry")
    env = compiling_env(tmp_path)
    with ServerProcess(
        tmp_path / "registry", env=env, args=["--log-level", "info"], ready_timeout_s=600
    ) as server:
        run = run_new_time_steps(server.url)
        wait_until_prepared(lambda: server.log_path.read_text(errors="replace"))  # the whole log
        log = server.log()
    print(run.summary())
    assert run.new_steps_status == 200 and run.new_steps_answer["time_steps"] == NEW_STEPS, (
        run.new_steps_answer
    )
    assert run.delay_s < MAX_DELAY_S, f"answers were delayed by up to {run.delay_s:.2f} s\n{log}"
