"""Live events -> windows of frames, on a fixed time grid (numpy only: it runs in the gateway).

The grid starts at the first event after a (re)start: window i covers
``[start + i * window_us, start + (i + 1) * window_us)`` and is binned into ``steps`` frames of
``window_us / steps`` each, so a stream binned window by window gives the same frames as one
recording binned in ``time_window`` bins of ``window_us / steps`` from its first event.

A window is emitted once an event at or past its end arrives (or on ``flush``). Events before the
current window (late, from a producer that reorders) are dropped and counted. A gap with no
events emits at most ``max_empty_windows`` empty windows (a stateful network's membranes decay
through them), then jumps the grid to the next event's window; memory stays one window of frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Window:
    """One window: frames [steps, 2, H, W] float32 counts (channel 0 OFF, 1 ON).

    start_us/end_us: event time, end exclusive. merged: how many grid windows it holds (more
    than one when the producer ran ahead of the model and windows were merged).
    completed_at: ``time.perf_counter()`` when the bytes that completed it arrived.
    """

    index: int
    start_us: int
    end_us: int
    frames: np.ndarray
    events: int
    completed_at: float
    merged: int = 1

    @property
    def length_us(self) -> float:
        """Event time one of its grid windows spans: the stream's window_us on a time grid, a count
        window's own span (a merged window's averaged over what it holds)."""
        return max(self.end_us - self.start_us, 1) / self.merged

    def merge(self, later: Window) -> None:
        """Fold a later window into this one: counts add step by step, the end moves on."""
        self.frames += later.frames
        self.events += later.events
        self.end_us = later.end_us
        self.merged += later.merged
        self.completed_at = min(self.completed_at, later.completed_at)


class Windower:
    """Bins events of a ``(width, height)`` sensor into windows of ``window_us`` and ``steps`` frames."""

    def __init__(
        self, window_us: int, steps: int, sensor_size: tuple[int, int], *, max_empty_windows: int = 16
    ) -> None:
        if window_us < 1 or steps < 1:
            raise ValueError("window_us and steps must be >= 1")
        self.window_us = int(window_us)
        self.steps = int(steps)
        self.width, self.height = (int(n) for n in sensor_size)
        self.max_empty_windows = max_empty_windows
        self.late_events = 0
        self.skipped_windows = 0  # empty windows of long gaps, jumped over
        self._next_index = 0
        self._start: int | None = None  # the current window's start (event time, us)
        self._frames = self._empty()
        self._count = 0

    def _empty(self) -> np.ndarray:
        return np.zeros((self.steps, 2, self.height, self.width), dtype=np.float32)

    @property
    def started(self) -> bool:
        return self._start is not None

    def restart(self) -> None:
        """Forget the current window; the next event starts a new grid."""
        self._start = None
        self._frames = self._empty()
        self._count = 0

    def push(self, events: np.ndarray) -> list[Window]:
        """Add events [N] (fields x, y, t, p; on the sensor) and return the windows they completed."""
        if len(events) == 0:
            return []
        now = time.perf_counter()
        t = events["t"].astype(np.int64)
        if self._start is None:
            self._start = int(t.min())
        late = t < self._start
        if late.any():
            self.late_events += int(late.sum())
            events, t = events[~late], t[~late]
            if len(events) == 0:
                return []
        offsets = (t - self._start) // self.window_us  # 0: the current window, k: k windows later
        done: list[Window] = []
        if offsets.max() == 0:
            self._add(events, t)
            return done
        order = np.argsort(offsets, kind="stable")
        events, t, offsets = events[order], t[order], offsets[order]
        bounds = np.flatnonzero(np.diff(offsets)) + 1
        current = 0  # the offset of the window being filled
        for group in np.split(np.arange(len(offsets)), bounds):
            ahead = int(offsets[group[0]]) - current
            if ahead > 0:
                done.append(self._close(now))
                empty = ahead - 1
                for _ in range(min(empty, self.max_empty_windows)):
                    done.append(self._close(now))
                jumped = max(0, empty - self.max_empty_windows)
                self.skipped_windows += jumped
                assert self._start is not None
                self._start += jumped * self.window_us
                current += ahead
            self._add(events[group], t[group])
        return done

    def flush(self) -> Window | None:
        """Emit the current window now (its frames after the last event stay empty); None if not started."""
        if self._start is None:
            return None
        return self._close(time.perf_counter())

    def _add(self, events: np.ndarray, t: np.ndarray) -> None:
        assert self._start is not None
        step = (t - self._start) * self.steps // self.window_us
        x = events["x"].astype(np.int64)
        y = events["y"].astype(np.int64)
        p = events["p"].astype(np.int64)
        index = ((step * 2 + p) * self.height + y) * self.width + x
        self._frames += np.bincount(index, minlength=self._frames.size).reshape(self._frames.shape)
        self._count += len(events)

    def _close(self, now: float) -> Window:
        assert self._start is not None
        window = Window(
            self._next_index, self._start, self._start + self.window_us, self._frames, self._count, now
        )
        self._next_index += 1
        self._start += self.window_us
        self._frames = self._empty()
        self._count = 0
        return window


class EventCountWindower:
    """Windows of ``window_events`` events each (``window_events=`` on the route), ``steps`` frames of
    ``window_events / steps`` consecutive events: a busy scene answers more often than a still one.

    start_us/end_us: the first event's t and the last event's t + 1. Events are taken in arrival
    order; ``late_events`` and ``skipped_windows`` stay 0 (there is no time grid to fall behind).
    """

    def __init__(self, window_events: int, steps: int, sensor_size: tuple[int, int]) -> None:
        if window_events < steps or steps < 1:
            raise ValueError("window_events must be >= steps >= 1")
        self.window_events = int(window_events)
        self.steps = int(steps)
        self.width, self.height = (int(n) for n in sensor_size)
        self.late_events = 0
        self.skipped_windows = 0
        self._next_index = 0
        self._held: list[np.ndarray] = []  # events of the window being filled
        self._count = 0

    def restart(self) -> None:
        self._held, self._count = [], 0

    def push(self, events: np.ndarray) -> list[Window]:
        done: list[Window] = []
        while len(events):
            take = min(len(events), self.window_events - self._count)
            self._held.append(events[:take])
            self._count += take
            events = events[take:]
            if self._count == self.window_events:
                done.append(self._close())
        return done

    def flush(self) -> Window | None:
        return self._close() if self._count else None

    def _close(self) -> Window:
        events = np.concatenate(self._held)
        position = np.arange(len(events), dtype=np.int64)
        step = position * self.steps // self.window_events
        frames = np.zeros((self.steps, 2, self.height, self.width), dtype=np.float32)
        index = (step * 2 + events["p"].astype(np.int64)) * self.height + events["y"].astype(np.int64)
        index = index * self.width + events["x"].astype(np.int64)
        frames += np.bincount(index, minlength=frames.size).reshape(frames.shape)
        t = events["t"]
        window = Window(
            self._next_index, int(t.min()), int(t.max()) + 1, frames, len(events), time.perf_counter()
        )
        self._next_index += 1
        self.restart()
        return window
