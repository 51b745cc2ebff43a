"""AEDAT 4.0 (iniVation dv): a bounded reader and a writer that ``aedat`` decodes back exactly.

The reader never trusts a size it has not checked. In order, before decompressing anything:
the IOHeader and its XML stream table are parsed, every packet header (int32 stream id, int32
size) is walked and must end inside the file, and every event packet's decompressed size (the
LZ4 frame content size, the ZSTD frame content size, or the raw size when uncompressed) must fit
the event limit. Frames that state no size are then decompressed with an output cap, so a
compression bomb stops at the limit instead of at the machine's memory. (``aedat.Decoder``
reserves whatever a header claims and decompresses without bound: it is not safe on uploads.)

Only the event stream is decoded; other streams (frames, IMU, triggers) are reported as warnings.
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Literal

import lz4.frame
import numpy as np
import zstandard

from eventio import EVENT_DTYPE, EventRecording
from eventio._flatbuffers import FlatBufferReader, event_packet, io_header
from eventio.errors import CorruptFileError, InvalidEventsError, LimitExceededError, check_event_limit

MAGIC = b"#!AER-DAT4.0\r\n"
COMPRESSION_NAMES = {0: "none", 1: "LZ4", 2: "LZ4 high", 3: "ZSTD", 4: "ZSTD high"}
LZ4_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
EVENT_BYTES = 16
EVENT_PACKET_IDENTIFIER = b"EVTS"  # the flatbuffer file identifier of dv-processing's EventPacket
# Smallest flatbuffer around an event vector (size prefix, root offset, vtable, table, vector
# length): a packet of S bytes cannot hold more than (S - 26) // 16 events.
PACKET_OVERHEAD = 26
PACKET_SLACK = 64  # decompressed bytes a packet may hold beyond its events (dv-processing uses 32)
DEFAULT_MAX_PACKETS = 100_000
_ZSTD_FEED_BYTES = 64

# struct Event { t: int64; x: int16; y: int16; on: bool } — 16 bytes, 8-aligned
_WIRE_EVENT = np.dtype(
    {"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"], "offsets": [0, 8, 10, 12],
     "itemsize": EVENT_BYTES}
)  # fmt: skip


@dataclass(frozen=True)
class StreamInfo:
    """One stream of the file's XML table. ``size`` is (width, height) for events and frames."""

    stream_id: int
    type_identifier: str  # EVTS, FRME, IMUS, TRIG, ...
    size: tuple[int, int] | None


@dataclass(frozen=True)
class Packet:
    """One packet header: the body is ``data[offset : offset + size]``."""

    stream_id: int
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    """What the headers of an AEDAT 4.0 file say, read without decompressing anything."""

    compression: int
    streams: dict[int, StreamInfo]
    packets: tuple[Packet, ...]


def read_layout(data: bytes | memoryview, *, max_packets: int = DEFAULT_MAX_PACKETS) -> Layout:
    """Parse the IOHeader, the XML stream table and every packet header; decompress nothing.

    Raises CorruptFileError for a bad magic, a header or packet that runs past the end of the
    file, or an unreadable stream table; LimitExceededError past ``max_packets`` packets.
    """
    view = memoryview(data).cast("B")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise CorruptFileError("not an AEDAT 4.0 file: it does not start with '#!AER-DAT4.0\\r\\n'")
    header_start = len(MAGIC) + 4
    if len(view) < header_start:
        raise CorruptFileError("AEDAT4 file ends inside its header")
    (header_size,) = struct.unpack_from("<I", view, len(MAGIC))
    data_start = header_start + header_size
    if data_start > len(view):
        raise CorruptFileError(
            f"AEDAT4 header claims {header_size:,} bytes but "
            f"the file holds {len(view) - header_start:,} after it"
        )
    header = FlatBufferReader(view[header_start:data_start], "AEDAT4 header")
    root = header.root()
    compression_pos = header.field(root, 0)
    compression = header.i32(compression_pos) if compression_pos is not None else 0
    if compression not in COMPRESSION_NAMES:
        raise CorruptFileError(f"AEDAT4 header names an unknown compression {compression}")
    table_pos = header.field(root, 1)
    data_end = header.i64(table_pos) if table_pos is not None else -1
    if data_end < 0:
        data_end = len(view)  # no file data table: packets run to the end
    elif not data_start <= data_end <= len(view):
        raise CorruptFileError(f"AEDAT4 data table position {data_end:,} lies outside the file")
    info_pos = header.field(root, 2)
    streams = _parse_streams(header.string(info_pos) if info_pos is not None else b"")
    return Layout(compression, streams, _walk_packets(view, data_start, data_end, max_packets))


def _walk_packets(view: memoryview, start: int, end: int, max_packets: int) -> tuple[Packet, ...]:
    packets: list[Packet] = []
    pos = start
    while pos < end:
        if len(packets) >= max_packets:
            raise LimitExceededError(
                f"the AEDAT4 file holds more than {max_packets:,} packets",
                limit=max_packets,
                claimed=len(packets) + 1,
            )
        if pos + 8 > end:
            raise CorruptFileError(f"AEDAT4 file ends inside the packet header at byte {pos:,}")
        stream_id, size = struct.unpack_from("<ii", view, pos)
        if size < 0 or pos + 8 + size > end:
            raise CorruptFileError(
                f"AEDAT4 packet at byte {pos:,} claims {size:,} bytes but only {end - pos - 8:,} remain: "
                "the file is truncated or corrupt"
            )
        packets.append(Packet(stream_id, pos + 8, size))
        pos += 8 + size
    return tuple(packets)


def _parse_streams(info_node: bytes) -> dict[int, StreamInfo]:
    """Streams of the IOHeader's XML: ``outInfo`` holds one node per stream id."""
    if b"<!DOCTYPE" in info_node or b"<!ENTITY" in info_node:
        raise CorruptFileError("AEDAT4 stream table declares XML entities; refusing it")
    try:
        root = ElementTree.fromstring(info_node.rstrip(b"\x00").decode("utf-8"))
    except (ElementTree.ParseError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"AEDAT4 stream table is not valid XML: {exc}") from None
    out_info = next((n for n in root.iter("node") if n.get("name") == "outInfo"), None)
    streams: dict[int, StreamInfo] = {}
    for node in out_info.findall("node") if out_info is not None else []:
        name = node.get("name", "")
        if not re.fullmatch(r"\d{1,9}", name):
            continue
        attrs = {a.get("key"): (a.text or "").strip() for a in node.findall("attr")}
        info = next((n for n in node.findall("node") if n.get("name") == "info"), None)
        info_attrs = (
            {a.get("key"): (a.text or "").strip() for a in info.findall("attr")} if info is not None else {}
        )
        size = None
        if info_attrs.get("sizeX", "").isdigit() and info_attrs.get("sizeY", "").isdigit():
            size = (int(info_attrs["sizeX"]), int(info_attrs["sizeY"]))
        streams[int(name)] = StreamInfo(int(name), attrs.get("typeIdentifier", "?"), size)
    return streams


def _max_events_in(packet_bytes: int) -> int:
    return max(0, (packet_bytes - PACKET_OVERHEAD) // EVENT_BYTES)


def _declared_size(body: memoryview, compression: int) -> int | None:
    """Decompressed size the packet's frame header states (the raw size when uncompressed)."""
    if compression == 0:
        return len(body)
    if compression in (1, 2):
        if len(body) < 7 or bytes(body[:4]) != LZ4_MAGIC:
            raise CorruptFileError("AEDAT4 packet is not an LZ4 frame")
        flags = body[4]
        if flags >> 6 != 1:
            raise CorruptFileError("AEDAT4 packet holds an LZ4 frame of an unknown version")
        if flags & 0x08:  # content-size flag: 8 bytes after FLG and BD
            if len(body) < 14:
                raise CorruptFileError("AEDAT4 packet ends inside its LZ4 frame header")
            return int(struct.unpack_from("<Q", body, 6)[0])
        return None
    if bytes(body[:4]) != ZSTD_MAGIC:
        raise CorruptFileError("AEDAT4 packet is not a ZSTD frame")
    try:
        size = zstandard.frame_content_size(bytes(body[:18]))  # a frame header is at most 18 bytes
    except zstandard.ZstdError:
        raise CorruptFileError("AEDAT4 packet holds an unreadable ZSTD frame header") from None
    return None if size < 0 else int(size)


def _decompress(body: memoryview, compression: int, max_bytes: int | None) -> tuple[bytes, bool]:
    """(output, complete): the packet's flatbuffer, stopping soon after ``max_bytes`` of output.

    ``complete`` is False when the frame ended early (truncated) or the output went past
    ``max_bytes``; the caller tells the two apart by the output's length.
    """
    if compression == 0:
        return bytes(body), True
    limit = -1 if max_bytes is None else max_bytes + 1
    try:
        if compression in (1, 2):
            lz4_decompressor = lz4.frame.LZ4FrameDecompressor()
            out = lz4_decompressor.decompress(body, max_length=limit)
            return out, bool(lz4_decompressor.eof and not lz4_decompressor.unused_data)
        # ZSTD has no output cap: feed the frame in small slices (one slice expands to a few MB
        # at most) and stop as soon as the output passes the cap
        zstd_decompressor = zstandard.ZstdDecompressor().decompressobj()
        chunks: list[bytes] = []
        total = 0
        for start in range(0, len(body), _ZSTD_FEED_BYTES):
            chunk = zstd_decompressor.decompress(bytes(body[start : start + _ZSTD_FEED_BYTES]))
            chunks.append(chunk)
            total += len(chunk)
            if zstd_decompressor.eof:
                trailing = zstd_decompressor.unused_data or start + _ZSTD_FEED_BYTES < len(body)
                return b"".join(chunks), not trailing
            if max_bytes is not None and total > max_bytes:
                break
        return b"".join(chunks), False
    except (RuntimeError, zstandard.ZstdError) as exc:
        raise CorruptFileError(f"AEDAT4 packet does not decompress: {exc}") from None


def _decode_packet(buffer: bytes) -> np.ndarray:
    """Events [N] EVENT_DTYPE of one decompressed, size-prefixed EventPacket flatbuffer."""
    # size prefix (4 bytes), root offset (4), then the flatbuffer's file identifier: a packet of
    # another type (FRME, IMUS) read as events would give garbage coordinates and timestamps
    identifier = bytes(buffer[8:12])
    if identifier != EVENT_PACKET_IDENTIFIER:
        raise CorruptFileError(
            f"an AEDAT4 packet of the event stream is a {identifier.decode('latin1')!r} flatbuffer, "
            f"not an event packet ({EVENT_PACKET_IDENTIFIER.decode()})"
        )
    reader = FlatBufferReader(buffer, "AEDAT4 event packet")
    root = reader.root(4)  # skip the uint32 size prefix
    elements_pos = reader.field(root, 0)
    if elements_pos is None:
        return np.empty(0, dtype=EVENT_DTYPE)
    start, count = reader.vector(elements_pos, EVENT_BYTES)
    wire = np.frombuffer(buffer, dtype=_WIRE_EVENT, count=count, offset=start)
    if count and (wire["x"].min() < 0 or wire["y"].min() < 0):
        raise InvalidEventsError("AEDAT4 event packet holds negative coordinates")
    events = np.empty(count, dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"] = wire["x"], wire["y"], wire["t"]
    events["p"] = wire["on"] != 0
    return events


def read_aedat4(
    data: bytes | memoryview, *, max_events: int | None = None, max_packets: int = DEFAULT_MAX_PACKETS
) -> EventRecording:
    """Decode the event stream of an AEDAT 4.0 file: events [N] EVENT_DTYPE, t in microseconds.

    The lowest-numbered ``EVTS`` stream is used; every other stream becomes a warning. Raises
    CorruptFileError (bad structure), LimitExceededError (more events or packets than allowed,
    told by the headers or met while decompressing), InvalidEventsError (no event stream).
    """
    view = memoryview(data).cast("B")
    layout = read_layout(view, max_packets=max_packets)
    event_ids = sorted(i for i, s in layout.streams.items() if s.type_identifier == "EVTS")
    if not event_ids:
        kinds = ", ".join(f"{i}: {s.type_identifier}" for i, s in sorted(layout.streams.items())) or "none"
        raise InvalidEventsError(f"the AEDAT4 file has no event stream (streams: {kinds})")
    stream = layout.streams[event_ids[0]]
    mine = [p for p in layout.packets if p.stream_id == stream.stream_id]

    declared = [_declared_size(view[p.offset : p.offset + p.size], layout.compression) for p in mine]
    check_event_limit(
        sum(_max_events_in(size) for size in declared if size is not None), max_events, "the AEDAT4 file"
    )
    # Every decompressed byte comes out of one budget: what max_events events fill, plus a little
    # flatbuffer room a packet. Packets that expand to much but hold few events (a bomb of
    # zeros, repeated) still exhaust it.
    budget = 0 if max_events is None else EVENT_BYTES * max_events + PACKET_SLACK * len(mine)
    chunks: list[np.ndarray] = []
    n_events = 0
    for packet, size in zip(mine, declared, strict=True):
        cap = size if max_events is None else (budget if size is None else min(size, budget))
        body = view[packet.offset : packet.offset + packet.size]
        buffer, complete = _decompress(body, layout.compression, cap)
        if size is not None and len(buffer) > size:
            raise CorruptFileError(f"AEDAT4 packet at byte {packet.offset:,} expands past its stated size")
        if max_events is not None:
            budget -= len(buffer)
            if budget < 0:
                raise LimitExceededError(
                    f"the AEDAT4 file holds more events than the limit of {max_events:,}: its event "
                    f"packets expand past the {EVENT_BYTES * max_events:,} bytes those fill",
                    limit=max_events,
                    claimed=n_events + _max_events_in(len(buffer)),
                )
        if not complete:
            raise CorruptFileError(f"AEDAT4 packet at byte {packet.offset:,} holds a truncated frame")
        events = _decode_packet(buffer)
        n_events += len(events)
        check_event_limit(n_events, max_events, "the AEDAT4 file")
        chunks.append(events)

    return EventRecording(
        np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENT_DTYPE),
        stream.size,
        "aedat4",
        tuple(_ignored_streams(layout, stream.stream_id)),
    )


def _ignored_streams(layout: Layout, used: int) -> list[str]:
    counts: dict[int, int] = {}
    for packet in layout.packets:
        counts[packet.stream_id] = counts.get(packet.stream_id, 0) + 1
    warnings = []
    for stream_id in sorted(set(layout.streams) | set(counts)):
        if stream_id == used:
            continue
        kind = layout.streams[stream_id].type_identifier if stream_id in layout.streams else "undeclared"
        n = counts.get(stream_id, 0)
        warnings.append(
            f"AEDAT4 stream {stream_id} ({kind}, {n} packet{'s' * (n != 1)}) ignored: only event stream "
            f"{used} is used"
        )
    return warnings


def write_aedat4(
    events: np.ndarray,
    sensor_size: tuple[int, int],
    *,
    compression: Literal["none", "lz4"] = "lz4",
    events_per_packet: int = 4096,
) -> bytes:
    """Encode events [N] (fields x, y, t, p) as an AEDAT 4.0 file with one event stream.

    sensor_size: (width, height), written as the stream's sizeX/sizeY. LZ4 frames state their
    content size, so bounded readers can check them before decompressing. Raises ValueError for
    what AEDAT4 cannot hold: coordinates over 32767 or outside the sensor, negative t.
    """
    width, height = sensor_size
    x, y, t = (np.asarray(events[name], dtype=np.int64) for name in ("x", "y", "t"))
    if x.size and (x.max() >= width or y.max() >= height or x.min() < 0 or y.min() < 0):
        raise ValueError(f"events reach ({x.max()}, {y.max()}), outside the {width}x{height} sensor")
    if not (0 < width <= 32767 and 0 < height <= 32767):
        raise ValueError("AEDAT4 stores coordinates as int16: the sensor must be at most 32767 wide and high")
    if t.size and t.min() < 0:
        raise ValueError("AEDAT4 timestamps must be non-negative")
    if events_per_packet < 1:
        raise ValueError("events_per_packet must be at least 1")

    wire = np.zeros(len(x), dtype=_WIRE_EVENT)
    wire["t"], wire["x"], wire["y"] = t, x, y
    wire["on"] = np.asarray(events["p"]) != 0
    name = {"none": "NONE", "lz4": "LZ4"}[compression]
    parts = [MAGIC]
    header = io_header(0 if compression == "none" else 1, -1, _info_xml(width, height, name))
    parts += [struct.pack("<I", len(header)), header]
    for start in range(0, len(wire), events_per_packet):
        chunk = wire[start : start + events_per_packet]
        body = event_packet(chunk.tobytes(), len(chunk))
        if compression == "lz4":
            body = lz4.frame.compress(body, store_size=True, block_size=lz4.frame.BLOCKSIZE_MAX64KB)
        parts += [struct.pack("<ii", 0, len(body)), body]
    return b"".join(parts)


def _info_xml(width: int, height: int, compression: str) -> str:
    path = "/mainloop/Recorder/outInfo"
    return (
        '<dv version="2.0">\n'
        f'    <node name="outInfo" path="{path}/">\n'
        f'        <node name="0" path="{path}/0/">\n'
        f'            <attr key="compression" type="string">{compression}</attr>\n'
        '            <attr key="originalModuleName" type="string">spikeserve</attr>\n'
        '            <attr key="originalOutputName" type="string">events</attr>\n'
        '            <attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>\n'
        '            <attr key="typeIdentifier" type="string">EVTS</attr>\n'
        f'            <node name="info" path="{path}/0/info/">\n'
        f'                <attr key="sizeX" type="int">{width}</attr>\n'
        f'                <attr key="sizeY" type="int">{height}</attr>\n'
        '                <attr key="source" type="string">spikeserve</attr>\n'
        '                <attr key="tsOffset" type="long">0</attr>\n'
        "            </node>\n"
        "        </node>\n"
        "    </node>\n"
        "</dv>\n"
    )
