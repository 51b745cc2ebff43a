"""eventio/aedat2.py: jAER DVS128 addresses, special events, partial records."""

from __future__ import annotations

import numpy as np
import pytest

from eventio import CorruptFileError, LimitExceededError, UnknownFormatError
from eventio.aedat2 import read_aedat2

HEADER = b"#!AER-DAT2.0\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n"


def _address(x: int, y: int, p: int) -> int:
    """jAER's DVS128 raw address: columns mirrored, polarity ON stored as bit 0 == 0."""
    return (y << 8) | ((127 - x) << 1) | (1 - p)


def _records(pairs: list[tuple[int, int]]) -> bytes:
    return np.array(pairs, dtype=">i4").tobytes()


def test_addresses_decode_like_jaer() -> None:
    data = HEADER + _records([(_address(0, 0, 1), 10), (_address(127, 5, 0), 20), (_address(64, 127, 1), 30)])
    recording = read_aedat2(data)
    assert recording.events.tolist() == [(0, 0, 10, 1), (127, 5, 20, 0), (64, 127, 30, 1)]
    assert recording.sensor_size == (128, 128)


def test_special_events_are_dropped_with_a_warning() -> None:
    data = HEADER + _records([(1 << 15, 5), (_address(3, 4, 1), 6)])
    recording = read_aedat2(data)
    assert recording.events.tolist() == [(3, 4, 6, 1)]
    assert "special" in recording.warnings[0]


def test_other_chips_are_refused() -> None:
    header = HEADER.replace(b"DVS128", b"DAVIS240C")
    with pytest.raises(UnknownFormatError, match="DAVIS240C"):
        read_aedat2(header + _records([(0, 0)]))


def test_partial_record_and_limit() -> None:
    data = HEADER + _records([(_address(1, 1, 1), i) for i in range(5)])
    with pytest.raises(CorruptFileError, match="partial"):
        read_aedat2(data[:-3])
    with pytest.raises(LimitExceededError):
        read_aedat2(data, max_events=4)


def test_a_body_without_the_magic_names_the_format_whole() -> None:
    with pytest.raises(CorruptFileError) as raised:
        read_aedat2(b"hello, not a recording")
    assert str(raised.value) == "not an AER-DAT2.0 file: it does not start with '#!AER-DAT2.0'"
