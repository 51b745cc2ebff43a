"""training/emulator_stats.py: the numbers that compare the emulator with a real recording."""

from __future__ import annotations

import numpy as np
import pytest

from eventio import make_events, read_events
from training.emulator_stats import comparison_table, recording_statistics


def test_statistics_of_a_hand_made_recording() -> None:
    events = make_events(x=[0, 0, 1, 2], y=[0, 0, 0, 33], t=[0, 2_000, 110_000, 250_000], p=[1, 0, 1, 1])
    stats = recording_statistics(events)
    assert stats["events"] == 4 and stats["duration_ms"] == 250.0
    assert (stats["saccade_1"], stats["saccade_2"], stats["saccade_3"]) == (2, 1, 1)
    assert stats["on_fraction"] == 0.75 and stats["active_pixels"] == 3
    assert stats["events_per_active_pixel"] == pytest.approx(4 / 3)
    assert stats["events_per_pixel"] == pytest.approx(4 / 1156)
    assert stats["median_interval_ms"] == 2.0  # only pixel (0, 0) fires twice


def test_the_real_recording_matches_its_description(shared_data) -> None:
    recording = read_events((shared_data / "nmnist_sample.bin").read_bytes(), fmt="nmnist")
    stats = recording_statistics(recording.events)
    assert stats["events"] == 4325  # as ../shared/data/README.md states
    assert 300 < stats["duration_ms"] < 320
    assert sum(stats[f"saccade_{k}"] for k in (1, 2, 3)) == 4325


def test_table_puts_real_beside_emulated_mean_and_spread() -> None:
    base = recording_statistics(make_events(x=[1, 2], y=[1, 1], t=[0, 10], p=[1, 0]))
    table = comparison_table(base, [base, {**base, "events": 4.0}], "2 digits")
    lines = table.splitlines()
    assert lines[0].startswith("| statistic | real") and "2 digits" in lines[0]
    events_row = next(line for line in lines if line.startswith("| events |"))
    assert events_row == "| events | 2 | 3 ± 1 |"
    assert len(lines) == 2 + 10 and np.all(["|" in line for line in lines])
