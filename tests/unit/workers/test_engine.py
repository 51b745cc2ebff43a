"""workers/engine.py on a real (tiny, random-weight) registry: answers, telemetry levels, state
isolation, per-request failures, caching."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from prometheus_client import REGISTRY
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL, LABELS, TIME_STEPS

from eventio import make_events
from models._registry import list_models, register_model
from models.base import SpikingModel, spiking_layers
from models.layers import SeqConv2d, SeqLinear, SeqToANN
from models.neurons import neuron_factory
from registry import Registry
from workers.engine import Engine
from workers.protocol import InferenceRequest

_counter = iter(range(10**9))


def image(seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32) * scale).astype(np.float32)


def events(seed: int, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 100_000, n))
    return make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n))


def request(array: np.ndarray, model: str = IMAGE_MODEL, **fields: Any) -> InferenceRequest:
    kind = "events" if model == EVENTS_MODEL else "image"
    defaults: dict[str, Any] = {
        "request_id": f"q{next(_counter)}",
        "model_name": model,
        "model_version": 1,
        "kind": kind,
        "array": array,
        "time_steps": TIME_STEPS["default"],
        "telemetry": "summary",
    }
    return InferenceRequest(**{**defaults, **fields})


@pytest.fixture(scope="module")
def engine(tiny_registry: Any) -> Engine:
    return Engine(tiny_registry, device="cpu", backend="torch")


def test_answers_probabilities_top_k_and_labels_in_request_order(engine: Engine) -> None:
    batch = [request(image(i), top_k=3) for i in range(3)]
    results = engine.run_batch(batch)
    assert [r.request_id for r in results] == [q.request_id for q in batch]
    for result in results:
        assert result.error is None
        assert len(result.probabilities) == 10
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert len(result.predictions) == 3
        probs = [p.probability for p in result.predictions]
        assert probs == sorted(probs, reverse=True)
        top = result.predictions[0]
        assert top.label == LABELS[top.index]
        assert top.probability == pytest.approx(max(result.probabilities))
        assert result.batch_size == 3
        assert result.compute_ms > 0


def test_telemetry_levels(engine: Engine) -> None:
    none, summary, layers = engine.run_batch(
        [request(image(1), telemetry=level) for level in ("none", "summary", "layers")]
    )
    assert none.telemetry is None
    assert summary.telemetry is not None and "layers" not in summary.telemetry
    assert "synaptic_layers" not in summary.telemetry
    assert summary.telemetry["synaptic_ops"] <= summary.telemetry["synaptic_ops_nominal"]
    assert layers.telemetry is not None and layers.telemetry["layers"]
    assert summary.telemetry["spikes"] == layers.telemetry["spikes"] > 0
    for layer in layers.telemetry["layers"]:
        assert 0.0 <= layer["spike_rate"] <= 1.0
        assert layer["neurons"] > 0
    assert sum(layer["spikes"] for layer in layers.telemetry["layers"]) == layers.telemetry["spikes"]
    assert layers.telemetry["energy_uj"] > 0 and layers.telemetry["synaptic_ops"] >= 0
    synaptic = layers.telemetry["synaptic_layers"]
    assert sum(layer["synaptic_ops"] for layer in synaptic) == pytest.approx(layers.telemetry["synaptic_ops"])
    assert sum(layer["energy_share"] for layer in synaptic) == pytest.approx(1.0)


def test_event_recordings_are_binned_and_classified(engine: Engine) -> None:
    result = engine.run_batch([request(events(0), model=EVENTS_MODEL, telemetry="layers", time_steps=6)])[0]
    assert result.error is None
    assert result.time_steps == 6
    assert len(result.probabilities) == 10
    assert result.telemetry is not None and result.telemetry["layers"]


def _probabilities(engine: Engine, *arrays: np.ndarray) -> list[np.ndarray]:
    return [np.array(r.probabilities) for r in engine.run_batch([request(a) for a in arrays])]


def test_state_never_leaks_between_batches(engine: Engine) -> None:
    loaded = engine.ensure_loaded(IMAGE_MODEL, 1)
    module = loaded.module
    a, b = image(1, scale=3.0), image(2, scale=3.0)
    x_a = torch.from_numpy(((a - 0.1307) / 0.3081)[None, None].repeat(4, 0))
    x_b = torch.from_numpy(((b - 0.1307) / 0.3081)[None, None].repeat(4, 0))
    try:
        # Streaming neurons keep their membrane: proof that kept state WOULD change the answer...
        module.set_streaming(True)
        with torch.inference_mode():
            fresh = module(x_a)
            module(x_b)
            carried = module(x_a)
        assert not torch.allclose(fresh, carried), "the input is too weak to show kept state"
        module.reset_state()
        # ...yet through the engine, which resets after every batch, A answers the same after B.
        (first,) = _probabilities(engine, a)
        _probabilities(engine, b, b, b)
        (again,) = _probabilities(engine, a)
        np.testing.assert_array_equal(first, again)
        assert all(neuron.v is None for neuron in spiking_layers(module))
    finally:
        module.set_streaming(False)


def test_an_answer_does_not_depend_on_its_batch_mates(engine: Engine) -> None:
    (alone,) = _probabilities(engine, image(5))
    _, in_batch, _ = _probabilities(engine, image(6), image(5), image(7))
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-6)


def test_a_bad_request_fails_alone(engine: Engine) -> None:
    good, wrong_shape = engine.run_batch([request(image(1)), request(np.zeros((3, 28, 28), np.float32))])
    assert good.error is None and good.batch_size == 1
    assert wrong_shape.error is not None and wrong_shape.error[0] == "invalid_input"
    assert "(1, 28, 28)" in wrong_shape.error[1]


def test_a_batch_is_one_network_and_one_t_the_batcher_groups_them(engine: Engine) -> None:
    with pytest.raises(ValueError, match="batch_key"):
        engine.run_batch([request(image(1)), request(image(2), time_steps=2)])


def test_results_follow_request_order_even_when_ids_repeat(engine: Engine) -> None:
    first, second = engine.run_batch(
        [request(image(1), request_id="same"), request(image(2), request_id="same")]
    )
    (alone,) = engine.run_batch([request(image(2))])
    assert first.probabilities != second.probabilities
    np.testing.assert_allclose(second.probabilities, alone.probabilities, rtol=1e-5, atol=1e-6)


def test_unknown_version_is_an_error_result_not_an_exception(engine: Engine) -> None:
    (result,) = engine.run_batch([request(image(1), model_version=42)])
    assert result.error is not None and result.error[0] == "model_not_found"


# --- a network that fails for one input, to prove the batch falls back to one-by-one ---------


class _FragileNet(SpikingModel):
    """x: [T, B, 1, 4, 4] -> [B, 2]; raises when any input value is over 1000."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, neuron: dict | None = None) -> None:
        super().__init__()
        self.conv = SeqConv2d(in_channels, 2, 3, padding=1, analog_input=True)
        self.lif = neuron_factory(**(neuron or {"kind": "lif"}))()
        self.flat = SeqToANN(nn.Flatten())
        self.fc = SeqLinear(2 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.max()) > 1000:
            raise RuntimeError("input value over 1000")
        return self.fc(self.flat(self.lif(self.conv(x)))).mean(0)


if "fragile_net" not in list_models():

    @register_model(default_input={"time_steps": 2, "shape": (1, 4, 4)})
    def fragile_net(**config: Any) -> nn.Module:
        return _FragileNet(**config)


def test_a_request_that_breaks_the_network_fails_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    registry = Registry(tmp_path)
    engine = Engine(registry, backend="torch")
    manifest = registry.register(
        "fragile",
        architecture="fragile_net",
        config={},
        neuron=None,
        time_steps={"default": 2, "min": 1, "max": 4},
        input={"kind": "image", "channels": 1, "height": 4, "width": 4},
        labels=["a", "b"],
        weights=_FragileNet().state_dict(),
    )
    ok = np.zeros((1, 4, 4), np.float32)
    bad = np.full((1, 4, 4), 5000.0, np.float32)
    results = engine.run_batch(
        [request(ok, model="fragile", model_version=manifest.version, time_steps=2) for _ in range(2)]
        + [request(bad, model="fragile", model_version=manifest.version, time_steps=2)]
    )
    assert [r.error is None for r in results] == [True, True, False]
    assert results[2].error == ("inference_failed", "input value over 1000")


def test_optimised_and_plain_engines_agree(tiny_registry: Any, engine: Engine) -> None:
    plain = Engine(tiny_registry, backend="torch", optimize=False)
    batch = [image(i, scale=2.0) for i in range(3)]
    optimised = engine.run_batch([request(a) for a in batch])
    reference = plain.run_batch([request(a) for a in batch])
    for ours, theirs in zip(optimised, reference, strict=True):
        np.testing.assert_allclose(ours.probabilities, theirs.probabilities, rtol=1e-4, atol=1e-5)
    assert "BN folded" in engine.optimizations()[f"{IMAGE_MODEL}:1"]
    assert plain.optimizations()[f"{IMAGE_MODEL}:1"] == ""


def test_loaded_models_are_cached_and_can_be_unloaded(tiny_registry: Any) -> None:
    engine = Engine(tiny_registry, backend="torch", max_models=1)
    first = engine.ensure_loaded(IMAGE_MODEL, 1)
    assert engine.ensure_loaded(IMAGE_MODEL, 1) is first
    assert engine.loaded() == [(IMAGE_MODEL, 1)]
    engine.ensure_loaded(EVENTS_MODEL, 1)  # over max_models: the least recently used goes
    assert engine.loaded() == [(EVENTS_MODEL, 1)]
    assert engine.unload(EVENTS_MODEL, 1) and engine.loaded() == []
    assert REGISTRY.get_sample_value("spikeserve_models_loaded") == 0


def test_worker_metrics_are_observed(engine: Engine) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    batches = value("spikeserve_batch_size_count", model=IMAGE_MODEL)
    spikes = value("spikeserve_spikes_total", model=IMAGE_MODEL)
    worker_batches = value("spikeserve_worker_batches_total", worker="embedded")
    stamp = time.time()
    results = engine.run_batch([request(image(i), telemetry="layers", enqueued_at=stamp) for i in range(2)])
    assert value("spikeserve_batch_size_count", model=IMAGE_MODEL) == batches + 1
    assert value("spikeserve_batch_size_sum", model=IMAGE_MODEL) >= 2
    assert value("spikeserve_worker_batches_total", worker="embedded") == worker_batches + 1
    fired = sum(r.telemetry["spikes"] for r in results if r.telemetry)
    assert value("spikeserve_spikes_total", model=IMAGE_MODEL) == spikes + fired
    layer = results[0].telemetry["layers"][0]["name"] if results[0].telemetry else ""
    assert value("spikeserve_spike_rate_count", model=IMAGE_MODEL, layer=layer) >= 2
