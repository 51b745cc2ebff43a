"""Just enough FlatBuffers for AEDAT 4.0: a bounds-checked reader and the two layouts we write.

Hostile files are the point: every read checks its offset against the buffer first and raises
CorruptFileError naming what it was reading, so a lying offset can neither crash the reader
nor make it allocate. (Wire format: a table starts with an int32 offset back to its vtable;
the vtable holds uint16 sizes then one uint16 offset per field, 0 when the field is absent;
strings and vectors are reached through uint32 offsets relative to where the offset sits.)
"""

from __future__ import annotations

import struct

from eventio.errors import CorruptFileError


class FlatBufferReader:
    """Reads scalars, strings and vectors out of one flatbuffer, refusing any offset outside it."""

    def __init__(self, buffer: bytes | memoryview, what: str) -> None:
        self.buffer = buffer
        self.what = what

    def _need(self, pos: int, size: int) -> None:
        if pos < 0 or pos + size > len(self.buffer):
            raise CorruptFileError(
                f"{self.what}: offset {pos:,} (+{size}) points outside its {len(self.buffer):,} bytes"
            )

    def u16(self, pos: int) -> int:
        self._need(pos, 2)
        return int(struct.unpack_from("<H", self.buffer, pos)[0])

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return int(struct.unpack_from("<I", self.buffer, pos)[0])

    def i32(self, pos: int) -> int:
        self._need(pos, 4)
        return int(struct.unpack_from("<i", self.buffer, pos)[0])

    def i64(self, pos: int) -> int:
        self._need(pos, 8)
        return int(struct.unpack_from("<q", self.buffer, pos)[0])

    def root(self, start: int = 0) -> int:
        """Position of the root table of a buffer that begins at ``start``."""
        return start + self.u32(start)

    def field(self, table: int, index: int) -> int | None:
        """Position of field ``index`` of the table at ``table``, or None when it is absent."""
        vtable = table - self.i32(table)
        vtable_size = self.u16(vtable)
        entry = 4 + 2 * index
        if entry + 2 > vtable_size:
            return None
        offset = self.u16(vtable + entry)
        return table + offset if offset else None

    def vector(self, field_pos: int, element_size: int) -> tuple[int, int]:
        """(start, count) of the vector whose uint32 offset sits at ``field_pos``, bounds checked."""
        start = field_pos + self.u32(field_pos)
        count = self.u32(start)
        self._need(start + 4, count * element_size)
        return start + 4, count

    def string(self, field_pos: int) -> bytes:
        start, length = self.vector(field_pos, 1)
        return bytes(self.buffer[start : start + length])


def io_header(compression: int, data_table_position: int, info_node: str) -> bytes:
    """The IOHeader flatbuffer (identifier ``IOHE``) with dv-processing's own layout.

    Fields: 0 compression int32, 1 dataTablePosition int64, 2 infoNode string.
    """
    info = info_node.encode()
    # root offset, identifier, 6 bytes padding, vtable at 14 (10 bytes), table at 24
    vtable = struct.pack("<5H", 10, 20, 4, 12, 8)
    table = struct.pack("<iiIq", 24 - 14, compression, 44 - 32, data_table_position)
    head = struct.pack("<I", 24) + b"IOHE" + bytes(6) + vtable + table
    assert len(head) == 44
    return head + struct.pack("<I", len(info)) + info + b"\x00"


def event_packet(elements: bytes, count: int) -> bytes:
    """A size-prefixed ``EventPacket`` flatbuffer (identifier ``EVTS``) holding ``count`` 16-byte events.

    The layout is dv-processing's: the elements start 8-aligned at byte 32 of the packet.
    """
    if len(elements) != 16 * count:
        raise ValueError(f"{count} events need {16 * count} bytes, got {len(elements)}")
    # after the size prefix: root offset 16, identifier, 2 bytes padding, vtable at 10 (6 bytes),
    # table at 16 (vtable back-offset, vector offset), vector length at 24, elements at 28
    body = struct.pack("<I", 16) + b"EVTS" + bytes(2) + struct.pack("<3H", 6, 8, 4)
    body += struct.pack("<iII", 6, 4, count) + elements
    return struct.pack("<I", len(body)) + body
