"""``spikeserve registry import-spikingjelly | import-spikeformer | import-nir | export-nir``.

Added to the ``registry`` command by ``registry/cli.py``; torch (and nir) load only when one of
these runs. The flags every import shares say what a foreign checkpoint does not: the model name,
the input spec, the time steps and labels.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.importers.common import Destination
from registry.manifest import Manifest
from registry.registry import Registry

Action = Callable[[Registry, argparse.Namespace], int]
AddAction = Callable[[str, Action, str], argparse.ArgumentParser]

IMAGENET_INPUT: dict[str, Any] = {
    "kind": "image", "channels": 3, "height": 224, "width": 224,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}  # fmt: skip
DVS128_INPUT: dict[str, Any] = {
    "kind": "events",
    "sensor_width": 128,
    "sensor_height": 128,
    "binning": "time_bins",
}


def add_import_commands(action: AddAction) -> None:
    sj = action("import-spikingjelly", _import_spikingjelly, "register a SpikingJelly ResNet checkpoint")
    sj.add_argument("file", type=Path, help="the .pth/.pt state dict (read with weights_only=True)")
    sj.add_argument(
        "--arch", required=True, help="sew_resnet18 ... sew_resnet152, spiking_resnet18 ... 152, ..."
    )
    sj.add_argument("--cnf", help="SEW connect function (ADD); sew_* only")
    sj.add_argument("--neuron", default="lif", choices=("lif", "if", "plif"), help="its spiking_neuron")
    sj.add_argument("--tau", type=float, default=2.0, help="LIF tau (PLIF: its initial value)")
    sj.add_argument("--v-threshold", type=float, default=1.0)
    sj.add_argument("--v-reset", default="0.0", help="hard reset value, or 'none' for soft reset")
    sj.add_argument("--no-decay-input", action="store_true", help="it was trained with decay_input=False")
    _destination_flags(sj, default_steps=4)

    sf = action(
        "import-spikeformer", _import_spikeformer, "register a checkpoint of the Spikeformer authors' code"
    )
    sf.add_argument("file", type=Path, help="the .pth/.pt state dict (read with weights_only=True)")
    sf.add_argument(
        "--arch",
        required=True,
        help="PLIF_spikeformer_7_5x3x1 | PLIF_spikeformer_7_3x2x3 | PLIAF_spikeformer_7_3x2x4 (or our names)",
    )
    _destination_flags(sf, default_steps=None)

    nir_in = action("import-nir", _import_nir, "register a NIR graph (.nir) as a network of our neurons")
    nir_in.add_argument("file", type=Path, help="the .nir (HDF5) file")
    nir_in.add_argument(
        "--dt", type=float, default=1e-4, help="the simulation step in seconds (default 1e-4)"
    )
    _destination_flags(nir_in, default_steps=4)

    nir_out = action("export-nir", _export_nir, "write a DANet version as a NIR graph (BN folded)")
    nir_out.add_argument("ref", help="name, name:N or name@alias")
    nir_out.add_argument("file", type=Path, help="the .nir file to write")
    nir_out.add_argument(
        "--dt", type=float, default=1e-4, help="the simulation step in seconds (default 1e-4)"
    )


def _destination_flags(parser: argparse.ArgumentParser, default_steps: int | None) -> None:
    parser.add_argument("--name", required=True, help="the model name to register it under")
    parser.add_argument("--input-spec", metavar="JSON", help="input spec as JSON (or @FILE)")
    parser.add_argument(
        "--time-steps", type=int, default=default_steps, metavar="T", help="default T of a request"
    )
    parser.add_argument(
        "--labels", metavar="A,B,...", help="class labels, comma-separated (or @FILE, one a line)"
    )
    parser.add_argument("--description", default="")
    parser.add_argument("--alias", action="append", default=[], help="point this alias at the new version")


def _json_arg(text: str, flag: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not JSON: {exc}") from None


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.startswith("@"):
        return [line.strip() for line in Path(text[1:]).read_text().splitlines() if line.strip()]
    return [label.strip() for label in text.split(",")]


def _destination(
    args: argparse.Namespace, default_input: dict[str, Any] | None, max_steps: int = 64
) -> Destination:
    spec = _json_arg(args.input_spec, "--input-spec") if args.input_spec else default_input
    if spec is None:
        raise ValueError("this network's input cannot be guessed: give --input-spec")
    steps = args.time_steps if args.time_steps is not None else max_steps
    return Destination(
        name=args.name,
        input=spec,
        time_steps={"default": steps, "min": 1, "max": max(steps, max_steps)},
        labels=_labels(args.labels),
        description=args.description,
        aliases=tuple(args.alias),
    )


def _report(args: argparse.Namespace, manifest: Manifest) -> int:
    if getattr(args, "json", False):
        print(json.dumps(manifest.model_dump(mode="json"), indent=2, default=str))
    else:
        print(f"imported {args.file} as {manifest.ref} ({manifest.architecture})")
    return 0


def _import_spikingjelly(registry: Registry, args: argparse.Namespace) -> int:
    from registry.importers.spikingjelly import NeuronSettings, import_spikingjelly

    v_reset = None if args.v_reset.lower() == "none" else float(args.v_reset)
    neuron = NeuronSettings(args.neuron, args.tau, args.v_threshold, v_reset, not args.no_decay_input)
    manifest = import_spikingjelly(
        registry,
        args.file,
        arch=args.arch,
        cnf=args.cnf,
        neuron=neuron,
        destination=_destination(args, IMAGENET_INPUT),
    )
    return _report(args, manifest)


def _import_spikeformer(registry: Registry, args: argparse.Namespace) -> int:
    from registry.importers.spikeformer_authors import BY_ARCHITECTURE, CONFIGS, import_spikeformer_authors

    name = BY_ARCHITECTURE.get(args.arch, args.arch)
    default_input = (
        IMAGENET_INPUT
        if CONFIGS.get(name, {}).get("architecture") == "spikeformer_imagenet"
        else DVS128_INPUT
    )
    from registry.importers.common import load_foreign_state_dict

    frames = load_foreign_state_dict(args.file).get("model.time_embed")
    max_steps = int(frames.shape[-2]) if frames is not None else 4
    destination = _destination(args, default_input, max_steps=max_steps)
    manifest = import_spikeformer_authors(registry, args.file, config_name=args.arch, destination=destination)
    return _report(args, manifest)


def _import_nir(registry: Registry, args: argparse.Namespace) -> int:
    from registry.importers.nir_import import default_input_spec, import_nir

    manifest = import_nir(
        registry,
        args.file,
        dt=args.dt,
        destination_for=lambda shape: _destination(args, default_input_spec(shape)),
    )
    return _report(args, manifest)


def _export_nir(registry: Registry, args: argparse.Namespace) -> int:
    from registry.importers.nir_export import export_nir

    manifest = export_nir(registry, args.ref, args.file, dt=args.dt)
    if getattr(args, "json", False):
        print(json.dumps({"exported": manifest.ref, "file": str(args.file)}))
    else:
        print(f"exported {manifest.ref} to {args.file} (NIR)")
    return 0
