"""Moving events from one sensor size to another: centre crop (or pad) and coordinate scaling.

numpy only, so the torch-free gateway (``service.decoding.fit_to_sensor``) and the worker's
encodings (``models.encoding``) share one implementation.
"""

from __future__ import annotations

import numpy as np


def crop_events(events: np.ndarray, sensor_size: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    """The events inside the central ``target_size`` window of ``sensor_size``, shifted to it.

    events: [N] with fields x, y (t, p kept as they are). Sizes are (width, height). A target
    larger than the sensor centres the recording in it instead (every event kept).
    Returns [M <= N] events, same dtype, same order.
    """
    (width, height), (target_width, target_height) = sensor_size, target_size
    x0, y0 = (width - target_width) // 2, (height - target_height) // 2
    x = events["x"].astype(np.int64) - x0
    y = events["y"].astype(np.int64) - y0
    inside = (x >= 0) & (x < target_width) & (y >= 0) & (y < target_height)
    out = events[inside].copy()
    out["x"] = x[inside]
    out["y"] = y[inside]
    return out


def scale_events(
    events: np.ndarray, sensor_size: tuple[int, int], target_size: tuple[int, int]
) -> np.ndarray:
    """Every event moved to ``floor(x * target_width / width)``, ``floor(y * target_height / height)``.

    events: [N] with fields x, y. Each axis scales on its own (the aspect ratio follows the
    target); several source pixels share a target pixel, so their counts add up in frames.
    Returns [N] events, same dtype, same order.
    """
    (width, height), (target_width, target_height) = sensor_size, target_size
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    if x.size and (x.max() >= width or y.max() >= height):
        raise ValueError(f"events reach ({x.max()}, {y.max()}), outside the {width}x{height} sensor")
    out = events.copy()
    out["x"] = x * target_width // width
    out["y"] = y * target_height // height
    return out
