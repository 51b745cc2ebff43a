"""models/encoding.py: events_to_frames against a slow reference, the real N-MNIST sample, images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eventio import make_events
from eventio.nmnist import read_nmnist
from models.encoding import direct_encode, events_to_frames, normalize


def _random_events(n: int, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        np.sort(rng.integers(10**6, 10**6 + 50_000, n)),  # absolute times, like real cameras
        rng.integers(0, 2, n),
    )


def _reference(events, sensor_size, time_steps, binning, time_window_us=None, event_count=None) -> np.ndarray:
    """One event at a time, straight from the definitions in the docstring."""
    width, height = sensor_size
    frames = np.zeros((time_steps, 2, height, width), dtype=np.float32)
    times = [int(t) for t in events["t"]]
    first, last = min(times), max(times)
    for i, event in enumerate(events):
        t = int(event["t"])
        if binning == "time_bins":
            b = 0 if last == first else min((t - first) * time_steps // (last - first), time_steps - 1)
        elif binning == "time_window":
            b = (t - first) // time_window_us
        else:
            b = i // event_count
        if b < time_steps:
            frames[b, int(event["p"]), int(event["y"]), int(event["x"])] += 1
    return frames


@pytest.mark.parametrize(
    ("binning", "params"),
    [("time_bins", {}), ("time_window", {"time_window_us": 7_001}), ("event_count", {"event_count": 97})],
)
@pytest.mark.parametrize(("time_steps", "size", "seed"), [(3, (7, 5), 0), (16, (34, 34), 1), (1, (1, 1), 2)])
def test_matches_the_slow_reference(binning: str, params: dict, time_steps: int, size, seed: int) -> None:
    events = _random_events(1001, *size, seed=seed)
    frames = events_to_frames(events, sensor_size=size, time_steps=time_steps, binning=binning, **params)
    assert frames.shape == (time_steps, 2, size[1], size[0]) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, _reference(events, size, time_steps, binning, **params))


def test_real_nmnist_every_event_in_exactly_one_bin(shared_data: Path) -> None:
    events = read_nmnist((shared_data / "nmnist_sample.bin").read_bytes()).events
    for time_steps in (1, 4, 10, 16):
        frames = events_to_frames(events, sensor_size=(34, 34), time_steps=time_steps)
        assert frames.sum() == len(events) == 4325
        assert (frames.sum(axis=(1, 2, 3)) > 0).all()  # 311 ms of saccades: no empty bin
    np.testing.assert_array_equal(frames, _reference(events, (34, 34), 16, "time_bins"))


def test_time_bins_edges() -> None:
    # t = 0, 10 and 20 over T = 2 bins: [0, 10) and [10, 20]; the last event stays in the last bin
    events = make_events([0, 1, 2], [0, 0, 0], [0, 10, 20], [1, 1, 1])
    frames = events_to_frames(events, (3, 1), 2)
    assert frames[:, 1, 0].tolist() == [[1, 0, 0], [0, 1, 1]]
    same_time = make_events([0, 1], [0, 0], [5, 5], [0, 1])
    assert events_to_frames(same_time, (2, 1), 3)[0].sum() == 2


def test_polarity_channels() -> None:
    events = make_events([1, 1], [2, 2], [0, 1], [0, 1])
    frames = events_to_frames(events, (3, 4), 1)
    assert frames[0, 0, 2, 1] == 1 and frames[0, 1, 2, 1] == 1 and frames.sum() == 2


def test_windows_past_t_are_left_out() -> None:
    events = make_events([0, 0, 0], [0, 0, 0], [0, 5, 100], [1, 1, 1])
    frames = events_to_frames(events, (1, 1), 2, binning="time_window", time_window_us=10)
    assert frames.sum() == 2


def test_empty_recording_gives_empty_frames() -> None:
    frames = events_to_frames(make_events([], [], [], []), (4, 3), 5)
    assert frames.shape == (5, 2, 3, 4) and frames.sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sensor_size": (4, 4)}, "outside the 4x4 sensor"),
        ({"binning": "time_window"}, "time_window_us"),
        ({"binning": "event_count"}, "event_count"),
        ({"binning": "bogus"}, "unknown binning"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    events = make_events([5], [0], [0], [1])
    args = {"sensor_size": (8, 8), "time_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        events_to_frames(events, **args)


def test_direct_encode_repeats_over_time() -> None:
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    encoded = direct_encode(images, 3)
    assert encoded.shape == (3, 2, 3, 4, 5) and encoded.is_contiguous()
    for step in encoded:
        assert torch.equal(step, images)
    encoded[0, 0, 0, 0, 0] = -1.0  # a copy: writing one step touches neither the input nor other steps
    assert images[0, 0, 0, 0] == 0 and encoded[1, 0, 0, 0, 0] == 0


def test_normalize_per_channel() -> None:
    image = np.stack([np.full((2, 2), 0.5), np.full((2, 2), 1.0)]).astype(np.float32)
    out = normalize(image, mean=(0.5, 0.0), std=(0.25, 2.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.0)
    np.testing.assert_allclose(out[1], 0.5)
    np.testing.assert_allclose(normalize(image, (0.5,), (0.5,))[1], 1.0)
    with pytest.raises(ValueError, match="mean needs"):
        normalize(image, (0.1, 0.2, 0.3), (1.0,))


@pytest.mark.parametrize(
    "t",
    [
        [-(2**62), 0, 2**62],  # a span of exactly 2**63: one past what int64 holds
        [-(2**63), 0, 2**63 - 1],  # the widest span int64 timestamps allow
    ],
)
def test_time_bins_over_a_span_past_int64(t: list[int]) -> None:
    """Span and offsets are computed without wrapping: events spread over the bins, not all in bin 0."""
    events = make_events(
        np.zeros(3, np.int64), np.zeros(3, np.int64), np.array(t, np.int64), np.ones(3, np.int64)
    )
    frames = events_to_frames(events, (1, 1), time_steps=2, binning="time_bins")
    assert frames[:, 1, 0, 0].tolist() == [1.0, 2.0]


def test_time_window_over_a_span_past_int64() -> None:
    t = np.array([-(2**63), -(2**63) + 5, 2**63 - 1], np.int64)
    events = make_events(np.zeros(3, np.int64), np.zeros(3, np.int64), t, np.ones(3, np.int64))
    frames = events_to_frames(events, (1, 1), time_steps=2, binning="time_window", time_window_us=10)
    assert frames[:, 1, 0, 0].tolist() == [2.0, 0.0]
