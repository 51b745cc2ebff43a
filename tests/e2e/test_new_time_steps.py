"""A first request at a new T must not stall other models while its network is compiled for that T.

The server runs the ``inductor`` neuron backend, which compiles each LIF loop per T (the loop unrolls
over time): the one backend of this machine whose first request at a new T costs a real compilation.
While one client asks tiny-spikeformer for a T nobody asked for before, another keeps asking
tiny-danet at its default T; none of those answers may take over a second longer than the
slowest of the same requests just before (the machine is shared: that is its "no delay" now).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_process import ServerProcess
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL, TIME_STEPS, build_tiny_registry

from eventio import make_events
from eventio.npy import write_npy

pytestmark = pytest.mark.slow

NPY = {"content-type": "application/x-npy"}
MAX_DELAY_S = 1.0


def _image() -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((1, 28, 28), dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _recording() -> bytes:
    rng = np.random.default_rng(1)
    n = 500
    return write_npy(
        make_events(
            rng.integers(0, 34, n),
            rng.integers(0, 34, n),
            np.sort(rng.integers(0, 90_000, n)),
            rng.integers(0, 2, n),
        )
    )


def _latencies(
    client: httpx.Client, url: str, body: bytes, seconds: float, also_while: threading.Thread | None = None
) -> list[float]:
    """Seconds per answer of ``url``, asked in turn for ``seconds`` (and while ``also_while`` runs)."""
    latencies = []
    until = time.monotonic() + seconds
    while time.monotonic() < until or (also_while is not None and also_while.is_alive()):
        began = time.monotonic()
        assert client.post(url, content=body, headers=NPY).status_code == 200
        latencies.append(time.monotonic() - began)
        time.sleep(0.05)
    return latencies


def test_a_new_time_steps_value_does_not_delay_another_model(tmp_path: Path) -> None:
    build_tiny_registry(tmp_path / "registry")
    env = {
        "SPIKESERVE_NEURON_BACKEND": "inductor",
        "SPIKESERVE_TORCH_THREADS": "1",
        "SPIKESERVE_MAX_DELAY_MS": "1",
        "SPIKESERVE_REQUEST_TIMEOUT_S": "300",
        # a cold compiler cache, as on a fresh machine: a warm one would hide part of the cost
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),
    }
    new_steps = TIME_STEPS["max"] - 1
    assert new_steps != TIME_STEPS["default"]
    with (
        ServerProcess(tmp_path / "registry", env=env, ready_timeout_s=600) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        image = _image()
        classify = f"/v1/models/{IMAGE_MODEL}/classify?telemetry=none"
        for _ in range(3):  # both paths of the image model are warm
            assert client.post(classify, content=image, headers=NPY).status_code == 200

        slow_answer: dict[str, object] = {}

        def ask_new_steps() -> None:
            response = client.post(
                f"/v1/models/{EVENTS_MODEL}/events?time_steps={new_steps}&telemetry=summary",
                content=_recording(),
                headers=NPY,
            )
            slow_answer["status"] = response.status_code
            slow_answer["body"] = response.json()

        # the same requests with nothing compiling: what "no delay" looks like on this machine now
        baseline = _latencies(client, classify, image, seconds=5.0)
        asker = threading.Thread(target=ask_new_steps)
        asker.start()
        # the compilation runs on after the first answer at T: keep watching well past it
        during = _latencies(client, classify, image, seconds=12.0, also_while=asker)
        asker.join()
        log = server.log()
    print(
        f"answers of {IMAGE_MODEL}: slowest {max(baseline):.2f} s of {len(baseline)} before, "
        f"{max(during):.2f} s of {len(during)} while {EVENTS_MODEL} met T={new_steps}"
    )
    assert slow_answer["status"] == 200, slow_answer
    assert slow_answer["body"]["time_steps"] == new_steps  # type: ignore[index]
    delay = max(during) - max(baseline)
    assert delay < MAX_DELAY_S, f"answers were delayed by up to {delay:.2f} s\n{log}"
