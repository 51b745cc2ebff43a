"""The ``#`` text header shared by AEDAT 2.0 and 3.1 files."""

from __future__ import annotations

from eventio.errors import CorruptFileError

MAX_HEADER_BYTES = 1 << 20


def split_header(view: memoryview, magic: bytes, *, end_line: bytes | None) -> tuple[list[str], int]:
    """(header lines without '#', offset of the first data byte).

    With ``end_line`` the header ends after that exact line (AEDAT 3.1's ``#!END-HEADER``);
    without, at the first line that does not start with '#' (AEDAT 2.0).
    """
    # b"#!AER-DAT3.1\r\n" names the format "AER-DAT3.1"
    name = magic[2:].decode("ascii").strip()
    if bytes(view[: len(magic)]) != magic:
        raise CorruptFileError(f"not an {name} file: it does not start with '#!{name}'")
    head = bytes(view[:MAX_HEADER_BYTES])
    lines: list[str] = []
    pos = 0
    while pos < len(head) and head[pos : pos + 1] == b"#":
        newline = head.find(b"\n", pos)
        if newline < 0:
            break
        line = head[pos : newline + 1]
        lines.append(line[1:].decode("latin1").strip())
        pos = newline + 1
        if end_line is not None and line == end_line:
            return lines, pos
    if end_line is not None or pos >= MAX_HEADER_BYTES:
        raise CorruptFileError(f"the {name} header has no end within {MAX_HEADER_BYTES:,} bytes")
    return lines, pos
