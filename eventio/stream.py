"""Push decoders: event bytes that arrive in pieces -> events, as soon as each record is whole.

A live stream (a WebSocket session, a DV network output) cuts its bytes wherever the transport
does: inside an N-MNIST record, a ``.npy`` header or an AEDAT4 packet. Each decoder here keeps
only the unfinished tail and returns the events that the new bytes completed, so feeding a
recording in any split gives exactly the events of one-shot decoding (a test splits the real
recordings at every odd chunk size). Buffers are bounded: the tail is at most one record, one
``.npy`` header or one AEDAT4 packet, and a packet or array that claims more than the limits
raises LimitExceededError before its bytes are awaited.

Formats (``open_decoder``):
- ``nmnist``: 5-byte records; overflow markers shift every later timestamp, across chunks too.
- ``npy``: one or more whole ``.npy`` structured arrays sent one after another.
- ``aedat4``: a file (magic, IOHeader, packets, data table) or a DV network stream (the IOHeader
  once with its size prefix, then packets: what ``dv_processing.io.NetworkWriter`` and DV's
  network output send). Only the lowest-numbered event stream is decoded.
"""

from __future__ import annotations

import abc
import struct

import numpy as np

from eventio import EVENT_DTYPE
from eventio._flatbuffers import FlatBufferReader
from eventio.aedat4 import (
    COMPRESSION_NAMES,
    EVENT_BYTES,
    MAGIC,
    PACKET_SLACK,
    _declared_size,
    _decode_packet,
    _decompress,
    _max_events_in,
    _parse_streams,
)
from eventio.errors import CorruptFileError, InvalidEventsError, LimitExceededError, UnknownFormatError
from eventio.nmnist import OVERFLOW_INCREMENT_US, OVERFLOW_Y, RECORD_BYTES, SENSOR_SIZE
from eventio.npy import MAGIC as NPY_MAGIC
from eventio.npy import MAX_HEADER_BYTES, check_event_dtype, read_header, records_to_events

STREAM_FORMATS = ("aedat4", "nmnist", "npy")
DEFAULT_MAX_PACKET_EVENTS = 1_000_000  # one AEDAT4 packet or one .npy array: 16 MB of events
_NO_EVENTS = np.empty(0, dtype=EVENT_DTYPE)
_SNIFF_BYTES = 16
_IOHEADER_ID = b"IOHE"


class PushDecoder(abc.ABC):
    """``feed(bytes) -> events [N] EVENT_DTYPE`` completed by those bytes; ``finish()`` at the end.

    ``sensor_size`` is (width, height) once the stream has stated it (AEDAT4 header, N-MNIST's
    fixed sensor), else None. ``warnings``: things a user should know, one sentence each.
    """

    format: str = ""

    def __init__(self) -> None:
        self.sensor_size: tuple[int, int] | None = None
        self.warnings: list[str] = []
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back until their record, header or packet is whole."""
        return len(self._buffer)

    @abc.abstractmethod
    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Take the next bytes of the stream; return the events [N] EVENT_DTYPE they completed."""

    def finish(self) -> None:
        """The stream ended: raise CorruptFileError if it stopped inside a record or packet."""
        if self._buffer:
            raise CorruptFileError(
                f"the {self.format} stream ended inside a record: {len(self._buffer):,} bytes left over"
            )


class NmnistDecoder(PushDecoder):
    """N-MNIST ``.bin`` records (see ``eventio.nmnist``); overflow markers count across chunks."""

    format = "nmnist"

    def __init__(self) -> None:
        super().__init__()
        self.sensor_size = SENSOR_SIZE
        self._overflows = 0  # markers seen so far: each adds 2**13 us to every later record

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % RECORD_BYTES
        if whole == 0:
            return _NO_EVENTS
        raw = np.frombuffer(self._buffer, dtype=np.uint8, count=whole).reshape(-1, RECORD_BYTES)
        overflow = raw[:, 1] == OVERFLOW_Y
        b2 = raw[:, 2].astype(np.int64)
        stored = ((b2 & 0x7F) << 16) | (raw[:, 3].astype(np.int64) << 8) | raw[:, 4]
        markers = np.cumsum(overflow, dtype=np.int64) + self._overflows
        keep = ~overflow
        events = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
        events["x"] = raw[keep, 0]
        events["y"] = raw[keep, 1]
        events["t"] = (stored + markers * OVERFLOW_INCREMENT_US)[keep]
        events["p"] = b2[keep] >> 7
        self._overflows = int(markers[-1])
        del raw
        del self._buffer[:whole]
        return events


class NpyDecoder(PushDecoder):
    """Whole structured ``.npy`` arrays one after another; records are decoded as they arrive."""

    format = "npy"

    def __init__(self, max_array_events: int = DEFAULT_MAX_PACKET_EVENTS) -> None:
        super().__init__()
        self.max_array_events = max_array_events
        self._dtype: np.dtype | None = None  # the current array's, once its header is read
        self._remaining = 0  # records of the current array still to come

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        self._buffer += data
        parts: list[np.ndarray] = []
        while True:
            if self._dtype is None and not self._read_header():
                break
            assert self._dtype is not None
            count = min(self._remaining, len(self._buffer) // self._dtype.itemsize)
            if count:
                records = np.frombuffer(self._buffer, dtype=self._dtype, count=count)
                events, warnings = records_to_events(records)
                del records
                parts.append(events)
                self._warn(warnings)
                del self._buffer[: count * self._dtype.itemsize]
                self._remaining -= count
            if self._remaining:
                break
            self._dtype = None  # the array is complete; another may follow
        return parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else _NO_EVENTS)

    def _read_header(self) -> bool:
        """Parse the next array's header once it is whole. False while more bytes are needed."""
        buffer = self._buffer
        if len(buffer) < 12 and not (len(buffer) >= 10 and buffer[6] == 1):
            if len(buffer) >= 6 and bytes(buffer[:6]) != NPY_MAGIC:
                raise CorruptFileError(
                    "an npy stream must send whole .npy arrays, each starting '\\x93NUMPY'"
                )
            return False
        if bytes(buffer[:6]) != NPY_MAGIC:
            raise CorruptFileError("an npy stream must send whole .npy arrays, each starting '\\x93NUMPY'")
        start = 10 if buffer[6] == 1 else 12
        (header_len,) = struct.unpack_from("<H" if start == 10 else "<I", buffer, 8)
        if header_len > MAX_HEADER_BYTES:
            raise CorruptFileError(f".npy header of {header_len:,} bytes is too long")
        if len(buffer) < start + header_len:
            return False
        dtype, shape, _, offset = read_header(bytes(buffer[: start + header_len]))
        check_event_dtype(dtype, shape)
        if shape[0] > self.max_array_events:
            raise LimitExceededError(
                f"one .npy array of the stream holds {shape[0]:,} events, over the limit of "
                f"{self.max_array_events:,} a message; send smaller chunks",
                limit=self.max_array_events,
                claimed=shape[0],
            )
        del self._buffer[:offset]
        self._dtype, self._remaining = dtype, shape[0]
        return True

    def _warn(self, warnings: list[str]) -> None:
        for warning in warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)

    def finish(self) -> None:
        if self._remaining:
            raise CorruptFileError(
                f"the npy stream ended with {self._remaining:,} records of an array missing"
            )
        super().finish()


class Aedat4Decoder(PushDecoder):
    """AEDAT 4.0 in stream order: an optional file magic, the IOHeader, then packets.

    A packet is decoded once its whole body has arrived; one that states more than
    ``max_packet_events`` events' worth of bytes is refused first. In a file, bytes from the data
    table position on (the file's index, not events) are skipped.
    """

    format = "aedat4"

    def __init__(self, max_packet_events: int = DEFAULT_MAX_PACKET_EVENTS) -> None:
        super().__init__()
        self.max_packet_events = max_packet_events
        self.max_packet_bytes = EVENT_BYTES * max_packet_events + PACKET_SLACK
        self.compression: int | None = None  # known once the IOHeader is read
        self.event_stream: int | None = None
        self._position = 0  # bytes of the stream consumed so far (file offsets, with the magic)
        self._data_end: int | None = None  # a file's data table position
        self._ignored: dict[int, int] = {}  # stream id -> packets skipped

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        self._buffer += data
        if self.compression is None and not self._read_header():
            return _NO_EVENTS
        parts: list[np.ndarray] = []
        while True:
            if self._data_end is not None and self._position >= self._data_end:
                self._consume(len(self._buffer))  # the file's data table: an index, no events
                break
            if len(self._buffer) < 8:
                break
            stream_id, size = struct.unpack_from("<ii", self._buffer, 0)
            if size < 0 or size > self.max_packet_bytes:
                raise LimitExceededError(
                    f"AEDAT4 packet at byte {self._position:,} claims {size:,} bytes; a stream packet "
                    f"may hold at most {self.max_packet_bytes:,}",
                    limit=self.max_packet_bytes,
                    claimed=size,
                )
            if len(self._buffer) < 8 + size:
                break
            if stream_id == self.event_stream:
                parts.append(self._decode(bytes(self._buffer[8 : 8 + size])))
            else:
                self._ignored[stream_id] = self._ignored.get(stream_id, 0) + 1
            self._consume(8 + size)
        return parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else _NO_EVENTS)

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._position += count

    def _read_header(self) -> bool:
        """Parse the magic (files only) and the IOHeader once whole. False while more bytes are needed."""
        skip = len(MAGIC) if bytes(self._buffer[: len(MAGIC)]) == MAGIC else 0
        if not skip and len(self._buffer) < len(MAGIC) and MAGIC.startswith(bytes(self._buffer)):
            return False  # perhaps a file's magic, not whole yet
        if len(self._buffer) < skip + 4:
            return False
        (header_size,) = struct.unpack_from("<I", self._buffer, skip)
        if header_size > self.max_packet_bytes:
            raise CorruptFileError(f"AEDAT4 IOHeader claims {header_size:,} bytes: not an AEDAT4 stream")
        if len(self._buffer) < skip + 4 + header_size:
            return False
        header = FlatBufferReader(bytes(self._buffer[skip + 4 : skip + 4 + header_size]), "AEDAT4 header")
        root = header.root()
        compression_pos = header.field(root, 0)
        compression = header.i32(compression_pos) if compression_pos is not None else 0
        if compression not in COMPRESSION_NAMES:
            raise CorruptFileError(f"AEDAT4 header names an unknown compression {compression}")
        table_pos = header.field(root, 1)
        data_end = header.i64(table_pos) if table_pos is not None else -1
        info_pos = header.field(root, 2)
        streams = _parse_streams(header.string(info_pos) if info_pos is not None else b"")
        event_ids = sorted(i for i, s in streams.items() if s.type_identifier == "EVTS")
        if not event_ids:
            raise InvalidEventsError("the AEDAT4 stream declares no event stream")
        self.event_stream = event_ids[0]
        self.sensor_size = streams[event_ids[0]].size
        self.compression = compression
        # a file states where its data table starts; a network stream states -1 (no table)
        self._data_end = data_end if skip and data_end >= 0 else None
        self._consume(skip + 4 + header_size)
        return True

    def _decode(self, packet: bytes) -> np.ndarray:
        body = memoryview(packet)
        assert self.compression is not None
        declared = _declared_size(body, self.compression)
        cap = self.max_packet_bytes if declared is None else min(declared, self.max_packet_bytes)
        if declared is not None and _max_events_in(declared) > self.max_packet_events:
            raise LimitExceededError(
                f"an AEDAT4 packet states {_max_events_in(declared):,} events, over the limit of "
                f"{self.max_packet_events:,} a packet",
                limit=self.max_packet_events,
                claimed=_max_events_in(declared),
            )
        buffer, complete = _decompress(body, self.compression, cap)
        if len(buffer) > cap:
            raise LimitExceededError(
                f"an AEDAT4 packet expands past {cap:,} bytes",
                limit=self.max_packet_events,
                claimed=_max_events_in(len(buffer)),
            )
        if not complete:
            raise CorruptFileError(f"AEDAT4 packet before byte {self._position:,} holds a truncated frame")
        return _decode_packet(buffer)

    def ignored_streams(self) -> list[str]:
        """One warning per non-event stream whose packets were skipped."""
        return [
            f"AEDAT4 stream {stream_id} ({count} packet{'s' * (count != 1)}) ignored: only event stream "
            f"{self.event_stream} is used"
            for stream_id, count in sorted(self._ignored.items())
        ]


def sniff_stream_format(head: bytes) -> str | None:
    """The format of a stream from its first bytes, or None while fewer than 16 have arrived.

    AEDAT4 (file magic, or a size-prefixed IOHeader as DV network streams send), ``.npy``;
    anything else is taken for N-MNIST records, which carry no magic. Raises UnknownFormatError
    for AEDAT 3.1 / 2.0, which are files only.
    """
    if len(head) < _SNIFF_BYTES:
        return None
    if head.startswith(MAGIC[:12]) or head[8:12] == _IOHEADER_ID:
        return "aedat4"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(b"#!AER-DAT"):
        raise UnknownFormatError("AEDAT 3.1 and 2.0 are files only; stream AEDAT4, N-MNIST or .npy chunks")
    return "nmnist"


def open_decoder(fmt: str, *, max_packet_events: int = DEFAULT_MAX_PACKET_EVENTS) -> PushDecoder:
    """A push decoder for ``fmt`` (one of STREAM_FORMATS). Raises UnknownFormatError otherwise."""
    if fmt == "aedat4":
        return Aedat4Decoder(max_packet_events)
    if fmt == "npy":
        return NpyDecoder(max_packet_events)
    if fmt in ("nmnist", "bin"):
        return NmnistDecoder()
    raise UnknownFormatError(f"unknown stream format {fmt!r}; use one of {', '.join(STREAM_FORMATS)}")


class StreamDecoder:
    """A push decoder that finds its format in the first bytes unless told it.

    ``fmt``: one of STREAM_FORMATS, or None to sniff (see ``sniff_stream_format``).
    """

    def __init__(self, fmt: str | None = None, *, max_packet_events: int = DEFAULT_MAX_PACKET_EVENTS) -> None:
        self._max_packet_events = max_packet_events
        self._decoder: PushDecoder | None = (
            None if fmt is None else open_decoder(fmt, max_packet_events=max_packet_events)
        )
        self._head = bytearray()

    @property
    def format(self) -> str | None:
        return None if self._decoder is None else self._decoder.format

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        return None if self._decoder is None else self._decoder.sensor_size

    @property
    def buffered_bytes(self) -> int:
        return len(self._head) + (0 if self._decoder is None else self._decoder.buffered_bytes)

    @property
    def warnings(self) -> list[str]:
        if self._decoder is None:
            return []
        extra = self._decoder.ignored_streams() if isinstance(self._decoder, Aedat4Decoder) else []
        return [*self._decoder.warnings, *extra]

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Events [N] EVENT_DTYPE completed by ``data``."""
        if self._decoder is None:
            self._head += data
            fmt = sniff_stream_format(bytes(self._head[:_SNIFF_BYTES]))
            if fmt is None:
                return _NO_EVENTS
            self._decoder = open_decoder(fmt, max_packet_events=self._max_packet_events)
            data, self._head = bytes(self._head), bytearray()
        return self._decoder.feed(data)

    def finish(self) -> None:
        """Raise CorruptFileError if the stream stopped inside a record, header or packet."""
        if self._decoder is None:
            if not self._head:
                return
            # fewer than 16 bytes in all: sniff them as they are (zero padding adds no magic)
            fmt = sniff_stream_format(bytes(self._head).ljust(_SNIFF_BYTES, b"\0")) or "nmnist"
            self._decoder = open_decoder(fmt, max_packet_events=self._max_packet_events)
            self._decoder.feed(bytes(self._head))
            self._head = bytearray()
        self._decoder.finish()
