"""``spikeserve serve``: the gateway with its embedded worker (or Redis workers), under uvicorn.

Flags override ``SPIKESERVE_*`` environment variables, which override the defaults of
``service.settings.Settings``. A flag is one row of ``SERVE_FLAGS`` (flag, settings field, type,
help): adding one (``--redis`` for distributed mode, say) is one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class Flag:
    flag: str
    field: str  # the Settings field it sets
    type: Callable[[str], Any] | None
    help: str
    nargs: str | None = None
    metavar: str | None = None


# How a process that runs networks batches them and uses its cores: the gateway with its embedded
# worker and a Redis worker take the same flags.
BATCH_FLAGS: list[Flag] = [
    Flag("--max-batch-size", "max_batch_size", int, "largest batch (default 32)"),
    Flag("--max-delay-ms", "max_delay_ms", float, "longest wait for a batch to fill (default 5)"),
    Flag(
        "--torch-threads",
        "torch_threads",
        int,
        "torch intra-op threads (default: torch's choice, or an even share of the cores per batch)",
    ),
    Flag("--concurrent-batches", "concurrent_batches", int, "batches computed at once (default 1)"),
]

SERVE_FLAGS: list[Flag] = [
    Flag("--host", "host", str, "address to listen on (default 127.0.0.1)"),
    Flag("--port", "port", int, "port to listen on (default 8000)"),
    Flag("--registry", "registry", Path, "registry folder (default ./zoo or $SPIKESERVE_REGISTRY)"),
    Flag("--device", "device", str, "cpu, cuda or cuda:N (default cpu)"),
    Flag("--backend", "neuron_backend", str, "neuron backend: auto, torch, triton, inductor or native"),
    Flag(
        "--models",
        "default_models",
        None,
        "models to load and warm up before ready (default: all)",
        "+",
        "REF",
    ),
    *BATCH_FLAGS,
    Flag(
        "--inference-processes",
        "inference_processes",
        int,
        "compute batches in N child processes, one batch each (0: in threads of the gateway)",
    ),
    Flag("--max-queue-size", "max_queue_size", int, "queued requests before 503 (default 1024)"),
    Flag("--request-timeout", "request_timeout_s", float, "seconds before a request gets 504 (default 30)"),
    Flag("--redis", "redis_url", str, "distributed: send requests to workers via Redis", metavar="URL"),
]


def add_serve_flags(parser: argparse.ArgumentParser, flags: list[Flag] | None = None) -> None:
    for flag in flags or SERVE_FLAGS:
        kwargs: dict[str, Any] = {"dest": flag.field, "default": None, "help": flag.help}
        if flag.type is not None:
            kwargs["type"] = flag.type
        if flag.nargs is not None:
            kwargs["nargs"] = flag.nargs
        if flag.metavar is not None:
            kwargs["metavar"] = flag.metavar
        parser.add_argument(flag.flag, **kwargs)


def settings_from_args(args: argparse.Namespace, flags: list[Flag] | None = None) -> Settings:
    """``Settings`` from the environment, with every flag that was given on top."""
    from service.settings import Settings

    given = {
        f.field: getattr(args, f.field)
        for f in flags or SERVE_FLAGS
        if getattr(args, f.field, None) is not None
    }
    return Settings(**given)


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP gateway with an in-process worker",
        description="Serve the registry's models over HTTP (v1 API, Open Inference Protocol v2, /metrics).",
    )
    add_serve_flags(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off: it costs throughput)"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.connections import guarded_protocol

    try:
        settings = settings_from_args(args)
    except ValueError as exc:  # pydantic's ValidationError and pydantic-settings' SettingsError
        print(f"spikeserve serve: invalid settings: {_one_line(exc)}", file=sys.stderr)
        if "error parsing value" in str(exc):  # a list or dict setting given as plain text
            print(
                '  list and dict settings take JSON, e.g. SPIKESERVE_API_KEYS=\'["key-1", "key-2"]\'',
                file=sys.stderr,
            )
        return 1
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not Path(settings.registry).is_dir():
        print(
            f"spikeserve serve: no registry folder at {settings.registry} (use --registry PATH)",
            file=sys.stderr,
        )
        return 1
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        http=guarded_protocol(settings),
    )

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn closes every WebSocket (1012) before the lifespan ends: live streams get
            # their final message and a 1001 first
            await app.state.spikeserve.streams.shutdown()
            await super().shutdown(sockets)

    Server(config).run()
    return 0


def _one_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors())
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"{exc}{cause}".replace("\n", " ")
