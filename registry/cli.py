"""``spikeserve registry ...``: list, show, register, alias, unalias, delete, verify, gc, export, import,
and the foreign formats of ``registry/importers`` (import-spikingjelly, import-spikeformer,
import-nir, export-nir).

The registry folder is ``--registry PATH``, else ``$SPIKESERVE_REGISTRY``, else ``./zoo``. Output is a
table for people, or JSON with ``--json``. Errors are one line on stderr and exit status 1.
Imports no torch: only ``register`` with a ``.pt`` file or a state dict pulls it in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.importers.cli import add_import_commands
from registry.manifest import Manifest
from registry.refs import parse_ref
from registry.registry import Registry

ENV_REGISTRY = "SPIKESERVE_REGISTRY"
DEFAULT_REGISTRY = "zoo"
# manifest fields a user may give to ``register``; the rest the registry assigns
REGISTER_FIELDS = (
    "name", "architecture", "config", "neuron", "time_steps", "input", "labels",
    "metrics", "description", "tags", "software",
)  # fmt: skip
ASSIGNED_FIELDS = ("schema_version", "version", "weights", "created_at")

Action = Callable[[Registry, argparse.Namespace], int]


class UsageError(Exception):
    """A bad argument the parser could not catch (JSON content, missing fields)."""


def registry_root(args: argparse.Namespace) -> Path:
    # registry/ never imports service/, so the environment is read here rather than via Settings
    given = getattr(args, "registry", None)
    return Path(given or os.environ.get(ENV_REGISTRY) or DEFAULT_REGISTRY)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``registry`` and its actions to the ``spikeserve`` parser."""
    # --registry/--json work before or after the action: SUPPRESS keeps one from erasing the other
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"registry folder (default: ${ENV_REGISTRY}, else ./{DEFAULT_REGISTRY})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser = subparsers.add_parser(
        "registry",
        parents=[common],
        help="manage model checkpoints",
        description="Manage model checkpoints: versions, aliases, integrity checks and bundles.",
    )
    actions = parser.add_subparsers(dest="registry_action", required=True, metavar="ACTION")

    def action(name: str, run: Action, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=lambda args: _run(run, args))
        return sub

    action("list", _list, "list models, their versions and aliases")
    action("show", _show, "show one version's manifest").add_argument(
        "ref", help="name, name:N or name@alias"
    )
    register = action("register", _register, "register weights as a new version")
    register.add_argument("--name", help="model name (or 'name' in the manifest)")
    register.add_argument("--arch", help="architecture (or 'architecture' in the manifest)")
    register.add_argument(
        "--weights", type=Path, required=True, metavar="FILE", help=".safetensors, or a .pt/.pth state dict"
    )
    register.add_argument("--manifest", type=Path, metavar="FILE", help="JSON file with the other fields")
    register.add_argument("--manifest-extra", metavar="JSON", help="JSON object merged over --manifest")
    register.add_argument("--alias", action="append", default=[], help="point this alias at the new version")
    alias = action("alias", _alias, "point NAME@ALIAS at VERSION")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version")
    unalias = action("unalias", _unalias, "remove an alias")
    unalias.add_argument("name")
    unalias.add_argument("alias")
    delete = action("delete", _delete, "delete one version (its weights go at the next gc)")
    delete.add_argument("ref", help="name:N or name@alias")
    delete.add_argument("--force", action="store_true", help="also remove aliases that point at it")
    verify = action("verify", _verify, "recompute every digest; exit 1 on any problem")
    verify.add_argument(
        "--load", action="store_true", help="also build every version and run one forward (needs torch)"
    )
    action("gc", _gc, "remove unreferenced weights and leftovers of killed writers (at once)")
    export = action("export", _export, "write one version to a .tar bundle")
    export.add_argument("ref")
    export.add_argument("file", type=Path)
    import_ = action("import", _import, "add a .tar bundle as a new version")
    import_.add_argument("file", type=Path)
    import_.add_argument("--name", help="import under this name instead of the bundle's")
    add_import_commands(action)


def _run(run: Action, args: argparse.Namespace) -> int:
    try:
        return run(Registry(registry_root(args)), args)
    except (RegistryError, UsageError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"spikeserve registry: error: {message}", file=sys.stderr)
        return 1


# ---- actions -------------------------------------------------------------------------------


def _list(registry: Registry, args: argparse.Namespace) -> int:
    summaries = registry.list()
    if _json(args):
        return _print_json([dataclasses.asdict(s) for s in summaries])
    if not summaries:
        print(f"no models in registry {registry.root}")
        return 0
    rows = [
        [
            s.name,
            str(len(s.versions)),
            str(s.latest),
            str(s.default),
            ", ".join(f"{a}={v}" for a, v in sorted(s.aliases.items())) or "-",
            s.architecture,
            s.input_kind,
        ]
        for s in summaries
    ]
    print(_table(["NAME", "VERSIONS", "LATEST", "DEFAULT", "ALIASES", "ARCHITECTURE", "INPUT"], rows))
    return 0


def _show(registry: Registry, args: argparse.Namespace) -> int:
    manifest = registry.resolve(args.ref)
    if _json(args):
        return _print_json(manifest.model_dump(mode="json"))
    aliases = sorted(a for a, v in registry.aliases(manifest.name).items() if v == manifest.version)
    print(_describe(manifest, aliases))
    return 0


def _register(registry: Registry, args: argparse.Namespace) -> int:
    fields = _register_fields(args)
    manifest = registry.register(
        fields.pop("name"),
        architecture=fields.pop("architecture"),
        config=fields.pop("config", {}),
        neuron=fields.pop("neuron", None),
        time_steps=fields.pop("time_steps"),
        input=fields.pop("input"),
        labels=fields.pop("labels"),
        weights=args.weights,
        aliases=args.alias,
        **fields,
    )
    if _json(args):
        return _print_json(manifest.model_dump(mode="json"))
    aliases = f", aliases {', '.join(args.alias)}" if args.alias else ""
    weights = f"sha256 {manifest.weights.sha256[:12]}, {_size(manifest.weights.size)}"
    print(f"registered {manifest.ref} ({weights}{aliases})")
    return 0


def _register_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.manifest is not None:
        fields.update(_json_object(args.manifest.read_text(), f"--manifest {args.manifest}"))
    if args.manifest_extra is not None:
        fields.update(_json_object(args.manifest_extra, "--manifest-extra"))
    if args.name is not None:
        fields["name"] = args.name
    if args.arch is not None:
        fields["architecture"] = args.arch
    assigned = sorted(set(fields) & set(ASSIGNED_FIELDS))
    if assigned:
        raise UsageError(f"{', '.join(assigned)}: assigned by the registry, leave them out")
    unknown = sorted(set(fields) - set(REGISTER_FIELDS))
    if unknown:
        raise UsageError(
            f"unknown manifest field(s) {', '.join(unknown)}; known: {', '.join(REGISTER_FIELDS)}"
        )
    missing = [f for f in ("name", "architecture", "time_steps", "input", "labels") if f not in fields]
    if missing:
        raise UsageError(f"register needs {', '.join(missing)} (flags, --manifest or --manifest-extra)")
    return fields


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object")
    return value


def _alias(registry: Registry, args: argparse.Namespace) -> int:
    registry.set_alias(args.name, args.alias, args.version)
    if _json(args):
        return _print_json({"name": args.name, "alias": args.alias, "version": int(args.version)})
    print(f"{args.name}@{args.alias} -> {args.name}:{int(args.version)}")
    return 0


def _unalias(registry: Registry, args: argparse.Namespace) -> int:
    registry.remove_alias(args.name, args.alias)
    if _json(args):
        return _print_json({"name": args.name, "removed_alias": args.alias})
    print(f"removed {args.name}@{args.alias}")
    return 0


def _delete(registry: Registry, args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref)
    if ref.version is None and ref.alias is None:
        raise UsageError(f"say which version to delete: {ref.name}:N or {ref.name}@ALIAS")
    manifest = registry.resolve(args.ref)
    registry.delete_version(manifest.name, manifest.version, force=args.force)
    if _json(args):
        return _print_json({"deleted": manifest.ref})
    print(f"deleted {manifest.ref}; `spikeserve registry gc` frees its weights if nothing else uses them")
    return 0


def _verify(registry: Registry, args: argparse.Namespace) -> int:
    report = registry.verify(load=args.load)
    if _json(args):
        _print_json({**dataclasses.asdict(report), "ok": report.ok})
        return 0 if report.ok else 1
    for problem in report.problems:
        print(f"{problem.kind}: {problem.message}")
    notes = []
    if report.unreferenced_blobs:
        notes.append(f"{len(report.unreferenced_blobs)} unreferenced blob(s)")
    if report.temp_files:
        notes.append(f"{len(report.temp_files)} temp file(s)")
    hint = f" ({', '.join(notes)}: `spikeserve registry gc` removes them)" if notes else ""
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"checked {report.checked_versions} version(s), {report.checked_blobs} blob(s): {verdict}{hint}")
    return 0 if report.ok else 1


def _gc(registry: Registry, args: argparse.Namespace) -> int:
    report = registry.gc()
    if _json(args):
        return _print_json(dataclasses.asdict(report))
    print(
        f"removed {len(report.removed_blobs)} blob(s) ({_size(report.freed_bytes)}) "
        f"and {len(report.removed_temp_files)} temp file(s)"
    )
    return 0


def _export(registry: Registry, args: argparse.Namespace) -> int:
    manifest = registry.export(args.ref, args.file)
    if _json(args):
        return _print_json({"exported": manifest.ref, "file": str(args.file)})
    print(f"exported {manifest.ref} to {args.file}")
    return 0


def _import(registry: Registry, args: argparse.Namespace) -> int:
    manifest = registry.import_(args.file, name=args.name)
    if _json(args):
        return _print_json(manifest.model_dump(mode="json"))
    print(f"imported {args.file} as {manifest.ref}")
    return 0


# ---- formatting ----------------------------------------------------------------------------


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2, default=str))
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _describe(manifest: Manifest, aliases: Sequence[str]) -> str:
    spec = manifest.input
    if spec.kind == "image":
        shown_input = f"image {spec.channels}x{spec.height}x{spec.width}, mean {spec.mean}, std {spec.std}"
    else:
        parameter = {
            "time_window": f", {spec.time_window_us} us",
            "event_count": f", {spec.event_count} events",
        }
        shown_input = (
            f"events {spec.sensor_width}x{spec.sensor_height}, {spec.polarities} polarities, "
            f"binning {spec.binning}{parameter.get(spec.binning, '')}"
        )
    steps = manifest.time_steps
    labels = ", ".join(manifest.labels[:10]) + (", ..." if len(manifest.labels) > 10 else "")
    metrics = "; ".join(f"{m.name}={m.value:g} ({m.dataset}/{m.split})" for m in manifest.metrics)
    rows = [
        ("ref", manifest.ref),
        ("architecture", manifest.architecture),
        ("config", json.dumps(manifest.config, sort_keys=True)),
        ("neuron", "architecture default" if manifest.neuron is None else json.dumps(manifest.neuron)),
        ("time steps", f"default {steps.default} (allowed {steps.min}-{steps.max})"),
        ("input", shown_input),
        ("labels", f"{len(manifest.labels)}: {labels}"),
        ("metrics", metrics or "-"),
        ("weights", f"sha256 {manifest.weights.sha256}, {_size(manifest.weights.size)}"),
        ("created", manifest.created_at.isoformat(timespec="seconds")),
        ("aliases", ", ".join(aliases) or "-"),
        ("description", manifest.description or "-"),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(manifest.tags.items())) or "-"),
        ("software", ", ".join(f"{k}={v}" for k, v in sorted(manifest.software.items())) or "-"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)
