"""``Registry(root)``: versioned checkpoints with manifests, aliases and content-addressed weights.

Readers take no lock: every file is replaced atomically, so a reader sees a whole manifest or
none, and a model's ``head.json`` is the one commit point of each write to it (registry/heads.py).
Writers (register, aliases, delete, gc, import) hold one file lock for the short commit step;
copying and hashing weights, and checking that they load and run, happen before it. A version
that fails its check is never written: the registry stays byte for byte as it was. See
registry/store.py for the folder layout.

Hot reload: every write bumps the ``generation`` counter (one small file). The gateway's resolver
drops its cache when it moves; in distributed mode the gateway publishes the change over Redis
pub/sub and workers reload what they serve.
"""

from __future__ import annotations

import builtins
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from registry import bundle, heads, loading, maintenance, store
from registry.errors import (
    InvalidManifestError,
    InvalidWeightsError,
    LoadError,
    ModelNotFoundError,
    VersionInUseError,
    describe_validation_error,
)
from registry.manifest import EarlyExit, EventInput, ImageInput, Manifest, Metric, TimeSteps
from registry.refs import DEFAULT_ALIAS, alias_name, model_name, parse_ref, version_number
from registry.store import StagedBlob
from registry.weights import stage_weights

if TYPE_CHECKING:
    import torch.nn as nn

    from registry.maintenance import GcReport, VerifyReport

_SOFTWARE_PACKAGES = ("spikeserve", "torch", "safetensors", "numpy")


@dataclass(frozen=True)
class ModelSummary:
    """One model in ``Registry.list()``: its versions, aliases and the latest manifest's headline."""

    name: str
    versions: tuple[int, ...]
    latest: int
    default: int  # the version that the bare name resolves to
    aliases: dict[str, int] = field(default_factory=dict)
    architecture: str = ""
    input_kind: str = ""
    description: str = ""


def default_software() -> dict[str, str]:
    """Versions of the software producing a checkpoint, read from package metadata (no imports)."""
    found = {"python": platform.python_version()}
    for package in _SOFTWARE_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


class Registry:
    """A registry folder. ``root`` is created on the first write; reading an absent one is empty."""

    def __init__(self, root: str | Path, *, lock_timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.layout = store.RegistryLayout(self.root)
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ---- writing versions -----------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        architecture: str,
        config: Mapping[str, Any],
        neuron: Mapping[str, Any] | None,
        time_steps: TimeSteps | Mapping[str, Any],
        input: ImageInput | EventInput | Mapping[str, Any],
        labels: Sequence[str],
        weights: str | Path | Mapping[str, Any] | IO[bytes],
        metrics: Sequence[Metric | Mapping[str, Any]] = (),
        description: str = "",
        tags: Mapping[str, str] | None = None,
        software: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
        early_exit: EarlyExit | Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Store ``weights`` as a new version of ``name`` (1, 2, ...) and return its manifest.

        weights: a ``.safetensors`` path or an open binary file of one, a ``.pt``/``.pth`` state
        dict (read with ``weights_only=True``), or a state dict of tensors. ``aliases`` are pointed
        at the new version. The version is committed, and the aliases move, only after the weights
        loaded strictly into the architecture and one forward on the default input ran
        (InvalidWeightsError otherwise, with nothing written).
        """
        fields: dict[str, Any] = {
            "name": model_name(name),
            "architecture": architecture,
            "config": dict(config),
            "neuron": None if neuron is None else dict(neuron),
            "time_steps": time_steps,
            "input": input,
            "labels": tuple(labels),
            "metrics": tuple(metrics),
            "description": description,
            "tags": dict(tags or {}),
            "software": {**default_software(), **(software or {})},
            "early_exit": early_exit,
        }
        alias_list = [alias_name(a) for a in aliases]
        _validate(fields, "0" * 64, 0)  # refuse bad fields before copying any weights
        staged = stage_weights(self.layout, weights)
        return self._commit(fields, staged, alias_list)

    def _check_runs(self, fields: dict[str, Any], staged: StagedBlob) -> None:
        store.crash_point("weights-staged")
        manifest = _validate(fields, staged.sha256, staged.size)
        try:
            loading.check_runs(manifest, staged.read_bytes())
        except LoadError as exc:
            if "needs torch" in exc.message:
                raise
            reason = exc.message.removeprefix(f"{manifest.ref}: ")
            raise InvalidWeightsError(
                f"{manifest.name}: the new version does not load: {reason}; nothing was registered"
            ) from None
        store.crash_point("weights-checked")

    def import_(self, path: str | Path, *, name: str | None = None) -> Manifest:
        """Add the bundle at ``path`` (from ``export``) as a new version of its model, or of ``name``."""
        new_name = None if name is None else model_name(name)  # checked before any byte is copied
        manifest, staged = bundle.read_bundle(self.layout, Path(path))
        fields = manifest.model_dump(exclude={"schema_version", "version", "weights"})
        if new_name is not None:
            fields["name"] = new_name
        return self._commit(fields, staged, [])

    def _commit(self, fields: dict[str, Any], staged: StagedBlob, aliases: builtins.list[str]) -> Manifest:
        try:
            self._check_runs(fields, staged)
            with store.writer_lock(self.layout, self.lock_timeout_s):
                heads.sweep(self.layout)
                self.layout.create()
                name = fields["name"]
                head = self._head_for_writing(name)
                version = head.last_version + 1
                manifest = _validate({**fields, "version": version}, staged.sha256, staged.size)
                store.commit_blob(self.layout, staged)
                store.crash_point("blob-committed")
                store.atomic_write_bytes(
                    self.layout.manifest(name, version), (manifest.model_dump_json(indent=2) + "\n").encode()
                )
                store.crash_point("manifest-written")
                heads.write_head(self.layout, name, head.with_version(version, aliases))  # the commit
                store.crash_point("head-written")
                store.bump_generation(self.layout)
                return manifest
        except BaseException:
            store.discard(staged)  # the blob was not committed: drop its temp file
            raise

    def _head_for_writing(self, name: str) -> heads.ModelHead:
        """``name``'s head, committed as it is first when only the older layout (or nothing) holds
        it, so that the change that follows is one replace of head.json."""
        head = heads.read_head(self.layout, name)
        if not self.layout.head_file(name).exists():
            heads.write_head(self.layout, name, head)
        return head

    # ---- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> Manifest:
        """The manifest ``ref`` names: ``name`` (its production alias, else the latest version),
        ``name:3`` or ``name@staging``. ModelNotFoundError when there is none."""
        parsed = parse_ref(ref)
        versions = self._versions_of(parsed.name)
        if parsed.version is not None:
            version = parsed.version
            if version not in versions:
                listed = ", ".join(map(str, versions))
                raise ModelNotFoundError(
                    f"model {parsed.name!r} has no version {version}; versions: {listed}"
                )
        elif parsed.alias is not None:
            aliases = self._read_aliases(parsed.name)
            if parsed.alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFoundError(
                    f"model {parsed.name!r} has no alias {parsed.alias!r}; aliases: {known}"
                )
            version = aliases[parsed.alias]
        else:
            version = self._default_version(parsed.name, versions)
        try:
            return maintenance.read_manifest(self.layout, parsed.name, version)
        except FileNotFoundError:  # deleted between listing and reading, or a dangling alias
            raise ModelNotFoundError(f"{parsed.name}:{version} (from {ref!r}) no longer exists") from None

    def versions(self, name: str) -> list[Manifest]:
        """Every version of ``name``, oldest first."""
        name = model_name(name)
        return [maintenance.read_manifest(self.layout, name, v) for v in self._versions_of(name)]

    def list(self) -> list[ModelSummary]:
        """Every model with at least one version, by name. Reads one manifest per model (the
        latest); IntegrityError if that one does not validate (``verify`` lists every such file)."""
        summaries = []
        for name in store.model_names(self.layout):
            head = heads.read_head(self.layout, name)
            versions = list(head.versions)
            if not versions:
                continue
            aliases = dict(head.aliases)
            latest = maintenance.read_manifest(self.layout, name, versions[-1])
            summaries.append(
                ModelSummary(
                    name=name,
                    versions=tuple(versions),
                    latest=versions[-1],
                    default=self._default_version(name, versions, aliases),
                    aliases=aliases,
                    architecture=latest.architecture,
                    input_kind=latest.input.kind,
                    description=latest.description,
                )
            )
        return summaries

    def aliases(self, name: str) -> dict[str, int]:
        name = model_name(name)
        self._versions_of(name)  # unknown model: ModelNotFoundError, not an empty dict
        return self._read_aliases(name)

    def weights_path(self, manifest: Manifest) -> Path:
        """Where the weights of ``manifest`` lie (not checked: ``load`` checks them)."""
        return self.layout.blob(manifest.weights.sha256)

    def load(self, ref: str, device: str = "cpu") -> tuple[Manifest, nn.Module]:
        """Resolve ``ref``, check its weights' sha256, build the network and load it strictly.

        Returns the manifest and the network in eval mode on ``device``. IntegrityError when the
        weights differ from the manifest; LoadError when they do not fit the architecture.
        """
        manifest = self.resolve(ref)
        weights = loading.read_verified(manifest, self.weights_path(manifest))
        return manifest, loading.build_model(manifest, weights, device)

    # ---- aliases and deletion ---------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``name@alias`` at ``version`` (moving it if it pointed elsewhere)."""
        name, alias, number = model_name(name), alias_name(alias), version_number(version)
        with store.writer_lock(self.layout, self.lock_timeout_s):
            versions = self._versions_of(name)
            if number not in versions:
                listed = ", ".join(map(str, versions))
                raise ModelNotFoundError(f"model {name!r} has no version {number}; versions: {listed}")
            head = heads.read_head(self.layout, name)
            heads.write_head(self.layout, name, replace(head, aliases={**head.aliases, alias: number}))
            store.bump_generation(self.layout)

    def remove_alias(self, name: str, alias: str) -> None:
        name, alias = model_name(name), alias_name(alias)
        with store.writer_lock(self.layout, self.lock_timeout_s):
            head = heads.read_head(self.layout, name)
            if alias not in head.aliases:
                known = ", ".join(sorted(head.aliases)) or "none"
                raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; aliases: {known}")
            kept = {a: v for a, v in head.aliases.items() if a != alias}
            heads.write_head(self.layout, name, replace(head, aliases=kept))
            store.bump_generation(self.layout)

    def delete_version(self, name: str, version: int | str, force: bool = False) -> Manifest:
        """Remove ``name:version``'s manifest; its blob stays until ``gc``. Version numbers are not
        reused. Refused (VersionInUseError) while an alias points at it, unless ``force``, which
        removes those aliases too."""
        name, number = model_name(name), version_number(version)
        with store.writer_lock(self.layout, self.lock_timeout_s):
            manifest = self.resolve(f"{name}:{number}")
            head = heads.read_head(self.layout, name)
            pointing = sorted(alias for alias, target in head.aliases.items() if target == number)
            if pointing and not force:
                raise VersionInUseError(
                    f"{manifest.ref} is the target of alias(es) {', '.join(pointing)}; "
                    "move them first or delete with force"
                )
            kept = {a: v for a, v in head.aliases.items() if a not in pointing}
            versions = tuple(v for v in head.versions if v != number)
            heads.write_head(self.layout, name, replace(head, versions=versions, aliases=kept))  # the commit
            store.remove_file(self.layout.manifest(name, number))
            store.bump_generation(self.layout)
            return manifest

    # ---- integrity, tidying, bundles --------------------------------------------------------

    def verify(self, *, load: bool = False) -> VerifyReport:
        """Recompute every digest; the report names tampered or missing weights and bad manifests.
        ``load``: also build every version and run one forward (``load_failed`` problems)."""
        return maintenance.verify(self.layout, load=load)

    def gc(self) -> GcReport:
        """Remove blobs that no manifest names, and what dead writers left (at once, no age wait)."""
        with store.writer_lock(self.layout, self.lock_timeout_s):
            report = maintenance.gc(self.layout)
            if report.removed_blobs or report.removed_temp_files:
                store.bump_generation(self.layout)
            return report

    def export(self, ref: str, path: str | Path) -> Manifest:
        """Write ``ref``'s manifest and checked weights to one ``.tar`` bundle at ``path``."""
        manifest = self.resolve(ref)
        blob = self.weights_path(manifest)
        digest, size = store.hash_file(blob) if blob.is_file() else ("", -1)
        if digest != manifest.weights.sha256 or size != manifest.weights.size:
            loading.read_verified(manifest, blob)  # raises IntegrityError with the details
        bundle.write_bundle(manifest, blob, Path(path))
        return manifest

    # ---- change notification (hot reload) ---------------------------------------------------

    def generation(self) -> int:
        """A counter bumped by every write; 0 for a registry never written."""
        return store.read_generation(self.layout)

    # ---- helpers ----------------------------------------------------------------------------

    def _versions_of(self, name: str) -> builtins.list[int]:
        versions = list(heads.read_head(self.layout, name).versions)
        if not versions:
            known = ", ".join(self._model_names()) or "none"
            raise ModelNotFoundError(f"no model named {name!r} in the registry; models: {known}")
        return versions

    def _model_names(self) -> builtins.list[str]:
        """Models with at least one committed version."""
        return [
            name for name in store.model_names(self.layout) if heads.read_head(self.layout, name).versions
        ]

    def _read_aliases(self, name: str) -> dict[str, int]:
        return dict(heads.read_head(self.layout, name).aliases)

    def _default_version(
        self, name: str, versions: builtins.list[int], aliases: dict[str, int] | None = None
    ) -> int:
        # an explicit production alias wins even if dangling: resolve then says so, rather than
        # quietly serving some other version
        aliases = self._read_aliases(name) if aliases is None else aliases
        return aliases.get(DEFAULT_ALIAS, versions[-1])


def _validate(fields: dict[str, Any], sha256: str, size: int) -> Manifest:
    """The manifest these fields make (version 1 until one is assigned); InvalidManifestError if none."""
    values = {"version": 1, **fields, "weights": {"sha256": sha256, "size": size}}
    try:
        manifest = Manifest.model_validate(values)
    except ValidationError as exc:
        raise InvalidManifestError(
            f"invalid manifest for {fields.get('name')!r}: {describe_validation_error(exc)}"
        ) from None
    num_classes = manifest.config.get("num_classes")
    if isinstance(num_classes, int) and len(manifest.labels) != num_classes:
        raise InvalidManifestError(
            f"invalid manifest for {manifest.name!r}: "
            f"{len(manifest.labels)} labels for num_classes={num_classes}"
        )
    return manifest
