"""The new-T scenario shared by the embedded (tests/e2e) and Redis (tests/integration) tests.

The server (or worker) runs the ``inductor`` neuron backend, which compiles each LIF loop per T
(the loop unrolls over time): the one backend of this machine whose first request at a new T costs
a real compilation. One client asks tiny-spikeformer for a T nobody asked for before while another
keeps asking tiny-danet at its default T. What a test asserts: none of those answers took over
``MAX_DELAY_S`` longer than the slowest of the same requests just before (on a shared machine,
that is what "no delay" looks like at the moment).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL, TIME_STEPS

from eventio import make_events
from eventio.npy import write_npy

NPY = {"content-type": "application/x-npy"}
MAX_DELAY_S = 1.0
SLOWEST_TIMING: dict[int, object] = {}
NEW_STEPS = TIME_STEPS["max"] - 1
assert TIME_STEPS["default"] != NEW_STEPS


def compiling_env(tmp_path: Path) -> dict[str, str]:
    """Settings of a process that compiles per T, with a cold compiler cache as on a fresh machine."""
    return {
        "SPIKESERVE_NEURON_BACKEND": "inductor",
        "SPIKESERVE_TORCH_THREADS": "1",
        "SPIKESERVE_MAX_DELAY_MS": "1",
        "SPIKESERVE_REQUEST_TIMEOUT_S": "300",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),  # a warm one would hide the cost
    }


def _image() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((1, 28, 28), dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _recording() -> bytes:
    rng = np.random.default_rng(1)
    n = 500
    t = np.sort(rng.integers(0, 90_000, n))
    return write_npy(make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n)))


def _latencies(
    client: httpx.Client, url: str, body: bytes, seconds: float, also_while: threading.Thread | None = None
) -> list[float]:
    """Seconds per answer of ``url``, asked in turn for ``seconds`` (and while ``also_while`` runs)."""
    latencies = []
    until = time.monotonic() + seconds
    while time.monotonic() < until or (also_while is not None and also_while.is_alive()):
        began = time.monotonic()
        response = client.post(url, content=body, headers=NPY)
        assert response.status_code == 200
        latencies.append(time.monotonic() - began)
        if latencies[-1] == max(latencies):
            SLOWEST_TIMING[id(latencies)] = response.json()["timing_ms"]
        time.sleep(0.05)
    return latencies


@dataclass
class NewStepsRun:
    baseline: list[float]  # seconds per tiny-danet answer before the new T
    during: list[float]  # ... while tiny-spikeformer met it, and for a while after
    new_steps_status: int
    new_steps_answer: Any

    @property
    def delay_s(self) -> float:
        return max(self.during) - max(self.baseline)

    def summary(self) -> str:
        return (
            f"answers of {IMAGE_MODEL}: slowest {max(self.baseline):.2f} s of {len(self.baseline)} before, "
            f"{max(self.during):.2f} s of {len(self.during)} while {EVENTS_MODEL} met T={NEW_STEPS} "
            f"(its timing_ms: {SLOWEST_TIMING.get(id(self.during))})"
        )


def wait_until_prepared(read_log: Callable[[], str], timeout_s: float = 300.0) -> float:
    """Seconds until the process logs that it prepared tiny-spikeformer for the new T: the
    compilation the answers above ran beside did happen, in the background."""
    began = time.monotonic()
    needle = f"prepared {EVENTS_MODEL}:1 for T={NEW_STEPS}"
    while needle not in read_log():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"no '{needle}' in the log after {timeout_s:.0f} s:\n{read_log()[-3000:]}")
        time.sleep(0.5)
    return time.monotonic() - began


def run_new_time_steps(base_url: str) -> NewStepsRun:
    """The scenario against a ready server at ``base_url``."""
    with httpx.Client(base_url=base_url, timeout=300) as client:
        image = _image()
        classify = f"/v1/models/{IMAGE_MODEL}/classify?telemetry=none"
        for _ in range(3):  # both paths of the image model are warm
            assert client.post(classify, content=image, headers=NPY).status_code == 200
        answer: dict[str, Any] = {}

        def ask_new_steps() -> None:
            response = client.post(
                f"/v1/models/{EVENTS_MODEL}/events?time_steps={NEW_STEPS}&telemetry=summary",
                content=_recording(),
                headers=NPY,
            )
            answer["status"], answer["body"] = response.status_code, response.json()

        baseline = _latencies(client, classify, image, seconds=5.0)
        asker = threading.Thread(target=ask_new_steps)
        asker.start()
        # the compilation runs on after the first answer at T: keep watching well past it
        during = _latencies(client, classify, image, seconds=12.0, also_while=asker)
        asker.join()
    return NewStepsRun(baseline, during, answer["status"], answer["body"])
