"""Event-camera files: N-MNIST ``.bin``, AEDAT 4.0 / 3.1 / 2.0 and structured ``.npy``.

numpy only, never torch: the gateway decodes uploads with it and training writes emulated
recordings with it. Every reader takes the file's bytes and an optional ``max_events`` limit,
checks what the file claims before doing the work, and returns an ``EventRecording`` whose
``events`` use the one event layout of the project:

    EVENT_DTYPE = [("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")]

``t`` is in microseconds, ``p`` is 1 for ON (brighter) and 0 for OFF events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

_COORD_MAX = int(np.iinfo(np.uint16).max)


@dataclass(frozen=True)
class EventRecording:
    """What a reader returns.

    events: [N] EVENT_DTYPE, in file order.
    sensor_size: (width, height) when the file states it (or its format fixes it), else None.
    format: the reader's name ("nmnist", "aedat4", "aedat3", "aedat2", "npy").
    warnings: things a user should know (ignored streams, dropped records), one sentence each.
    """

    events: np.ndarray
    sensor_size: tuple[int, int] | None
    format: str
    warnings: tuple[str, ...] = field(default=())


def make_events(
    x: Sequence[int] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    t: Sequence[int] | np.ndarray,
    p: Sequence[int] | Sequence[bool] | np.ndarray,
) -> np.ndarray:
    """Build an [N] EVENT_DTYPE array from four equally long columns.

    Raises ValueError when the columns differ in length, a coordinate is outside [0, 65535]
    or a polarity is not 0/1 (False/True): silent wrap-around would move events on the sensor.
    """
    columns = {name: np.asarray(values) for name, values in (("x", x), ("y", y), ("t", t), ("p", p))}
    lengths = {name: column.shape for name, column in columns.items()}
    if any(column.ndim != 1 for column in columns.values()) or len({s[0] for s in lengths.values()}) != 1:
        raise ValueError(f"x, y, t and p must be 1-D and equally long, got shapes {lengths}")
    for name in ("x", "y"):
        column = columns[name]
        if column.size and (column.min() < 0 or column.max() > _COORD_MAX):
            raise ValueError(f"{name} must lie in [0, {_COORD_MAX}], got [{column.min()}, {column.max()}]")
    polarity = columns["p"]
    if polarity.size and not np.isin(polarity, (0, 1)).all():
        raise ValueError("p must hold only 0 (OFF) and 1 (ON)")
    events = np.empty(len(columns["x"]), dtype=EVENT_DTYPE)
    for name, column in columns.items():
        events[name] = column
    return events


# Imported last: the readers import EVENT_DTYPE and EventRecording from this module.
from eventio.detect import FORMATS, detect_format, read_events  # noqa: E402
from eventio.errors import (  # noqa: E402
    CorruptFileError,
    EventIOError,
    InvalidEventsError,
    LimitExceededError,
    UnknownFormatError,
)

__all__ = [
    "EVENT_DTYPE",
    "FORMATS",
    "CorruptFileError",
    "EventIOError",
    "EventRecording",
    "InvalidEventsError",
    "LimitExceededError",
    "UnknownFormatError",
    "detect_format",
    "make_events",
    "read_events",
]
