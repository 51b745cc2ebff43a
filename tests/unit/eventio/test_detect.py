"""eventio/detect.py: format by name, content type and magic bytes; read_events dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventio import CorruptFileError, UnknownFormatError, detect_format, read_events
from eventio.aedat4 import write_aedat4
from eventio.nmnist import write_nmnist
from eventio.npy import write_npy


@pytest.fixture
def files(random_events) -> dict[str, bytes]:
    events = random_events(50)
    return {
        "aedat4": write_aedat4(events, (34, 34)),
        "nmnist": write_nmnist(events),
        "npy": write_npy(events),
        "aedat3": b"#!AER-DAT3.1\r\n#!END-HEADER\r\n",
        "aedat2": b"#!AER-DAT2.0\r\n",
    }


@pytest.mark.parametrize("fmt", ["aedat4", "nmnist", "npy", "aedat3", "aedat2"])
def test_magic_bytes(files: dict[str, bytes], fmt: str) -> None:
    assert detect_format(files[fmt]) == fmt
    assert detect_format(files[fmt], "application/octet-stream") == fmt


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/x-aedat4", "aedat4"),
        ("application/x-npy; charset=binary", "npy"),
        ("APPLICATION/X-NMNIST", "nmnist"),
    ],
)
def test_content_type(files: dict[str, bytes], content_type: str, expected: str) -> None:
    assert detect_format(files[expected], content_type) == expected


def test_format_name_wins_over_content_type(files: dict[str, bytes]) -> None:
    assert detect_format(files["nmnist"], "application/x-npy", ".bin") == "nmnist"


@pytest.mark.parametrize("fmt", ["aedat4", "aedat3", "aedat2"])
def test_plain_aedat_lets_the_magic_choose_the_version(files: dict[str, bytes], fmt: str) -> None:
    assert detect_format(files[fmt], fmt="aedat") == fmt
    with pytest.raises(CorruptFileError, match="no '#!AER-DAT' magic"):
        detect_format(files["nmnist"], fmt="AEDAT")


def test_real_nmnist_is_sniffed(shared_data: Path) -> None:
    assert detect_format((shared_data / "nmnist_sample.bin").read_bytes()) == "nmnist"


@pytest.mark.parametrize(
    ("data", "content_type", "fmt", "match"),
    [
        (b"x" * 10, None, "mp4", "unknown event format"),
        (b"x" * 10, "image/png", None, "not an event recording"),
        (b"just some text", None, None, "not a recognised"),
    ],
)
def test_unknown(data: bytes, content_type: str | None, fmt: str | None, match: str) -> None:
    with pytest.raises(UnknownFormatError, match=match):
        detect_format(data, content_type, fmt)


def test_stated_format_contradicted_by_magic(files: dict[str, bytes]) -> None:
    with pytest.raises(CorruptFileError, match="says npy but the bytes are aedat4"):
        detect_format(files["aedat4"], "application/x-npy")


def test_read_events_dispatches(files: dict[str, bytes], random_events) -> None:
    recording = read_events(files["npy"], max_events=50)
    assert recording.format == "npy"
    assert recording.events.tolist() == random_events(50).tolist()
