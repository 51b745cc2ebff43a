"""Typed errors raised on the worker side (batcher, engine, pools) and by the gateway's checks.

Each carries a stable machine ``code`` and a message a user can act on. ``workers.error_codec`` turns
them into ``(code, message)`` for the wire and back; the service maps each code to one HTTP status
in its handler table. Errors of decoding a request body live with the decoders (service/decoding),
the registry's own in registry/errors.py.
"""

from __future__ import annotations


class SpikeserveError(Exception):
    """Base of every error that reaches a client. ``code`` is stable; the message is for people."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(SpikeserveError):
    """The input decodes but cannot be used (sizes, ranges, values, options): HTTP 422."""

    code = "invalid_input"


class EarlyExitUnsupportedError(SpikeserveError):
    """Early exit asked of a network that attends across time (its output needs every step): 422."""

    code = "early_exit_unsupported"


class QueueFullError(SpikeserveError):
    """The model's queue is full; retry after ``retry_after_s``: HTTP 503 with Retry-After."""

    code = "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(SpikeserveError):
    """The request was not answered before its deadline: HTTP 504."""

    code = "deadline_exceeded"


class WorkerUnavailableError(SpikeserveError):
    """The worker side is down or not ready (no worker, Redis unreachable, shutting down): HTTP 503."""

    code = "unavailable"


class InferenceFailedError(SpikeserveError):
    """The model raised while running a batch: HTTP 500, with the cause in the message."""

    code = "inference_failed"
