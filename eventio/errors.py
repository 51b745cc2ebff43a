"""Errors of the event-file readers. numpy-only callers (training, the gateway) map them as they need.

eventio sits below every other package, so it defines its own errors instead of importing
``workers.errors``; ``service.decoding`` maps each to one HTTP status.
"""

from __future__ import annotations


class EventIOError(Exception):
    """Base of every error raised while reading or writing an event file."""


class CorruptFileError(EventIOError, ValueError):
    """The bytes are not a valid file of the format (truncated, bad magic, bad offsets)."""


class LimitExceededError(EventIOError):
    """The file holds, or claims to hold, more than a caller's limit (events, packets, bytes).

    Raised before the work is done: from headers, frame sizes or record counts.
    """

    def __init__(self, message: str, *, limit: int, claimed: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.claimed = claimed


class InvalidEventsError(EventIOError, ValueError):
    """The file decodes but its events cannot be used (no event stream, bad coordinates or polarity)."""


class UnknownFormatError(EventIOError, ValueError):
    """No reader for this content type, format name or magic bytes."""


def check_event_limit(count: int, max_events: int | None, what: str) -> None:
    """Raise LimitExceededError when ``count`` events (as ``what`` states them) exceed ``max_events``."""
    if max_events is not None and count > max_events:
        raise LimitExceededError(
            f"{what} holds {count:,} events, over the limit of {max_events:,}",
            limit=max_events,
            claimed=count,
        )
