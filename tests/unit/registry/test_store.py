"""Tests of registry/store.py: atomic writes, the blob store, version numbers, the lock, generation."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from filelock import FileLock

from registry.errors import LockTimeoutError
from registry.heads import ModelHead, read_head
from registry.store import (
    RegistryLayout,
    atomic_write_bytes,
    atomic_write_json,
    bump_generation,
    commit_blob,
    discard,
    hash_file,
    manifest_numbers,
    read_generation,
    read_json,
    remove_dead_temp_files,
    stage_blob,
    temp_files,
    writer_lock,
)


@pytest.fixture
def layout(tmp_path):
    layout = RegistryLayout(tmp_path / "zoo")
    layout.create()
    return layout


def test_atomic_write_replaces_whole_files(layout):
    target = layout.root / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert temp_files(layout) == []


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(layout, monkeypatch):
    target = layout.root / "x.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert temp_files(layout) == []


def test_stage_and_commit_blob(layout):
    data = os.urandom(3 * 1024 * 1024 + 5)  # more than one chunk
    staged = stage_blob(layout, io.BytesIO(data))
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged.size == len(data)
    assert staged.temp_path.parent == layout.blobs_dir
    path = commit_blob(layout, staged)
    assert path == layout.blob(staged.sha256)
    assert path.read_bytes() == data
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # stored read-only (root ignores modes)
    assert hash_file(path) == (staged.sha256, len(data))
    assert temp_files(layout) == []


def test_stage_blob_limit_and_discard(layout):
    with pytest.raises(ValueError, match="limit"):
        stage_blob(layout, io.BytesIO(b"x" * 100), max_bytes=10)
    assert temp_files(layout) == []
    staged = stage_blob(layout, b"abc")
    discard(staged)
    assert temp_files(layout) == []


def test_blob_path_needs_a_digest(layout):
    with pytest.raises(ValueError, match="sha256"):
        layout.blob("../../etc/passwd")


def test_versions_ignore_temp_and_stray_files_and_are_never_reused(layout):
    folder = layout.versions_dir("m")
    folder.mkdir(parents=True)
    for name in ("1.json", "3.json", ".tmp-123-abc.json", "notes.txt", "0.json", "02.json"):
        (folder / name).write_text("{}")
    assert manifest_numbers(layout, "m") == [1, 3]
    assert read_head(layout, "m").last_version == 3  # a folder of the older layout: its files
    layout.last_version_file("m").write_text("9\n")
    assert read_head(layout, "m").last_version == 9
    assert read_head(layout, "other") == ModelHead()


def test_generation_counter(layout):
    assert read_generation(layout) == 0
    assert bump_generation(layout) == 1
    assert bump_generation(layout) == 2
    assert read_generation(layout) == 2


def test_writer_lock_times_out_while_another_holder_has_it(layout):
    other = FileLock(str(layout.lock_file))
    with (
        other,
        pytest.raises(LockTimeoutError, match="locked by another writer"),
        writer_lock(layout, timeout_s=0.05),
    ):
        pass
    with writer_lock(layout, timeout_s=0.05):
        pass


def test_a_dead_writers_temp_file_goes_at_once_a_live_ones_stays(layout, tmp_path):
    import subprocess
    import sys

    staged = stage_blob(layout, b"still being written")  # this process is alive and holds the flock
    code = (
        "import os, sys; from pathlib import Path; from registry.store import RegistryLayout, stage_blob; "
        "stage_blob(RegistryLayout(Path(sys.argv[1])), b'x' * 1000); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(layout.root)], check=True)  # exits holding a temp file
    assert len(temp_files(layout)) == 2
    removed = remove_dead_temp_files(layout)
    assert len(removed) == 1 and str(staged.temp_path) not in removed
    assert temp_files(layout) == [staged.temp_path]
    discard(staged)
    assert temp_files(layout) == []
