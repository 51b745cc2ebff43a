"""Tests of registry/maintenance.py: leftovers of killed writers, stray entries, manifests out of place."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from registry import IntegrityError
from registry.store import discard, stage_blob


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_gc_removes_temp_files_of_dead_writers_at_once_and_keeps_live_ones(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    blobs = registry.layout.blobs_dir
    dead = blobs / f".tmp-{_dead_pid()}-abc"  # written a moment ago by a process that is gone
    unlocked = registry.layout.versions_dir("tiny") / f".tmp-{os.getpid()}-ghi.json"
    for path in (dead, unlocked):
        path.write_bytes(b"partial")
    a_minute_ago = time.time() - 60
    os.utime(unlocked, (a_minute_ago, a_minute_ago))  # its pid lives, but nobody holds its lock
    live = stage_blob(registry.layout, b"being uploaded")  # held (flock) by this live writer

    report = registry.verify()
    assert report.ok  # leftovers are notes, not problems
    assert set(report.temp_files) == {str(dead), str(unlocked), str(live.temp_path)}
    assert [m.version for m in registry.versions("tiny")] == [1]

    removed = registry.gc().removed_temp_files
    assert set(removed) == {str(dead), str(unlocked)}
    assert live.temp_path.exists()
    discard(live)


def test_verify_reports_stray_entries(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    (registry.layout.blobs_dir / "not-a-digest").write_bytes(b"x")
    (registry.layout.models_dir / "Bad Name").mkdir()
    kinds = sorted(p.kind for p in registry.verify().problems)
    assert kinds == ["stray_entry", "stray_entry"]


def test_a_manifest_moved_to_another_place_is_refused(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    registry.register(**fields, weights=tiny_weights)
    versions = registry.layout.versions_dir("tiny")
    (versions / "2.json").write_bytes((versions / "1.json").read_bytes())
    with pytest.raises(IntegrityError, match="its place says tiny:2"):
        registry.resolve("tiny:2")
    assert [p.subject for p in registry.verify().problems] == ["tiny:2"]
