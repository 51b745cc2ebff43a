"""A worker pool: where the gateway sends requests. Embedded (in-process) or distributed (Redis).

The gateway talks only to this protocol, so the two modes share every route, every error and
every metric. Every method the routes call is declared here; a route never probes a pool for
what it might have.
"""

from __future__ import annotations

from typing import Any, Protocol

from workers.protocol import InferenceRequest, InferenceResult
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow


class WorkerPool(Protocol):
    """Runs ``InferenceRequest``s somewhere and answers ``InferenceResult``s."""

    async def start(self) -> None:
        """Load and warm up what is needed; return when ``is_ready()`` holds (or raise)."""
        ...

    async def stop(self) -> None:
        """Finish or fail in-flight requests and release resources."""
        ...

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        """Answer one request with a result that carries no ``error``; a failure is raised as its
        typed error, decoded by ``workers.error_codec`` the same way in every pool:
        ``QueueFullError`` (503), ``DeadlineExceededError`` (504), ``WorkerUnavailableError`` (503),
        the registry's ``ModelNotFoundError`` (404), ``InferenceFailedError`` (500), ..."""
        ...

    def is_ready(self) -> bool:
        """True once the default models are loaded and warmed up (``/readyz``)."""
        ...

    def queue_depth(self) -> int:
        """Requests waiting, for the ``spikeserve_queue_depth`` gauge."""
        ...

    def queue_depth_by_model(self) -> dict[str, int]:
        """``queue_depth`` per model name, for the ``spikeserve_queue_depth{model}`` gauge."""
        ...

    def loaded_models(self) -> list[tuple[str, int]]:
        """The (name, version) pairs loaded and ready to answer, wherever they run."""
        ...

    def failed_models(self) -> dict[str, str]:
        """``name:version`` -> why it cannot be loaded, for versions whose load failed (their
        requests are answered 503 ``load_failed``; every other model is served)."""
        ...

    def describe_workers(self) -> list[dict[str, Any]]:
        """What ``GET /v1/workers`` lists: id, models, device, batches, last heartbeat."""
        ...

    def unload_model(self, name: str, version: int) -> None:
        """Forget ``name:version`` after it was deleted from the registry."""
        ...

    # -- live streams: a session's windows go to the worker that holds its state ------------------

    async def open_stream(self, session_id: str, name: str, version: int) -> tuple[StreamMode, int]:
        """(mode, context_steps) for session ``session_id`` (minted by the gateway) on ``name:version``
        ("stateful" keeps membranes across windows; "sliding" reruns the last context_steps frames),
        loading its stream copy, and pinning the session to one worker where there are several;
        raises ``WorkerUnavailableError`` (503) where no worker can hold it."""
        ...

    async def run_stream_window(self, window: StreamWindow) -> StreamAnswer:
        """Answer one window of a session, once (``StreamAnswer.state_reset`` when its state was lost:
        its worker dropped it, or died and the session moved to another)."""
        ...

    async def close_stream(self, session_id: str) -> None:
        """Forget a session's state."""
        ...
