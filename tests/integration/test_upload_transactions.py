"""Uploads are transactions: a version becomes visible, and its aliases move, only once its weights
loaded strictly into the architecture and one forward on the default input ran; a failed upload
leaves the registry byte for byte as it was; a writer SIGKILLed at any point leaves no visible
version and no alias change, and what it left behind goes with the next writer or ``gc``.

Real registries in temporary folders, the real embedded server (in-process and as a process),
the real ``spikeserve registry`` command as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.torch import save as save_safetensors
from server_process import REPO_ROOT, ServerProcess
from service_support import ADMIN, TestClient, make_client, npy_bytes, wait_ready
from tiny_zoo import (
    DANET_CONFIG,
    IMAGE_INPUT,
    IMAGE_MODEL,
    LABELS,
    TIME_STEPS,
    build_tiny_registry,
    random_state_dict,
)

from registry import Registry
from service.settings import Settings

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {ADMIN}"}
NPY = {"content-type": "application/x-npy"}
# every step of a registration before its commit (the replace of head.json) after which a SIGKILL
# could land (the crash points of registry/registry.py)
CRASH_POINTS = ("weights-staged", "weights-checked", "blob-committed", "manifest-written")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``, but the writer lock file."""
    return {
        str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
        if path.name != ".lock"
    }


def visible(root: Path) -> dict[str, Any]:
    """What a reader sees: every model's versions and aliases."""
    registry = Registry(root)
    return {s.name: (s.versions, s.aliases) for s in registry.list()}


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields = {
        "name": IMAGE_MODEL,
        "architecture": "danet_resnet18",
        "config": DANET_CONFIG,
        "time_steps": TIME_STEPS,
        "input": IMAGE_INPUT,
        "labels": LABELS,
    }
    return {**fields, **overrides}


GOOD_WEIGHTS = save_safetensors(random_state_dict("danet_resnet18", DANET_CONFIG, seed=3))
# weights of a narrower network: they do not load strictly into base_width 8
MISFIT_WEIGHTS = save_safetensors(
    random_state_dict("danet_resnet18", {**DANET_CONFIG, "base_width": 4}, seed=0)
)
# they load, but the forward fails: the manifest promises 3-channel images to a 1-channel network
RGB_INPUT = {**IMAGE_INPUT, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}


def upload(client: TestClient | httpx.Client, weights: bytes, fields: dict[str, Any]) -> Any:
    return client.post(
        "/v1/models",
        headers=AUTH,
        files={"weights": ("w.safetensors", weights, "application/octet-stream")},
        data={"manifest": json.dumps(fields)},
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "registry"
    build_tiny_registry(folder)
    return folder


@pytest.fixture
def client(root: Path) -> Iterator[TestClient]:
    settings = Settings(
        registry=root, admin_token=ADMIN, default_models=[IMAGE_MODEL], neuron_backend="torch"
    )
    with make_client(settings) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.mark.parametrize(
    ("weights", "fields", "why"),
    [
        (MISFIT_WEIGHTS, manifest_fields(aliases=["production"]), "do not fit"),
        (GOOD_WEIGHTS, manifest_fields(input=RGB_INPUT, aliases=["production"]), "forward"),
        (MISFIT_WEIGHTS, manifest_fields(name="brand-new", aliases=["production"]), "do not fit"),
    ],
    ids=["weights-do-not-fit", "forward-fails", "new-model"],
)
def test_a_failed_upload_leaves_the_registry_byte_for_byte_as_before(
    client: TestClient, root: Path, weights: bytes, fields: dict[str, Any], why: str
) -> None:
    before = snapshot(root)
    refused = upload(client, weights, fields)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_weights"
    assert why in refused.json()["error"]["message"]
    assert snapshot(root) == before  # no alias moved or removed, no folder, no blob, no temp file
    answer = client.post(
        f"/v1/models/{IMAGE_MODEL}/classify",
        content=npy_bytes(np.zeros((1, 28, 28), np.float32)),
        headers=NPY,
    )
    assert answer.status_code == 200 and answer.json()["model"]["version"] == 1


def test_no_request_ever_meets_a_version_that_is_being_refused(client: TestClient, root: Path) -> None:
    """Without a production alias the bare name follows the latest version: a version registered
    before its check would answer (or fail) requests while the check runs."""
    client.delete(f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=AUTH)
    seen: list[tuple[str, int, Any]] = []
    stop = threading.Event()
    image = npy_bytes(np.zeros((1, 28, 28), np.float32))

    def ask() -> None:
        while not stop.is_set():
            for ref in (IMAGE_MODEL, f"{IMAGE_MODEL}:2"):
                answer = client.post(f"/v1/models/{ref}/classify?telemetry=none", content=image, headers=NPY)
                body = answer.json()
                seen.append((ref, answer.status_code, body.get("model") or body["error"]["code"]))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        for _ in range(4):
            assert upload(client, MISFIT_WEIGHTS, manifest_fields()).status_code == 422
    finally:
        stop.set()
        asker.join(30)
    assert seen
    for ref, status, what in seen:
        if ref == IMAGE_MODEL:
            assert (status, what) == (200, {"name": IMAGE_MODEL, "version": 1}), seen
        else:
            assert (status, what) == (404, "model_not_found"), seen


def _register_command(
    root: Path, weights: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    manifest = {k: v for k, v in manifest_fields().items() if k not in ("name", "architecture")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "registry",
            "register",
            "--registry",
            str(root),
            "--name",
            IMAGE_MODEL,
            "--arch",
            "danet_resnet18",
            "--weights",
            str(weights),
            "--manifest-extra",
            json.dumps(manifest),
            "--alias",
            "production",
            "--alias",
            "canary",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_cli_register_killed_at_any_step_changes_nothing_visible(
    root: Path, tmp_path: Path, point: str
) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(GOOD_WEIGHTS)
    before, shown_before = snapshot(root), visible(root)
    process = _register_command(root, weights, {"SPIKESERVE_CRASH_AT": point})
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode == -9, output  # SIGKILLed at that point, nothing after it ran
    assert visible(root) == shown_before
    assert Registry(root).resolve(f"{IMAGE_MODEL}@production").version == 1

    # gc tidies what the dead writer left, without waiting for it to age
    Registry(root).gc()
    assert _leftovers(root) == []
    after = snapshot(root)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert changed <= {"generation"}, changed  # the counter may move; nothing else differs


def test_a_register_killed_just_after_its_commit_is_whole(root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(GOOD_WEIGHTS)
    process = _register_command(root, weights, {"SPIKESERVE_CRASH_AT": "head-written"})
    process.communicate(timeout=120)
    assert process.returncode == -9
    assert visible(root)[IMAGE_MODEL] == ((1, 2), {"production": 2, "canary": 2})
    assert Registry(root).verify().ok


def test_the_next_writer_removes_what_a_killed_one_left(root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(GOOD_WEIGHTS)
    killed = _register_command(root, weights, {"SPIKESERVE_CRASH_AT": "manifest-written"})
    killed.communicate(timeout=120)
    assert _leftovers(root) or (root / "models" / IMAGE_MODEL / "versions" / "2.json").exists()
    done = _register_command(root, weights)
    output = done.communicate(timeout=120)[0].decode(errors="replace")
    assert done.returncode == 0, output
    assert _leftovers(root) == []
    assert visible(root)[IMAGE_MODEL] == ((1, 2), {"production": 2, "canary": 2})
    assert Registry(root).verify().ok and not Registry(root).verify().unreferenced_blobs


def test_sigkill_at_random_moments_shows_all_of_a_registration_or_none(root: Path, tmp_path: Path) -> None:
    """No hook: the command is killed after a random delay. Each outcome is the old state, or the
    new version with both aliases moved; never a version without its aliases."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(GOOD_WEIGHTS)
    probe = _register_command(root, weights)
    started = time.monotonic()
    assert probe.wait(120) == 0
    duration = time.monotonic() - started
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.5 * duration, 1.1 * duration, size=6):
        versions, aliases = visible(root)[IMAGE_MODEL]
        process = _register_command(root, weights)
        time.sleep(float(delay))
        process.kill()
        process.wait(30)
        new_versions, new_aliases = visible(root)[IMAGE_MODEL]
        if new_versions == versions:
            assert new_aliases == aliases
        else:
            assert new_versions == (*versions, new_versions[-1])
            assert new_aliases == {"production": new_versions[-1], "canary": new_versions[-1]}
    Registry(root).gc()
    assert _leftovers(root) == [] and Registry(root).verify().ok


def test_a_server_killed_mid_upload_leaves_no_visible_version(root: Path) -> None:
    env = {
        "SPIKESERVE_ADMIN_TOKEN": ADMIN,
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_CRASH_AT": "manifest-written",
    }
    shown_before = visible(root)
    with ServerProcess(root, env=env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        with pytest.raises(httpx.HTTPError):
            upload(http, GOOD_WEIGHTS, manifest_fields(aliases=["production"]))
        assert server.process is not None and server.process.wait(10) == -9
    assert visible(root) == shown_before
    Registry(root).gc()
    assert _leftovers(root) == [] and not Registry(root).verify().unreferenced_blobs
