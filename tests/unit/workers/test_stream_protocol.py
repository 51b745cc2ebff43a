"""workers/stream_protocol.py: what a stream's messages look like on the wire (msgpack, no pickle)."""

from __future__ import annotations

import numpy as np

from workers.stream_protocol import StreamAnswer, StreamOpen, StreamWindow


def test_a_window_travels_with_its_frames_and_sequence_number() -> None:
    frames = np.arange(2 * 2 * 3 * 5, dtype=np.float32).reshape(2, 2, 3, 5)
    sent = StreamWindow("s1", "m", 3, 7, frames, telemetry="layers", top_k=2, reset=True, seq=9)
    received = StreamWindow.from_bytes(sent.to_bytes())
    assert received.frames.dtype == np.float32 and np.array_equal(received.frames, frames)
    assert {**vars(received), "frames": None} == {**vars(sent), "frames": None}


def test_answers_and_opens_round_trip() -> None:
    answer = StreamAnswer(
        "s1",
        4,
        "sliding",
        predictions=({"label": "3", "index": 3, "probability": 0.5},),
        logits=(0.25, -1.0),
        telemetry={"spike_rate": 0.1},
        state_steps=8,
        state_reset=True,
        compute_ms=1.5,
        worker_id="w2",
        seq=5,
        context_steps=8,
    )
    assert StreamAnswer.from_bytes(answer.to_bytes()) == answer
    failed = StreamAnswer("s1", -1, "stateful", error=("model_not_found", "no such model"))
    assert StreamAnswer.from_bytes(failed.to_bytes()) == failed
    close = StreamOpen("s1", "m", 2, close=True)
    assert StreamOpen.from_bytes(close.to_bytes()) == close
