"""A worker pool: where the gateway sends requests. Embedded (in-process) or distributed (Redis).

The gateway talks only to this interface, so the two modes share every route, every error and
every metric.
"""

from __future__ import annotations

import abc
from typing import Any

from workers.protocol import InferenceRequest, InferenceResult


class WorkerPool(abc.ABC):
    """Runs ``InferenceRequest``s somewhere and answers ``InferenceResult``s."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load and warm up what is needed; return when ``is_ready()`` holds (or raise)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Finish or fail in-flight requests and release resources."""

    @abc.abstractmethod
    async def submit(self, request: InferenceRequest) -> InferenceResult:
        """Answer one request. Raises ``QueueFullError`` (503), ``DeadlineExceededError`` (504),
        ``ModelNotFoundError`` (404), ``BackendUnavailableError`` (503)."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True once the default models are loaded and warmed up (``/readyz``)."""

    def queue_depth(self) -> int:
        """Requests waiting, for the ``spikeserve_queue_depth`` gauge."""
        return 0

    def describe_workers(self) -> list[dict[str, Any]]:
        """What ``GET /v1/workers`` lists: id, models, device, batches, last heartbeat."""
        return []
