"""Redis mode: a worker's first request at a new T does not stall its other models while it
compiles for that T (the scenario and its measure are in tests/new_time_steps_support.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from new_time_steps_support import (
    MAX_DELAY_S,
    NEW_STEPS,
    compiling_env,
    run_new_time_steps,
    wait_until_prepared,
)
from redis_support import REDIS_URL, start_gateway, start_worker, wait_for_workers
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL

pytestmark = pytest.mark.slow


def test_a_new_time_steps_value_does_not_delay_another_model(
    redis_registry: Path, redis_prefix: str, tmp_path: Path
) -> None:
    env = compiling_env(tmp_path)
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(redis_registry, REDIS_URL, redis_prefix, tmp_path, env)
        stack.callback(gateway.stop)
        worker = start_worker(
            redis_registry,
            REDIS_URL,
            redis_prefix,
            tmp_path,
            "compiling",
            [IMAGE_MODEL, EVENTS_MODEL],
            extra=["--backend", "inductor"],
            env=env,
        )
        stack.callback(worker.stop)
        wait_for_workers(base, {"compiling"}, [worker], timeout_s=600)
        run = run_new_time_steps(base)
        wait_until_prepared(worker.output)
        log = worker.output()
    print(run.summary())
    assert run.new_steps_status == 200 and run.new_steps_answer["time_steps"] == NEW_STEPS, (
        run.new_steps_answer
    )
    assert run.delay_s < MAX_DELAY_S, f"answers were delayed by up to {run.delay_s:.2f} s\n{log}"
