"""Several processes writing one registry: concurrent registrations, and writers SIGKILLed mid-write.

The writers are real processes running registry code; the only thing a test adds is a pause at a
chosen ``os.fsync`` so that the kill lands exactly where it should (lock held, temp file written,
not yet renamed). Weights are a small real DANet's (the registry commits only weights that load
and run), each writer's own seeds so that every version has its own bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import registry as registry_package
from registry import Registry

REPO_ROOT = Path(registry_package.__file__).resolve().parents[1]
CONFIG = {"num_classes": 2, "in_channels": 2, "base_width": 4, "stem": "small"}
FIELDS = {
    "architecture": "danet_resnet18",
    "config": CONFIG,
    "neuron": None,
    "time_steps": {"default": 4},
    "input": {"kind": "events", "sensor_width": 34, "sensor_height": 34},
    "labels": ["left", "right"],
}

# A writer: registers `count` versions of `name`, weights files <weights_dir>/<writer>-<i>.safetensors.
# With a `pause_at` pattern, it stops forever inside the first os.fsync of a file whose path contains
# it, after touching `ready` (so the parent can kill it right there).
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from registry import Registry

    root, writer, count, weights_dir, go, pause_at, ready = sys.argv[1:8]
    fields = json.loads(sys.argv[8])
    if pause_at:
        real_fsync = os.fsync
        def fsync(fd):
            target = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) else ""
            if pause_at in target and "/.tmp-" in target:
                Path(ready).write_text(target)
                time.sleep(3600)
            real_fsync(fd)
        os.fsync = fsync
    while not Path(go).exists():
        time.sleep(0.005)
    registry = Registry(root, lock_timeout_s=60)
    for i in range(int(count)):
        registry.register(
            "gesture", weights=Path(weights_dir) / f"{writer}-{i}.safetensors",
            tags={"writer": writer, "i": str(i)}, **fields,
        )
    """
)


def _weights(folder: Path, writer: str, count: int) -> None:
    """Distinct weight files ``<writer>-<i>.safetensors``: every (writer, i) has its own bytes."""
    from safetensors.torch import save_file
    from tiny_zoo import random_state_dict

    folder.mkdir(exist_ok=True)
    for i in range(count):
        seed = 1000 * (sum(writer.encode()) % 1000) + i
        save_file(
            random_state_dict("danet_resnet18", CONFIG, seed), str(folder / f"{writer}-{i}.safetensors")
        )


def _start_writer(tmp: Path, root: Path, writer: str, count: int, pause_at: str = "") -> subprocess.Popen:
    import json

    args = [
        str(root),
        writer,
        str(count),
        str(tmp / "weights"),
        str(tmp / "go"),
        pause_at,
        str(tmp / "ready"),
    ]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *args, json.dumps(FIELDS)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"writer exited early: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"writer never reached {path.name}")
        time.sleep(0.01)


def test_two_processes_register_twenty_versions_each(tmp_path):
    root = tmp_path / "zoo"
    _weights(tmp_path / "weights", "a", 20)
    _weights(tmp_path / "weights", "b", 20)
    writers = [_start_writer(tmp_path, root, name, 20) for name in ("a", "b")]
    (tmp_path / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err

    registry = Registry(root)
    manifests = registry.versions("gesture")  # every manifest parses and validates
    assert [m.version for m in manifests] == list(range(1, 41))
    assert len({(m.tags["writer"], m.tags["i"]) for m in manifests}) == 40
    # each writer's own versions arrive in its order
    for name in ("a", "b"):
        mine = [int(m.tags["i"]) for m in manifests if m.tags["writer"] == name]
        assert mine == list(range(20))
    report = registry.verify()
    assert report.ok, report.problems
    assert report.checked_versions == 40 and report.checked_blobs == 40
    assert report.temp_files == ()
    assert registry.generation() == 40


@pytest.mark.parametrize("pause_at", ["/versions/", "/blobs/sha256/"])
def test_writer_killed_mid_write_leaves_a_clean_registry(tmp_path, pause_at):
    root = tmp_path / "zoo"
    _weights(tmp_path / "weights", "k", 1)
    registry = Registry(root, lock_timeout_s=10)
    first = registry.register("gesture", weights=tmp_path / "weights" / "k-0.safetensors", **FIELDS)
    before = registry.generation()

    writer = _start_writer(tmp_path, root, "k", 1, pause_at=pause_at)
    (tmp_path / "go").touch()
    _wait_for(tmp_path / "ready", writer)
    paused_in = Path((tmp_path / "ready").read_text())
    assert paused_in.exists() and paused_in.name.startswith(".tmp-")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    report = registry.verify()
    assert report.ok, report.problems
    assert str(paused_in) in report.temp_files  # the leftover is seen, and harmless
    assert [(s.name, s.versions) for s in registry.list()] == [("gesture", (1,))]
    assert registry.resolve("gesture") == first
    assert registry.generation() == before

    # the lock died with the writer: the next registration goes through at once
    started = time.monotonic()
    second = registry.register("gesture", weights=tmp_path / "weights" / "k-0.safetensors", **FIELDS)
    assert second.version == 2 and time.monotonic() - started < 5
    assert registry.verify().temp_files == ()  # the next writer removed the dead one's file
    assert registry.verify().ok


def test_writers_killed_at_random_moments(tmp_path):
    root = tmp_path / "zoo"
    _weights(tmp_path / "weights", "r", 50)
    rng = np.random.default_rng(0)
    (tmp_path / "go").touch()
    for _ in range(3):
        writer = _start_writer(tmp_path, root, "r", 50)
        time.sleep(0.3 + float(rng.uniform(0.0, 0.4)))  # import takes ~0.2 s, then it writes
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        registry = Registry(root)
        assert registry.verify().ok
        summaries = registry.list()
        if summaries:
            versions = summaries[0].versions
            assert versions == tuple(range(1, len(versions) + 1))
    registry.gc()  # the writers are dead: their temp files go at once
    assert registry.verify().temp_files == ()
