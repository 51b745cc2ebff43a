"""workers/early_exit.py through the engine (tiny registry): early-exit requests answer with the
steps they ran, share batches without changing each other's answers, leave plain requests as
they were, count into the steps histogram, and a network that attends across time refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL, TIME_STEPS

from eventio import make_events
from workers.engine import Engine
from workers.protocol import InferenceRequest

_counter = iter(range(10**9))
STEPS = TIME_STEPS["default"]


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)


def request(array: np.ndarray, model: str = IMAGE_MODEL, **fields: Any) -> InferenceRequest:
    defaults: dict[str, Any] = {
        "request_id": f"x{next(_counter)}",
        "model_name": model,
        "model_version": 1,
        "kind": "events" if model == EVENTS_MODEL else "image",
        "array": array,
        "time_steps": STEPS,
        "telemetry": "summary",
    }
    return InferenceRequest(**{**defaults, **fields})


@pytest.fixture(scope="module")
def engine(tiny_registry: Any) -> Engine:
    return Engine(tiny_registry, device="cpu", backend="torch")


def test_early_exit_answers_with_the_steps_run_and_their_telemetry(engine: Engine) -> None:
    early, full = engine.run_batch(
        [request(image(0), exit_threshold=1e-6, min_steps=2), request(image(0), exit_threshold=1.0)]
    )
    assert early.error is None and full.error is None
    assert early.time_steps_used == 2
    assert early.time_steps == STEPS  # what was asked; time_steps_used is what ran
    assert full.time_steps_used in range(1, STEPS + 1)
    (plain,) = engine.run_batch([request(image(0))])
    assert plain.time_steps_used is None
    assert early.telemetry is not None and plain.telemetry is not None
    assert early.telemetry["macs"] == pytest.approx(plain.telemetry["macs"] * 2 / STEPS)


def test_an_exiting_answer_does_not_depend_on_its_batch_mates(engine: Engine) -> None:
    asks = [
        {"exit_threshold": 1e-6, "min_steps": 3},
        {"exit_threshold": 1e-6, "min_steps": 1},
        {"exit_threshold": 1.0, "min_steps": 1},
        {"exit_threshold": 1e-6, "min_steps": 2},
    ]
    together = engine.run_batch([request(image(i), **ask) for i, ask in enumerate(asks)])
    assert [r.batch_size for r in together] == [4] * 4
    for i, ask in enumerate(asks):
        (alone,) = engine.run_batch([request(image(i), **ask)])
        assert together[i].time_steps_used == alone.time_steps_used
        np.testing.assert_allclose(together[i].probabilities, alone.probabilities, rtol=1e-5, atol=1e-6)
    assert [r.time_steps_used for r in together][:2] == [3, 1]


def test_plain_requests_before_and_after_run_all_steps_unchanged(engine: Engine) -> None:
    (before,) = engine.run_batch([request(image(5))])
    exited = engine.run_batch(
        [request(image(6), exit_threshold=1e-6), request(image(7), exit_threshold=1e-6)]
    )
    assert [r.time_steps_used for r in exited] == [1, 1]
    (after,) = engine.run_batch([request(image(5))])
    assert before.time_steps_used is None and after.time_steps_used is None
    assert after.probabilities == pytest.approx(before.probabilities, abs=1e-6)


def test_steps_used_are_counted_per_model(engine: Engine) -> None:
    def count(le: str) -> float:
        labels = {"model": IMAGE_MODEL, "le": le}
        return REGISTRY.get_sample_value("spikeserve_exit_time_steps_bucket", labels) or 0.0

    before_one, before_two = count("1.0"), count("2.0")
    engine.run_batch(
        [request(image(1), exit_threshold=1e-6), request(image(2), exit_threshold=1e-6, min_steps=2)]
    )
    assert count("1.0") == before_one + 1
    assert count("2.0") == before_two + 2


def test_a_network_attending_across_time_refuses_early_exit(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 90_000, 300))
    recording = make_events(rng.integers(0, 34, 300), rng.integers(0, 34, 300), t, rng.integers(0, 2, 300))
    refused, also_refused = engine.run_batch(
        [
            request(recording, model=EVENTS_MODEL, exit_threshold=0.9),
            request(recording, model=EVENTS_MODEL, exit_threshold=0.5),
        ]
    )
    (plain,) = engine.run_batch([request(recording, model=EVENTS_MODEL)])
    assert refused.error is not None and also_refused.error is not None
    code, message = refused.error
    assert code == "early_exit_unsupported"
    assert "temporal attention" in message
    assert plain.error is None


def test_preparing_early_exit_compiles_its_step_calls_and_leaves_the_network_alone(engine: Engine) -> None:
    from models.base import spiking_layers
    from workers import early_exit

    loaded = engine.ensure_loaded(IMAGE_MODEL, 1)
    loaded.early_exit_ready = False
    early_exit.warm_up(loaded)
    assert loaded.early_exit_ready
    assert all(neuron.v is None and not neuron.streaming for neuron in spiking_layers(loaded.module))
