"""The registry folder on disk: its layout, the writer lock, atomic writes and the blob store.

Layout under ``root``::

    blobs/sha256/<digest>              weights, content-addressed, read-only once written
    models/<name>/versions/<n>.json    one manifest per version
    models/<name>/aliases.json         {"production": 3, ...}
    models/<name>/last_version         highest version ever assigned (numbers are never reused)
    generation                         counter bumped by every write (hot reload polls it)
    .lock                              writers hold it (filelock; the kernel frees it if they die)

Every file is written atomically: a temporary file in the same folder, fsync, ``os.replace``, fsync
of the folder. A writer killed at any point leaves either the old file or the new one, never half of
one; its temporary files (``.tmp-*``) are ignored by readers and removed by ``gc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from registry.errors import LockTimeoutError

TMP_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_VERSION_FILE = re.compile(r"^([1-9][0-9]*)\.json$")


@dataclass(frozen=True)
class RegistryLayout:
    """Paths of one registry folder. Names passed in must already be validated (registry.refs)."""

    root: Path

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def generation_file(self) -> Path:
        return self.root / "generation"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def blob(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.blobs_dir / digest

    def model_dir(self, name: str) -> Path:
        return self.models_dir / name

    def versions_dir(self, name: str) -> Path:
        return self.model_dir(name) / "versions"

    def manifest(self, name: str, version: int) -> Path:
        return self.versions_dir(name) / f"{version}.json"

    def aliases_file(self, name: str) -> Path:
        return self.model_dir(name) / "aliases.json"

    def last_version_file(self, name: str) -> Path:
        return self.model_dir(name) / "last_version"

    def create(self) -> None:
        """Make the top-level folders; safe to call on an existing registry."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)


# ---- atomic writes ---------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_in(folder: Path, suffix: str = "") -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    return fd, Path(name)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old bytes or the new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _temp_in(path.parent, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def remove_file(path: Path) -> None:
    """Unlink ``path`` durably."""
    path.unlink()
    fsync_dir(path.parent)


def is_temp(path: Path) -> bool:
    return path.name.startswith(TMP_PREFIX)


def temp_files(layout: RegistryLayout) -> list[Path]:
    """Leftover temporary files of writers that died (or are still writing)."""
    if not layout.root.is_dir():
        return []
    return sorted(p for p in layout.root.rglob(f"{TMP_PREFIX}*") if p.is_file())


# ---- versions --------------------------------------------------------------------------------


def version_numbers(layout: RegistryLayout, name: str) -> list[int]:
    """Versions of ``name`` that have a manifest, ascending; temp files are not versions."""
    folder = layout.versions_dir(name)
    if not folder.is_dir():
        return []
    found = (_VERSION_FILE.fullmatch(entry.name) for entry in folder.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def model_names(layout: RegistryLayout) -> list[str]:
    if not layout.models_dir.is_dir():
        return []
    return sorted(p.name for p in layout.models_dir.iterdir() if p.is_dir() and not is_temp(p))


def next_version(layout: RegistryLayout, name: str) -> int:
    """One past the highest version ever assigned to ``name``. Call with the writer lock held."""
    highest = max(version_numbers(layout, name), default=0)
    counter = layout.last_version_file(name)
    if counter.is_file():
        with contextlib.suppress(ValueError):
            highest = max(highest, int(counter.read_text().strip() or 0))
    return highest + 1


# ---- generation counter (hot reload) ---------------------------------------------------------


def read_generation(layout: RegistryLayout) -> int:
    try:
        return int(layout.generation_file.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def bump_generation(layout: RegistryLayout) -> int:
    """Increment the counter. Call with the writer lock held."""
    value = read_generation(layout) + 1
    atomic_write_bytes(layout.generation_file, f"{value}\n".encode())
    return value


# ---- the writer lock -------------------------------------------------------------------------


@contextlib.contextmanager
def writer_lock(layout: RegistryLayout, timeout_s: float) -> Iterator[None]:
    """Hold the registry's write lock; LockTimeoutError after ``timeout_s``."""
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.lock_file), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeoutError(
            f"registry {layout.root} is locked by another writer (waited {timeout_s:g} s); "
            f"if no writer is running, the lock frees itself: retry"
        ) from None
    try:
        yield
    finally:
        lock.release()


# ---- blobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written to a temporary file in the blob folder and hashed, not yet committed."""

    temp_path: Path
    sha256: str
    size: int


def stage_blob(layout: RegistryLayout, source: IO[bytes] | bytes, max_bytes: int | None = None) -> StagedBlob:
    """Copy ``source`` into a temp file beside the blobs while hashing it, then fsync.

    Runs without the writer lock (copying a large file must not block other writers);
    ``commit_blob`` moves it into place under the lock. ``max_bytes`` bounds what is read.
    """
    layout.blobs_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = _temp_in(layout.blobs_dir)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(source, bytes | bytearray | memoryview):
                chunks: Iterator[bytes] = iter([bytes(source)])
            else:
                chunks = iter(lambda: source.read(CHUNK_BYTES), b"")
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ValueError(f"weights exceed the limit of {max_bytes} bytes")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return StagedBlob(temp, digest.hexdigest(), size)


def commit_blob(layout: RegistryLayout, staged: StagedBlob) -> Path:
    """Move a staged blob to ``blobs/sha256/<digest>``. Call with the writer lock held.

    Replacing an existing blob with the same digest is harmless and repairs one that was altered.
    """
    target = layout.blob(staged.sha256)
    os.chmod(staged.temp_path, 0o444)  # content-addressed: nobody should write to it again
    os.replace(staged.temp_path, target)
    fsync_dir(target.parent)
    return target


def discard(staged: StagedBlob) -> None:
    staged.temp_path.unlink(missing_ok=True)


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of ``path``, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
