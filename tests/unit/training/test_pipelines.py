"""training/pipelines.py: batches shaped and normalised as the worker does, shifts that keep content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.encoding import normalize
from registry.manifest import EventInput, ImageInput
from training.pipelines import (
    Augment,
    DatasetMismatchError,
    FramePipeline,
    ImagePipeline,
    check_fits,
    random_shift,
)

MNIST_SPEC = ImageInput(channels=1, height=28, width=28, mean=(0.1307,), std=(0.3081,))


def test_random_shift_moves_each_sample_within_bounds() -> None:
    batch = torch.zeros(64, 1, 9, 9)
    batch[:, 0, 4, 4] = 1.0  # one bright pixel in the middle of every sample
    shifted = random_shift(batch, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == batch.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))  # nothing lost at 2 px from the edge
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len({(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}) > 10  # samples move differently
    assert torch.equal(random_shift(batch, 0, torch.Generator()), batch)


def test_image_batches_match_the_workers_encoding() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5)
    pipeline = ImagePipeline(
        images, labels, time_steps=3, mean=MNIST_SPEC.mean, std=MNIST_SPEC.std, augment=Augment(max_shift=2)
    )
    x, y = pipeline.batch(torch.tensor([4, 1]))
    assert x.shape == (3, 2, 1, 28, 28) and y.tolist() == [4, 1]
    expected = normalize(images[4][None] / 255.0, MNIST_SPEC.mean, MNIST_SPEC.std)
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x[0], x[2])  # direct encoding: the same image at every step
    augmented, _ = pipeline.batch(torch.tensor([4, 1]), torch.Generator().manual_seed(1))
    assert augmented.shape == x.shape


def test_frame_batches_are_time_first_and_shift_every_step_alike() -> None:
    frames = np.zeros((3, 4, 2, 34, 34), np.uint8)
    frames[:, :, 1, 17, 17] = np.arange(1, 5)[None, :]  # one pixel, counts 1..4 over the bins
    pipeline = FramePipeline(frames, np.array([7, 8, 9]), augment=Augment(max_shift=2))
    x, y = pipeline.batch(torch.tensor([2]))
    assert x.shape == (4, 1, 2, 34, 34) and x.dtype == torch.float32 and y.tolist() == [9]
    assert x[:, 0, 1, 17, 17].tolist() == [1.0, 2.0, 3.0, 4.0]
    shifted, _ = pipeline.batch(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(3))
    for sample in range(3):
        where = [tuple(shifted[t, sample, 1].nonzero()[0].tolist()) for t in range(4)]
        assert len(set(where)) == 1  # one shift for the whole recording, not one per bin


def test_affine_augment_rotates_and_zooms_each_sample_and_keeps_counts_whole() -> None:
    batch = torch.zeros(16, 3, 21, 21)
    batch[:, :, 4:17, 9:12] = 2.0  # a vertical bar of count 2 in every sample and channel
    augment = Augment(max_shift=1, max_rotation_deg=30.0, max_scale=0.2)
    warped = augment(batch, torch.Generator().manual_seed(0), mode="nearest")
    assert warped.shape == batch.shape
    assert set(warped.unique().tolist()) <= {0.0, 2.0}  # nearest: counts stay whole numbers
    assert torch.equal(warped[:, 0], warped[:, 2])  # one warp a sample, the same for every channel
    masses = warped.sum(dim=(1, 2, 3)) / batch[0].sum()
    assert masses.min() > 0.6 and masses.max() < 1.5  # moved and turned, not lost
    assert len({tuple(w.flatten().tolist()) for w in warped[:, 0]}) > 8  # samples differ
    smooth = augment(batch, torch.Generator().manual_seed(0))
    assert not set(smooth.unique().tolist()) <= {0.0, 2.0}  # bilinear (images) blends


def test_default_augment_does_nothing() -> None:
    batch = torch.rand(4, 1, 8, 8)
    assert torch.equal(Augment()(batch, torch.Generator()), batch)


def test_batches_cover_every_sample_once() -> None:
    pipeline = FramePipeline(np.zeros((10, 1, 2, 4, 4), np.uint8), np.arange(10))
    seen = torch.cat([y for _, y in pipeline.batches(4)])
    assert seen.tolist() == list(range(10))
    shuffled = torch.cat([y for _, y in pipeline.batches(4, torch.Generator().manual_seed(0), shuffle=True)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))


def test_data_sets_refuse_models_with_other_inputs() -> None:
    check_fits(MNIST_SPEC, "mnist5k")
    check_fits(EventInput(sensor_width=34, sensor_height=34), "nmnist5k")
    with pytest.raises(DatasetMismatchError, match="mnist5k"):
        check_fits(ImageInput(channels=3, height=32, width=32), "mnist5k")
    with pytest.raises(DatasetMismatchError, match="34x34"):
        check_fits(EventInput(sensor_width=128, sensor_height=128), "nmnist5k")
    with pytest.raises(DatasetMismatchError, match="unknown dataset"):
        check_fits(MNIST_SPEC, "cifar10")
