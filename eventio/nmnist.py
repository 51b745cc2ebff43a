"""N-MNIST / N-Caltech101 ``.bin`` files: 5-byte records, no header.

Record layout: byte 0 = x, byte 1 = y, bit 7 of byte 2 = polarity, then a 23-bit big-endian
timestamp in microseconds (bits 6..0 of byte 2, bytes 3 and 4). A record with y == 240 is a
timestamp-overflow marker: like the dataset authors' reader (Read_Ndataset.m, and tonic after
it), every such record adds 2**13 us to the timestamps of the records from there on.
"""

from __future__ import annotations

import numpy as np

from eventio import EVENT_DTYPE, EventRecording
from eventio.errors import CorruptFileError, check_event_limit

RECORD_BYTES = 5
OVERFLOW_Y = 240
OVERFLOW_INCREMENT_US = 1 << 13
MAX_STORED_TS = (1 << 23) - 1
SENSOR_SIZE = (34, 34)  # N-MNIST; N-Caltech101 uses the same records on a larger sensor


def read_nmnist(data: bytes | bytearray | memoryview, *, max_events: int | None = None) -> EventRecording:
    """Decode an N-MNIST ``.bin`` file.

    Returns events [N] EVENT_DTYPE; ``sensor_size`` is (34, 34) when every event fits N-MNIST's
    sensor, else None (an N-Caltech101-style file states no size).
    Raises CorruptFileError when the length is not a whole number of records and
    LimitExceededError when it holds more than ``max_events`` events.
    """
    view = memoryview(data).cast("B")
    if len(view) % RECORD_BYTES:
        raise CorruptFileError(
            f"an N-MNIST file is a sequence of 5-byte records, but {len(view):,} bytes "
            f"leave a partial record of {len(view) % RECORD_BYTES} bytes"
        )
    raw = np.frombuffer(view, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    overflow = raw[:, 1] == OVERFLOW_Y
    n_events = len(raw) - int(overflow.sum())
    check_event_limit(n_events, max_events, "the N-MNIST file")

    b2 = raw[:, 2].astype(np.int64)
    stored = ((b2 & 0x7F) << 16) | (raw[:, 3].astype(np.int64) << 8) | raw[:, 4]
    # an overflow marker shifts itself and every later record; the markers are dropped below
    shifted = stored + np.cumsum(overflow, dtype=np.int64) * OVERFLOW_INCREMENT_US
    keep = ~overflow
    events = np.empty(n_events, dtype=EVENT_DTYPE)
    events["x"] = raw[keep, 0]
    events["y"] = raw[keep, 1]
    events["t"] = shifted[keep]
    events["p"] = b2[keep] >> 7
    fits = n_events == 0 or (
        int(events["x"].max()) < SENSOR_SIZE[0] and int(events["y"].max()) < SENSOR_SIZE[1]
    )
    return EventRecording(events, SENSOR_SIZE if fits else None, "nmnist")


def write_nmnist(events: np.ndarray) -> bytes:
    """Encode events [N] (fields x, y, t, p) as an N-MNIST ``.bin`` file.

    Timestamps past 2**23 - 1 us are written with overflow records, so ``read_nmnist`` gives
    back exactly these events. Raises ValueError for what the format cannot hold: x or y over
    255, y == 240 (the overflow marker), negative t, p other than 0/1, or t decreasing across
    an overflow record.
    """
    x = np.asarray(events["x"], dtype=np.int64)
    y = np.asarray(events["y"], dtype=np.int64)
    t = np.asarray(events["t"], dtype=np.int64)
    p = np.asarray(events["p"], dtype=np.int64)
    if x.size:
        if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255:
            raise ValueError("N-MNIST records hold x and y in one byte each (0..255)")
        if (y == OVERFLOW_Y).any():
            raise ValueError("N-MNIST cannot store an event at y == 240: that value marks an overflow record")
        if t.min() < 0:
            raise ValueError("N-MNIST timestamps must be non-negative")
        if not np.isin(p, (0, 1)).all():
            raise ValueError("polarity must be 0 or 1")

    # overflow records needed before each event so that its stored 23-bit value fits
    needed = np.maximum(0, -(-(t - MAX_STORED_TS) // OVERFLOW_INCREMENT_US))
    needed = np.maximum.accumulate(needed) if needed.size else needed
    stored = t - needed * OVERFLOW_INCREMENT_US
    if stored.size and stored.min() < 0:
        raise ValueError("timestamps must not go backwards across an overflow record (t past 2**23 us)")

    n_overflow = int(needed[-1]) if needed.size else 0
    out = np.zeros((len(t) + n_overflow, RECORD_BYTES), dtype=np.uint8)
    out[:, 1] = OVERFLOW_Y  # every row that no event fills below is an overflow record
    rows = np.arange(len(t)) + needed
    out[rows, 0] = x
    out[rows, 1] = y
    out[rows, 2] = (p << 7) | ((stored >> 16) & 0x7F)
    out[rows, 3] = (stored >> 8) & 0xFF
    out[rows, 4] = stored & 0xFF
    return out.tobytes()
