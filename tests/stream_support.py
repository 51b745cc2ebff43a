"""Helpers of the live-stream tests: the real N-MNIST recording cut as a camera would send it."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from eventio import read_events


def nmnist_in_1ms_chunks(data: bytes) -> list[bytes]:
    """The recording's own bytes, cut at record boundaries every millisecond of event time."""
    events = read_events(data).events
    assert len(events) * 5 == len(data)  # no overflow records in this short recording
    t = events["t"]
    edges = np.searchsorted(t, np.arange(t[0], t[-1] + 1001, 1000))
    return [data[5 * a : 5 * b] for a, b in itertools.pairwise(edges) if b > a]


def chunks_before(data: bytes, chunks: list[bytes], end_us: int) -> int:
    """How many of ``chunks`` hold only events earlier than ``end_us`` after the first event."""
    t0 = int(read_events(data).events["t"][0])
    count = 0
    for chunk in chunks:
        if int(read_events(chunk, fmt="nmnist").events["t"][-1]) - t0 >= end_us:
            break
        count += 1
    return count


def softmax(logits: Any) -> np.ndarray:
    values = np.asarray(logits, dtype=np.float64)
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def receive(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` server messages of a stream (60 s each at most: a worker may be loading)."""
    return [json.loads(ws.recv(timeout=60)) for _ in range(count)]


def receive_until_closed(ws: Any) -> list[dict[str, Any]]:
    """Every server message up to and with the ``closed`` one."""
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1]["type"] != "closed":
        messages.extend(receive(ws, 1))
    return messages
