"""A registry that already holds a version that cannot load (written by an older release, or its
manifest edited by hand): the server starts anyway, serves every other model, says which version
failed in ``/readyz`` and ``/v1/models``, and answers that version's requests with 503
``load_failed``; ``spikeserve registry verify --load`` finds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_process import REPO_ROOT
from service_support import ADMIN, make_client, npy_bytes, wait_ready
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL, build_tiny_registry, register_danet

from service.settings import Settings

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {ADMIN}"}
NPY = {"content-type": "application/x-npy"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """tiny-danet:2 (production) lists a config its weights do not fit; everything else is sound."""
    folder = tmp_path / "registry"
    registry = build_tiny_registry(folder)
    register_danet(registry, seed=1, aliases=("production",))
    manifest_path = registry.layout.manifest(IMAGE_MODEL, 2)
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["base_width"] = 4
    manifest_path.write_text(json.dumps(manifest))
    return folder


def test_the_server_starts_serves_the_others_and_names_the_broken_version(root: Path) -> None:
    settings = Settings(registry=root, admin_token=ADMIN, neuron_backend="torch")
    with make_client(settings) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert f"{EVENTS_MODEL}:1" in ready["models"]
        assert set(ready["failed"]) == {f"{IMAGE_MODEL}:2"}
        assert "do not fit" in ready["failed"][f"{IMAGE_MODEL}:2"]

        refused = client.post(
            f"/v1/models/{IMAGE_MODEL}/classify",
            content=npy_bytes(np.zeros((1, 28, 28), np.float32)),
            headers=NPY,
        )
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert refused.json()["error"]["code"] == "load_failed"
        assert f"{IMAGE_MODEL}:2" in refused.json()["error"]["message"]

        still_there = client.post(
            f"/v1/models/{IMAGE_MODEL}:1/classify",
            content=npy_bytes(np.zeros((1, 28, 28), np.float32)),
            headers=NPY,
        )
        assert still_there.status_code == 200

        listed = {m["name"]: m for m in client.get("/v1/models", headers=AUTH).json()["models"]}
        assert set(listed[IMAGE_MODEL]["failed_versions"]) == {"2"}
        assert listed[EVENTS_MODEL]["failed_versions"] == {}
        shown = client.get(f"/v1/models/{IMAGE_MODEL}", headers=AUTH).json()
        assert set(shown["failed_versions"]) == {"2"}


def test_registry_verify_load_finds_it(root: Path) -> None:
    def verify(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", "registry", "verify", "--registry", str(root), *flags]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    assert verify().returncode == 0  # every digest matches: only building the network shows it
    found = verify("--load")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"load_failed: {IMAGE_MODEL}:2" in found.stdout
    assert EVENTS_MODEL not in found.stdout and f"{IMAGE_MODEL}:1" not in found.stdout


def test_a_redis_worker_serves_the_others_and_reports_the_broken_version(
    root: Path, redis_prefix: str, tmp_path: Path
) -> None:
    import contextlib

    import httpx
    from redis_support import REDIS_URL, start_gateway, start_worker, wait_for_workers, wait_until

    beats = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5"}
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(root, REDIS_URL, redis_prefix, tmp_path, beats)
        stack.callback(gateway.stop)
        worker = start_worker(
            root, REDIS_URL, redis_prefix, tmp_path, "w1", [IMAGE_MODEL, EVENTS_MODEL], env=beats
        )
        stack.callback(worker.stop)
        wait_for_workers(base, {"w1"}, [worker])  # it started although tiny-danet:2 cannot load
        ready = wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).json().get("failed"), 30, "failed")
        assert set(ready) == {f"{IMAGE_MODEL}:2"}
        image = npy_bytes(np.zeros((1, 28, 28), np.float32))
        refused = httpx.post(
            f"{base}/v1/models/{IMAGE_MODEL}/classify", content=image, headers=NPY, timeout=60
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "load_failed"
        served = httpx.post(
            f"{base}/v1/models/{IMAGE_MODEL}:1/classify", content=image, headers=NPY, timeout=60
        )
        assert served.status_code == 200
