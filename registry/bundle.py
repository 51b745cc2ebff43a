"""One checkpoint version as a ``.tar`` bundle: ``manifest.json`` and ``weights.safetensors``.

Reading never calls ``extractall``: only those two names are accepted, as regular files within
size limits; absolute paths, ``..``, links, devices, FIFOs, folders and duplicates are refused
with a BundleError before any byte is written. The weights are hashed while they are copied and
must match the manifest's sha256 and size.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from registry.errors import BundleError, IntegrityError, describe_validation_error
from registry.manifest import Manifest
from registry.store import RegistryLayout, StagedBlob, discard, fsync_dir, stage_blob
from registry.weights import read_safetensors_header

MANIFEST_MEMBER = "manifest.json"
WEIGHTS_MEMBER = "weights.safetensors"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_WEIGHTS_BYTES = 16 * 1024**3


def write_bundle(manifest: Manifest, blob: Path, path: Path) -> None:
    """Write ``manifest`` and the weights at ``blob`` to the tar file ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    manifest_bytes = (manifest.model_dump_json(indent=2) + "\n").encode()
    mtime = int(manifest.created_at.timestamp())
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_member(MANIFEST_MEMBER, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
            with blob.open("rb") as weights:
                size = os.fstat(weights.fileno()).st_size
                tar.addfile(_member(WEIGHTS_MEMBER, size, mtime), weights)
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def read_bundle(
    layout: RegistryLayout,
    path: Path,
    *,
    max_weights_bytes: int = MAX_WEIGHTS_BYTES,
) -> tuple[Manifest, StagedBlob]:
    """Check the bundle at ``path``; return its manifest and its weights staged as a blob.

    The caller commits the blob (or discards it). BundleError for anything unsafe or malformed,
    IntegrityError when the weights differ from the manifest's sha256 or size.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115  (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path} is not a readable tar bundle: {exc}") from None
    with tar:
        members = _checked_members(tar, path, max_weights_bytes)
        manifest = _read_manifest(tar, members[MANIFEST_MEMBER], path)
        weights_info = members[WEIGHTS_MEMBER]
        if weights_info.size != manifest.weights.size:
            raise IntegrityError(
                f"{path}: weights are {weights_info.size} bytes but the manifest says {manifest.weights.size}"
            )
        handle = tar.extractfile(weights_info)
        if handle is None:  # only for non-regular members, which _checked_members refused
            raise BundleError(f"{path}: {WEIGHTS_MEMBER} cannot be read")
        with handle:
            read_safetensors_header(handle, weights_info.size, source=f"{path}:{WEIGHTS_MEMBER}")
            staged = stage_blob(layout, handle, max_bytes=weights_info.size)
    if staged.sha256 != manifest.weights.sha256 or staged.size != manifest.weights.size:
        discard(staged)
        raise IntegrityError(
            f"{path}: weights sha256 {staged.sha256[:12]}... do not match the manifest's "
            f"{manifest.weights.sha256[:12]}...; the bundle was altered or damaged"
        )
    return manifest, staged


def _checked_members(tar: tarfile.TarFile, path: Path, max_weights_bytes: int) -> dict[str, tarfile.TarInfo]:
    limits = {MANIFEST_MEMBER: MAX_MANIFEST_BYTES, WEIGHTS_MEMBER: max_weights_bytes}
    found: dict[str, tarfile.TarInfo] = {}
    try:
        # lazily, header by header: a bad header stops us before we skip (or decompress) its data
        for member in tar:
            _check_member(member, path, limits, found)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path} is not a readable tar bundle: {exc}") from None
    for required in limits:
        if required not in found:
            raise BundleError(f"{path}: {required} is missing")
    return found


def _check_member(
    member: tarfile.TarInfo, path: Path, limits: dict[str, int], found: dict[str, tarfile.TarInfo]
) -> None:
    """Add ``member`` to ``found`` if it is one of the expected regular files within its limit."""
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute():
        raise BundleError(f"{path}: member {name!r} has an absolute path; refusing the bundle")
    if ".." in pure.parts or "\\" in name:
        raise BundleError(f"{path}: member {name!r} points outside the bundle; refusing it")
    if not member.isreg():
        kind = (
            "a symbolic link" if member.issym() else
            "a hard link" if member.islnk() else
            "a FIFO" if member.isfifo() else
            "a device" if member.isdev() else
            "a folder" if member.isdir() else
            "not a regular file"
        )  # fmt: skip
        raise BundleError(f"{path}: member {name!r} is {kind}; a bundle holds regular files only")
    normal = str(pure)  # drops a leading "./"
    if normal not in limits:
        raise BundleError(
            f"{path}: unexpected member {name!r}; a bundle holds {MANIFEST_MEMBER} and {WEIGHTS_MEMBER} only"
        )
    if normal in found:
        raise BundleError(f"{path}: member {normal!r} appears twice")
    if member.size > limits[normal]:
        raise BundleError(f"{path}: {normal} is {member.size} bytes, over the limit of {limits[normal]}")
    found[normal] = member


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> Manifest:
    handle = tar.extractfile(member)
    if handle is None:
        raise BundleError(f"{path}: {MANIFEST_MEMBER} cannot be read")
    with handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        return Manifest.model_validate(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: {MANIFEST_MEMBER} is not JSON: {exc}") from None
    except ValidationError as exc:
        raise BundleError(
            f"{path}: {MANIFEST_MEMBER} is not a valid manifest: {describe_validation_error(exc)}"
        ) from None
