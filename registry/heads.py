"""A model's committed state in one file, ``models/<name>/head.json``: the one commit point.

``{"versions": [1, 2], "aliases": {"production": 2}, "last_version": 2}``. A write prepares what
it needs (the weights blob, the new manifest file) and then replaces the head atomically: readers
see the new version and its moved aliases together, or neither. A writer killed before the head
moved leaves files no head names (an unlisted manifest, a blob no manifest names), which readers
never see and ``sweep`` (every writer, under the lock) or ``gc`` removes.

Folders written before head.json existed have ``aliases.json`` and ``last_version`` instead (or
manifests only); they are read as their head until a write commits a head.json for them: a writer
first commits the state it found (an empty head for a new model), then its change.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import IntegrityError
from registry.store import (
    RegistryLayout,
    atomic_write_json,
    fsync_dir,
    manifest_numbers,
    model_names,
    read_json,
    remove_dead_temp_files,
    remove_file,
)


@dataclass(frozen=True)
class ModelHead:
    """Committed versions (ascending), aliases, and the highest version number ever assigned."""

    versions: tuple[int, ...] = ()
    aliases: dict[str, int] = field(default_factory=dict)
    last_version: int = 0

    def with_version(self, version: int, aliases: list[str]) -> ModelHead:
        return ModelHead(
            (*self.versions, version), {**self.aliases, **dict.fromkeys(aliases, version)}, version
        )


def read_head(layout: RegistryLayout, name: str) -> ModelHead:
    """The committed state of ``name`` (empty for an unknown model). IntegrityError if unreadable."""
    path = layout.head_file(name)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return _legacy_head(layout, name)
    except ValueError as exc:
        raise IntegrityError(f"{path} is not valid JSON: {exc}") from None
    try:
        versions = tuple(int(v) for v in data["versions"])
        aliases = {str(k): int(v) for k, v in data["aliases"].items()}
        last = int(data["last_version"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{path} is not a model head (versions, aliases, last_version): {exc}") from None
    return ModelHead(tuple(sorted(versions)), aliases, max(last, *versions, 0))


def _legacy_head(layout: RegistryLayout, name: str) -> ModelHead:
    counter = layout.last_version_file(name)
    versions = tuple(manifest_numbers(layout, name))
    aliases_path = layout.aliases_file(name)
    aliases: dict[str, int] = {}
    if aliases_path.is_file():
        try:
            raw = read_json(aliases_path)
        except ValueError as exc:
            raise IntegrityError(f"aliases file {aliases_path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
            raise IntegrityError(f"aliases file {aliases_path} is not a JSON object of alias to version")
        aliases = {str(k): v for k, v in raw.items()}
    last = 0
    with contextlib.suppress(ValueError, FileNotFoundError):
        last = int(counter.read_text().strip() or 0)
    return ModelHead(versions, aliases, max(last, *versions, 0))


def write_head(layout: RegistryLayout, name: str, head: ModelHead) -> None:
    """Commit ``head`` (call with the writer lock held): one atomic replace, then the files of the
    older layout go (a head, once there, is the only truth)."""
    atomic_write_json(
        layout.head_file(name),
        {"versions": list(head.versions), "aliases": head.aliases, "last_version": head.last_version},
    )
    for legacy in (layout.aliases_file(name), layout.last_version_file(name)):
        if legacy.exists():
            remove_file(legacy)


def sweep(layout: RegistryLayout) -> list[str]:
    """Remove what dead writers left (call with the writer lock held): their temp files, manifests
    no head names, and model folders that never committed a version. Returns the removed paths."""
    removed = remove_dead_temp_files(layout)
    for name in model_names(layout):
        folder = layout.model_dir(name)
        if not layout.head_file(name).exists():
            # an older folder is left alone unless it holds nothing at all
            if not manifest_numbers(layout, name) and not any(p.is_file() for p in folder.rglob("*")):
                _remove_folder(folder, removed)
            continue
        head = read_head(layout, name)
        if head.last_version == 0 and not head.aliases:  # a first registration that never committed
            _remove_folder(folder, removed)
            continue
        for number in manifest_numbers(layout, name):
            if number not in head.versions:
                path = layout.manifest(name, number)
                remove_file(path)
                removed.append(str(path))
    return removed


def _remove_folder(folder: Path, removed: list[str]) -> None:
    shutil.rmtree(folder)
    fsync_dir(folder.parent)
    removed.append(str(folder))
