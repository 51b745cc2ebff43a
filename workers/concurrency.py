"""How a worker process spreads its batches over the CPU: torch's threads and batches at once.

By default one batch at a time, with torch's own threads (one per core): the fewest batches and
the largest ones. ``concurrent_batches`` > 1 runs that many batches side by side, each in a thread
of its own, and unless ``torch_threads`` says otherwise gives each an even share of the cores:
the threads of one op then no longer wait on each other at every barrier (GNU OpenMP spins while
it waits), and a core is no longer idle while a batch thread is in Python or waiting for the GIL.
The price is smaller batches under the same load (a closed loop of 32 clients formed batches of
about 10 instead of 16), which cost more per answer. On danet-mnist on two cores (docs/PERFORMANCE.md,
"Per answer"): against torch's default (two threads, one batch) two batches of one thread each
answered about as many requests for 3 to 5% more CPU each; against one batch of one thread (the
setting the peers are compared at) they answered about 1.5x as many on a quieter machine (two short
runs one after the other). So the default stays one batch, and a process limited to one thread
per batch should run two.

torch-free: the caller applies ``torch_threads`` (``torch.set_num_threads``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Concurrency:
    """``torch_threads``: intra-op threads to set (None: leave torch's choice); ``batches``: how many
    batches run at once (``workers.batcher.Batcher``'s ``concurrent_batches``)."""

    torch_threads: int | None
    batches: int


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plan(
    device: str, torch_threads: int | None, concurrent_batches: int | None, cores: int | None = None
) -> Concurrency:
    """The threads and batches at once for ``device``, from the settings (None: the default).

    One batch with torch's threads unless told; several batches on a CPU share the cores evenly
    unless ``torch_threads`` is given too. ``torch_threads`` 0 means unset, as it always has."""
    batches = concurrent_batches or 1
    if torch_threads or batches == 1 or not device.startswith("cpu"):
        return Concurrency(torch_threads or None, batches)
    return Concurrency(max(1, max(cores or usable_cores(), 1) // batches), batches)
