"""Which event format a body is: from a ``format`` name, a content type, or the file's magic bytes.

An explicit ``format`` wins over the content type, which wins over sniffing; generic content
types (none, ``application/octet-stream``) fall through to sniffing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eventio import EventRecording
from eventio.errors import CorruptFileError, UnknownFormatError

FORMATS = ("aedat4", "nmnist", "npy", "aedat3", "aedat2")

# name (as a ``format`` query or a file extension) -> format
FORMAT_NAMES = {
    "aedat4": "aedat4",
    "nmnist": "nmnist",
    "bin": "nmnist",
    "npy": "npy",
    "aedat3": "aedat3",
    "aedat31": "aedat3",
    "aedat2": "aedat2",
}

CONTENT_TYPES = {
    "application/x-aedat4": "aedat4",
    "application/aedat4": "aedat4",
    "application/x-aedat3": "aedat3",
    "application/x-aedat2": "aedat2",
    "application/x-nmnist": "nmnist",
    "application/x-npy": "npy",
    "application/npy": "npy",
}
GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")

MAGIC = (
    (b"#!AER-DAT4.0", "aedat4"),
    (b"#!AER-DAT3.1", "aedat3"),
    (b"#!AER-DAT2.0", "aedat2"),
    (b"\x93NUMPY", "npy"),
)
_NMNIST_SNIFF_RECORDS = 4096


def detect_format(data: bytes | memoryview, content_type: str | None = None, fmt: str | None = None) -> str:
    """One of FORMATS for ``data``.

    ``fmt`` may also be "aedat" (any AEDAT version, chosen by the magic bytes). Raises
    UnknownFormatError for an unknown ``fmt`` or content type, or bytes no reader recognises;
    CorruptFileError when the bytes' magic names another format than the stated one (the message
    says which, so the caller can fix the request).
    """
    stated = None
    if fmt is not None and fmt.strip():
        key = fmt.strip().lower().lstrip(".")
        if key == "aedat":  # any AEDAT version: the magic bytes say which
            announced = _magic_format(data)
            if announced not in ("aedat4", "aedat3", "aedat2"):
                raise CorruptFileError("the request says aedat but the bytes carry no '#!AER-DAT' magic")
            return str(announced)
        if key not in FORMAT_NAMES:
            raise UnknownFormatError(f"unknown event format {fmt!r}; use one of {', '.join(FORMATS)}")
        stated = FORMAT_NAMES[key]
    elif content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in GENERIC_CONTENT_TYPES:
            if media not in CONTENT_TYPES:
                accepted = ", ".join(sorted(CONTENT_TYPES))
                raise UnknownFormatError(
                    f"content type {media!r} is not an event recording; send one of {accepted}, "
                    "or application/octet-stream to let the server recognise the file"
                )
            stated = CONTENT_TYPES[media]
    if stated is None:
        sniffed = sniff_format(data)
        if sniffed is None:
            raise UnknownFormatError(
                "the body is not a recognised event recording (AEDAT 4.0/3.1/2.0, N-MNIST .bin or .npy); "
                "name it with the format parameter or a content type"
            )
        return sniffed
    announced = _magic_format(data)
    if announced is not None and announced != stated:
        raise CorruptFileError(
            f"the request says {stated} but the bytes are {announced} (by their magic bytes)"
        )
    return stated


def sniff_format(data: bytes | memoryview) -> str | None:
    """The format the bytes announce by their magic, else "nmnist" when they look like it, else None."""
    announced = _magic_format(data)
    if announced is not None:
        return announced
    return "nmnist" if _looks_like_nmnist(data) else None


def _magic_format(data: bytes | memoryview) -> str | None:
    head = bytes(memoryview(data).cast("B")[:16])
    return next((name for magic, name in MAGIC if head.startswith(magic)), None)


def _looks_like_nmnist(data: bytes | memoryview) -> bool:
    """N-MNIST has no magic: whole 5-byte records whose first timestamps never go backwards."""
    view = memoryview(data).cast("B")
    if len(view) == 0 or len(view) % 5:
        return False
    raw = np.frombuffer(view[: 5 * _NMNIST_SNIFF_RECORDS], dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    overflow = raw[:, 1] == 240
    stamps = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    stamps = stamps + np.cumsum(overflow) * (1 << 13)  # what read_nmnist does with overflow records
    return bool(np.all(np.diff(stamps[~overflow]) >= 0))


def read_events(
    data: bytes | memoryview,
    *,
    fmt: str | None = None,
    content_type: str | None = None,
    max_events: int | None = None,
) -> EventRecording:
    """Detect the format (see ``detect_format``) and decode with that format's reader."""
    from eventio.aedat2 import read_aedat2
    from eventio.aedat3 import read_aedat3
    from eventio.aedat4 import read_aedat4
    from eventio.nmnist import read_nmnist
    from eventio.npy import read_npy

    readers: dict[str, Callable[..., EventRecording]] = {
        "aedat4": read_aedat4,
        "nmnist": read_nmnist,
        "npy": read_npy,
        "aedat3": read_aedat3,
        "aedat2": read_aedat2,
    }
    return readers[detect_format(data, content_type, fmt)](data, max_events=max_events)
