"""eventio/__init__.py: the event layout, make_events, and the package staying torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from eventio import EVENT_DTYPE, make_events


def test_event_dtype_is_the_contract() -> None:
    expected = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
    assert expected == EVENT_DTYPE


def test_make_events_fills_every_field() -> None:
    events = make_events([1, 2], [3, 4], [10, 20], [True, False])
    assert events.dtype == EVENT_DTYPE
    assert events["x"].tolist() == [1, 2]
    assert events["y"].tolist() == [3, 4]
    assert events["t"].tolist() == [10, 20]
    assert events["p"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("x", "y", "p", "match"),
    [
        ([-1], [0], [0], "x must lie"),
        ([0], [65536], [0], "y must lie"),
        ([0], [0], [2], "p must hold"),
        ([0, 1], [0], [0], "equally long"),
    ],
)
def test_make_events_refuses_what_would_wrap(x: list[int], y: list[int], p: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_events(x, y, [0] * len(x), p)


def test_eventio_never_imports_torch() -> None:
    code = (
        "import sys, eventio, eventio.aedat4, eventio.aedat3, eventio.aedat2, eventio.nmnist, eventio.npy, "
        "eventio.transforms; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
