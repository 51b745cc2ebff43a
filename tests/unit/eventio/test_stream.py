"""Push decoders: any split of a stream gives exactly the events of one-shot decoding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from eventio import EVENT_DTYPE, CorruptFileError, LimitExceededError, read_events
from eventio.aedat4 import read_aedat4, write_aedat4
from eventio.nmnist import write_nmnist
from eventio.npy import write_npy
from eventio.stream import StreamDecoder, open_decoder, sniff_stream_format

# odd sizes from one byte to more than an AEDAT4 packet: every kind of cut, mid-header and mid-packet
ODD_CHUNK_SIZES = (1, 3, 5, 7, 11, 13, 17, 31, 127, 1021, 4093, 65537)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def feed_all(decoder: StreamDecoder, data: bytes, size: int) -> np.ndarray:
    # most 1-byte chunks complete nothing: keep only the non-empty parts (concatenate is slow on
    # a million empty arrays)
    parts = [events for chunk in chunks(data, size) if len(events := decoder.feed(chunk))]
    return np.concatenate(parts) if parts else np.empty(0, dtype=EVENT_DTYPE)


def decode_in_chunks(data: bytes, size: int, fmt: str | None = None) -> np.ndarray:
    decoder = StreamDecoder(fmt)
    events = feed_all(decoder, data, size)
    decoder.finish()
    assert decoder.buffered_bytes == 0
    return events


def assert_same_events(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == EVENT_DTYPE
    assert len(actual) == len(expected)
    assert np.array_equal(actual, expected)


@pytest.mark.parametrize("size", range(1, 100, 2))
def test_real_nmnist_recording_split_at_every_odd_size(shared_data: Path, size: int) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    assert_same_events(decode_in_chunks(data, size), read_events(data, fmt="nmnist").events)


@pytest.mark.parametrize("size", ODD_CHUNK_SIZES)
def test_real_aedat4_file_split_at_odd_sizes(shared_data: Path, size: int) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    expected = read_aedat4(data).events
    decoder = StreamDecoder()
    events = feed_all(decoder, data, size)
    decoder.finish()
    assert decoder.format == "aedat4" and decoder.sensor_size == (320, 240)
    assert_same_events(events, expected)
    assert any("ignored" in warning for warning in decoder.warnings)  # the IMU stream


def test_real_aedat4_file_split_at_every_offset_of_its_first_packets(shared_data: Path) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    head = data[:6000]  # the magic, the IOHeader and the first packets
    expected = np.concatenate([open_decoder("aedat4").feed(head)])
    for cut in range(1, len(head)):
        decoder = open_decoder("aedat4")
        assert_same_events(np.concatenate([decoder.feed(head[:cut]), decoder.feed(head[cut:])]), expected)


@pytest.fixture(scope="module")
def dv_network_bytes(shared_data: Path) -> bytes:
    """What a DV network client receives when dv-processing's NetworkWriter serves the real recording."""
    from dv_network import capture

    return capture(shared_data / "dvxplorer_320x240.aedat4")


@pytest.mark.parametrize("size", ODD_CHUNK_SIZES)
def test_dv_network_stream_split_at_odd_sizes(shared_data: Path, dv_network_bytes: bytes, size: int) -> None:
    assert not dv_network_bytes.startswith(b"#!AER")  # a network stream: the IOHeader comes first
    assert sniff_stream_format(dv_network_bytes[:16]) == "aedat4"
    expected = read_aedat4((shared_data / "dvxplorer_320x240.aedat4").read_bytes()).events
    assert_same_events(decode_in_chunks(dv_network_bytes, size), expected)


@pytest.mark.parametrize("size", ODD_CHUNK_SIZES[:9])
def test_npy_chunks_one_after_another_split_at_odd_sizes(shared_data: Path, size: int) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    parts = np.array_split(events, 7)
    data = b"".join(write_npy(part) for part in parts)
    assert_same_events(decode_in_chunks(data, size), events)


def test_nmnist_overflow_markers_shift_timestamps_across_chunks(random_events) -> None:
    events = random_events(3000, t_max=3 * 2**23)  # needs overflow records
    data = write_nmnist(events)
    assert_same_events(decode_in_chunks(data, 7, "nmnist"), events)


def test_written_aedat4_uncompressed_split_anywhere(random_events) -> None:
    events = random_events(2000, width=64, height=48)
    data = write_aedat4(events, (64, 48), compression="none", events_per_packet=300)
    assert_same_events(decode_in_chunks(data, 13), events)


def test_stream_ending_inside_a_record_is_corrupt(shared_data: Path) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    decoder = StreamDecoder("nmnist")
    decoder.feed(data[:-2])
    with pytest.raises(CorruptFileError, match="left over"):
        decoder.finish()


def test_packet_claiming_more_than_the_limit_is_refused_before_its_bytes_arrive(random_events) -> None:
    data = write_aedat4(random_events(500), (34, 34), events_per_packet=500)
    decoder = open_decoder("aedat4", max_packet_events=100)
    with pytest.raises(LimitExceededError):
        decoder.feed(data)  # the packet header states the size: refused without buffering it
    npy = open_decoder("npy", max_packet_events=100)
    with pytest.raises(LimitExceededError):
        npy.feed(write_npy(random_events(500))[:200])  # the header alone is enough


def test_buffer_holds_at_most_one_unfinished_packet(shared_data: Path) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    decoder = open_decoder("aedat4")
    largest = 0
    for chunk in chunks(data, 1021):
        decoder.feed(chunk)
        largest = max(largest, decoder.buffered_bytes)
    assert largest < 64 * 1024  # the recording's packets are about 20 kB each, never all of it


def test_npy_stream_refuses_bytes_that_are_not_npy() -> None:
    decoder = open_decoder("npy")
    with pytest.raises(CorruptFileError):
        decoder.feed(b"not an npy array at all")
