"""Batches for training and evaluation: arrays in memory -> network input [T, B, C, H, W].

Two pipelines, one per kind of input a manifest can declare:
- ``ImagePipeline``: uint8 images, augmented (training), scaled to [0, 1], normalised with the
  manifest's mean/std and direct-encoded (the same steps the worker runs on a request);
- ``FramePipeline``: event frames already binned by ``models.encoding.events_to_frames`` (the
  worker's function, so training and serving see the same counts), augmented (training).

Augmentation is light and geometric (``Augment``): a random shift of up to a few pixels (zero
fill), as hand-centred digits and a moving camera give, and optionally a small random rotation and
scaling, as handwriting varies. On a few thousand digits it is what keeps train and validation
accuracy together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.encoding import direct_encode
from registry.manifest import EventInput, ImageInput
from training.datasets import EMULATION_SEED, Split, events_to_frame_array, mnist5k, nmnist5k_events
from training.emulator import EmulatorConfig


class DatasetMismatchError(ValueError):
    """The data set does not fit the model's input spec (an image set for an event model, ...)."""


def random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample of batch [B, ..., H, W] by its own (dy, dx) in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return batch
    height, width = batch.shape[-2:]
    pad = [max_shift] * 4
    padded = torch.nn.functional.pad(batch, pad)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, ..., oy : oy + height, ox : ox + width] for i, (oy, ox) in enumerate(offsets)]
    )


@dataclass(frozen=True)
class Augment:
    """Random geometric augmentation of training samples; the default does nothing.

    ``max_shift``: pixels each way; ``max_rotation_deg``: degrees each way; ``max_scale``: a zoom
    factor in [1 - max_scale, 1 + max_scale]. Shift alone moves by whole pixels (exact); with a
    rotation or a zoom, one affine warp per sample does all three (sub-pixel shifts).
    """

    max_shift: int = 0
    max_rotation_deg: float = 0.0
    max_scale: float = 0.0

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator, mode: str = "bilinear"
    ) -> torch.Tensor:
        """batch [B, C, H, W] -> the same shape, each sample warped by its own draw.

        ``mode``: "bilinear" for images; "nearest" for event counts, which must stay whole numbers.
        """
        if self.max_rotation_deg == 0 and self.max_scale == 0:
            return random_shift(batch, self.max_shift, generator)
        count, _, height, width = batch.shape

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(count, generator=generator) * 2 - 1) * limit

        angle = uniform(math.radians(self.max_rotation_deg))
        zoom = 1 + uniform(self.max_scale)
        # affine_grid maps output to input coordinates in [-1, 1]: invert the zoom, and a shift of
        # d pixels is 2 d / size in those units
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        shift_x, shift_y = uniform(2 * self.max_shift / width), uniform(2 * self.max_shift / height)
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
        )  # [B, 2, 3]
        grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
        return torch.nn.functional.grid_sample(
            batch, grid, mode=mode, padding_mode="zeros", align_corners=False
        )


class Pipeline:
    """Labelled samples in memory and the way to turn a set of them into network input."""

    labels: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``index`` [B] -> (x [T, B, C, H, W] float32, y [B] int64); augmented with a generator."""
        raise NotImplementedError

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in batches; shuffled (and augmented) with ``generator`` when ``shuffle``."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size], generator if shuffle else None)


class ImagePipeline(Pipeline):
    """images: [N, H, W] or [N, C, H, W] uint8 (0..255); labels: [N] int."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        time_steps: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
    ) -> None:
        pixels = torch.from_numpy(np.ascontiguousarray(images))
        self.images = pixels[:, None] if pixels.dim() == 3 else pixels  # [N, C, H, W] uint8
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.time_steps = time_steps
        channels = self.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
        self.augment = augment or Augment()

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.images[index].float() / 255.0  # [B, C, H, W] in [0, 1]
        if generator is not None:
            raw = self.augment(raw, generator)  # before normalising: the zero fill is black
        return direct_encode((raw - self.mean) / self.std, self.time_steps), self.labels[index]


class FramePipeline(Pipeline):
    """frames: [N, T, 2, H, W] uint8 event counts per bin and polarity; labels: [N] int."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, *, augment: Augment | None = None) -> None:
        self.frames = torch.from_numpy(np.ascontiguousarray(frames))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.augment = augment or Augment()

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frames[index].float()  # [B, T, 2, H, W]
        if generator is not None:  # one warp for all bins and polarities of a recording
            frames = self.augment(frames.flatten(1, 2), generator, mode="nearest").unflatten(
                1, frames.shape[1:3]
            )
        return frames.transpose(0, 1).contiguous(), self.labels[index]


def check_fits(spec: ImageInput | EventInput, dataset: str, emulator: EmulatorConfig | None = None) -> None:
    """Raise DatasetMismatchError unless ``dataset`` can feed a network with input ``spec``."""
    if dataset == "mnist5k":
        if not (isinstance(spec, ImageInput) and (spec.channels, spec.height, spec.width) == (1, 28, 28)):
            raise DatasetMismatchError("mnist5k holds 1x28x28 images; this model takes other input")
    elif dataset == "nmnist5k":
        size = (emulator or EmulatorConfig()).sensor_size
        if not (isinstance(spec, EventInput) and (spec.sensor_width, spec.sensor_height) == (size, size)):
            raise DatasetMismatchError(
                f"nmnist5k holds {size}x{size} event recordings; this model takes other input"
            )
    else:
        raise DatasetMismatchError(f"unknown dataset {dataset!r}; choose mnist5k or nmnist5k")


def dataset_pipeline(
    spec: ImageInput | EventInput,
    dataset: str,
    split: Split,
    *,
    time_steps: int,
    augment: Augment | None = None,
    emulator: EmulatorConfig | None = None,
    emulation_seed: int = EMULATION_SEED,
    cache_dir: Path | None = None,
) -> Pipeline:
    """The samples of ``dataset``/``split`` prepared for a network with input ``spec`` at T=``time_steps``.

    Images are normalised with the spec's mean/std; recordings binned with the spec's binning.
    """
    check_fits(spec, dataset, emulator)
    if isinstance(spec, ImageInput):
        images, labels, _ = mnist5k(split)
        return ImagePipeline(
            images, labels, time_steps=time_steps, mean=spec.mean, std=spec.std, augment=augment
        )
    events, labels, _ = nmnist5k_events(split, config=emulator, seed=emulation_seed, cache_dir=cache_dir)
    frames = events_to_frame_array(
        events,
        sensor_size=(spec.sensor_width, spec.sensor_height),
        time_steps=time_steps,
        binning=spec.binning,
        time_window_us=spec.time_window_us,
        event_count=spec.event_count,
    )
    return FramePipeline(frames, labels, augment=augment)
