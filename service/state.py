"""What the routes share: settings, the worker pool, the registry, credentials, the ref resolver.

One ``ServiceState`` per app, on ``app.state.spikeserve``; routes reach it through ``get_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from registry import Registry
from service.auth import Credentials
from service.decoding.slots import DecodeSlots
from service.resolve import RefResolver
from service.settings import Settings
from service.streams.admission import StreamSessions
from workers.pool import WorkerPool


@dataclass
class ServiceState:
    settings: Settings
    pool: WorkerPool
    registry: Registry
    credentials: Credentials
    resolver: RefResolver
    decode_slots: DecodeSlots
    startup_error: str | None = None  # why the pool failed to start, for /readyz
    streams: StreamSessions = field(default_factory=lambda: StreamSessions(64, 16))

    def is_ready(self) -> bool:
        return self.startup_error is None and self.pool.is_ready()


def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.spikeserve)
