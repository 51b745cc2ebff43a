"""The emulator against a real N-MNIST recording: the statistics side by side, as a Markdown table.

    python -m training.emulator_stats [--real ../shared/data/nmnist_sample.bin] [--split test]

The real file is one digit; the emulated column is the mean (and standard deviation) over the
emulated recordings of a whole split, so it says what a typical emulated digit looks like.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eventio import read_events
from training.datasets import nmnist5k_events
from training.emulator import EmulatorConfig

DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nmnist_sample.bin"

ROWS = (
    ("events", "events", "{:.0f}"),
    ("duration_ms", "duration (first to last event), ms", "{:.0f}"),
    ("saccade_1", "events in saccade 1 (0-105 ms)", "{:.0f}"),
    ("saccade_2", "events in saccade 2 (105-210 ms)", "{:.0f}"),
    ("saccade_3", "events in saccade 3 (210 ms-end)", "{:.0f}"),
    ("on_fraction", "ON share of events", "{:.3f}"),
    ("active_pixels", "pixels with at least one event (of 1,156)", "{:.0f}"),
    ("events_per_active_pixel", "events per active pixel", "{:.2f}"),
    ("events_per_pixel", "events per pixel (all 1,156)", "{:.2f}"),
    ("median_interval_ms", "median interval between events of one pixel, ms", "{:.2f}"),
)


def recording_statistics(
    events: np.ndarray, saccade_us: int = 105_000, sensor_size: int = 34
) -> dict[str, float]:
    """Summary numbers of one recording, events: EVENT_DTYPE [E] (t in us from the start)."""
    t = events["t"].astype(np.int64)
    pixel = events["y"].astype(np.int64) * sensor_size + events["x"].astype(np.int64)
    counts = np.bincount(pixel, minlength=sensor_size * sensor_size)
    active = counts > 0
    order = np.lexsort((t, pixel))
    same_pixel = pixel[order][1:] == pixel[order][:-1]
    intervals = np.diff(t[order])[same_pixel]
    bounds = (0, saccade_us, 2 * saccade_us, np.iinfo(np.int64).max)
    stats = {
        "events": float(len(events)),
        "duration_ms": float(t.max() - t.min()) / 1e3 if len(t) else 0.0,
        "on_fraction": float(events["p"].mean()) if len(events) else 0.0,
        "active_pixels": float(active.sum()),
        "events_per_active_pixel": float(counts[active].mean()) if active.any() else 0.0,
        "events_per_pixel": float(counts.mean()),
        "median_interval_ms": float(np.median(intervals)) / 1e3 if intervals.size else 0.0,
    }
    for k in range(3):
        stats[f"saccade_{k + 1}"] = float(((t >= bounds[k]) & (t < bounds[k + 1])).sum())
    return stats


def comparison_table(real: dict[str, float], emulated: Sequence[dict[str, float]], label: str) -> str:
    """Markdown: one row a statistic, the real recording beside the emulated mean +- sd."""
    lines = [
        f"| statistic | real `nmnist_sample.bin` | emulated, {label} (mean ± sd) |",
        "| --- | ---: | ---: |",
    ]
    for key, title, fmt in ROWS:
        values = np.array([s[key] for s in emulated])
        mean, spread = fmt.format(values.mean()), fmt.format(values.std())
        lines.append(f"| {title} | {fmt.format(real[key])} | {mean} ± {spread} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="a real N-MNIST .bin recording")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--cache-dir", type=Path, help="emulated-events cache")
    args = parser.parse_args(argv)
    recording = read_events(args.real.read_bytes(), fmt="nmnist")
    config = EmulatorConfig()
    real = recording_statistics(recording.events, config.saccade_us, config.sensor_size)
    events, _, _ = nmnist5k_events(args.split, config=config, cache_dir=args.cache_dir)
    emulated = [recording_statistics(e, config.saccade_us, config.sensor_size) for e in events]
    print(comparison_table(real, emulated, f"{len(events):,} {args.split} digits"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
