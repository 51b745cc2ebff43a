"""What travels between gateway and worker for a live stream: one window of frames each way.

The gateway decodes and bins the events (numpy only); a worker receives each window as frames
``[k, 2, H, W]`` float32 (k = steps per window) on the model's sensor, so it never sees raw bytes.
A window names everything the worker needs to start the session afresh: a worker that does not
hold the session (restarted, or another worker after a failover) starts it from rest and says
``state_reset`` in its answer.

``seq`` is minted by the gateway's session: 1, 2, 3... for the windows it sends, never reused,
even when the window grid restarts after a client reset. An answer is matched to its window by
(session id, seq), so a window sent again after its worker died can be answered only once.
On Redis the three messages travel as msgpack (``to_bytes``/``from_bytes``), arrays as raw bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import msgpack

from workers.protocol import pack_with_array, unpack_with_array

StreamMode = Literal["stateful", "sliding"]


@dataclass(frozen=True)
class StreamOpen:
    """Open a session on a worker (its answer: a ``StreamAnswer`` with seq 0 that says the mode and
    context), or, with ``close``, forget it there (no answer)."""

    session_id: str
    model_name: str
    model_version: int
    close: bool = False

    def to_bytes(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamOpen:
        return cls(**msgpack.unpackb(data, raw=False))


@dataclass(frozen=True)
class StreamWindow:
    """One window of one session.

    frames: [k, 2, H, W] float32 event counts (channel 0 OFF, 1 ON), k = steps of this window.
    index: the window's place on the session's time grid (restarts at 0 after a reset).
    seq: the gateway's sequence number of this window in the session (1, 2, ...; never reused).
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
    seq: int = 0

    def to_bytes(self) -> bytes:
        return pack_with_array(self, "frames")

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamWindow:
        return cls(**unpack_with_array(data, "frames"))


@dataclass(frozen=True)
class StreamAnswer:
    """The worker's answer to one window (or, with seq 0, to a ``StreamOpen``).

    logits: [classes] the stateful mean over every step since the last reset (sliding: over the
    steps in context). state_steps: steps the state has seen since the last reset (sliding: the
    context length). state_reset: the session started from rest without being asked (the worker
    did not hold it). context_steps: frames a sliding session keeps. error: (code, message) when
    it failed, decoded by ``workers.error_codec`` as for a request.
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
    seq: int = 0
    context_steps: int = 0
    error: tuple[str, str] | None = None

    def to_bytes(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamAnswer:
        payload = msgpack.unpackb(data, raw=False)
        payload["predictions"] = tuple(payload["predictions"])
        payload["logits"] = tuple(payload["logits"])
        if payload["error"] is not None:
            payload["error"] = tuple(payload["error"])
        return cls(**payload)
