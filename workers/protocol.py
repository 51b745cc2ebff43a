"""What travels between gateway and worker: small frozen dataclasses, msgpack on the wire.

Arrays travel as raw bytes with dtype and shape (``numpy.lib.format`` descr), never pickle.
The embedded pool passes the objects as they are; the Redis pool uses ``to_bytes``/``from_bytes``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import msgpack
import numpy as np

TelemetryLevel = Literal["none", "summary", "layers"]
InputKind = Literal["image", "events"]
TELEMETRY_LEVELS: tuple[str, ...] = ("none", "summary", "layers")


def new_request_id() -> str:
    """A fresh correlation id: 32 hex digits from a random UUID, unique among every request."""
    return uuid.uuid4().hex


def pack_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    descr = np.lib.format.dtype_to_descr(array.dtype)
    return {"descr": descr, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(packed: dict[str, Any]) -> np.ndarray:
    descr = packed["descr"]
    # descr is a str for plain dtypes, a list of [name, type] pairs for structured ones
    dtype = np.dtype([tuple(field) for field in descr] if isinstance(descr, list) else descr)
    return np.frombuffer(packed["data"], dtype=dtype).reshape(packed["shape"])


def pack_with_array(message: Any, array_field: str) -> bytes:
    """A dataclass message whose ``array_field`` holds an ndarray, as msgpack bytes.

    fields() rather than asdict(): asdict deep-copies the array before it is serialised."""
    payload = {f.name: getattr(message, f.name) for f in fields(message)}
    payload[array_field] = pack_array(payload[array_field])
    return msgpack.packb(payload, use_bin_type=True)


def unpack_with_array(data: bytes, array_field: str) -> dict[str, Any]:
    """The keyword arguments of the message ``pack_with_array`` wrote."""
    payload = msgpack.unpackb(data, raw=False)
    payload[array_field] = unpack_array(payload[array_field])
    return dict(payload)


@dataclass(frozen=True)
class InferenceRequest:
    """One input for one model version.

    array: ``kind == "image"``: [C, H, W] float32 in [0, 1], already at the model's size;
    ``kind == "events"``: structured events with fields x, y, t (microseconds), p.
    request_id: minted by the gateway (``new_request_id``), never a client's value: results are
    matched to their waiters by it, so two requests must never share one.
    exit_threshold: None runs all T steps; a value in (0, 1] asks for early exit (the network runs
    step by step and stops at the first step, not before ``min_steps``, where the top-1
    probability of the accumulated output reaches it).
    """

    request_id: str
    model_name: str
    model_version: int
    kind: InputKind
    array: np.ndarray
    time_steps: int
    telemetry: TelemetryLevel = "summary"
    top_k: int = 5
    deadline: float = field(default_factory=lambda: time.time() + 30.0)  # unix seconds
    enqueued_at: float = field(default_factory=time.time)
    exit_threshold: float | None = None
    min_steps: int = 1

    @property
    def early_exit(self) -> bool:
        return self.exit_threshold is not None

    @property
    def batch_key(self) -> tuple[str, int, int, str, bool]:
        """Requests with the same key can share one batch (same network, T and input kind, and all
        or none exiting early: thresholds may differ within a batch, each sample has its own)."""
        return (self.model_name, self.model_version, self.time_steps, self.kind, self.early_exit)

    def to_bytes(self) -> bytes:
        return pack_with_array(self, "array")

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceRequest:
        return cls(**unpack_with_array(data, "array"))


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class InferenceResult:
    """The worker's answer to one request. ``error`` is (code, message) when it failed.

    probabilities: every class, in label order (the v2 protocol returns them all).
    telemetry: ``SampleTelemetry.as_dict`` output (layers only at level "layers"), or None; with
    early exit, over the ``time_steps_used`` steps that ran (None when the request ran all T).
    """

    request_id: str
    model_name: str
    model_version: int
    time_steps: int
    predictions: tuple[Prediction, ...] = ()
    probabilities: tuple[float, ...] = ()
    telemetry: dict[str, Any] | None = None
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 1
    warnings: tuple[str, ...] = ()
    error: tuple[str, str] | None = None
    worker_id: str = ""
    time_steps_used: int | None = None

    def to_bytes(self) -> bytes:
        # fields() rather than asdict(), which deep-copies the telemetry of every answer first
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        payload["predictions"] = [
            {"label": p.label, "index": p.index, "probability": p.probability} for p in self.predictions
        ]
        return msgpack.packb(payload, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceResult:
        payload = msgpack.unpackb(data, raw=False)
        payload["predictions"] = tuple(Prediction(**p) for p in payload["predictions"])
        payload["probabilities"] = tuple(payload["probabilities"])
        payload["warnings"] = tuple(payload["warnings"])
        if payload["error"] is not None:
            payload["error"] = tuple(payload["error"])
        return cls(**payload)
