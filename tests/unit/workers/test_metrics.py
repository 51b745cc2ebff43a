"""workers/metrics.py: bounded layer labels and what one batch adds to the counters."""

from __future__ import annotations

from prometheus_client import REGISTRY

from workers import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_layer_labels_are_bounded_per_model() -> None:
    labels = metrics._LayerLabels(limit=2)
    assert [labels.label("m", name) for name in ("a", "b", "c", "d", "a")] == [
        "a",
        "b",
        "other",
        "other",
        "a",
    ]
    assert labels.label("n", "c") == "c"  # each model has its own budget


def test_default_bound_is_64_layers() -> None:
    names = [f"layer{i}" for i in range(70)]
    got = {metrics.LAYER_LABELS.label("bound-test", name) for name in names}
    assert len(got) == 65 and "other" in got


def test_observe_telemetry_adds_spikes_sops_and_joules() -> None:
    samples = [
        {
            "spikes": 10,
            "synaptic_ops": 100.0,
            "energy_uj": 2.0,
            "layers": [{"name": "l1", "spike_rate": 0.25}],
        },
        {"spikes": 5, "synaptic_ops": 50.0, "energy_uj": 1.0, "layers": [{"name": "l1", "spike_rate": 0.75}]},
    ]
    before = {
        "spikes": value("spikeserve_spikes_total", model="obs"),
        "sops": value("spikeserve_synaptic_ops_total", model="obs"),
        "joules": value("spikeserve_energy_joules_total", model="obs"),
    }
    metrics.observe_telemetry("obs", samples)
    assert value("spikeserve_spikes_total", model="obs") == before["spikes"] + 15
    assert value("spikeserve_synaptic_ops_total", model="obs") == before["sops"] + 150
    assert abs(value("spikeserve_energy_joules_total", model="obs") - before["joules"] - 3e-6) < 1e-12
    assert value("spikeserve_spike_rate_count", model="obs", layer="l1") == 2
    assert value("spikeserve_spike_rate_sum", model="obs", layer="l1") == 1.0


def test_observe_batch_records_size_compute_queue_and_worker() -> None:
    metrics.observe_batch("obs-batch", "w1", 3, 0.02, [0.001, 0.002, -0.5])
    assert value("spikeserve_batch_size_sum", model="obs-batch") == 3
    assert value("spikeserve_compute_duration_seconds_count", model="obs-batch") == 1
    assert value("spikeserve_queue_duration_seconds_count", model="obs-batch") == 3
    assert value("spikeserve_worker_batches_total", worker="w1") == 1


def test_recorded_observations_replayed_elsewhere_count_as_observed_there() -> None:
    """In an inference process the engine's observations are kept, not counted; replayed in the
    gateway they count exactly as if the batch had run there."""
    layers = [{"name": "l1", "spike_rate": 0.5}]
    samples = [{"spikes": 4, "synaptic_ops": 8.0, "energy_uj": 1.0, "layers": layers}]
    before = value("spikeserve_spikes_total", model="replayed")
    metrics.record_observations(True)
    try:
        metrics.observe_batch("replayed", "w-child", 2, 0.01, iter([0.001, 0.002]))
        metrics.observe_telemetry("replayed", samples)
        metrics.observe_exit_steps("replayed", [1, 3])
        metrics.set_models_loaded(7)  # per process: the gateway sets its own from what every process holds
        recorded = metrics.take_observations()
    finally:
        metrics.record_observations(False)
    assert value("spikeserve_spikes_total", model="replayed") == before  # nothing counted while recording
    assert metrics.take_observations() == []
    metrics.replay(recorded)
    assert value("spikeserve_spikes_total", model="replayed") == before + 4
    assert value("spikeserve_queue_duration_seconds_count", model="replayed") == 2
    assert value("spikeserve_worker_batches_total", worker="w-child") == 1
    assert value("spikeserve_exit_time_steps_sum", model="replayed") == 4
    assert value("spikeserve_spike_rate_sum", model="replayed", layer="l1") == 0.5


def test_recorded_observations_survive_msgpack() -> None:
    """They travel from an inference process to the gateway as msgpack."""
    import msgpack

    metrics.record_observations(True)
    try:
        metrics.observe_batch("packed", "w", 1, 0.01, [0.0])
        recorded = metrics.take_observations()
    finally:
        metrics.record_observations(False)
    metrics.replay(msgpack.unpackb(msgpack.packb(recorded), raw=False))
    assert value("spikeserve_batch_size_count", model="packed") == 1
