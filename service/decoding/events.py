"""Event recordings at the gateway: bytes -> validated events, then fitted to the model's sensor.

torch-free. Every failure is a typed error (service/decoding/errors.py, workers.errors):
400 corrupt bytes, 413 too many events (told by the file's headers, before decoding them),
415 unknown format, 422 empty recording, coordinates outside the stated sensor, timestamps
going backwards, or a sensor size that differs from the model's without ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from eventio import (
    CorruptFileError,
    EventIOError,
    InvalidEventsError,
    LimitExceededError,
    UnknownFormatError,
    read_events,
)
from eventio.transforms import crop_events, scale_events
from registry.manifest import EventInput
from service.decoding.errors import (
    PayloadTooLargeError,
    UndecodableInputError,
    UnsupportedMediaTypeError,
)
from workers.errors import InvalidInputError

FITS = ("crop", "scale")


@dataclass(frozen=True)
class DecodedEvents:
    """events: [N] EVENT_DTYPE in time order, N >= 1; sensor_size: (width, height) if the file states it."""

    events: np.ndarray
    sensor_size: tuple[int, int] | None
    format: str
    warnings: list[str] = field(default_factory=list)


def decode_events(data: bytes, content_type: str | None, fmt: str | None, max_events: int) -> DecodedEvents:
    """Decode one uploaded recording and check that a network can use it.

    The format comes from ``fmt``, else ``content_type``, else the magic bytes. The reader
    refuses more than ``max_events`` from the file's own counts and headers, before decoding.
    """
    if not data:
        raise InvalidInputError("the recording is empty: the body holds no bytes")
    try:
        recording = read_events(data, fmt=fmt, content_type=content_type, max_events=max_events)
    except EventIOError as exc:
        _raise_typed(exc)
    events = recording.events
    if len(events) == 0:
        raise InvalidInputError(f"the {recording.format} recording holds no events")
    if len(events) > max_events:  # every reader checks this; kept so no path can skip it
        raise PayloadTooLargeError(
            f"the recording holds {len(events):,} events, over the limit of {max_events:,}"
        )
    if recording.sensor_size is not None:
        _check_inside(events, recording.sensor_size)
    _check_time_order(events)
    return DecodedEvents(events, recording.sensor_size, recording.format, list(recording.warnings))


def fit_to_sensor(decoded: DecodedEvents, spec: EventInput, fit: str | None) -> tuple[np.ndarray, list[str]]:
    """Events on the model's sensor: [M] EVENT_DTYPE and the warnings that say what was done.

    A recording whose sensor differs from ``spec``'s is cropped (centre) or scaled only when
    ``fit`` asks; otherwise InvalidInputError names both sizes. A file that states no size is
    taken as it is when every event lies on the model's sensor, else its size is the events'
    bounding box.
    """
    if fit is not None and fit not in FITS:
        raise InvalidInputError(f"fit must be 'crop' or 'scale', got {fit!r}")
    target = (spec.sensor_width, spec.sensor_height)
    events = decoded.events
    source = decoded.sensor_size
    warnings: list[str] = []
    if source is None:
        extent = (int(events["x"].max()) + 1, int(events["y"].max()) + 1)
        if extent[0] <= target[0] and extent[1] <= target[1]:
            return events, warnings
        source = extent
        what = f"events reach {_size(extent)} (the {decoded.format} file states no sensor size)"
    else:
        what = f"the recording's sensor is {_size(source)}"
    if source == target:
        return events, warnings
    if fit is None:
        raise InvalidInputError(
            f"{what} but the model takes {_size(target)}; pass fit=crop (keep the centre) or fit=scale"
        )
    if fit == "crop":
        fitted = crop_events(events, source, target)
        warnings.append(
            f"cropped the {_size(source)} recording to its central {_size(target)}: "
            f"{len(fitted):,} of {len(events):,} events kept"
        )
    else:
        fitted = scale_events(events, source, target)
        warnings.append(f"scaled the {_size(source)} recording to {_size(target)}")
    if len(fitted) == 0:
        raise InvalidInputError(f"no events left after cropping {_size(source)} to {_size(target)}")
    return fitted, warnings


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _check_inside(events: np.ndarray, sensor_size: tuple[int, int]) -> None:
    width, height = sensor_size
    outside = np.flatnonzero((events["x"] >= width) | (events["y"] >= height))
    if outside.size:
        i = int(outside[0])
        raise InvalidInputError(
            f"{outside.size:,} events lie outside the {width}x{height} sensor the file states; "
            f"the first is event {i} at x={events['x'][i]}, y={events['y'][i]}"
        )


def _check_time_order(events: np.ndarray) -> None:
    t = events["t"]
    backwards = np.flatnonzero(t[1:] < t[:-1])
    if backwards.size:
        i = int(backwards[0]) + 1
        raise InvalidInputError(
            f"timestamps go backwards at event {i}: t={t[i]} us after t={t[i - 1]} us "
            f"({backwards.size:,} such steps); events must be in time order"
        )


_STATUS: dict[type[EventIOError], Callable[[str], Exception]] = {
    CorruptFileError: UndecodableInputError,
    LimitExceededError: PayloadTooLargeError,
    UnknownFormatError: UnsupportedMediaTypeError,
    InvalidEventsError: InvalidInputError,
}


def _raise_typed(exc: EventIOError) -> NoReturn:
    for kind, typed in _STATUS.items():
        if isinstance(exc, kind):
            raise typed(str(exc)) from exc
    raise UndecodableInputError(str(exc)) from exc
