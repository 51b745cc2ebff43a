"""The gateway's windower: pushed in any pieces, its frames are those of one time_window binning."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from eventio import make_events, read_events
from models.encoding import events_to_frames
from service.streams.windows import EventCountWindower, Windower


def one_ms_chunks(events: np.ndarray) -> list[np.ndarray]:
    t = events["t"]
    edges = np.arange(t[0], t[-1] + 1001, 1000)
    return [events[(t >= lo) & (t < hi)] for lo, hi in itertools.pairwise(edges)]


def test_windows_of_a_real_recording_equal_one_time_window_binning(shared_data: Path) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    windower = Windower(window_us=20_000, steps=4, sensor_size=(34, 34))
    windows = [w for chunk in one_ms_chunks(events) for w in windower.push(chunk)]
    last = windower.flush()
    assert last is not None
    windows.append(last)
    stacked = np.concatenate([w.frames for w in windows])
    expected = events_to_frames(events, (34, 34), len(stacked), "time_window", time_window_us=5_000)
    assert np.array_equal(stacked, expected)
    assert [w.index for w in windows] == list(range(len(windows)))
    assert windows[0].start_us == events["t"][0] and all(w.end_us - w.start_us == 20_000 for w in windows)
    assert sum(w.events for w in windows) == len(events)


def test_late_events_are_dropped_and_counted() -> None:
    windower = Windower(window_us=1000, steps=1, sensor_size=(4, 4))
    windower.push(make_events([0, 1], [0, 0], [5000, 6200], [1, 1]))
    windower.push(make_events([2], [2], [4000], [0]))  # before the current window
    assert windower.late_events == 1


def test_a_long_gap_emits_a_few_empty_windows_then_jumps() -> None:
    windower = Windower(window_us=1000, steps=2, sensor_size=(4, 4), max_empty_windows=3)
    windower.push(make_events([0], [0], [0], [1]))
    done = windower.push(make_events([1], [1], [1_000_000], [0]))
    assert len(done) == 4 and sum(w.events for w in done) == 1  # the first window and 3 empty ones
    assert windower.skipped_windows == 1000 - 4
    flushed = windower.flush()
    assert flushed is not None and flushed.start_us == 1_000_000 and flushed.events == 1


def test_merge_adds_counts_and_extends_the_window() -> None:
    windower = Windower(window_us=1000, steps=2, sensor_size=(4, 4))
    windower.push(make_events([0, 1], [0, 1], [0, 600], [1, 0]))
    first, second = windower.push(make_events([2, 3], [2, 3], [1100, 2100], [1, 1]))
    first.merge(second)
    assert first.events == 3 and first.merged == 2 and first.end_us == 2000
    assert first.frames.sum() == 3
    assert first.length_us == second.length_us == 1000  # one grid window's, merged or not


def test_a_count_window_is_as_long_as_its_events_span() -> None:
    windower = EventCountWindower(window_events=2, steps=1, sensor_size=(4, 4))
    (window,) = windower.push(make_events([0, 1, 2], [0, 1, 2], [100, 400, 900], [1, 0, 1]))
    assert window.length_us == 301  # t 100 to 400, end exclusive
    (burst,) = windower.push(make_events([3], [3], [900], [1]))
    assert burst.length_us == 1  # two events at one instant: never a zero length


def test_event_count_windows_equal_one_event_count_binning(shared_data: Path) -> None:
    from service.streams.windows import EventCountWindower

    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    windower = EventCountWindower(window_events=1000, steps=4, sensor_size=(34, 34))
    windows = [w for chunk in one_ms_chunks(events) for w in windower.push(chunk)]
    assert len(windows) == len(events) // 1000 and all(w.events == 1000 for w in windows)
    stacked = np.concatenate([w.frames for w in windows])
    expected = events_to_frames(events, (34, 34), len(stacked), "event_count", event_count=250)
    assert np.array_equal(stacked, expected)
    last = windower.flush()
    assert last is not None and last.events == len(events) % 1000
