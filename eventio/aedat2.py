"""AEDAT 2.0 (jAER) files from a DVS128, as in the original CIFAR10-DVS recordings.

After the ``#`` header lines, the file is big-endian ``int32 address, int32 timestamp`` pairs.
Addresses decode the way jAER's DVS128 extractor does: polarity ON when bit 0 is 0, x = 127 minus
bits 1-7 (jAER mirrors the chip's columns), y = bits 8-14 with the origin at the bottom left.
Addresses with bit 15 set are external/special events and are dropped with a warning.
"""

from __future__ import annotations

import numpy as np

from eventio import EVENT_DTYPE, EventRecording
from eventio._header import split_header
from eventio.errors import CorruptFileError, UnknownFormatError, check_event_limit

MAGIC = b"#!AER-DAT2.0"
RECORD = np.dtype([("address", ">i4"), ("t", ">i4")])
SENSOR_SIZE = (128, 128)
SPECIAL_BIT = 1 << 15


def read_aedat2(data: bytes | memoryview, *, max_events: int | None = None) -> EventRecording:
    """Decode a jAER AEDAT 2.0 DVS128 recording: events [N] EVENT_DTYPE, sensor 128x128.

    Raises UnknownFormatError when the header names a chip other than the DVS128 (their address
    layouts differ), CorruptFileError for a partial record, LimitExceededError over ``max_events``.
    """
    view = memoryview(data).cast("B")
    lines, start = split_header(view, MAGIC, end_line=None)
    chips = [line.split(":", 1)[1].strip() for line in lines if line.startswith("AEChip:")]
    if chips and not chips[0].endswith("DVS128"):
        raise UnknownFormatError(
            f"AEDAT 2.0 files from {chips[0]} are not supported; only DVS128 recordings are"
        )
    body = len(view) - start
    if body % RECORD.itemsize:
        raise CorruptFileError(
            f"AEDAT 2.0 events are 8-byte records, but {body:,} bytes after the header leave a partial one"
        )
    count = body // RECORD.itemsize
    check_event_limit(count, max_events, "the AEDAT 2.0 file")
    raw = np.frombuffer(view, dtype=RECORD, count=count, offset=start)
    address = raw["address"].astype(np.int64)
    special = (address & SPECIAL_BIT) != 0
    warnings = (
        (f"{int(special.sum()):,} special (non-DVS) AEDAT 2.0 events dropped",) if special.any() else ()
    )
    address = address[~special]
    events = np.empty(len(address), dtype=EVENT_DTYPE)
    events["x"] = SENSOR_SIZE[0] - 1 - ((address >> 1) & 0x7F)
    events["y"] = (address >> 8) & 0x7F
    events["p"] = 1 - (address & 1)
    events["t"] = raw["t"][~special]
    return EventRecording(events, SENSOR_SIZE, "aedat2", warnings)
