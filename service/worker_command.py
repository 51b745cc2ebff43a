"""``spikeserve worker``: run models for gateways in distributed mode, reading Redis Streams.

    spikeserve worker --redis redis://host:6379/0 [--registry PATH] [--device cuda|cpu]
                      [--models NAME ...] [--metrics-port N]

The worker checks the models it is asked for against the registry before anything else (a name
the registry lacks stops it with a message and exit status 1), loads and warms them up, then
serves their streams until SIGTERM/SIGINT, when it finishes what it holds and leaves. It also
runs the live-stream sessions that gateways pin to it (its own window stream, read by
``workers.redis_stream_worker``). Without ``--models`` it serves every model of the registry,
including ones registered later. Flags override ``SPIKESERVE_*`` variables
(``SPIKESERVE_REDIS_URL``...), as for ``spikeserve serve``.

Nothing heavy is imported until the command runs: ``spikeserve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry import Registry
    from service.settings import Settings

log = logging.getLogger("spikeserve.worker")


def _worker_flags() -> list[Any]:
    from service.commands import BATCH_FLAGS, Flag

    return [
        Flag(
            "--redis",
            "redis_url",
            str,
            "Redis URL, e.g. redis://localhost:6379/0 (or $SPIKESERVE_REDIS_URL)",
            metavar="URL",
        ),
        Flag("--registry", "registry", Path, "registry folder (default ./zoo or $SPIKESERVE_REGISTRY)"),
        Flag("--device", "device", str, "cpu, cuda or cuda:N (default cpu)"),
        Flag("--backend", "neuron_backend", str, "neuron backend: auto, torch, triton, inductor or native"),
        Flag(
            "--models",
            "default_models",
            None,
            "models to serve (default: every model in the registry)",
            "+",
            "NAME",
        ),
        *BATCH_FLAGS,
        Flag("--redis-prefix", "redis_prefix", str, "prefix of every Redis key (default spikeserve)"),
        Flag(
            "--claim-idle-ms", "claim_idle_ms", int, "take over requests a dead worker held this long (5000)"
        ),
        Flag("--metrics-port", "metrics_port", int, "serve Prometheus /metrics on this port (default: none)"),
    ]


def add_commands(subparsers: Any) -> None:
    from service.commands import add_serve_flags

    parser = subparsers.add_parser(
        "worker",
        help="run models for gateways in distributed mode (reads Redis Streams)",
        description="Serve the registry's models to `spikeserve serve --redis URL` gateways through Redis.",
    )
    add_serve_flags(parser, _worker_flags())
    parser.add_argument(
        "--worker-id", default=None, help="name in heartbeats and consumer groups (default: host-pid)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from service.commands import settings_from_args

    settings = settings_from_args(args, _worker_flags())
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.redis_url:
        return _fail("needs a Redis to read requests from: --redis URL or SPIKESERVE_REDIS_URL")
    if not Path(settings.registry).is_dir():
        return _fail(f"no registry folder at {settings.registry} (use --registry PATH)")
    from registry import Registry

    registry = Registry(settings.registry)
    problem = check_models(registry, list(settings.default_models))
    if problem is not None:
        return _fail(problem)
    try:
        import torch  # noqa: F401  (the gateway image has none: say so rather than fail deep in a load)
    except ImportError:
        return _fail(
            "needs torch, which is not installed here (the gateway image has none; use the worker image)"
        )
    try:
        asyncio.run(serve(settings, registry, worker_id=args.worker_id, metrics_port=settings.metrics_port))
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(message: str) -> int:
    print(f"spikeserve worker: {message}", file=sys.stderr)
    return 1


def check_models(registry: Registry, refs: list[str]) -> str | None:
    """None when every ref resolves in ``registry``; else what is missing (the registry says what it has)."""
    from registry.errors import RegistryError

    problems = []
    for ref in refs:
        try:
            registry.resolve(ref)
        except RegistryError as exc:
            problems.append(f"cannot serve {ref!r}: {exc}")
    return "; ".join(problems) or None


class _Served:
    """The model names a worker serves: the ones named on the command line, or the registry's all."""

    def __init__(self, registry: Registry, refs: list[str]) -> None:
        self.registry = registry
        self.fixed = sorted({registry.resolve(ref).name for ref in refs}) if refs else None

    def __call__(self) -> list[str]:
        if self.fixed is not None:
            return self.fixed
        return sorted(summary.name for summary in self.registry.list())

    def wanted_versions(self) -> set[tuple[str, int]]:
        """Each served model's default version (what its bare name resolves to) and every alias target."""
        from registry.errors import ModelNotFoundError

        wanted = set()
        for name in self():
            try:
                wanted.add((name, self.registry.resolve(name).version))
                wanted.update((name, version) for version in self.registry.aliases(name).values())
            except ModelNotFoundError:  # deleted since: its stream stays, its requests get 404s
                log.warning("model %r is no longer in the registry", name)
        return wanted


async def serve(
    settings: Settings, registry: Registry, *, worker_id: str | None = None, metrics_port: int | None = None
) -> None:
    """Load, warm up, and serve until SIGTERM/SIGINT (``settings.redis_url`` must be set)."""
    if not settings.redis_url:
        raise ValueError("a worker needs settings.redis_url")
    from workers.batcher import Batcher
    from workers.concurrency import plan
    from workers.engine import Engine  # torch arrives here
    from workers.redis_stream_worker import StreamInbox
    from workers.redis_worker import RedisWorker
    from workers.runtime import prepare_inference_process
    from workers.stream_runner import StreamRunner

    concurrency = plan(settings.device, settings.torch_threads, settings.concurrent_batches)
    prepare_inference_process(concurrency.torch_threads, settings.keep_freed_memory)
    served = _Served(registry, list(settings.default_models))
    engine = Engine(
        registry, device=settings.device, backend=settings.neuron_backend, worker_id=worker_id or ""
    )

    def reload() -> None:
        """Load what aliases point to now; forget versions the registry no longer has."""
        from registry.errors import LoadError, ModelNotFoundError

        for name, version in sorted(served.wanted_versions()):
            try:
                engine.ensure_loaded(name, version)
            except LoadError:  # a broken version: its requests get 503 load_failed, the others are served
                continue  # the engine logged it; heartbeats list it under "failed"
        for name, version in engine.loaded():
            try:
                registry.resolve(f"{name}:{version}")
            except ModelNotFoundError:
                engine.unload(name, version)
                log.info("unloaded %s:%d (deleted from the registry)", name, version)

    # live streams run on their own copy of each network, loaded at a session's first open
    streams = StreamRunner(
        registry,
        device=settings.device,
        backend=settings.neuron_backend,
        max_sessions=settings.stream_max_sessions,
    )
    await asyncio.to_thread(reload)  # load and warm up before taking the first request
    batcher = Batcher(
        engine.run_batch,
        max_batch_size_for=settings.batch_size_for,
        max_delay_ms_for=settings.delay_ms_for,
        max_queue_size=settings.max_queue_size,
        concurrent_batches=concurrency.batches,
    )
    await batcher.start()
    worker = RedisWorker(
        settings.redis_url,
        batcher.submit,
        models=served,
        worker_id=worker_id,
        prefix=settings.redis_prefix,
        claim_idle_ms=settings.claim_idle_ms,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        # two batches' worth: enough to keep the batcher fed, little enough to leave work for other workers
        max_in_flight=min(settings.max_queue_size, 2 * settings.max_batch_size),
        describe=lambda: {
            "device": settings.device,
            "loaded": [f"{name}:{version}" for name, version in engine.loaded()],
            "failed": engine.failed(),
            "batches": batcher.batches_run,
            "streams": True,  # reads its own window stream: gateways may pin sessions to it
            "stream_sessions": streams.sessions(),
        },
        on_registry_change=lambda: asyncio.to_thread(reload),
    )
    engine.worker_id = worker.worker_id  # results and spikeserve_worker_batches_total carry the same id
    streams.worker_id = worker.worker_id
    inbox = StreamInbox(settings.redis_url, streams, worker.worker_id, prefix=settings.redis_prefix)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="0.0.0.0")  # scraped from another machine in a deployment
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info(
        "worker %s on %s, serving %s", worker.worker_id, settings.device, ", ".join(served()) or "nothing yet"
    )
    inbox_task = asyncio.create_task(inbox.run(), name="worker-stream-windows")
    try:
        await worker.run()
    finally:
        inbox.stop()
        await asyncio.wait([inbox_task], timeout=3.0)
        await batcher.stop()
