"""The gateway: ``create_app(settings, pool=None)`` builds the FastAPI application.

The pool is embedded (engine and batcher in this process) unless ``settings.redis_url`` names a
Redis, in which case requests go to ``spikeserve worker`` processes. The lifespan prints the admin
token when it was generated, starts the pool in the background (``/healthz`` answers at once,
``/readyz`` once the default models are loaded and warmed up) and stops it on shutdown.

Nothing here imports torch: the embedded pool imports it when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from registry import Registry
from service.auth import announce_generated_token, make_credentials
from service.decoding.slots import DecodeSlots
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import RequestMetricsMiddleware, set_queue_limit
from service.resolve import RefResolver
from service.routes import ROUTERS
from service.routes.console import mount_console
from service.routes.v2 import SERVER_VERSION
from service.settings import Settings
from service.state import ServiceState
from service.streams.admission import StreamSessions
from workers.pool import WorkerPool

log = logging.getLogger("spikeserve.app")


def build_pool(settings: Settings, registry: Registry) -> WorkerPool:
    """The pool ``settings`` ask for: Redis Streams when ``redis_url`` is set, else embedded."""
    if settings.redis_url:
        from workers.redis_pool import RedisPool

        return RedisPool.from_settings(settings, registry_generation=registry.generation)
    from workers.embedded import EmbeddedPool

    return EmbeddedPool(settings, registry=registry)


def create_app(settings: Settings | None = None, pool: WorkerPool | None = None) -> FastAPI:
    """The gateway application for ``settings`` (default: read from the environment)."""
    settings = settings or Settings()
    registry = Registry(settings.registry)
    state = ServiceState(
        settings=settings,
        pool=pool if pool is not None else build_pool(settings, registry),
        registry=registry,
        credentials=make_credentials(settings.admin_token, settings.api_keys),
        resolver=RefResolver(registry),
        decode_slots=DecodeSlots(settings.max_concurrent_large_decodes),
        streams=StreamSessions(settings.stream_max_sessions, settings.stream_max_sessions_per_key),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        announce_generated_token(state.credentials)
        starting = asyncio.create_task(_start_pool(state), name="spikeserve-pool-start")
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await state.streams.shutdown()  # each live stream gets its final message first
            await state.pool.stop()

    app = FastAPI(
        title="spikeserve",
        version=SERVER_VERSION,
        summary="Serve spiking neural networks, with spike-rate telemetry on every answer.",
        lifespan=lifespan,
    )
    app.state.spikeserve = state
    set_queue_limit(settings)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_console(app)
    # outermost last: metrics see the final status, including a 413 from the body limit
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s
    )
    app.add_middleware(RequestMetricsMiddleware)
    return app


async def _start_pool(state: ServiceState) -> None:
    try:
        await state.pool.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.startup_error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        log.exception("the worker pool failed to start; /readyz answers 503")
    else:
        # Everything loaded so far (torch, the networks, numpy, pydantic: about a million objects)
        # lives as long as the process; frozen, the collector stops re-scanning it on every full
        # collection, which under load had cost the event loop about a fifth of its time.
        gc.freeze()
        log.info("ready")
