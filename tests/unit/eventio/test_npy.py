"""eventio/npy.py: header-first reading, accepted column types, refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest

from eventio import EVENT_DTYPE, CorruptFileError, InvalidEventsError, LimitExceededError
from eventio.npy import read_header, read_npy, write_npy


def _save(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_round_trip(random_events) -> None:
    events = random_events(500)
    recording = read_npy(write_npy(events))
    np.testing.assert_array_equal(recording.events, events)
    assert recording.sensor_size is None and recording.format == "npy"


def test_other_column_types_are_converted() -> None:
    array = np.zeros(3, dtype=[("t", "f8"), ("x", "i2"), ("y", "u4"), ("p", "?"), ("extra", "f4")])
    array["t"], array["x"], array["y"], array["p"] = (
        [1.0, 2.0, 3.0],
        [1, 2, 3],
        [4, 5, 6],
        [True, False, True],
    )
    events = read_npy(_save(array)).events
    assert events.tolist() == [(1, 4, 1, 1), (2, 5, 2, 0), (3, 6, 3, 1)]


def test_signed_polarity_is_mapped_with_a_warning() -> None:
    array = np.zeros(2, dtype=[("x", "i2"), ("y", "i2"), ("t", "i8"), ("p", "i1")])
    array["p"] = [-1, 1]
    recording = read_npy(_save(array))
    assert recording.events["p"].tolist() == [0, 1]
    assert "-1/+1" in recording.warnings[0]


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(2, dtype=[("x", "i2"), ("y", "i2"), ("t", "i8")]), "missing p"),
        (np.zeros((2, 2), dtype=[("x", "i2"), ("y", "i2"), ("t", "i8"), ("p", "u1")]), "1-D"),
        (np.array([(-1, 0, 0, 0)], dtype=[("x", "i2"), ("y", "i2"), ("t", "i8"), ("p", "u1")]), "'x'"),
        (np.array([(0, 0, 0.5, 0)], dtype=[("x", "i2"), ("y", "i2"), ("t", "f8"), ("p", "u1")]), "whole"),
        (np.array([(0, 0, 0, 3)], dtype=[("x", "i2"), ("y", "i2"), ("t", "i8"), ("p", "u1")]), "'p'"),
        (np.zeros(4, dtype="f4"), "structured"),
    ],
)
def test_unusable_arrays_are_invalid(array: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidEventsError, match=match):
        read_npy(_save(array))


def test_object_arrays_are_never_unpickled() -> None:
    data = _save(np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match="pickle"):
        read_npy(data)


def test_limit_is_checked_from_the_header_alone() -> None:
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype([("x", "u2"), ("y", "u2"), ("t", "i8"), ("p", "u1")]))
    header = {"descr": descr, "fortran_order": False, "shape": (10**12,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    claimed = buffer.getvalue() + bytes(13)  # 10**12 events claimed, one present
    with pytest.raises(LimitExceededError):
        read_npy(bytes(claimed), max_events=1000)
    with pytest.raises(CorruptFileError, match="truncated"):
        read_npy(bytes(claimed))


def test_broken_files_are_corrupt() -> None:
    with pytest.raises(CorruptFileError, match=r"not a \.npy"):
        read_npy(b"hello")
    with pytest.raises(CorruptFileError, match="not readable"):
        read_header(b"\x93NUMPY\x01\x00\x06\x00{'a':\n")


def test_header_reports_shape_and_offset() -> None:
    data = _save(np.zeros((2, 3), dtype="u1"))
    dtype, shape, fortran, offset = read_header(data)
    assert (dtype, shape, fortran) == (np.dtype("u1"), (2, 3), False)
    assert len(data) - offset == 6


def _npy_with_header(header: str, payload: bytes = bytes(64)) -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


@pytest.mark.parametrize("shape", ["'12'", "(2.5, 3)", "(2, 3.0)", "(True, 3)", "[2, 3]"])
def test_a_shape_that_is_not_a_tuple_of_integers_is_corrupt(shape: str) -> None:
    """A string shape would iterate as its characters, a float one truncate: both describe other bytes."""
    data = _npy_with_header(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}")
    with pytest.raises(CorruptFileError, match="shape"):
        read_header(data)
    assert read_header(_npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }"))[
        1
    ] == (2, 3)


def test_headers_that_differ_only_in_length_are_read_alike() -> None:
    # the second and later arrays of a stream reuse the first one's parsed header (its template)
    events = np.zeros(40, dtype=EVENT_DTYPE)
    for count in (3, 17, 0, 40, 3):
        data = write_npy(events[:count])
        dtype, shape, fortran, offset = read_header(data)
        assert (dtype, shape, fortran) == (np.dtype(EVENT_DTYPE), (count,), False)
        assert len(data) - offset == count * dtype.itemsize
        assert np.array_equal(read_npy(data).events, events[:count])


def test_a_header_with_two_shapes_is_read_as_a_whole() -> None:
    """Only a header whose one length is where the template cuts is ever read from a template."""
    for _ in range(2):
        data = _npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (5,), 'shape': (3,), }")
        assert read_header(data)[1] == (3,)  # the later key wins, as ast.literal_eval reads it
    for _ in range(2):
        data = _npy_with_header("{'descr': '|u1', 'fortran_order': True, 'shape': (9,), }")
        assert read_header(data)[1:3] == ((9,), True)
    with pytest.raises(CorruptFileError, match="object"):
        read_header(_npy_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (9,), }"))
