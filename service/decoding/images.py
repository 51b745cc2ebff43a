"""Images at the gateway: PNG, JPEG or ``.npy`` bytes -> [C, H, W] float32 in [0, 1] at the model's size.

torch-free. The pixel count and the decoded size (``decoded_bytes``: the image as float32) are
checked from the header, before any pixel is decoded (PNG and JPEG through Pillow's lazy
``Image.open``; ``.npy`` through its header), so a decompression bomb costs a header read.
Errors are typed (service/decoding/errors.py, workers.errors): 400 undecodable, 413 too many
pixels or decoded bytes, 415 unsupported type, 422 unusable (size, channels, values).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eventio.errors import CorruptFileError
from eventio.npy import read_header
from registry.manifest import ImageInput
from service.decoding.errors import (
    PayloadTooLargeError,
    UndecodableInputError,
    UnsupportedMediaTypeError,
)
from workers.errors import InvalidInputError

CONTENT_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "application/x-npy": "NPY",
    "application/npy": "NPY",
}
GENERIC_CONTENT_TYPES = ("", "application/octet-stream")
MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"\x93NUMPY", "NPY"))
# ITU-R 601-2 luma, the weights Pillow's convert("L") uses
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
NPY_DTYPES = "uint8 (0-255), uint16 (0-65535), bool, or float16/32/64 in [0, 1]"

# Pillow's own decompression-bomb guard (it refuses over twice this many pixels at open) stays
# on as a second line behind the explicit max_pixels check: re-enable it if anything disabled it.
if Image.MAX_IMAGE_PIXELS is None:
    Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default


@dataclass(frozen=True)
class DecodedImage:
    """array: [C, H, W] float32 in [0, 1], C/H/W those of the model's ImageInput."""

    array: np.ndarray
    warnings: list[str] = field(default_factory=list)


def decoded_bytes(data: bytes, content_type: str | None) -> int:
    """Bytes the image takes decoded, as float32 [C, H, W], read from its header (0 if unreadable:
    ``decode_image`` then says what is wrong with it)."""
    try:
        kind = _kind(data, content_type)
        if kind == "NPY":
            _, shape, _, _ = read_header(data)
            return 4 * int(np.prod(shape)) if len(shape) in (2, 3) else 0
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            return 4 * image.width * image.height * len(image.getbands())
    except Exception:  # anything unreadable is decode_image's to report
        return 0


def decode_image(
    data: bytes,
    content_type: str | None,
    spec: ImageInput,
    max_pixels: int,
    max_decoded_bytes: int | None = None,
) -> DecodedImage:
    """Decode one uploaded image for a model whose input is ``spec``.

    Grayscale/RGB are converted to the model's channels and other sizes resized (with a warning)
    when ``spec.resize``; otherwise a 422 states both sizes. An image over ``max_pixels`` pixels,
    or over ``max_decoded_bytes`` once decoded to float32, is refused (413) from its header.
    """
    if not data:
        raise UndecodableInputError("the image is empty: the body holds no bytes")
    kind = _kind(data, content_type)
    if max_decoded_bytes is not None:
        needed = decoded_bytes(data, content_type)
        if needed > max_decoded_bytes:
            raise PayloadTooLargeError(
                f"the image takes {needed:,} bytes decoded (float32, every channel), over the limit of "
                f"{max_decoded_bytes:,} (SPIKESERVE_MAX_DECODED_BYTES); send it smaller or in fewer channels"
            )
    notes: list[str] = []
    array = _decode_npy(data, max_pixels) if kind == "NPY" else _decode_picture(data, kind, max_pixels, notes)
    array = _to_channels(array, spec.channels, notes)
    array = _to_size(array, spec, notes)
    return DecodedImage(np.ascontiguousarray(array, dtype=np.float32), notes)


def _kind(data: bytes, content_type: str | None) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in CONTENT_TYPES:
        return CONTENT_TYPES[media]
    if media not in GENERIC_CONTENT_TYPES:
        raise UnsupportedMediaTypeError(
            f"content type {media!r} is not an image; send image/png, image/jpeg or application/x-npy"
        )
    sniffed = next((kind for magic, kind in MAGIC if data.startswith(magic)), None)
    if sniffed is None:
        raise UnsupportedMediaTypeError(
            "the body is not a PNG, JPEG or .npy image; send image/png, image/jpeg or application/x-npy"
        )
    return sniffed


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )


def _decode_picture(data: bytes, kind: str, max_pixels: int, notes: list[str]) -> np.ndarray:
    """PNG or JPEG -> [C, H, W] float32 in [0, 1] (C = 1 or 3)."""
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])  # reads the header only
        _check_pixels(image.width, image.height, max_pixels)
        if image.format != kind:
            notes.append(f"the body is a {image.format} image although the request says {kind}")
        image.load()
        picture: Image.Image = ImageOps.exif_transpose(image)  # photos: upright as their camera meant
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"the image is over the pixel limit: {exc}") from None
    except UnidentifiedImageError:
        raise UndecodableInputError(f"the body is not a valid {kind} image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt pixel data
        raise UndecodableInputError(f"the {kind} image is corrupt or truncated: {exc}") from None
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grayscale PNG: scale by the 16-bit range instead of clipping to 8 bits
        gray = np.asarray(picture, dtype=np.float32) / 65535.0
        return np.clip(gray, 0.0, 1.0)[None]
    if image.mode not in ("L", "RGB"):
        if "A" in image.mode or "transparency" in image.info:
            notes.append(
                f"dropped the transparency of the {image.mode} image (transparent pixels keep their colour)"
            )
        picture = picture.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    array = np.asarray(picture, dtype=np.float32)
    array /= 255.0  # in place: a second float copy of a large image is its biggest allocation
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """[H, W] or [C, H, W] ``.npy`` -> [C, H, W] float32 in [0, 1], its size checked from the header."""
    try:
        dtype, shape, fortran_order, offset = read_header(data)
    except CorruptFileError as exc:
        raise UndecodableInputError(str(exc)) from None
    if len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[0] <= 4):
        raise InvalidInputError(f".npy images must be [H, W] or [C, H, W] with C <= 4, got shape {shape}")
    height, width = shape[-2:]
    if height == 0 or width == 0:
        raise InvalidInputError(f"the .npy image is empty (shape {shape})")
    _check_pixels(width, height, max_pixels)
    if dtype.names is not None or dtype.kind not in "buf" or (dtype.kind == "u" and dtype.itemsize > 2):
        raise InvalidInputError(f".npy images must be {NPY_DTYPES}; got {dtype}")
    count = int(np.prod(shape))
    if offset + count * dtype.itemsize > len(data):
        raise UndecodableInputError(
            f"the .npy image is truncated: its header states shape {shape} of {dtype}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array = flat.reshape(shape, order="F" if fortran_order else "C").astype(np.float32)
    if dtype.kind == "u":
        array /= 255.0 if dtype.itemsize == 1 else 65535.0
    elif dtype.kind == "f" and (not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0):
        raise InvalidInputError(f".npy float images must hold finite values in [0, 1]; use {NPY_DTYPES}")
    return array[None] if array.ndim == 2 else array


def _to_channels(array: np.ndarray, channels: int, notes: list[str]) -> np.ndarray:
    have = array.shape[0]
    if have == channels:
        return array
    if have == 1 and channels == 3:
        notes.append("converted the 1-channel image to 3 channels (gray repeated)")
        return np.repeat(array, 3, axis=0)
    if have in (3, 4) and channels == 1:
        notes.append(f"converted the {have}-channel image to 1 channel (luma)")
        return np.tensordot(LUMA, array[:3], axes=1)[None]
    if have == 4 and channels == 3:
        notes.append("dropped the 4th (alpha) channel")
        return array[:3]
    raise InvalidInputError(f"the image has {have} channels but the model takes {channels}")


def _to_size(array: np.ndarray, spec: ImageInput, notes: list[str]) -> np.ndarray:
    height, width = array.shape[1:]
    if (height, width) == (spec.height, spec.width):
        return array
    if not spec.resize:
        raise InvalidInputError(
            f"the image is {width}x{height} but the model takes {spec.width}x{spec.height} (width x height)"
        )
    notes.append(f"resized the image from {width}x{height} to {spec.width}x{spec.height}")
    # per channel in 32-bit float mode: Pillow's resize filters (antialiased when shrinking) at full precision
    resized = [
        np.asarray(Image.fromarray(channel).resize((spec.width, spec.height), Image.Resampling.BILINEAR))
        for channel in np.ascontiguousarray(array, dtype=np.float32)
    ]
    return np.clip(np.stack(resized), 0.0, 1.0)
