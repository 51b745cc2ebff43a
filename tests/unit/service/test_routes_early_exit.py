"""Early exit over time steps through the real gateway and embedded worker (tiny registry):
``exit=confidence`` on the classify, events and v2 routes, every bad option a 422 in the one
error format, a network attending across time refused with the reason, and the steps histogram."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import npy_bytes

from eventio import make_events

NPY = {"content-type": "application/x-npy"}
CLASSIFY = "/v1/models/tiny-danet/classify"
EVENTS = "/v1/models/tiny-spikeformer/events"


def digit(seed: int = 0) -> bytes:
    return npy_bytes(np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32))


def recording() -> bytes:
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 90_000, 300))
    return npy_bytes(
        make_events(rng.integers(0, 34, 300), rng.integers(0, 34, 300), t, rng.integers(0, 2, 300))
    )


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_classify_exits_and_says_how_many_steps_ran(serving: TestClient) -> None:
    early = serving.post(
        f"{CLASSIFY}?exit=confidence&exit_threshold=0.000001&min_steps=2", content=digit(), headers=NPY
    )
    assert early.status_code == 200, early.text
    answer = early.json()
    assert answer["time_steps"] == 4 and answer["time_steps_used"] == 2
    full = serving.post(f"{CLASSIFY}?exit=confidence&exit_threshold=1", content=digit(), headers=NPY).json()
    plain = serving.post(CLASSIFY, content=digit(), headers=NPY).json()
    assert "time_steps_used" not in plain  # without exit the answer is as it was
    assert full["time_steps_used"] in (1, 2, 3, 4)
    assert answer["telemetry"]["macs"] == pytest.approx(plain["telemetry"]["macs"] / 2)


def test_the_default_threshold_applies_when_none_is_given(serving: TestClient) -> None:
    answer = serving.post(f"{CLASSIFY}?exit=confidence", content=digit(), headers=NPY)
    assert answer.status_code == 200, answer.text
    assert 1 <= answer.json()["time_steps_used"] <= 4


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("exit=sometimes", "exit"),
        ("exit=confidence&exit_threshold=1.5", "exit_threshold"),
        ("exit=confidence&exit_threshold=0", "exit_threshold"),
        ("exit=confidence&min_steps=0", "min_steps"),
        ("exit=confidence&min_steps=5", "min_steps"),
        ("exit_threshold=0.5", "exit=confidence"),
        ("min_steps=2", "exit=confidence"),
    ],
)
def test_bad_exit_options_are_422(serving: TestClient, query: str, words: str) -> None:
    status, code, message = error_of(serving.post(f"{CLASSIFY}?{query}", content=digit(), headers=NPY))
    assert status == 422 and code in ("invalid_input", "invalid_request")
    assert words in message


def test_a_network_attending_across_time_answers_422_with_the_reason(serving: TestClient) -> None:
    status, code, message = error_of(
        serving.post(f"{EVENTS}?exit=confidence", content=recording(), headers=NPY)
    )
    assert (status, code) == (422, "early_exit_unsupported")
    assert "temporal attention" in message
    assert serving.post(EVENTS, content=recording(), headers=NPY).status_code == 200


def test_v2_takes_exit_in_parameters(serving: TestClient) -> None:
    images = np.random.default_rng(5).random((2, 1, 28, 28)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 1, 28, 28],
                "datatype": "FP32",
                "data": images.reshape(-1).tolist(),
            }
        ],
        "parameters": {
            "exit": "confidence",
            "exit_threshold": 0.000001,
            "min_steps": 3,
            "telemetry": "summary",
        },
    }
    answer = serving.post("/v2/models/tiny-danet/infer", json=body)
    assert answer.status_code == 200, answer.text
    parameters = answer.json()["parameters"]
    assert parameters["time_steps_used"] == [3, 3]
    bad = serving.post(
        "/v2/models/tiny-danet/infer",
        json={**body, "parameters": {"exit": "confidence", "exit_threshold": "high"}},
    )
    assert bad.status_code == 422 and "exit_threshold" in bad.json()["error"]


def test_steps_used_reach_the_metrics(serving: TestClient) -> None:
    serving.post(f"{CLASSIFY}?exit=confidence&exit_threshold=0.000001", content=digit(), headers=NPY)
    text = serving.get("/metrics").text
    assert 'spikeserve_exit_time_steps_bucket{le="1.0",model="tiny-danet"}' in text
