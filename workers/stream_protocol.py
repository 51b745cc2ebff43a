"""What travels between gateway and worker for a live stream: one window of frames each way.

The gateway decodes and bins the events (numpy only); a worker receives each window as frames
``[k, 2, H, W]`` float32 (k = steps per window) on the model's sensor, so it never sees raw bytes.
A window names everything the worker needs to start the session afresh: a worker that does not
hold the session (restarted, or another worker after a failover) starts it from rest and says
``state_reset`` in its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

StreamMode = Literal["stateful", "sliding"]


@dataclass(frozen=True)
class StreamWindow:
    """One window of one session.

    frames: [k, 2, H, W] float32 event counts (channel 0 OFF, 1 ON), k = steps of this window.
    reset: start this window from rest (the client asked for a reset).
    """

    session_id: str
    model_name: str
    model_version: int
    index: int
    frames: Any  # np.ndarray [k, 2, H, W] float32
    telemetry: str = "summary"
    top_k: int = 5
    reset: bool = False


@dataclass(frozen=True)
class StreamAnswer:
    """The worker's answer to one window.

    logits: [classes] the stateful mean over every step since the last reset (sliding: over the
    steps in context). state_steps: steps the state has seen since the last reset (sliding: the
    context length). state_reset: the worker started this session from rest without being asked.
    """

    session_id: str
    index: int
    mode: StreamMode
    predictions: tuple[dict[str, Any], ...] = ()
    logits: tuple[float, ...] = ()
    telemetry: dict[str, Any] | None = None
    state_steps: int = 0
    state_reset: bool = False
    compute_ms: float = 0.0
    worker_id: str = ""
