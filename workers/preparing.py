"""Preparing a network for a new T beside serving, without taking serving's time.

Compiling (torch.compile, inductor) is mostly Python: the thread that compiles holds the GIL for
most of seconds to minutes, and on a busy machine the batch thread then waits for it at every
torch op (each op gives the GIL up and must get it back). ``YieldToServing`` makes the preparing
thread step aside: a profile hook, set in that thread only, sleeps at every Python call while a
batch runs, so a batch gets the GIL (and the CPU) as if nothing compiled; between batches the
compilation runs at full speed. The hook never waits for the batch to end, only pauses briefly,
so a lock the compiler holds can never deadlock a batch.

inductor builds C++/Triton in a pool of worker processes (one per core) unless told to build in
the asking thread: ``build_in_this_thread`` makes it do that, one build at a time (process-wide),
so a compilation never takes every core.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

PAUSE_S = 0.001  # how long the preparing thread sleeps at each Python call while a batch runs


class YieldToServing:
    """``with gate.serving():`` around each batch; ``with gate.preparing():`` around a preparation
    (in the preparing thread)."""

    def __init__(self) -> None:
        self._batches_running = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._lock:
            self._batches_running += 1
        try:
            yield
        finally:
            with self._lock:
                self._batches_running -= 1

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if self._batches_running and event in ("call", "c_call"):
            time.sleep(PAUSE_S)  # gives up the GIL (and the CPU) to the batch

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        sys.setprofile(self._hook)  # this thread only
        try:
            yield
        finally:
            sys.setprofile(None)


def build_in_this_thread() -> None:
    """Make inductor build its code in the thread that compiles (see the module docstring)."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1
