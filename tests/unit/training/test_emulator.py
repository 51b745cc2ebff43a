"""training/emulator.py: deterministic, three saccades as three bursts, files that decode back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from eventio import EVENT_DTYPE
from eventio.aedat4 import read_aedat4
from eventio.nmnist import read_nmnist
from training.datasets import mnist5k
from training.emulator import (
    EmulatorConfig,
    emulate,
    emulate_batch,
    encode_recording,
    saccade_path,
    threshold_map,
    write_recording,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, _, index = mnist5k("val")
    return images[:3], index[:3]


@pytest.fixture(scope="module")
def recording(digits) -> np.ndarray:
    return emulate(digits[0][0], seed=7)


def test_output_is_a_sorted_event_array_on_the_34x34_sensor(recording) -> None:
    assert recording.dtype == EVENT_DTYPE
    assert 1_000 < len(recording) < 12_000  # N-MNIST digits have a few thousand events
    assert recording["x"].max() < 34 and recording["y"].max() < 34
    assert np.all(np.diff(recording["t"]) >= 0)
    assert recording["t"][0] >= 0 and recording["t"][-1] <= EmulatorConfig().duration_us
    assert set(np.unique(recording["p"])) == {0, 1}
    assert 0.35 < recording["p"].mean() < 0.65  # the camera comes back: ON and OFF balance


def test_same_seed_same_events_other_seed_other_events(digits, recording) -> None:
    np.testing.assert_array_equal(emulate(digits[0][0], seed=7), recording)
    assert not np.array_equal(emulate(digits[0][0], seed=8), recording)


def test_a_digit_gets_the_same_events_in_any_batch(digits) -> None:
    images, index = digits
    together = emulate_batch(images, seed=3, indices=index)
    alone = emulate_batch(images[1:2], seed=3, indices=index[1:2])[0]
    np.testing.assert_array_equal(together[1], alone)


def test_three_saccades_show_as_three_bursts(recording) -> None:
    config = EmulatorConfig()
    t_ms = recording["t"] / 1000.0
    saccade_ms = config.saccade_us / 1000.0
    for k in range(3):
        start = k * saccade_ms
        middle = ((t_ms >= start + 0.3 * saccade_ms) & (t_ms < start + 0.7 * saccade_ms)).sum()
        assert middle > 0.1 * len(recording)  # each saccade carries a good share of the events
    for boundary in (saccade_ms, 2 * saccade_ms):
        near = ((t_ms >= boundary - 2.5) & (t_ms < boundary + 2.5)).sum()  # 5 ms around a pause
        peak = np.histogram(t_ms, bins=np.arange(0.0, 3 * saccade_ms + 5.0, 5.0))[0].max()
        assert near < 0.1 * peak, (boundary, near, peak)  # the camera rests: the bursts separate


def test_path_follows_the_n_mnist_triangle_at_1khz_or_finer() -> None:
    config = EmulatorConfig()
    t_us, dx, dy = saccade_path(config)
    assert np.diff(t_us).max() <= 1000.0
    per = round(config.saccade_us * config.sample_rate_hz / 1e6)
    corners = [(dx[k * per], dy[k * per]) for k in range(4)]
    np.testing.assert_allclose(corners, [(0, 0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0)], atol=1e-9)
    with pytest.raises(ValueError, match="1000"):
        EmulatorConfig(sample_rate_hz=500.0)


def test_thresholds_vary_per_pixel_around_the_contrast_threshold() -> None:
    thresholds = threshold_map(EmulatorConfig())
    assert thresholds.shape == (34 * 34,)
    assert abs(thresholds.mean() - 0.2) < 0.005 and 0.003 < thresholds.std() < 0.02
    np.testing.assert_array_equal(thresholds, threshold_map(EmulatorConfig()))  # one fixed pattern


def test_more_contrast_threshold_fewer_events(digits) -> None:
    image = digits[0][0]
    coarse = emulate(image, seed=1, config=EmulatorConfig(contrast_threshold=0.4, noise_rate_hz=0.0))
    fine = emulate(image, seed=1, config=EmulatorConfig(contrast_threshold=0.2, noise_rate_hz=0.0))
    assert len(coarse) < 0.7 * len(fine)


def test_background_noise_lands_everywhere_even_without_a_digit() -> None:
    blank = np.zeros((28, 28), np.uint8)
    events = emulate(blank, seed=0, config=EmulatorConfig(noise_rate_hz=50.0))
    expected = 50.0 * 34 * 34 * EmulatorConfig().duration_us * 1e-6
    assert abs(len(events) - expected) < 5 * np.sqrt(expected)
    assert len(emulate(blank, seed=0, config=EmulatorConfig(noise_rate_hz=0.0))) == 0


@pytest.mark.parametrize(("suffix", "reader"), [(".bin", read_nmnist), (".aedat4", read_aedat4)])
def test_writers_round_trip_exactly(tmp_path, recording, suffix, reader) -> None:
    path = write_recording(recording, tmp_path / f"digit{suffix}")
    decoded = reader(path.read_bytes())
    assert decoded.sensor_size == (34, 34)
    np.testing.assert_array_equal(decoded.events, recording)


def test_aedat4_decodes_with_the_aedat_package(tmp_path, recording) -> None:
    aedat = pytest.importorskip("aedat")
    path = write_recording(recording, tmp_path / "digit.aedat4")
    decoder = aedat.Decoder(str(path))
    assert decoder.id_to_stream()[0] == {"type": "events", "width": 34, "height": 34}
    packets = [packet["events"] for packet in decoder if "events" in packet]
    got = np.concatenate(packets)
    np.testing.assert_array_equal(got["t"].astype(np.int64), recording["t"])
    np.testing.assert_array_equal(got["x"], recording["x"])
    np.testing.assert_array_equal(got["y"], recording["y"])
    np.testing.assert_array_equal(got["on"].astype(np.uint8), recording["p"])


def test_unknown_formats_are_refused(tmp_path, recording) -> None:
    with pytest.raises(ValueError, match=r"\.bin"):
        write_recording(recording, tmp_path / "digit.txt")
    with pytest.raises(ValueError, match="unknown recording format"):
        encode_recording(recording, "csv")
