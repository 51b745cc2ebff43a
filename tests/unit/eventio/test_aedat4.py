"""eventio/aedat4.py: the real DVXplorer file, exact round trips through ``aedat``, hostile files."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import aedat
import lz4.frame
import numpy as np
import pytest
import zstandard

from eventio import CorruptFileError, InvalidEventsError, LimitExceededError
from eventio._flatbuffers import event_packet, io_header
from eventio.aedat4 import MAGIC, read_aedat4, read_layout, write_aedat4

MB = 1 << 20


def _aedat_decode(data: bytes, tmp_path: Path) -> tuple[np.ndarray, dict]:
    """Events and streams as the reference decoder (``aedat``, path only) sees them."""
    path = tmp_path / "file.aedat4"
    path.write_bytes(data)
    decoder = aedat.Decoder(path)
    streams = decoder.id_to_stream()
    packets = [packet["events"] for packet in decoder if "events" in packet]
    return np.concatenate(packets), streams


def _same(events: np.ndarray, reference: np.ndarray) -> bool:
    pairs = (("x", "x"), ("y", "y"), ("t", "t"), ("p", "on"))
    return all(np.array_equal(events[a].astype(np.int64), reference[b].astype(np.int64)) for a, b in pairs)


def _file(packets: list[bytes], compression: int = 0, xml: str | None = None, stream_id: int = 0) -> bytes:
    """An AEDAT4 file around ready-made packet bodies (for files the writer would never make)."""
    xml = xml or (
        '<dv version="2.0"><node name="outInfo" path="/"><node name="0" path="/0/">'
        '<attr key="typeIdentifier" type="string">EVTS</attr><node name="info" path="/0/info/">'
        '<attr key="sizeX" type="int">34</attr><attr key="sizeY" type="int">34</attr>'
        "</node></node></node></dv>"
    )
    header = io_header(compression, -1, xml)
    body = b"".join(struct.pack("<ii", stream_id, len(p)) + p for p in packets)
    return MAGIC + struct.pack("<I", len(header)) + header + body


def _bounded(call: Callable[[], object], error: type[Exception]) -> tuple[float, int]:
    """Run ``call`` expecting ``error``; return (seconds, peak bytes allocated meanwhile)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error):
            call()
        return time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_real_dvxplorer_file(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    recording = read_aedat4(data, max_events=5_000_000)
    assert len(recording.events) == 111_954
    assert recording.sensor_size == (320, 240)
    assert recording.format == "aedat4"
    warnings = " ".join(recording.warnings)
    assert "IMUS" in warnings and "TRIG" in warnings
    reference, _ = _aedat_decode(data, tmp_path)
    assert _same(recording.events, reference)


def test_real_file_layout(shared_data: Path) -> None:
    layout = read_layout((shared_data / "dvxplorer_320x240.aedat4").read_bytes())
    assert layout.compression == 1  # LZ4
    assert {i: s.type_identifier for i, s in layout.streams.items()} == {0: "EVTS", 2: "IMUS", 3: "TRIG"}
    assert layout.streams[0].size == (320, 240)
    assert {p.stream_id for p in layout.packets} == {0, 2}


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_writer_output_decodes_back_exactly(compression: str, random_events, tmp_path: Path) -> None:
    events = random_events(5001)
    data = write_aedat4(events, (34, 34), compression=compression, events_per_packet=1000)
    reference, streams = _aedat_decode(data, tmp_path)
    assert streams == {0: {"type": "events", "width": 34, "height": 34}}
    assert _same(events, reference)
    recording = read_aedat4(data, max_events=5001)
    np.testing.assert_array_equal(recording.events, events)
    assert recording.sensor_size == (34, 34)
    assert recording.warnings == ()


def test_zstd_packets(random_events) -> None:
    events = random_events(300)
    wire = np.zeros(300, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
    wire["t"], wire["x"], wire["y"], wire["on"] = events["t"], events["x"], events["y"], events["p"]
    packet = zstandard.ZstdCompressor().compress(event_packet(wire.tobytes(), 300))
    recording = read_aedat4(_file([packet], compression=3), max_events=300)
    np.testing.assert_array_equal(recording.events, events)
    with pytest.raises(LimitExceededError):  # the ZSTD frame header states the size
        read_aedat4(_file([packet], compression=3), max_events=299)


def test_event_limit_refused_from_the_headers(random_events) -> None:
    data = write_aedat4(random_events(1000), (34, 34), compression="lz4")
    with pytest.raises(LimitExceededError, match="1,000 events"):
        read_aedat4(data, max_events=999)


def test_packet_claiming_2_gb_is_refused_without_allocating(random_events) -> None:
    data = bytearray(write_aedat4(random_events(1000), (34, 34)))
    first_packet = len(MAGIC) + 4 + struct.unpack_from("<I", data, len(MAGIC))[0]
    struct.pack_into("<i", data, first_packet + 4, 2**31 - 1)
    seconds, peak = _bounded(lambda: read_aedat4(bytes(data), max_events=10**6), CorruptFileError)
    assert seconds < 2 and peak < MB


def test_truncated_file_is_refused(random_events) -> None:
    data = write_aedat4(random_events(1000), (34, 34), events_per_packet=500)
    with pytest.raises(CorruptFileError, match="truncated"):
        read_aedat4(data[:-100])
    first = read_layout(data).packets[0]
    with pytest.raises(CorruptFileError, match="inside the packet header"):
        read_aedat4(data[: first.offset + first.size + 3])


def test_lz4_frame_claiming_a_huge_content_size_is_refused_before_decompressing(random_events) -> None:
    data = write_aedat4(random_events(100), (34, 34))
    layout = read_layout(data)
    frame_start = layout.packets[0].offset
    patched = bytearray(data)
    struct.pack_into("<Q", patched, frame_start + 6, 1 << 40)  # the frame's content-size field
    seconds, peak = _bounded(lambda: read_aedat4(bytes(patched), max_events=10**6), LimitExceededError)
    assert seconds < 2 and peak < MB


def _lz4_bomb(megabytes: int) -> bytes:
    """An LZ4 frame of an empty event packet and ``megabytes`` MB of zeros that does not state its size."""
    compressor = lz4.frame.LZ4FrameCompressor()  # begin() without source_size: no size
    chunk = bytes(MB)
    parts = [compressor.begin(), compressor.compress(event_packet(b"", 0))]
    parts += [compressor.compress(chunk) for _ in range(megabytes)]
    return b"".join([*parts, compressor.flush()])


def _zstd_bomb(megabytes: int) -> bytes:
    compressor = zstandard.ZstdCompressor().compressobj()
    chunk = bytes(MB)
    return b"".join([compressor.compress(chunk) for _ in range(megabytes)] + [compressor.flush()])


@pytest.mark.parametrize(("make_bomb", "compression"), [(_lz4_bomb, 1), (_zstd_bomb, 3)])
def test_compression_bomb_stops_at_the_event_limit(make_bomb, compression: int) -> None:
    data = _file([make_bomb(64)], compression=compression)  # 64 MB of zeros in ~ 0.3 MB or less
    seconds, peak = _bounded(lambda: read_aedat4(data, max_events=1000), LimitExceededError)
    assert seconds < 2 and peak < 8 * MB


def test_repeated_small_bombs_share_one_budget() -> None:
    # each 1 MB packet alone fits what 100,000 events may fill (1.6 MB); ten of them do not
    data = _file([_lz4_bomb(1)] * 10, compression=1)
    with pytest.raises(LimitExceededError, match="limit of 100,000"):
        read_aedat4(data, max_events=100_000)
    assert len(read_aedat4(data, max_events=1_000_000).events) == 0  # zeros: packets without events


def test_no_event_stream_is_refused() -> None:
    xml = (
        '<dv version="2.0"><node name="outInfo" path="/"><node name="2" path="/2/">'
        '<attr key="typeIdentifier" type="string">IMUS</attr></node></node></dv>'
    )
    with pytest.raises(InvalidEventsError, match="no event stream"):
        read_aedat4(_file([], xml=xml))


def test_packets_of_undeclared_streams_are_ignored_with_a_warning(random_events) -> None:
    events = random_events(10)
    wire = np.zeros(10, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
    wire["t"], wire["x"], wire["y"], wire["on"] = events["t"], events["x"], events["y"], events["p"]
    packet = event_packet(wire.tobytes(), 10)
    data = _file([packet]) + struct.pack("<ii", 7, 4) + b"junk"
    recording = read_aedat4(data)
    np.testing.assert_array_equal(recording.events, events)
    assert any("stream 7 (undeclared" in w for w in recording.warnings)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: b"#!AER-DAT3.1\r\n" + d[14:], "not an AEDAT 4.0"),
        (lambda d: d[:14] + struct.pack("<I", 10**6) + d[18:], "header claims"),
        (lambda d: d[:14] + struct.pack("<I", 4) + d[18:], "outside"),
    ],
)
def test_broken_headers_are_corrupt(mutate, match: str, random_events) -> None:
    data = write_aedat4(random_events(10), (34, 34))
    with pytest.raises(CorruptFileError, match=match):
        read_aedat4(mutate(data))


def test_xml_entities_are_refused() -> None:
    xml = '<!DOCTYPE dv [<!ENTITY a "aaaa">]><dv version="2.0">&a;</dv>'
    with pytest.raises(CorruptFileError, match="entities"):
        read_aedat4(_file([], xml=xml))


def test_packet_count_limit(random_events) -> None:
    data = write_aedat4(random_events(100), (34, 34), events_per_packet=1)
    with pytest.raises(LimitExceededError, match="packets"):
        read_aedat4(data, max_packets=50)


def test_writer_refuses_events_off_the_sensor(random_events) -> None:
    with pytest.raises(ValueError, match="outside"):
        write_aedat4(random_events(10, width=64), (34, 34))


def test_a_frame_packet_on_the_event_stream_is_refused(random_events) -> None:
    """A packet whose flatbuffer says FRME (a frame) is no event packet, whatever stream carries it."""
    events = random_events(10)
    packet = bytearray(event_packet(_wire_elements(events), len(events)))
    assert packet[8:12] == b"EVTS"
    packet[8:12] = b"FRME"
    with pytest.raises(CorruptFileError, match="FRME"):
        read_aedat4(_file([bytes(packet)]))
    assert len(read_aedat4(_file([event_packet(_wire_elements(events), len(events))])).events) == 10


def _wire_elements(events: np.ndarray) -> bytes:
    """events [N] EVENT_DTYPE -> dv-processing's 16-byte wire events (t int64, x, y int16, on, pad)."""
    wire = np.zeros(
        len(events), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")]
    )
    wire["t"], wire["x"], wire["y"], wire["on"] = events["t"], events["x"], events["y"], events["p"]
    return wire.tobytes()
