"""Checking and tidying a registry folder: ``verify`` (recompute every digest; with ``load``, also
build and run every version) and ``gc``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from registry.errors import IntegrityError, LoadError
from registry.heads import read_head, sweep
from registry.manifest import Manifest, check_alias, check_model_name
from registry.store import (
    TMP_PREFIX,
    RegistryLayout,
    hash_file,
    model_names,
    temp_files,
)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    """One finding of ``verify``. kind: invalid_manifest, missing_blob, tampered, dangling_alias,
    invalid_aliases, stray_entry, missing_manifest, load_failed (with ``load``)."""

    kind: str
    subject: str  # the ref ("name:3"), alias ("name@prod") or path concerned
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found. ``ok`` when there are no problems; notes are harmless leftovers."""

    checked_versions: int
    checked_blobs: int
    problems: tuple[Problem, ...]
    unreferenced_blobs: tuple[str, ...] = ()
    temp_files: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcReport:
    """removed_temp_files: dead writers' temp files, and manifests or folders they never committed."""

    removed_blobs: tuple[str, ...]
    freed_bytes: int
    removed_temp_files: tuple[str, ...] = field(default=())


def read_manifest(layout: RegistryLayout, name: str, version: int) -> Manifest:
    """The manifest of ``name:version``; IntegrityError when the file does not validate."""
    path = layout.manifest(name, version)
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise
    except ValueError as exc:  # JSON or schema errors
        summary = " ".join(str(exc).split())[:300]
        raise IntegrityError(f"manifest {path} is not valid: {summary}") from None
    if manifest.name != name or manifest.version != version:
        raise IntegrityError(f"manifest {path} says {manifest.ref}; its place says {name}:{version}")
    return manifest


def verify(layout: RegistryLayout, load: bool = False) -> VerifyReport:
    """Read every manifest and alias, recompute every referenced blob's sha256 and size; with
    ``load``, also build every version's network and run one forward (needs torch)."""
    problems: list[Problem] = []
    users: dict[str, list[Manifest]] = {}
    checked = 0
    if layout.models_dir.is_dir():
        for entry in sorted(layout.models_dir.iterdir()):
            if entry.name.startswith(TMP_PREFIX):
                continue
            try:
                check_model_name(entry.name)
            except ValueError:
                problems.append(Problem("stray_entry", str(entry), f"{entry} is not a valid model folder"))
                continue
            name = entry.name
            try:
                head = read_head(layout, name)
            except IntegrityError as exc:
                problems.append(Problem("invalid_aliases", name, str(exc)))
                continue
            versions = list(head.versions)
            for version in versions:
                checked += 1
                try:
                    manifest = read_manifest(layout, name, version)
                except FileNotFoundError:
                    path = layout.manifest(name, version)
                    message = f"{name}:{version} is committed but its manifest {path.name} is missing"
                    problems.append(Problem("missing_manifest", f"{name}:{version}", message))
                    continue
                except (IntegrityError, OSError) as exc:
                    problems.append(Problem("invalid_manifest", f"{name}:{version}", str(exc)))
                    continue
                users.setdefault(manifest.weights.sha256, []).append(manifest)
            problems.extend(_alias_problems(name, head.aliases, set(versions)))
    for digest, manifests in sorted(users.items()):
        found = _blob_problems(layout, digest, manifests)
        problems.extend(found)
        if load and not found:
            problems.extend(_load_problems(layout, manifests))
    unreferenced, stray = _unreferenced_blobs(layout, set(users))
    problems.extend(
        Problem("stray_entry", p, f"{p} is not a blob (name is not a sha256 digest)") for p in stray
    )
    return VerifyReport(
        checked_versions=checked,
        checked_blobs=len(users),
        problems=tuple(problems),
        unreferenced_blobs=tuple(unreferenced),
        temp_files=tuple(str(p) for p in temp_files(layout)),
    )


def _blob_problems(layout: RegistryLayout, digest: str, manifests: list[Manifest]) -> list[Problem]:
    blob = layout.blob(digest)
    refs = ", ".join(m.ref for m in manifests)
    if not blob.is_file():
        return [Problem("missing_blob", m.ref, f"{m.ref}: weights blob {blob} is missing") for m in manifests]
    actual, size = hash_file(blob)
    if actual == digest and all(m.weights.size == size for m in manifests):
        return []
    return [
        Problem(
            "tampered",
            m.ref,
            f"{m.ref}: weights {blob} were altered (sha256 {actual[:12]}..., {size} bytes; manifest "
            f"says {digest[:12]}..., {m.weights.size} bytes); also used by: {refs}",
        )
        for m in manifests
    ]


def _alias_problems(name: str, aliases: dict[str, int], versions: set[int]) -> list[Problem]:
    problems = []
    for alias, version in sorted(aliases.items()):
        try:
            check_alias(alias)
        except ValueError as exc:
            problems.append(Problem("invalid_aliases", f"{name}@{alias}", str(exc)))
            continue
        if version not in versions:
            problems.append(
                Problem(
                    "dangling_alias", f"{name}@{alias}", f"{name}@{alias} points at missing version {version}"
                )
            )
    return problems


def _load_problems(layout: RegistryLayout, manifests: list[Manifest]) -> list[Problem]:
    """Versions whose (intact) weights do not build, load strictly or run one forward."""
    from registry.loading import check_runs, read_verified

    problems = []
    for manifest in manifests:
        try:
            check_runs(manifest, read_verified(manifest, layout.blob(manifest.weights.sha256)))
        except (LoadError, IntegrityError) as exc:
            problems.append(Problem("load_failed", manifest.ref, exc.message))
    return problems


def _unreferenced_blobs(layout: RegistryLayout, referenced: set[str]) -> tuple[list[str], list[str]]:
    if not layout.blobs_dir.is_dir():
        return [], []
    unreferenced, stray = [], []
    for entry in sorted(layout.blobs_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            continue
        if not _DIGEST.fullmatch(entry.name) or not entry.is_file():
            stray.append(str(entry))
        elif entry.name not in referenced:
            unreferenced.append(entry.name)
    return unreferenced, stray


def referenced_digests(layout: RegistryLayout) -> set[str]:
    """Digests named by any committed manifest. IntegrityError on an unreadable manifest: gc must
    not guess which blob it needed."""
    digests = set()
    for name in model_names(layout):
        for version in read_head(layout, name).versions:
            digests.add(read_manifest(layout, name, version).weights.sha256)
    return digests


def gc(layout: RegistryLayout) -> GcReport:
    """Remove what dead writers left (``heads.sweep``: temp files, uncommitted manifests and
    folders) and blobs no committed manifest names. Hold the writer lock.

    A temp file goes as soon as its writer is dead (its ``flock`` is free), however young it is;
    a live writer's stays, however old."""
    swept = sweep(layout)
    referenced = referenced_digests(layout)
    removed, freed = [], 0
    unreferenced, _ = _unreferenced_blobs(layout, referenced)
    for digest in unreferenced:
        blob = layout.blob(digest)
        size = blob.stat().st_size
        blob.unlink()
        removed.append(digest)
        freed += size
    return GcReport(tuple(removed), freed, tuple(swept))
