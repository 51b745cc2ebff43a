"""Typed errors raised below the HTTP edge. ``service`` maps each to one status in one table.

Each carries a stable machine ``code`` and a message a user can act on.
"""

from __future__ import annotations


class SpikeserveError(Exception):
    """Base of every error that reaches a client. ``code`` is stable; the message is for people."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(SpikeserveError):
    """The input decodes but cannot be used (sizes, ranges, values): HTTP 422."""

    code = "invalid_input"


class UndecodableInputError(SpikeserveError):
    """The bytes are not a valid image or recording of the stated format: HTTP 400."""

    code = "undecodable_input"


class UnsupportedMediaTypeError(SpikeserveError):
    """Content type or file format not accepted by this route: HTTP 415."""

    code = "unsupported_media_type"


class PayloadTooLargeError(SpikeserveError):
    """Body, pixel count, event count or expanded size over its limit: HTTP 413."""

    code = "payload_too_large"


class ModelNotFoundError(SpikeserveError):
    """Unknown model, version or alias: HTTP 404."""

    code = "model_not_found"


class QueueFullError(SpikeserveError):
    """The model's queue is full; retry after ``retry_after_s``: HTTP 503 with Retry-After."""

    code = "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(SpikeserveError):
    """The request was not answered before its deadline: HTTP 504."""

    code = "deadline_exceeded"


class BackendUnavailableError(SpikeserveError):
    """The worker side is down or not ready (no worker, Redis unreachable): HTTP 503."""

    code = "unavailable"


class InferenceFailedError(SpikeserveError):
    """The model raised while running a batch: HTTP 500, with the cause in the message."""

    code = "inference_failed"
