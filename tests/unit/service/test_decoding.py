"""service/decoding: every undecodable, oversized, unsupported or unusable input gets its typed error."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eventio import make_events
from eventio.aedat4 import read_layout, write_aedat4
from eventio.nmnist import write_nmnist
from eventio.npy import write_npy
from registry.manifest import EventInput, ImageInput
from service.decoding import decode_events, decode_image, fit_to_sensor
from service.decoding.errors import (
    PayloadTooLargeError,
    UndecodableInputError,
    UnsupportedMediaTypeError,
)
from workers.errors import InvalidInputError

GRAY28 = ImageInput(channels=1, height=28, width=28)
RGB28 = ImageInput(channels=3, height=28, width=28)
MAX_PIXELS = 4096 * 4096
MAX_EVENTS = 100_000
NOISE = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # does not compress


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels, with one tiny IDAT chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- images


def test_png_gray_exact() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    decoded = decode_image(_png(pixels), "image/png", GRAY28, MAX_PIXELS)
    assert decoded.array.shape == (1, 28, 28) and decoded.array.dtype == np.float32
    np.testing.assert_allclose(decoded.array[0], pixels / 255.0, rtol=0, atol=1e-7)
    assert decoded.warnings == []


def test_rgb_to_gray_and_gray_to_rgb() -> None:
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    gray = decode_image(_png(rgb), "image/png", GRAY28, MAX_PIXELS)
    np.testing.assert_allclose(gray.array, 0.299, atol=1e-6)
    assert "1 channel" in gray.warnings[0]
    color = decode_image(_png(np.full((28, 28), 51, np.uint8)), "image/png", RGB28, MAX_PIXELS)
    assert color.array.shape == (3, 28, 28)
    np.testing.assert_allclose(color.array, 0.2, atol=1e-6)


def test_sixteen_bit_png_uses_the_full_range() -> None:
    pixels = np.full((28, 28), 65535 // 5, dtype=np.uint16)
    decoded = decode_image(_png(pixels), "image/png", GRAY28, MAX_PIXELS)
    np.testing.assert_allclose(decoded.array, 0.2, atol=1e-4)


def test_jpeg_decodes() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(buffer, format="JPEG")
    decoded = decode_image(buffer.getvalue(), "image/jpeg", RGB28, MAX_PIXELS)
    np.testing.assert_allclose(decoded.array, 128 / 255, atol=0.02)


def test_jpeg_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": a 28 wide x 14 high photo shows 14 x 28
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((14, 28), np.uint8)).save(buffer, format="JPEG", exif=exif)
    upright = ImageInput(channels=1, height=28, width=14, resize=False)
    assert decode_image(buffer.getvalue(), "image/jpeg", upright, MAX_PIXELS).array.shape == (1, 28, 14)


def test_other_sizes_resize_with_a_warning_or_422() -> None:
    data = _png(np.full((56, 40), 255, np.uint8))
    decoded = decode_image(data, None, GRAY28, MAX_PIXELS)  # sniffed by its magic bytes
    assert decoded.array.shape == (1, 28, 28)
    np.testing.assert_allclose(decoded.array, 1.0, atol=1e-5)
    assert "resized the image from 40x56 to 28x28" in decoded.warnings
    strict = ImageInput(channels=1, height=28, width=28, resize=False)
    with pytest.raises(InvalidInputError, match="40x56 but the model takes 28x28"):
        decode_image(data, "image/png", strict, MAX_PIXELS)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    data = _png_claiming(100_000, 100_000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PayloadTooLargeError, match="pixels"):
            decode_image(data, "image/png", GRAY28, MAX_PIXELS)
        assert time.perf_counter() - started < 2
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()


def test_pixel_limit_is_the_callers() -> None:
    with pytest.raises(PayloadTooLargeError, match="over the limit of 100"):
        decode_image(_png(np.zeros((28, 28), np.uint8)), "image/png", GRAY28, max_pixels=100)


@pytest.mark.parametrize(
    ("data", "content_type", "error", "match"),
    [
        (b"", "image/png", UndecodableInputError, "empty"),
        (b"not a png at all", "image/png", UndecodableInputError, "not a valid PNG"),
        (_png(NOISE)[:-100], "image/png", UndecodableInputError, "truncated"),
        (b"hello", "text/plain", UnsupportedMediaTypeError, "'text/plain' is not an image"),
        (b"GIF89a....", "application/octet-stream", UnsupportedMediaTypeError, "not a PNG, JPEG or .npy"),
    ],
)
def test_bad_images(data: bytes, content_type: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_image(data, content_type, GRAY28, MAX_PIXELS)


def test_npy_images() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    decoded = decode_image(_npy(pixels), "application/x-npy", GRAY28, MAX_PIXELS)
    np.testing.assert_allclose(decoded.array[0], pixels / 255.0, atol=1e-7)
    floats = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(decode_image(_npy(floats), None, RGB28, MAX_PIXELS).array, floats)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (_npy(np.full((28, 28), 2.0, np.float32)), InvalidInputError, r"in \[0, 1\]"),
        (_npy(np.zeros((28, 28), np.int32)), InvalidInputError, "uint8"),
        (_npy(np.zeros((1, 1, 28, 28), np.uint8)), InvalidInputError, "shape"),
        (_npy(np.array([None, 1], dtype=object), allow_pickle=True), UndecodableInputError, "pickle"),
        (_npy(np.zeros((28, 28), np.uint8))[:-10], UndecodableInputError, "truncated"),
    ],
)
def test_bad_npy_images(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_image(data, "application/x-npy", GRAY28, MAX_PIXELS)


def test_npy_pixel_count_is_checked_from_the_header() -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    with pytest.raises(PayloadTooLargeError):
        decode_image(buffer.getvalue(), "application/x-npy", GRAY28, MAX_PIXELS)


# ---------------------------------------------------------------- events


def _events(n: int, width: int = 34, height: int = 34, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        np.sort(rng.integers(0, 10**5, n)),
        rng.integers(0, 2, n),
    )


def test_real_recordings(shared_data: Path) -> None:
    nmnist = decode_events((shared_data / "nmnist_sample.bin").read_bytes(), None, None, MAX_EVENTS)
    assert (nmnist.format, len(nmnist.events), nmnist.sensor_size, nmnist.warnings) == (
        "nmnist",
        4325,
        (34, 34),
        [],
    )
    dvx = decode_events((shared_data / "dvxplorer_320x240.aedat4").read_bytes(), None, "aedat4", 5_000_000)
    assert (len(dvx.events), dvx.sensor_size) == (111_954, (320, 240))
    assert any("IMUS" in w for w in dvx.warnings) and any("TRIG" in w for w in dvx.warnings)


def test_too_many_events_is_413(shared_data: Path) -> None:
    for name in ("nmnist_sample.bin", "dvxplorer_320x240.aedat4"):
        with pytest.raises(PayloadTooLargeError, match="limit of 1,000"):
            decode_events((shared_data / name).read_bytes(), None, None, 1000)


def test_coordinates_outside_the_stated_sensor_is_422() -> None:
    data = write_aedat4(_events(100, width=64, height=64), (64, 64))
    shrunk = data.replace(b'"sizeX" type="int">64<', b'"sizeX" type="int">32<')  # same length: still valid
    with pytest.raises(InvalidInputError, match="outside the 32x64 sensor"):
        decode_events(shrunk, "application/x-aedat4", None, MAX_EVENTS)


def test_timestamps_going_backwards_is_422_and_says_where() -> None:
    events = make_events([1, 2, 3, 4], [1, 1, 1, 1], [10, 20, 15, 30], [1, 0, 1, 0])
    with pytest.raises(InvalidInputError, match="backwards at event 2: t=15 us after t=20 us"):
        decode_events(write_npy(events), "application/x-npy", None, MAX_EVENTS)


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"", "body holds no bytes"), (write_aedat4(_events(0), (34, 34)), "holds no events")],
)
def test_empty_recording_is_422(data: bytes, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        decode_events(data, None, None, MAX_EVENTS)


@pytest.mark.parametrize(
    ("content_type", "fmt", "data"),
    [
        (None, "mp4", write_nmnist(_events(10))),
        ("video/mp4", None, write_nmnist(_events(10))),
        ("application/octet-stream", None, b"\x00\x01\x02 not an event file"),
    ],
)
def test_unknown_format_is_415(content_type: str | None, fmt: str | None, data: bytes) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        decode_events(data, content_type, fmt, MAX_EVENTS)


def _hostile_2gb_packet() -> bytes:
    data = bytearray(write_aedat4(_events(100), (34, 34)))
    struct.pack_into("<i", data, read_layout(bytes(data)).packets[0].offset - 4, 2**31 - 1)
    return bytes(data)


def _lz4_claiming_1tb() -> bytes:
    data = bytearray(write_aedat4(_events(100), (34, 34)))
    struct.pack_into("<Q", data, read_layout(bytes(data)).packets[0].offset + 6, 1 << 40)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "fmt", "error"),
    [
        (write_aedat4(_events(100), (34, 34))[:-50], None, UndecodableInputError),
        (_hostile_2gb_packet(), None, UndecodableInputError),
        (_lz4_claiming_1tb(), None, PayloadTooLargeError),
        (write_nmnist(_events(10)) + b"\x01", "nmnist", UndecodableInputError),
        (write_npy(_events(10))[:-5], None, UndecodableInputError),
        (write_npy(_events(10)), "aedat4", UndecodableInputError),  # the magic contradicts the format
    ],
)
def test_corrupt_or_hostile_bytes(data: bytes, fmt: str | None, error: type[Exception]) -> None:
    started = time.perf_counter()
    with pytest.raises(error):
        decode_events(data, None, fmt, 5_000_000)
    assert time.perf_counter() - started < 2


def test_negative_coordinates_in_npy_is_422() -> None:
    array = np.zeros(2, dtype=[("x", "i4"), ("y", "i4"), ("t", "i8"), ("p", "u1")])
    array["x"] = [-3, 1]
    with pytest.raises(InvalidInputError, match="'x'"):
        decode_events(_npy(array), "application/x-npy", None, MAX_EVENTS)


# ---------------------------------------------------------------- fit_to_sensor

SPEC34 = EventInput(sensor_width=34, sensor_height=34)


def _decoded(events: np.ndarray, size: tuple[int, int]):
    return decode_events(write_aedat4(events, size), None, None, MAX_EVENTS)


def test_other_sensor_needs_fit() -> None:
    decoded = _decoded(_events(500, 320, 240), (320, 240))
    with pytest.raises(InvalidInputError, match="sensor is 320x240 but the model takes 34x34; pass fit=crop"):
        fit_to_sensor(decoded, SPEC34, None)
    cropped, warnings = fit_to_sensor(decoded, SPEC34, "crop")
    assert 0 < len(cropped) < 500 and cropped["x"].max() < 34 and cropped["y"].max() < 34
    assert "cropped the 320x240 recording to its central 34x34" in warnings[0]
    scaled, warnings = fit_to_sensor(decoded, SPEC34, "scale")
    assert len(scaled) == 500 and scaled["x"].max() < 34 and scaled["y"].max() < 34
    assert warnings == ["scaled the 320x240 recording to 34x34"]


def test_matching_sensor_passes_unchanged() -> None:
    decoded = _decoded(_events(50), (34, 34))
    events, warnings = fit_to_sensor(decoded, SPEC34, "crop")
    np.testing.assert_array_equal(events, decoded.events)
    assert warnings == []


def test_unstated_size_uses_the_events() -> None:
    small = decode_events(write_npy(_events(50, 20, 20)), None, None, MAX_EVENTS)
    assert fit_to_sensor(small, SPEC34, None)[0] is small.events
    large = decode_events(write_npy(_events(50, 100, 60)), None, None, MAX_EVENTS)
    with pytest.raises(InvalidInputError, match="states no sensor size"):
        fit_to_sensor(large, SPEC34, None)
    scaled, _ = fit_to_sensor(large, SPEC34, "scale")
    assert scaled["x"].max() < 34 and scaled["y"].max() < 34


def test_bad_fit_and_crop_that_keeps_nothing() -> None:
    decoded = _decoded(make_events([0], [0], [0], [1]), (320, 240))
    with pytest.raises(InvalidInputError, match="fit must be"):
        fit_to_sensor(decoded, SPEC34, "stretch")
    with pytest.raises(InvalidInputError, match="no events left"):
        fit_to_sensor(decoded, SPEC34, "crop")


def test_decoding_never_imports_torch() -> None:
    code = "import sys, service.decoding; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
