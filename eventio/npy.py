"""Structured ``.npy`` event arrays: a 1-D array with fields x, y, t (microseconds) and p.

The header is parsed here, before any data is touched, so the event count is checked against
the limit first; object dtypes are refused (they would need pickle, which is never loaded).
Integer, unsigned, bool and integral float columns are accepted and range-checked; polarity
may be 0/1, False/True or -1/+1 (mapped to 0/1 with a warning).
"""

from __future__ import annotations

import ast
import io
import re
import struct

import numpy as np

from eventio import EVENT_DTYPE, EventRecording
from eventio.errors import CorruptFileError, InvalidEventsError, check_event_limit

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10_000  # numpy's own default for read_array_header
REQUIRED_FIELDS = ("x", "y", "t", "p")
_RANGES = {"x": (0, 65535), "y": (0, 65535), "t": (-(2**63), 2**63 - 1)}


def read_header(data: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data_offset) of a ``.npy`` file, reading nothing past its header.

    Raises CorruptFileError for a bad magic, an unknown version, an oversized or unreadable header,
    or a dtype that holds Python objects.
    """
    view = memoryview(data).cast("B")
    if bytes(view[:6]) != MAGIC or len(view) < 10:
        raise CorruptFileError("not a .npy file: it does not start with '\\x93NUMPY'")
    major = view[6]
    if major == 1:
        (header_len,), start, encoding = struct.unpack_from("<H", view, 8), 10, "latin1"
    elif major in (2, 3) and len(view) >= 12:
        (header_len,), start = struct.unpack_from("<I", view, 8), 12
        encoding = "utf8" if major == 3 else "latin1"
    else:
        raise CorruptFileError(f".npy format version {major} is not supported (1, 2 and 3 are)")
    if header_len > MAX_HEADER_BYTES or start + header_len > len(view):
        raise CorruptFileError(
            f".npy header of {header_len:,} bytes is too long or runs past the end of the file"
        )
    text = bytes(view[start : start + header_len])
    known = _known_header(text, major)
    if known is not None:  # a stream's arrays differ only in their length
        dtype, shape, fortran_order = known
        return dtype, shape, fortran_order, start + header_len
    try:
        header = ast.literal_eval(text.decode(encoding))
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = header["shape"]
        fortran_order = header["fortran_order"]
    except (ValueError, SyntaxError, TypeError, KeyError, UnicodeDecodeError, MemoryError, RecursionError):
        raise CorruptFileError("the .npy header is not readable") from None
    # numpy writes a tuple of ints and a bool: a string shape ('12' would iterate as (1, 2)) or a
    # float one (2.5 would truncate to 2) describes some other array than the bytes hold
    if not isinstance(shape, tuple) or not all(type(n) is int for n in shape):
        raise CorruptFileError(f"the .npy header's shape must be a tuple of integers, got {shape!r:.80}")
    if not isinstance(fortran_order, bool):
        raise CorruptFileError("the .npy header's fortran_order must be True or False")
    if dtype.hasobject:
        raise CorruptFileError(".npy arrays of Python objects need pickle, which is never loaded")
    if any(n < 0 for n in shape):
        raise CorruptFileError(".npy header states a negative dimension")
    _remember_header(text, major, dtype, shape, fortran_order)
    return dtype, shape, fortran_order, start + header_len


# Headers of 1-D arrays already read, with the length cut out: (version, template) -> (dtype,
# fortran_order). Parsing a header (ast.literal_eval, then the dtype) costs more than decoding the
# 10 ms of events it announces; the arrays of one stream share everything but their length.
_ONE_DIM = re.compile(rb"'shape': \((\d{1,19}),\)")
_TEMPLATES: dict[tuple[int, bytes], tuple[np.dtype, bool]] = {}
_MAX_TEMPLATES = 256


def _known_header(text: bytes, major: int) -> tuple[np.dtype, tuple[int, ...], bool] | None:
    """(dtype, shape, fortran_order) of a header whose template was read before, else None."""
    matches = _ONE_DIM.findall(text)
    if len(matches) != 1:
        return None
    known = _TEMPLATES.get((major, _ONE_DIM.sub(b"'shape': (#,)", text)))
    if known is None:
        return None
    return known[0], (int(matches[0]),), known[1]


def _remember_header(
    text: bytes, major: int, dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool
) -> None:
    """Keep a fully read and checked header's template, if its one length is where the template cuts."""
    matches = _ONE_DIM.findall(text)
    if len(matches) != 1 or shape != (int(matches[0]),) or len(_TEMPLATES) >= _MAX_TEMPLATES:
        return
    _TEMPLATES[(major, _ONE_DIM.sub(b"'shape': (#,)", text))] = (dtype, fortran_order)


def read_npy(data: bytes | memoryview, *, max_events: int | None = None) -> EventRecording:
    """Decode a structured ``.npy`` array [N] with fields x, y, t, p into events [N] EVENT_DTYPE.

    Raises CorruptFileError (not a .npy, truncated, pickled objects), LimitExceededError (over
    ``max_events``), InvalidEventsError (not 1-D, missing fields, values out of range).
    """
    view = memoryview(data).cast("B")
    dtype, shape, _, offset = read_header(view)
    check_event_dtype(dtype, shape)
    count = shape[0]
    check_event_limit(count, max_events, "the .npy file")
    if offset + count * dtype.itemsize > len(view):
        raise CorruptFileError(
            f".npy header states {count:,} events of {dtype.itemsize} bytes but the file is truncated"
        )
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    events, warnings = records_to_events(array)
    return EventRecording(events, None, "npy", tuple(warnings))


def check_event_dtype(dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Raise InvalidEventsError unless ``dtype`` has fields x, y, t, p and ``shape`` is 1-D."""
    missing = [name for name in REQUIRED_FIELDS if dtype.names is None or name not in dtype.names]
    if missing:
        raise InvalidEventsError(
            f".npy events need a structured dtype with fields x, y, t, p; missing {', '.join(missing)}"
        )
    if len(shape) != 1:
        raise InvalidEventsError(f".npy events must be a 1-D structured array, got shape {shape}")


def records_to_events(array: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Structured records [N] (fields x, y, t, p of any integral type) -> (events [N] EVENT_DTYPE, warnings).

    Raises InvalidEventsError for fractions, NaN, values out of range, or polarities mixing -1, 0, 1.
    """
    warnings: list[str] = []
    events = np.empty(len(array), dtype=EVENT_DTYPE)
    for name, (low, high) in _RANGES.items():
        events[name] = _integral_column(array[name], name, low, high)
    polarity = _integral_column(array["p"], "p", -1, 1)
    if len(array) and polarity.min() < 0:
        if (polarity == 0).any():
            raise InvalidEventsError("polarity p holds -1, 0 and 1; use 0/1 or -1/+1")
        polarity = (polarity > 0).astype(np.int64)
        warnings.append("polarity -1/+1 read as OFF/ON (0/1)")
    events["p"] = polarity
    return events, warnings


def _integral_column(column: np.ndarray, name: str, low: int, high: int) -> np.ndarray:
    """``column`` as int64, refusing fractions, NaN and values outside [low, high]."""
    if column.dtype.kind not in "biuf" or column.ndim != 1:
        raise InvalidEventsError(f"field {name!r} must be a scalar integer, bool or float field")
    if column.size == 0:
        return column.astype(np.int64)
    if column.dtype.kind == "f":
        if not np.isfinite(column).all() or (column != np.round(column)).any():
            raise InvalidEventsError(f"field {name!r} must hold whole numbers")
        if column.min() < low or column.max() > high:
            raise InvalidEventsError(f"field {name!r} must lie in [{low}, {high}]")
        return column.astype(np.int64)
    if int(column.min()) < low or int(column.max()) > high:
        raise InvalidEventsError(
            f"field {name!r} must lie in [{low}, {high}], got [{column.min()}, {column.max()}]"
        )
    return column.astype(np.int64)


def write_npy(events: np.ndarray) -> bytes:
    """Encode events [N] EVENT_DTYPE as ``.npy`` bytes (format 1.0, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(events, dtype=EVENT_DTYPE), allow_pickle=False)
    return buffer.getvalue()
