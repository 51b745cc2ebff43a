"""``spikeserve export torchserve REF``: a registry version as a TorchServe ``.mar``, ready to start.

The batching and limits written into the archive's model-config YAML are spikeserve's settings
(environment, then these flags), so TorchServe batches like ``spikeserve serve`` would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.commands import SERVE_FLAGS, add_serve_flags, settings_from_args

# the serve flags that mean something inside a TorchServe worker
EXPORT_FLAGS = [
    flag
    for flag in SERVE_FLAGS
    if flag.field
    in (
        "registry",
        "device",
        "neuron_backend",
        "max_batch_size",
        "max_delay_ms",
        "request_timeout_s",
        "torch_threads",
    )
]


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a registered version for another runtime (TorchServe)",
        description="Export a registered version for another runtime.",
    )
    runtimes = parser.add_subparsers(dest="runtime", required=True, metavar="RUNTIME")
    torchserve = runtimes.add_parser(
        "torchserve",
        help="write DIR/<name>.mar, its model-config YAML and config.properties",
        description=(
            "Write OUTPUT/<name>.mar (weights, manifest, a handler on spikeserve's engine), "
            "OUTPUT/<name>.yaml (batching from spikeserve's settings) and OUTPUT/config.properties. "
            "Start it with: torchserve --start --ts-config OUTPUT/config.properties "
            "--model-store OUTPUT --models <name>=<name>.mar"
        ),
    )
    torchserve.add_argument("ref", help="name, name:N or name@alias")
    torchserve.add_argument("--output", type=Path, required=True, metavar="DIR", help="model store to write")
    torchserve.add_argument(
        "--workers", type=int, default=1, help="TorchServe workers for the model (default 1)"
    )
    torchserve.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="HOST",
        help="address TorchServe's inference, management and metrics APIs listen on (default 127.0.0.1)",
    )
    torchserve.add_argument(
        "--port", type=int, default=8080, help="inference port; management and metrics take the next two"
    )
    add_serve_flags(torchserve, EXPORT_FLAGS)
    torchserve.set_defaults(handler=run_export_torchserve)


def run_export_torchserve(args: argparse.Namespace) -> int:
    from registry import Registry
    from registry.errors import RegistryError
    from workers.torchserve.archive import Ports, export_torchserve

    try:
        settings = settings_from_args(args, EXPORT_FLAGS)
    except ValueError as exc:
        print(f"spikeserve export: invalid settings: {exc}", file=sys.stderr)
        return 1
    if args.workers < 1:
        print("spikeserve export: --workers must be at least 1", file=sys.stderr)
        return 1
    ports = Ports(args.port, args.port + 1, args.port + 2)
    try:
        exported = export_torchserve(
            Registry(settings.registry), args.ref, args.output, settings,
            workers=args.workers, host=args.listen, ports=ports,
        )  # fmt: skip
    except (RegistryError, RuntimeError) as exc:
        print(f"spikeserve export: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    print(f"wrote {exported.mar} ({exported.name}:{exported.version})")
    print(f"      {exported.model_config}")
    print(f"      {exported.config_properties}")
    print(
        f"start: torchserve --start --ts-config {exported.config_properties} "
        f"--model-store {exported.mar.parent} --models {exported.name}={exported.mar.name}"
    )
    return 0
