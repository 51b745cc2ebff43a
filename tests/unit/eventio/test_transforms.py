"""eventio/transforms.py: centre crop (and pad) and coordinate scaling."""

from __future__ import annotations

import numpy as np
import pytest

from eventio import make_events
from eventio.transforms import crop_events, scale_events


def test_crop_keeps_the_centre_and_shifts_it() -> None:
    events = make_events([0, 3, 6, 9], [0, 2, 4, 5], [1, 2, 3, 4], [0, 1, 0, 1])
    cropped = crop_events(events, (10, 6), (4, 2))  # window x 3..6, y 2..3
    assert cropped.tolist() == [(0, 0, 2, 1)]


def test_crop_to_a_larger_target_centres_every_event() -> None:
    events = make_events([0, 33], [0, 33], [1, 2], [0, 1])
    padded = crop_events(events, (34, 34), (40, 36))
    assert padded["x"].tolist() == [3, 36] and padded["y"].tolist() == [1, 34]


def test_scale_maps_the_sensor_onto_the_target() -> None:
    events = make_events([0, 159, 160, 319], [0, 119, 120, 239], [1, 2, 3, 4], [0, 1, 0, 1])
    scaled = scale_events(events, (320, 240), (34, 34))
    assert scaled["x"].tolist() == [0, 16, 17, 33]
    assert scaled["y"].tolist() == [0, 16, 17, 33]
    assert scaled["t"].tolist() == [1, 2, 3, 4] and scaled["p"].tolist() == [0, 1, 0, 1]


def test_scale_refuses_events_off_the_source_sensor() -> None:
    with pytest.raises(ValueError, match="outside"):
        scale_events(make_events([40], [0], [0], [0]), (34, 34), (10, 10))


def test_inputs_are_not_modified() -> None:
    events = make_events([5], [5], [0], [1])
    before = events.copy()
    crop_events(events, (10, 10), (4, 4))
    scale_events(events, (10, 10), (4, 4))
    np.testing.assert_array_equal(events, before)
