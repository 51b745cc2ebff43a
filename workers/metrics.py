"""Worker-side Prometheus metrics: queue and compute time, batch sizes, spiking activity.

They live in the process that runs the networks: the gateway's in embedded mode (it exports them
on its own ``/metrics``), each ``spikeserve worker`` in distributed mode (on its ``--metrics-port``).
Names follow Prometheus conventions: prefix ``spikeserve_``, base units, ``_total`` counters.

Only prometheus_client and the standard library are imported here, so the gateway can import this
module without torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# A model keeps its first MAX_LAYER_LABELS spiking layers as their own label values; the rest share
# "other", so a very deep network cannot blow up the number of time series.
MAX_LAYER_LABELS = 64
OTHER_LAYERS = "other"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)

QUEUE_DURATION = Histogram(
    "spikeserve_queue_duration_seconds",
    "Time a request waited between entering the queue and its batch starting.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_DURATION = Histogram(
    "spikeserve_compute_duration_seconds",
    "Time to encode, run and post-process one batch.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("spikeserve_batch_size", "Requests per batch.", ["model"], buckets=_BATCH_BUCKETS)
SPIKE_RATE = Histogram(
    "spikeserve_spike_rate",
    "Spike rate of one spiking layer for one request: spikes / (neurons x time steps).",
    ["model", "layer"],
    buckets=_RATE_BUCKETS,
)
SPIKES = Counter("spikeserve_spikes_total", "Spikes fired, summed over requests.", ["model"])
SYNAPTIC_OPS = Counter("spikeserve_synaptic_ops_total", "Synaptic operations (SOPs), summed.", ["model"])
ENERGY = Counter(
    "spikeserve_energy_joules_total", "Estimated energy (45 nm MAC/AC figures), summed.", ["model"]
)
EXIT_STEPS = Histogram(
    "spikeserve_exit_time_steps",
    "Time steps an early-exit request ran before its answer was confident enough (or T).",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
)
MODELS_LOADED = Gauge("spikeserve_models_loaded", "Model versions loaded in this process.")
GPU_MEMORY = Gauge("spikeserve_gpu_memory_bytes", "GPU memory allocated by torch.", ["device"])
WORKER_BATCHES = Counter("spikeserve_worker_batches_total", "Batches run by a worker.", ["worker"])


class _LayerLabels:
    """Maps a model's layer names to bounded label values (first 64 as themselves, then "other")."""

    def __init__(self, limit: int = MAX_LAYER_LABELS) -> None:
        self._limit = limit
        self._known: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def label(self, model: str, layer: str) -> str:
        known = self._known.get(model)
        if known is not None and layer in known:
            return known[layer]
        with self._lock:
            known = self._known.setdefault(model, {})
            if layer not in known:
                own = sum(1 for value in known.values() if value != OTHER_LAYERS)
                known[layer] = layer if own < self._limit else OTHER_LAYERS
            return known[layer]


LAYER_LABELS = _LayerLabels()

# An inference process of the embedded pool (workers/inference_processes.py) has no /metrics of its
# own: there the observations below are kept as (function name, arguments) and go back to the
# gateway with the batch's results, where ``replay`` counts them through the same functions.
_recorded: list[tuple[str, list[Any]]] | None = None


def record_observations(on: bool) -> None:
    """Keep this process's observations for ``take_observations`` instead of counting them."""
    global _recorded
    _recorded = [] if on else None


def take_observations() -> list[tuple[str, list[Any]]]:
    """The observations kept since the last call (msgpack-able), oldest first."""
    global _recorded
    if _recorded is None:
        return []
    taken, _recorded = _recorded, []
    return taken


def replay(observations: Iterable[Sequence[Any]]) -> None:
    """Count observations that ``take_observations`` returned in another process."""
    for name, args in observations:
        _REPLAYABLE[name](*args)


def _keep(name: str, *args: Any) -> bool:
    if _recorded is None:
        return False
    _recorded.append((name, list(args)))
    return True


def observe_batch(
    model: str, worker_id: str, batch_size: int, compute_s: float, queue_s: Iterable[float]
) -> None:
    """One batch ran: its size, its compute time, and how long each of its requests queued."""
    if _keep("observe_batch", model, worker_id, batch_size, compute_s, list(queue_s)):
        return
    BATCH_SIZE.labels(model).observe(batch_size)
    COMPUTE_DURATION.labels(model).observe(compute_s)
    queue = QUEUE_DURATION.labels(model)
    for seconds in queue_s:
        queue.observe(max(seconds, 0.0))
    WORKER_BATCHES.labels(worker_id).inc()


def observe_telemetry(model: str, samples: Sequence[dict]) -> None:
    """Per-request telemetry dicts (``SampleTelemetry.as_dict(with_layers=True)``) of one batch."""
    if not samples:
        return
    rates: dict[str, list[float]] = {}
    for sample in samples:
        for layer in sample.get("layers", ()):
            rates.setdefault(layer["name"], []).append(float(layer["spike_rate"]))
    observe_telemetry_totals(
        model,
        sum(int(s["spikes"]) for s in samples),
        sum(float(s["synaptic_ops"]) for s in samples),
        sum(float(s["energy_uj"]) for s in samples) * 1e-6,
        rates,
    )


def observe_telemetry_totals(
    model: str, spikes: int, synaptic_ops: float, joules: float, rates: dict[str, list[float]]
) -> None:
    """A batch's telemetry, summed (``rates``: each layer's spike rate per request): what an inference
    process sends back, about a tenth the size of the samples themselves."""
    if _keep("observe_telemetry_totals", model, spikes, synaptic_ops, joules, rates):
        return
    SPIKES.labels(model).inc(spikes)
    SYNAPTIC_OPS.labels(model).inc(synaptic_ops)
    ENERGY.labels(model).inc(joules)
    for name, layer_rates in rates.items():  # one histogram child per layer and batch
        child = SPIKE_RATE.labels(model, LAYER_LABELS.label(model, name))
        for rate in layer_rates:
            child.observe(rate)


def observe_exit_steps(model: str, steps_used: Iterable[int]) -> None:
    """The steps each early-exit request of one batch ran."""
    if _keep("observe_exit_steps", model, list(steps_used)):
        return
    child = EXIT_STEPS.labels(model)
    for steps in steps_used:
        child.observe(steps)


def set_models_loaded(count: int) -> None:
    if _recorded is not None:  # one process's count: the gateway counts what all of them hold
        return
    MODELS_LOADED.set(count)


def set_gpu_memory(device: str, allocated_bytes: int) -> None:
    if _keep("set_gpu_memory", device, allocated_bytes):
        return
    GPU_MEMORY.labels(device).set(allocated_bytes)


_REPLAYABLE: dict[str, Callable[..., None]] = {
    "observe_batch": observe_batch,
    "observe_telemetry_totals": observe_telemetry_totals,
    "observe_exit_steps": observe_exit_steps,
    "set_gpu_memory": set_gpu_memory,
}
