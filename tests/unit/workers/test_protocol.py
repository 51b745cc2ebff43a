"""workers/protocol.py: what crosses between a gateway and its workers (Redis or inference processes)."""

from __future__ import annotations

import msgpack
import numpy as np

from workers.protocol import InferenceRequest, InferenceResult, Prediction


def _result(**changes: object) -> InferenceResult:
    fields: dict[str, object] = {
        "request_id": "r-1",
        "model_name": "danet-mnist",
        "model_version": 1,
        "time_steps": 4,
        "predictions": (Prediction("7", 7, 0.9), Prediction("1", 1, 0.05)),
        "probabilities": (0.05, 0.9),
        "telemetry": {"spikes": 12, "layers": [{"name": "stem", "spikes": 3}]},
        "queue_ms": 1.5,
        "compute_ms": 20.0,
        "batch_size": 3,
        "warnings": ("resized",),
        "worker_id": "embedded-0",
        "time_steps_used": 2,
    }
    fields.update(changes)
    return InferenceResult(**fields)  # type: ignore[arg-type]


def test_a_result_comes_back_equal() -> None:
    for result in (_result(), _result(error=("invalid_input", "bad"), predictions=(), telemetry=None)):
        assert InferenceResult.from_bytes(result.to_bytes()) == result


def test_a_result_keeps_its_wire_format_a_map_of_every_field() -> None:
    """A gateway and a worker of the previous release read each other: predictions are maps."""
    payload = msgpack.unpackb(_result().to_bytes(), raw=False)
    assert payload["predictions"][0] == {"label": "7", "index": 7, "probability": 0.9}
    assert payload["telemetry"] == {"spikes": 12, "layers": [{"name": "stem", "spikes": 3}]}
    assert set(payload) == {
        "request_id", "model_name", "model_version", "time_steps", "predictions", "probabilities",
        "telemetry", "queue_ms", "compute_ms", "batch_size", "warnings", "error", "worker_id",
        "time_steps_used",
    }  # fmt: skip


def test_a_request_carries_its_array_exactly() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 7
    request = InferenceRequest("r-2", "danet-mnist", 1, "image", array, 4, deadline=123.0)
    back = InferenceRequest.from_bytes(request.to_bytes())
    assert back.array.dtype == np.float32 and np.array_equal(back.array, array)
    assert (back.request_id, back.deadline, back.batch_key) == ("r-2", 123.0, request.batch_key)
