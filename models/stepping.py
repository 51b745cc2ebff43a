"""Step-by-step runs whose neuron state belongs to the caller, not to the shared network.

``with stepping(state):`` makes every neuron forward run in the current thread (and context) keep
its final membrane in ``state`` and start from what ``state`` holds: the same neurons and kernels
as a T-step forward (``v_init`` in, ``return_v`` out), so feeding steps one at a time equals one
forward over all of them. The membranes live in the caller's ``StepState``, not in the modules,
so a server thread that warms up or prepares the same network meanwhile (a plain forward from
rest, a ``reset_state``) cannot touch them, and the caller can cut them to the samples still
running (``keep_rows``) when others leave the batch (early exit).

The module-attribute streaming mode (``set_streaming``) is the other way to keep state: for a
caller that owns the network outright.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_ACTIVE: ContextVar[StepState | None] = ContextVar("spikeserve_step_state", default=None)
# While no ``stepping`` block is open anywhere, ``current_step_state`` answers without reading the
# ContextVar (which torch.compile cannot trace): compiled plain forwards stay free of graph breaks.
_OPEN = 0
_OPEN_LOCK = threading.Lock()


class StepState:
    """Membranes of one step-by-step run, per neuron: ``membranes[id(neuron)]`` is [B, F] float32."""

    def __init__(self) -> None:
        self.membranes: dict[int, torch.Tensor] = {}

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` ([b] int64 indices) of every membrane: the others left."""
        for key, membrane in self.membranes.items():
            self.membranes[key] = membrane.index_select(0, rows.to(membrane.device))


@contextlib.contextmanager
def stepping(state: StepState) -> Iterator[StepState]:
    """Neuron forwards in this context read and write their membranes in ``state``."""
    global _OPEN
    token = _ACTIVE.set(state)
    with _OPEN_LOCK:
        _OPEN += 1
    try:
        yield state
    finally:
        with _OPEN_LOCK:
            _OPEN -= 1
        _ACTIVE.reset(token)


def current_step_state() -> StepState | None:
    """The ``StepState`` of the current context, or None (a plain forward, the fast path)."""
    if _OPEN == 0:
        return None
    return _ACTIVE.get()
