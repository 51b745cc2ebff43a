"""Encodings: how an image or an event recording becomes the [T, B, ...] input of a spiking network.

- images: ``normalize`` per channel, then ``direct_encode`` repeats the image over T steps;
- events: ``events_to_frames`` counts events per time bin, polarity and pixel (vectorised with
  ``np.bincount``, never a loop over events). Moving a recording to the model's sensor is
  ``eventio.transforms``' job (``crop_events``, ``scale_events``).

Imports nothing from registry/, workers/, service/ or training/ (eventio is numpy-only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

Binning = Literal["time_bins", "time_window", "event_count"]
BINNINGS: tuple[str, ...] = ("time_bins", "time_window", "event_count")

__all__ = [
    "BINNINGS",
    "direct_encode",
    "events_to_frames",
    "normalize",
]


def direct_encode(images: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Direct (analog) encoding: the same image at every time step.

    images: [B, C, H, W] float -> [T, B, C, H, W], a contiguous copy (layers may write in place).
    """
    if time_steps < 1:
        raise ValueError(f"time_steps must be at least 1, got {time_steps}")
    images = torch.as_tensor(images)
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    return images.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(image - mean) / std per channel.

    image: [C, H, W] float in [0, 1]; mean, std: 1 value (all channels) or C values.
    Returns [C, H, W] float32.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {image.shape}")
    channels = image.shape[0]
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    for name, values in (("mean", mean_arr), ("std", std_arr)):
        if len(values) not in (1, channels):
            raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
    if (std_arr <= 0).any():
        raise ValueError("std values must be positive")
    return (image - mean_arr[:, None, None]) / std_arr[:, None, None]


def events_to_frames(
    events: np.ndarray,
    sensor_size: tuple[int, int],
    time_steps: int,
    binning: Binning | str = "time_bins",
    time_window_us: int | None = None,
    event_count: int | None = None,
) -> np.ndarray:
    """Per-polarity event counts in T frames.

    events: [N] structured (fields x, y, t in microseconds, p in {0, 1}), in time order;
    sensor_size: (W, H). Returns [T, 2, H, W] float32; channel 0 counts OFF events, 1 ON events.

    binning:
    - ``time_bins``: T equal-duration bins spanning the first to the last timestamp (tonic's
      ``ToFrame(n_time_bins=T)``), the last bin closed so every event lands in exactly one bin;
      event i goes to ``floor((t_i - t_first) * T / (t_last - t_first))``, capped at T - 1
      (all in bin 0 when the recording lasts 0 us);
    - ``time_window``: bins of ``time_window_us`` from the first event; events after T windows are
      left out, frames after the recording stay empty;
    - ``event_count``: bins of ``event_count`` consecutive events; events after T bins are left out.

    Raises ValueError for events outside the sensor, polarities other than 0/1, or a missing
    binning parameter.
    """
    width, height = (int(n) for n in sensor_size)
    if width < 1 or height < 1 or time_steps < 1:
        raise ValueError(f"need a positive sensor size and time_steps, got {sensor_size} and {time_steps}")
    frame_size = 2 * height * width
    if len(events) == 0:
        return np.zeros((time_steps, 2, height, width), dtype=np.float32)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise ValueError(
            f"events reach x={x.max()}, y={y.max()}, outside the {width}x{height} sensor; "
            "crop or scale them first"
        )
    if p.min() < 0 or p.max() > 1:
        raise ValueError("polarity p must be 0 (OFF) or 1 (ON)")

    bins = _bin_index(events["t"].astype(np.int64), time_steps, binning, time_window_us, event_count)
    keep = bins < time_steps
    if not keep.all():
        bins, x, y, p = bins[keep], x[keep], y[keep], p[keep]
    index = bins * frame_size + (p * height + y) * width + x
    counts = np.bincount(index, minlength=time_steps * frame_size)
    return counts.reshape(time_steps, 2, height, width).astype(np.float32)


def _offsets_from(t: np.ndarray, start: int) -> np.ndarray:
    """t - start as [N] uint64, exact for every int64 t >= start (t - start in int64 can wrap)."""
    return t.astype(np.uint64) - np.uint64(start % (1 << 64))


def _bin_index(
    t: np.ndarray, time_steps: int, binning: str, time_window_us: int | None, event_count: int | None
) -> np.ndarray:
    """Time bin of every event, [N] int64 >= 0 (values >= time_steps are dropped by the caller)."""
    if binning == "time_bins":
        start, end = int(t.min()), int(t.max())
        duration = end - start  # a Python int: timestamps may span more than int64 holds
        if duration == 0:
            return np.zeros(len(t), dtype=np.int64)
        offset = _offsets_from(t, start)
        if duration <= np.iinfo(np.int64).max // time_steps:
            bins = offset.astype(np.int64) * time_steps // duration  # exact integer arithmetic
        else:  # a recording of over ~10^16 us / T: float is the only way, and precise enough there
            bins = np.floor(offset.astype(np.float64) * (time_steps / duration)).astype(np.int64)
        return np.minimum(bins, time_steps - 1)
    if binning == "time_window":
        if time_window_us is None or time_window_us < 1:
            raise ValueError("binning 'time_window' needs time_window_us >= 1")
        windows = _offsets_from(t, int(t.min())) // np.uint64(time_window_us)
        return np.minimum(windows, np.uint64(time_steps)).astype(np.int64)  # >= T: dropped
    if binning == "event_count":
        if event_count is None or event_count < 1:
            raise ValueError("binning 'event_count' needs event_count >= 1")
        return np.arange(len(t), dtype=np.int64) // int(event_count)
    raise ValueError(f"unknown binning {binning!r}; use one of {', '.join(BINNINGS)}")
