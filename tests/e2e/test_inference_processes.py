"""``spikeserve serve`` with inference processes (SPIKESERVE_INFERENCE_PROCESSES=2), a real server:
the same answers and /metrics as the in-process server, versions loading on first use and unloading
after deletion, a process killed in its batch answered 500 and replaced, and no process left behind
when the server stops or is killed."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from process_support import exited, wait_until
from server_process import E2E_ADMIN_TOKEN, ServerProcess
from tiny_zoo import IMAGE_MODEL, build_tiny_registry, register_danet

ADMIN = {"Authorization": f"Bearer {E2E_ADMIN_TOKEN}"}
PNG = {"content-type": "image/png"}
CLASSIFY = f"/v1/models/{IMAGE_MODEL}/classify"
ENV = {
    "SPIKESERVE_ADMIN_TOKEN": E2E_ADMIN_TOKEN,
    "SPIKESERVE_MAX_DELAY_MS": "20",
    "SPIKESERVE_NEURON_BACKEND": "torch",
    "SPIKESERVE_INFERENCE_PROCESSES": "2",
}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("processes-registry"))
    registry = build_tiny_registry(root)
    register_danet(registry, seed=1)  # tiny-danet:2, loaded at its first request
    return root


@pytest.fixture(scope="module")
def process_server(registry_root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(registry_root, env=ENV, args=["--models", f"{IMAGE_MODEL}:1"]) as process:
        yield process


def workers(url: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = httpx.get(f"{url}/v1/workers", headers=ADMIN).json()["workers"]
    return listed


def test_answers_and_metrics_are_those_of_the_in_process_server(
    process_server: ServerProcess, server: ServerProcess
) -> None:
    """``server`` (tests/e2e/conftest.py) computes its batches in its own process."""
    for seed in range(3):
        there = httpx.post(f"{process_server.url}{CLASSIFY}?telemetry=layers", content=png(seed), headers=PNG)
        here = httpx.post(f"{server.url}{CLASSIFY}?telemetry=layers", content=png(seed), headers=PNG)
        assert there.status_code == here.status_code == 200
        a, b = there.json(), here.json()
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)
        assert a["telemetry"]["spikes"] == b["telemetry"]["spikes"]
        assert [layer["name"] for layer in a["telemetry"]["layers"]] == [
            layer["name"] for layer in b["telemetry"]["layers"]
        ]
    text = httpx.get(f"{process_server.url}/metrics").text
    assert metric(text, "spikeserve_batch_size_count", model=IMAGE_MODEL) >= 3
    assert metric(text, "spikeserve_spikes_total", model=IMAGE_MODEL) > 0
    assert metric(text, "spikeserve_energy_joules_total", model=IMAGE_MODEL) > 0
    assert 'spikeserve_spike_rate_count{layer="' in text
    assert metric(text, "spikeserve_models_loaded") == 1
    listed = workers(process_server.url)
    assert [w["id"] for w in listed] == ["embedded-0", "embedded-1"]
    assert all(w["models"] == [f"{IMAGE_MODEL}:1"] for w in listed)
    ids = {metric(text, "spikeserve_worker_batches_total", worker=w["id"]) for w in listed}
    assert sum(ids) >= 3 or len(ids) == 1


def test_a_version_loads_on_first_request_and_its_deletion_unloads_it_everywhere(
    process_server: ServerProcess,
) -> None:
    url = process_server.url
    first = httpx.post(f"{url}/v1/models/{IMAGE_MODEL}:2/classify", content=png(0), headers=PNG)
    assert first.status_code == 200 and first.json()["model"]["version"] == 2
    assert f"{IMAGE_MODEL}:2" in httpx.get(f"{url}/readyz").json()["models"]
    deleted = httpx.delete(f"{url}/v1/models/{IMAGE_MODEL}/versions/2", headers=ADMIN)
    assert deleted.status_code == 200
    assert httpx.get(f"{url}/readyz").json()["models"] == [f"{IMAGE_MODEL}:1"]
    for seed in range(4):  # the processes take turns; each drops the version before its next batch
        assert httpx.post(f"{url}{CLASSIFY}", content=png(seed), headers=PNG).status_code == 200
    assert all(w["models"] == [f"{IMAGE_MODEL}:1"] for w in workers(url))


def test_a_process_killed_in_its_batch_fails_that_batch_with_500_and_is_replaced(
    process_server: ServerProcess,
) -> None:
    url = process_server.url
    victim = workers(url)[0]["pid"]
    os.kill(victim, signal.SIGSTOP)  # the next batch it takes stays in flight until it is killed
    statuses: list[int] = []
    codes: list[str] = []

    async def load() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def client(seed: int) -> None:  # one request after the other: many small batches
                for _ in range(6):
                    response = await http.post(CLASSIFY, content=png(seed), headers=PNG)
                    statuses.append(response.status_code)
                    if response.status_code != 200:
                        codes.append(response.json()["error"]["code"])

            await asyncio.gather(*(client(seed) for seed in range(4)))

    loading = threading.Thread(target=lambda: asyncio.run(load()))
    loading.start()
    time.sleep(3.0)  # the other process answers the other clients meanwhile
    assert loading.is_alive() and len(statuses) < 24  # a batch waits on the stopped process
    os.kill(victim, signal.SIGKILL)
    loading.join(timeout=30)
    assert not loading.is_alive(), "requests hung after their process died"
    assert len(statuses) == 24 and set(statuses) == {200, 500}
    assert set(codes) == {"inference_failed"}
    wait_until(lambda: len(workers(url)) == 2 and victim not in {w["pid"] for w in workers(url)})
    assert httpx.post(f"{url}{CLASSIFY}", content=png(1), headers=PNG).status_code == 200


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_no_process_outlives_the_server(registry_root: Path, stop: str) -> None:
    """SIGTERM: the server ends its processes; SIGKILL: each reads the end of its pipe and exits."""
    with ServerProcess(registry_root, env=ENV, args=["--models", f"{IMAGE_MODEL}:1"]) as process:
        pids = [w["pid"] for w in workers(process.url)]
        assert len(pids) == 2 and not any(exited(pid) for pid in pids)
        assert process.process is not None
        process.process.send_signal(getattr(signal, stop))
        process.process.wait(timeout=30)
        wait_until(lambda: all(exited(pid) for pid in pids), timeout_s=30)
