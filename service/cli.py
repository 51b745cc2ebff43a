"""``spikeserve``: one command, a subcommand per job.

Each area adds its own subcommands through an ``add_commands(subparsers)`` function; the modules
are imported here so that ``spikeserve --help`` lists everything, and none imports torch at
module level (the gateway process stays light).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# modules that define add_commands(subparsers); each subcommand sets `handler` in its defaults
COMMAND_MODULES = (
    "service.commands",
    "registry.cli",
    "training.cli",
    "service.worker_command",
    "service.export_command",
    "service.stream_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeserve", description="Serve spiking neural networks.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
