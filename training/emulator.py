"""N-MNIST-style event emulation: an event camera making three saccades over a still digit.

N-MNIST (Orchard et al., 2015) was recorded by an ATIS sensor on a pan-tilt unit looking at MNIST
digits on a monitor: three saccades of about 105 ms along a triangle, which moves the image by
(+3.5, +7), (+3.5, -7) and (-7, 0) pixels (x, y), cropped to 34x34. This module replays that:

1. the 28x28 digit is centred in a 34x34 canvas, blurred a little (the lens), and shifted along
   the triangle with a smooth (raised-cosine) speed profile, sampled at ``sample_rate_hz``
   (>= 1 kHz) with bilinear sub-pixel interpolation;
2. each pixel compares its log intensity log(dark_level + I) with a reference level and fires an
   ON (p=1) or OFF (p=0) event when they differ by its contrast threshold (``contrast_threshold``
   times a per-pixel factor drawn once per sensor, the fixed-pattern mismatch). The event time is
   interpolated between samples to the crossing. After an event the pixel is held in reset for
   ``refractory_us``: its reference follows the input, so the change in that window is lost;
3. event times get Gaussian jitter, and background noise events arrive as a Poisson process.

All pixels of a batch of digits advance together (one numpy operation per time sample), and all
randomness of digit ``i`` comes from its own generator ``default_rng((seed, i))``, so a digit's
events do not depend on which batch it was emulated in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eventio import EVENT_DTYPE
from eventio.aedat4 import write_aedat4
from eventio.nmnist import write_nmnist


@dataclass(frozen=True)
class EmulatorConfig:
    """Every parameter of the emulation; ``key()`` names a cache entry made with them."""

    sensor_size: int = 34  # square sensor, pixels a side
    saccades: tuple[tuple[float, float], ...] = ((3.5, 7.0), (3.5, -7.0), (-7.0, 0.0))  # image shift (x, y)
    saccade_us: int = 105_000
    sample_rate_hz: float = 2_000.0
    contrast_threshold: float = 0.2  # log-intensity change that fires an event
    threshold_sigma: float = 0.03  # per-pixel threshold mismatch, as a fraction of the threshold
    dark_level: float = 0.35  # the monitor's black as a fraction of its white: log(dark_level + I)
    blur_sigma: float = 0.5  # optical point-spread function, pixels (0 = none)
    refractory_us: float = 1_000.0
    jitter_us: float = 100.0  # standard deviation of the timestamp noise
    noise_rate_hz: float = 0.1  # background events per pixel per second
    reset_spread: float = 1.0  # initial reference offset: uniform in +-reset_spread x threshold
    sensor_seed: int = 0  # draws the fixed per-pixel threshold pattern

    def __post_init__(self) -> None:
        if self.sample_rate_hz < 1_000.0:
            raise ValueError(f"sample_rate_hz must be >= 1000 (got {self.sample_rate_hz})")
        if self.contrast_threshold <= 0 or self.dark_level <= 0:
            raise ValueError("contrast_threshold and dark_level must be positive")

    @property
    def duration_us(self) -> int:
        return self.saccade_us * len(self.saccades)

    def key(self) -> str:
        """A short stable digest of the parameters (names a cache entry)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def saccade_path(config: EmulatorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample times and image offsets: t_us [F] float64, dx [F], dy [F] (pixels), F = samples + 1.

    Within each saccade the offset follows s - sin(2 pi s) / (2 pi) for s in [0, 1]: a speed of
    sin^2(pi s), at rest at both ends as a pan-tilt unit is. That shape fits the event rate of the
    real recording, and the pauses are what separate the three bursts of events.
    """
    per_saccade = round(config.saccade_us * config.sample_rate_hz / 1e6)
    s = np.arange(per_saccade) / per_saccade
    phase = s - np.sin(2.0 * np.pi * s) / (2.0 * np.pi)  # [S] in [0, 1)
    starts = np.cumsum([(0.0, 0.0), *config.saccades], axis=0)  # [K + 1, 2] corners of the path
    steps = np.asarray(config.saccades)  # [K, 2]
    path = starts[:-1, None, :] + phase[None, :, None] * steps[:, None, :]  # [K, S, 2]
    path = np.concatenate([path.reshape(-1, 2), starts[-1:]], axis=0)  # [F, 2], ends at the last corner
    t_us = np.arange(len(path)) * (1e6 / config.sample_rate_hz)
    return t_us, path[:, 0], path[:, 1]


def threshold_map(config: EmulatorConfig) -> np.ndarray:
    """The sensor's per-pixel contrast thresholds: [H * W] float32 (fixed by ``sensor_seed``)."""
    rng = np.random.default_rng(config.sensor_seed)
    factor = 1.0 + config.threshold_sigma * rng.standard_normal(config.sensor_size**2)
    return (config.contrast_threshold * np.clip(factor, 0.5, 1.5)).astype(np.float32)


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of images [B, H, W] float32 (zero outside)."""
    if sigma <= 0:
        return images
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius)))
    height, width = images.shape[1:]
    rows = sum(w * padded[:, i : i + height, :] for i, w in enumerate(taps))
    return sum(w * rows[:, :, i : i + width] for i, w in enumerate(taps))


def centre_on_canvas(images: np.ndarray, size: int) -> np.ndarray:
    """images [B, h, w] uint8 or float in [0, 1] -> [B, size, size] float32 in [0, 1], centred."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    batch, height, width = images.shape
    if height > size or width > size:
        raise ValueError(f"a {height}x{width} image does not fit a {size}x{size} sensor")
    canvas = np.zeros((batch, size, size), np.float32)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[:, top : top + height, left : left + width] = images.astype(np.float32) / scale
    return canvas


def _shifted(padded: np.ndarray, margin: int, size: int, dx: float, dy: float, out: np.ndarray) -> np.ndarray:
    """Bilinear sample of padded canvases [B, P, P] moved by (dx, dy), written into out [B, size, size].

    Sensor pixel (x, y) sees canvas point (x - dx, y - dy).
    """
    sx, sy = -dx, -dy
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    fx, fy = sx - x0, sy - y0
    r0, c0 = margin + y0, margin + x0
    weights = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    scratch = np.empty_like(out)
    out.fill(0.0)
    for dr, dc, weight in weights:
        if weight > 0:  # at whole-pixel offsets three of the four taps are zero
            np.multiply(
                padded[:, r0 + dr : r0 + dr + size, c0 + dc : c0 + dc + size], np.float32(weight), out=scratch
            )
            out += scratch
    return out


def emulate_batch(
    images: np.ndarray,
    seed: int = 0,
    config: EmulatorConfig | None = None,
    indices: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Emulate N-MNIST recordings of digits images [B, h, w] (uint8 0..255 or float 0..1).

    Digit ``b`` draws its randomness from ``default_rng((seed, indices[b]))`` (indices default to
    0..B-1), so it gets the same events in any batch. Returns B arrays of ``EVENT_DTYPE``, each
    sorted by time, t in microseconds from the start of the first saccade.
    """
    config = config or EmulatorConfig()
    size = config.sensor_size
    canvas = _gaussian_blur(centre_on_canvas(images, size), config.blur_sigma)  # [B, S, S]
    batch, pixels = canvas.shape[0], size * size
    ids = list(range(batch)) if indices is None else [int(i) for i in indices]
    if len(ids) != batch:
        raise ValueError(f"{batch} images but {len(ids)} indices")
    rngs = [np.random.default_rng((seed, i)) for i in ids]

    t_us, dx, dy = saccade_path(config)
    margin = int(np.ceil(max(np.abs(dx).max(), np.abs(dy).max()))) + 2
    padded = np.pad(canvas, ((0, 0), (margin, margin), (margin, margin)))
    threshold = threshold_map(config)[None, :]  # [1, N]
    dark = np.float32(config.dark_level)

    frame = np.empty((batch, size, size), np.float32)
    plane = frame.reshape(batch, pixels)  # a view: _shifted writes the frame, the loop reads pixels

    def log_intensity(step: int) -> np.ndarray:
        _shifted(padded, margin, size, dx[step], dy[step], out=frame)
        return np.log(plane + dark)

    log_now = log_intensity(0)
    spread = np.stack([rng.uniform(-1.0, 1.0, pixels) for rng in rngs]).astype(np.float32)
    reference = log_now + config.reset_spread * threshold * spread  # [B, N]
    ready_at = np.zeros((batch, pixels), np.float32)  # end of each pixel's refractory period, us
    change = np.empty_like(reference)
    fire = np.empty(reference.shape, bool)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (flat index, t_us, polarity)
    for step in range(1, len(t_us)):
        log_prev, log_now = log_now, log_intensity(step)
        np.subtract(log_now, reference, out=change)
        np.greater_equal(np.abs(change), threshold, out=fire)
        fire &= ready_at <= t_us[step]
        hit = np.flatnonzero(fire)
        if hit.size:
            now_abs = np.abs(change.flat[hit])
            prev_abs = np.abs(log_prev.flat[hit] - reference.flat[hit])
            theta = threshold[0, hit % pixels]
            # the log intensity moves linearly between samples: interpolate the crossing time
            frac = np.clip((theta - prev_abs) / np.maximum(now_abs - prev_abs, 1e-6), 0.0, 1.0)
            t_event = np.maximum(t_us[step - 1] + frac * (t_us[step] - t_us[step - 1]), ready_at.flat[hit])
            positive = change.flat[hit] > 0
            reference.flat[hit] += np.where(positive, theta, -theta)
            ready_at.flat[hit] = t_event + config.refractory_us
            found.append((hit, t_event, positive))
        # a pixel held in reset follows its input: the change in its refractory window is lost
        np.copyto(reference, log_now, where=ready_at > t_us[step])

    flat = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    times = np.concatenate([f[1] for f in found]) if found else np.zeros(0)
    polarity = np.concatenate([f[2] for f in found]) if found else np.zeros(0, bool)
    order = np.argsort(flat // pixels, kind="stable")  # group by digit, keeping time order
    bounds = np.searchsorted(flat[order] // pixels, np.arange(batch + 1))
    return [
        _finish(flat[order[lo:hi]] % pixels, times[order[lo:hi]], polarity[order[lo:hi]], rng, config)
        for rng, lo, hi in zip(rngs, bounds[:-1], bounds[1:], strict=True)
    ]


def _finish(
    pixel: np.ndarray,
    t_us: np.ndarray,
    positive: np.ndarray,
    rng: np.random.Generator,
    config: EmulatorConfig,
) -> np.ndarray:
    """Add jitter and background noise to one digit's events; sort by time -> EVENT_DTYPE [E]."""
    size, duration = config.sensor_size, config.duration_us
    t_us = t_us + config.jitter_us * rng.standard_normal(t_us.size)
    noise = rng.poisson(config.noise_rate_hz * size * size * duration * 1e-6)
    pixel = np.concatenate([pixel, rng.integers(0, size * size, noise)])
    t_us = np.concatenate([t_us, rng.uniform(0, duration, noise)])
    positive = np.concatenate([positive, rng.integers(0, 2, noise).astype(bool)])
    t_int = np.clip(np.rint(t_us), 0, duration).astype(np.int64)
    order = np.argsort(t_int, kind="stable")
    events = np.empty(order.size, dtype=EVENT_DTYPE)
    events["x"] = pixel[order] % size
    events["y"] = pixel[order] // size
    events["t"] = t_int[order]
    events["p"] = positive[order]
    return events


def emulate(image: np.ndarray, seed: int = 0, config: EmulatorConfig | None = None) -> np.ndarray:
    """One digit image [h, w] -> its N-MNIST-style recording, EVENT_DTYPE [E] sorted by t."""
    return emulate_batch(np.asarray(image)[None], seed=seed, config=config)[0]


RECORDING_SUFFIXES = {".bin": "nmnist", ".aedat4": "aedat4"}


def encode_recording(events: np.ndarray, fmt: str, sensor_size: int = 34) -> bytes:
    """events EVENT_DTYPE [E] -> the bytes of an N-MNIST ``.bin`` (fmt "nmnist") or AEDAT4 file ("aedat4")."""
    if fmt == "nmnist":
        return write_nmnist(events)
    if fmt == "aedat4":
        return write_aedat4(events, (sensor_size, sensor_size))
    raise ValueError(f"unknown recording format {fmt!r}; choose nmnist or aedat4")


def write_recording(events: np.ndarray, path: str | Path, sensor_size: int = 34) -> Path:
    """Write events EVENT_DTYPE [E] to ``path``; the suffix picks the format (.bin or .aedat4)."""
    path = Path(path)
    fmt = RECORDING_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: use a .bin (N-MNIST) or .aedat4 file name")
    path.write_bytes(encode_recording(events, fmt, sensor_size))
    return path
