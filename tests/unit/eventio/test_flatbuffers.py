"""eventio/_flatbuffers.py: bounded reads, and the layouts we write read back field by field."""

from __future__ import annotations

import struct

import pytest

from eventio._flatbuffers import FlatBufferReader, event_packet, io_header
from eventio.errors import CorruptFileError


def test_io_header_fields_read_back() -> None:
    buffer = io_header(1, 12345, "<dv/>")
    reader = FlatBufferReader(buffer, "header")
    root = reader.root()
    assert buffer[4:8] == b"IOHE"
    assert reader.i32(reader.field(root, 0)) == 1
    assert reader.i64(reader.field(root, 1)) == 12345
    assert reader.string(reader.field(root, 2)) == b"<dv/>"
    assert reader.field(root, 3) is None  # past the vtable: absent


def test_event_packet_layout() -> None:
    elements = bytes(range(32))
    packet = event_packet(elements, 2)
    assert struct.unpack_from("<I", packet)[0] == len(packet) - 4
    assert packet[8:12] == b"EVTS"
    reader = FlatBufferReader(packet, "packet")
    start, count = reader.vector(reader.field(reader.root(4), 0), 16)
    assert (start, count) == (32, 2)  # 8-aligned elements, as dv-processing writes them
    assert packet[start:] == elements


def test_offsets_outside_the_buffer_raise() -> None:
    reader = FlatBufferReader(struct.pack("<I", 1000), "tiny")
    with pytest.raises(CorruptFileError, match="tiny: offset 1,000"):
        reader.i32(reader.root())


def test_vector_longer_than_the_buffer_raises() -> None:
    buffer = struct.pack("<II", 4, 2**31)  # offset 4 -> a vector claiming 2**31 elements
    with pytest.raises(CorruptFileError):
        FlatBufferReader(buffer, "vec").vector(0, 16)
