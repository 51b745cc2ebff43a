"""The registry folder on disk: its layout, the writer lock, atomic writes and the blob store.

Layout under ``root``::

    blobs/sha256/<digest>              weights, content-addressed, read-only once written
    models/<name>/versions/<n>.json    one manifest per version
    models/<name>/head.json            the committed state: versions, aliases, last version number
    generation                         counter bumped by every write (the resolver's cache key)
    .lock                              writers hold it (filelock; the kernel frees it if they die)

A model's ``head.json`` is the one commit point of every write to it (registry/heads.py): a version
is visible, and its aliases move, in the same ``os.replace``. Folders written before head.json
existed keep ``aliases.json`` and ``last_version`` instead, read as their head until the next write.

Every file is written atomically: a temporary file in the same folder, fsync, ``os.replace``, fsync
of the folder. A writer killed at any point leaves either the old file or the new one, never half of
one. A writer holds an exclusive ``flock`` on each temporary file (``.tmp-<pid>-*``) while it lives,
so the next writer and ``gc`` remove a dead writer's files at once: the kernel dropped its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from registry.errors import LockTimeoutError

TMP_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20
CRASH_ENV = "SPIKESERVE_CRASH_AT"
# between creating a temp file and locking it, a live writer's file is unlocked for microseconds:
# a file this young whose writer's pid is alive is left alone
_UNLOCKED_GRACE_S = 5.0
_TEMP_PID = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-")
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

    def head_file(self, name: str) -> Path:
        return self.model_dir(name) / "head.json"

    def aliases_file(self, name: str) -> Path:
        """Aliases of a folder written before head.json (read, then removed by the next write)."""
        return self.model_dir(name) / "aliases.json"

    def last_version_file(self, name: str) -> Path:
        """Version counter of a folder written before head.json (as ``aliases_file``)."""
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


def crash_point(step: str) -> None:
    """Fault injection: SIGKILL this process here when ``SPIKESERVE_CRASH_AT`` names ``step``.

    The tests kill a real writer after each step of a write this way and check what readers see;
    unset (always, in production) it costs one dictionary lookup."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _temp_in(folder: Path, suffix: str = "") -> tuple[int, Path]:
    """A new temp file in ``folder``, open and ``flock``ed by this process until it closes it."""
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
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
            os.replace(temp, path)  # still locked: nobody takes it for a dead writer's
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


def writer_gone(path: Path) -> bool:
    """Whether the writer of temp file ``path`` is dead: its ``flock`` is free (the kernel drops a
    dead process's locks), unless the file is seconds old and its pid alive (not yet locked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    match = _TEMP_PID.match(path.name)
    if match is None or not _pid_alive(int(match.group(1))):
        return True
    with contextlib.suppress(FileNotFoundError):
        return time.time() - path.stat().st_mtime >= _UNLOCKED_GRACE_S
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_dead_temp_files(layout: RegistryLayout) -> list[str]:
    """Remove the temp files of dead writers (call with the writer lock held); their paths."""
    removed = []
    for temp in temp_files(layout):
        if writer_gone(temp):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed.append(str(temp))
    return removed


# ---- versions --------------------------------------------------------------------------------


def manifest_numbers(layout: RegistryLayout, name: str) -> list[int]:
    """Version numbers that have a manifest file, ascending: committed or not (``heads`` says
    which are); temp files are not versions."""
    folder = layout.versions_dir(name)
    if not folder.is_dir():
        return []
    found = (_VERSION_FILE.fullmatch(entry.name) for entry in folder.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def model_names(layout: RegistryLayout) -> list[str]:
    """Model folders, committed or not (``heads`` says which hold versions)."""
    if not layout.models_dir.is_dir():
        return []
    return sorted(p.name for p in layout.models_dir.iterdir() if p.is_dir() and not is_temp(p))


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
    """Bytes written to a temporary file in the blob folder and hashed, not yet committed.

    ``handle`` keeps the file open, and so ``flock``ed, until ``commit_blob`` or ``discard``: a
    staged blob is never taken for a dead writer's leftover."""

    temp_path: Path
    sha256: str
    size: int
    handle: IO[bytes]

    def read_bytes(self) -> bytes:
        return self.temp_path.read_bytes()


def stage_blob(layout: RegistryLayout, source: IO[bytes] | bytes, max_bytes: int | None = None) -> StagedBlob:
    """Copy ``source`` into a temp file beside the blobs while hashing it, then fsync.

    Runs without the writer lock (copying a large file must not block other writers);
    ``commit_blob`` moves it into place under the lock. ``max_bytes`` bounds what is read.
    """
    layout.blobs_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = _temp_in(layout.blobs_dir)
    digest = hashlib.sha256()
    size = 0
    handle = os.fdopen(fd, "wb")
    try:
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
        handle.close()
        raise
    return StagedBlob(temp, digest.hexdigest(), size, handle)


def commit_blob(layout: RegistryLayout, staged: StagedBlob) -> Path:
    """Move a staged blob to ``blobs/sha256/<digest>``. Call with the writer lock held.

    Replacing an existing blob with the same digest is harmless and repairs one that was altered.
    """
    target = layout.blob(staged.sha256)
    os.chmod(staged.temp_path, 0o444)  # content-addressed: nobody should write to it again
    os.replace(staged.temp_path, target)
    staged.handle.close()
    fsync_dir(target.parent)
    return target


def discard(staged: StagedBlob) -> None:
    staged.temp_path.unlink(missing_ok=True)
    staged.handle.close()


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of ``path``, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
