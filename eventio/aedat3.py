"""AEDAT 3.1 (cAER / DVS128 Gesture): polarity events out of a sequence of typed packets.

After the ``#`` header (ended by ``#!END-HEADER``), each packet has a 28-byte header: int16
eventType (1 = polarity), int16 source, int32 eventSize, int32 eventTSOffset, int32
eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid, then eventCapacity
events of eventSize bytes. A polarity event is ``u32 data`` (bit 0 valid, bit 1 polarity,
y = bits 2-16, x = bits 17-31) with an int32 timestamp at eventTSOffset; the full timestamp is
``ts | eventTSOverflow << 31`` microseconds. Invalid events are dropped; other packet types are
skipped with a warning.
"""

from __future__ import annotations

import re
import struct

import numpy as np

from eventio import EVENT_DTYPE, EventRecording
from eventio._header import split_header
from eventio.errors import CorruptFileError, LimitExceededError, check_event_limit

MAGIC = b"#!AER-DAT3.1\r\n"
END_HEADER = b"#!END-HEADER\r\n"
PACKET_HEADER = struct.Struct("<hhiiiiii")
POLARITY = 1
EVENT_TYPES = {0: "special", 2: "frame", 3: "IMU6", 4: "IMU9", 5: "sample", 6: "ear", 7: "config"}
# sensor sizes of the chips cAER names in its header ("#Source 1: DVS128")
CHIP_SIZES = {"DVS128": (128, 128), "DAVIS240": (240, 180), "DAVIS346": (346, 260)}
DEFAULT_MAX_PACKETS = 1_000_000


def read_aedat3(
    data: bytes | memoryview, *, max_events: int | None = None, max_packets: int = DEFAULT_MAX_PACKETS
) -> EventRecording:
    """Decode the polarity events of an AEDAT 3.1 file: events [N] EVENT_DTYPE.

    ``sensor_size`` comes from the chip the header names (DVS128, DAVIS240, DAVIS346), else None.
    Every packet header is checked against the file's length, and the polarity events it claims
    against ``max_events``, before any event is decoded.
    """
    view = memoryview(data).cast("B")
    lines, pos = split_header(view, MAGIC, end_line=END_HEADER)
    polarity_packets: list[tuple[int, int, int, int, int]] = []  # offset, capacity, size, ts offset, overflow
    skipped: dict[str, int] = {}
    claimed = 0
    while pos < len(view):
        if len(polarity_packets) + sum(skipped.values()) >= max_packets:
            raise LimitExceededError(
                f"the AEDAT 3.1 file holds more than {max_packets:,} packets",
                limit=max_packets,
                claimed=max_packets + 1,
            )
        if pos + PACKET_HEADER.size > len(view):
            raise CorruptFileError(f"AEDAT 3.1 file ends inside the packet header at byte {pos:,}")
        kind, _, size, ts_offset, overflow, capacity, _, _ = PACKET_HEADER.unpack_from(view, pos)
        body = pos + PACKET_HEADER.size
        if size < 1 or capacity < 0 or body + size * capacity > len(view):
            raise CorruptFileError(
                f"AEDAT 3.1 packet at byte {pos:,} claims {capacity:,} events of {size} bytes, "
                f"past the end of the file"
            )
        if kind == POLARITY:
            if size < 8 or not 4 <= ts_offset <= size - 4:
                raise CorruptFileError(f"AEDAT 3.1 polarity packet at byte {pos:,} has a bad event layout")
            polarity_packets.append((body, capacity, size, ts_offset, overflow))
            claimed += capacity
        else:
            name = EVENT_TYPES.get(kind, f"type {kind}")
            skipped[name] = skipped.get(name, 0) + 1
        pos = body + size * capacity
    check_event_limit(claimed, max_events, "the AEDAT 3.1 file")

    chunks = []
    for offset, capacity, size, ts_offset, overflow in polarity_packets:
        layout = np.dtype({"names": ["data", "ts"], "formats": ["<u4", "<i4"], "offsets": [0, ts_offset],
                           "itemsize": size})  # fmt: skip
        raw = np.frombuffer(view, dtype=layout, count=capacity, offset=offset)
        raw = raw[(raw["data"] & 1) == 1]
        events = np.empty(len(raw), dtype=EVENT_DTYPE)
        events["x"] = (raw["data"] >> 17) & 0x7FFF
        events["y"] = (raw["data"] >> 2) & 0x7FFF
        events["p"] = (raw["data"] >> 1) & 1
        events["t"] = raw["ts"].astype(np.int64) | (np.int64(overflow) << 31)
        chunks.append(events)

    warnings = tuple(f"AEDAT 3.1 {name} packets ignored ({n})" for name, n in sorted(skipped.items()))
    events = np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENT_DTYPE)
    return EventRecording(events, _sensor_size(lines), "aedat3", warnings)


def _sensor_size(lines: list[str]) -> tuple[int, int] | None:
    for line in lines:
        match = re.match(r"-?Source \d+:\s*(\S+)", line)
        if match:
            chip = match.group(1).upper()
            return next((size for name, size in CHIP_SIZES.items() if chip.startswith(name)), None)
    return None
