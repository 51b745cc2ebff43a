"""eventio/nmnist.py: the real N-MNIST sample, overflow records, and exact round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eventio import CorruptFileError, LimitExceededError, make_events
from eventio.nmnist import OVERFLOW_INCREMENT_US, read_nmnist, write_nmnist


def test_real_sample(shared_data: Path) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    recording = read_nmnist(data)
    events = recording.events
    assert len(events) == 4325
    assert recording.sensor_size == (34, 34)
    assert 300_000 < int(events["t"].max() - events["t"].min()) < 320_000  # about 311 ms
    assert events["x"].max() < 34 and events["y"].max() < 34
    assert set(np.unique(events["p"]).tolist()) == {0, 1}
    assert (np.diff(events["t"]) >= 0).all()
    # the first record decoded by hand from its five bytes
    first = data[:5]
    assert first.hex() == "070f80028e"
    assert events[0].tolist() == (7, 15, 0x28E, 1)
    assert (events["x"][0], events["y"][0]) == (first[0], first[1])
    assert events["p"][0] == first[2] >> 7
    assert events["t"][0] == ((first[2] & 0x7F) << 16) | (first[3] << 8) | first[4]


def test_writer_reproduces_the_real_file_byte_for_byte(shared_data: Path) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    assert write_nmnist(read_nmnist(data).events) == data


def test_overflow_record_shifts_later_timestamps() -> None:
    records = bytes([1, 2, 0x80, 0x00, 0x10]) + bytes([0, 240, 0, 0, 0]) + bytes([3, 4, 0x00, 0x00, 0x05])
    events = read_nmnist(records).events
    assert events["x"].tolist() == [1, 3]
    assert events["y"].tolist() == [2, 4]
    assert events["p"].tolist() == [1, 0]
    assert events["t"].tolist() == [0x10, 5 + OVERFLOW_INCREMENT_US]


def test_round_trip_past_the_23_bit_counter(random_events) -> None:
    events = random_events(2000, t_max=3 * 2**23)  # needs overflow records
    data = write_nmnist(events)
    assert len(data) > 5 * len(events)
    recording = read_nmnist(data)
    np.testing.assert_array_equal(recording.events, events)


def test_larger_sensor_states_no_size() -> None:
    events = make_events([200], [100], [0], [1])
    assert read_nmnist(write_nmnist(events)).sensor_size is None


def test_partial_record_is_corrupt() -> None:
    with pytest.raises(CorruptFileError, match="partial record"):
        read_nmnist(bytes(12))


def test_event_limit_is_checked_from_the_record_count(random_events) -> None:
    data = write_nmnist(random_events(100))
    assert len(read_nmnist(data, max_events=100).events) == 100
    with pytest.raises(LimitExceededError) as info:
        read_nmnist(data, max_events=99)
    assert (info.value.limit, info.value.claimed) == (99, 100)


@pytest.mark.parametrize(
    ("x", "y", "t", "match"),
    [([256], [0], [0], "one byte"), ([0], [240], [0], "y == 240"), ([0], [0], [-1], "non-negative")],
)
def test_writer_refuses_what_the_format_cannot_hold(x, y, t, match) -> None:
    events = np.zeros(1, dtype=[("x", "i8"), ("y", "i8"), ("t", "i8"), ("p", "u1")])
    events["x"], events["y"], events["t"] = x, y, t
    with pytest.raises(ValueError, match=match):
        write_nmnist(events)
