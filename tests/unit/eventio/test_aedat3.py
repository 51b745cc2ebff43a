"""eventio/aedat3.py: polarity packets decoded bit by bit, other packets skipped, bounds checked."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from eventio import CorruptFileError, LimitExceededError
from eventio.aedat3 import read_aedat3

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def _packet(kind: int, events: list[tuple[int, int]], overflow: int = 0, size: int = 8) -> bytes:
    """A packet of (data, ts) events; ``size`` > 8 pads each event."""
    head = struct.pack("<hhiiiiii", kind, 1, size, 4, overflow, len(events), len(events), len(events))
    return head + b"".join(struct.pack("<Ii", d, ts) + bytes(size - 8) for d, ts in events)


def _polarity(x: int, y: int, p: int, valid: int = 1) -> int:
    return (x << 17) | (y << 2) | (p << 1) | valid


def test_polarity_events_decode() -> None:
    data = HEADER + _packet(1, [(_polarity(5, 7, 1), 100), (_polarity(127, 0, 0), 200)])
    recording = read_aedat3(data)
    assert recording.events.tolist() == [(5, 7, 100, 1), (127, 0, 200, 0)]
    assert recording.sensor_size == (128, 128)
    assert recording.format == "aedat3"


def test_invalid_events_are_dropped_and_overflow_extends_time() -> None:
    events = [(_polarity(1, 1, 1, valid=0), 5), (_polarity(2, 3, 0), 6)]
    recording = read_aedat3(HEADER + _packet(1, events, overflow=2, size=12))
    assert recording.events.tolist() == [(2, 3, 6 | (2 << 31), 0)]


def test_other_packet_types_become_warnings() -> None:
    data = HEADER + _packet(3, [(0, 0)], size=40) + _packet(1, [(_polarity(1, 2, 1), 3)])
    recording = read_aedat3(data)
    assert len(recording.events) == 1
    assert recording.warnings == ("AEDAT 3.1 IMU6 packets ignored (1)",)


def test_unknown_chip_states_no_size() -> None:
    header = HEADER.replace(b"DVS128", b"Mystery")
    assert read_aedat3(header + _packet(1, [(_polarity(1, 1, 1), 1)])).sensor_size is None


def test_packet_running_past_the_end_is_corrupt() -> None:
    data = HEADER + _packet(1, [(_polarity(1, 1, 1), 1)] * 4)
    with pytest.raises(CorruptFileError, match="past the end"):
        read_aedat3(data[:-1])


def test_limit_is_checked_from_packet_headers() -> None:
    data = HEADER + _packet(1, [(_polarity(1, 1, 1), i) for i in range(10)])
    with pytest.raises(LimitExceededError):
        read_aedat3(data, max_events=9)
    assert np.array_equal(read_aedat3(data, max_events=10).events["t"], np.arange(10))


def test_header_without_end_is_corrupt() -> None:
    with pytest.raises(CorruptFileError, match="no end"):
        read_aedat3(b"#!AER-DAT3.1\r\n#Format: RAW\r\n" + bytes(28))


def test_a_body_without_the_magic_names_the_format_whole() -> None:
    with pytest.raises(CorruptFileError) as raised:
        read_aedat3(b"hello, not a recording")
    assert str(raised.value) == "not an AER-DAT3.1 file: it does not start with '#!AER-DAT3.1'"
