"""Helpers for the eventio tests: random but reproducible event arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from eventio import make_events

RandomEvents = Callable[..., np.ndarray]


@pytest.fixture
def random_events() -> RandomEvents:
    """``random_events(n, width=34, height=34, seed=0, t_max=10**6)``: [n] EVENT_DTYPE in time order."""

    def build(n: int, width: int = 34, height: int = 34, seed: int = 0, t_max: int = 10**6) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return make_events(
            rng.integers(0, width, n),
            rng.integers(0, height, n),
            np.sort(rng.integers(0, t_max, n)),
            rng.integers(0, 2, n),
        )

    return build
