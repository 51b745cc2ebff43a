"""Spike-rate telemetry gathered during the forward pass itself.

Spiking layers and synaptic layers report into the recorder that is active in the current
context (a ``ContextVar``, so concurrent requests in threads never mix). Each report is a
small per-sample reduction computed by the layer from values it already holds (the spike
tensor it just produced, the input it is about to convolve): no second pass over the
network and no hook that copies activations. Reductions stay on the device until
``report()`` moves them to the host in one go.

What is counted (docs/MODELS.md has the rule per layer kind):
- spike rate of a layer = spikes / (neurons x T);
- a synaptic layer fed by events does synaptic operations (SOPs), each costing one accumulate.
  ``synaptic_ops`` is exact (every event times the outputs it really reaches: models/synaptic_ops.py);
  ``synaptic_ops_nominal`` is the papers' convention (event rate x T x MACs), kept for comparison;
- a synaptic layer fed by real values (the encoding layer, projections after a LayerNorm, a
  classifier after average pooling, LIAF outputs, attention products) does MACs;
- energy = E_MAC x MACs + E_AC x exact SOPs, with 45 nm figures (Horowitz, ISSCC 2014): 4.6 pJ a
  32-bit float MAC, 0.9 pJ an accumulate; ``ann_energy_uj`` is an ANN of the same shape run once
  (every layer's MACs of one time step at E_MAC), the figure SNN papers compare against.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from models.synaptic_ops import SynapticOps

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# The keys of ``SampleTelemetry.as_dict`` that only ``telemetry=layers`` answers carry.
PER_LAYER_KEYS = ("layers", "synaptic_layers")

_ACTIVE: ContextVar[TelemetryRecorder | None] = ContextVar("spikeserve_telemetry", default=None)
# How many ``record`` blocks are open, in any thread. While none is, ``current_recorder`` answers
# without reading the ContextVar, which torch.compile cannot trace: a compiled network with
# telemetry off then has no graph break at every layer (dynamo guards on this count instead).
_OPEN_RECORDERS = 0
_OPEN_LOCK = threading.Lock()


@dataclass
class _SpikeTally:
    neurons: int  # per sample, per time step
    time_steps: int = 0
    counts: list[torch.Tensor] = field(default_factory=list)  # [B] spikes per sample, one per call


@dataclass
class _SynapseTally:
    analog_input: bool
    macs: int = 0  # per sample, summed over time steps
    time_steps: int = 0
    calls: list[SynapticOps] = field(default_factory=list)  # one per call fed by events


class LayerTelemetry(NamedTuple):
    """One spiking layer's activity for one sample.

    A NamedTuple: a report builds one per layer per sample, and a tuple is the cheapest to build.
    """

    name: str
    neurons: int
    spikes: int
    spike_rate: float

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class SynapticLayerTelemetry(NamedTuple):
    """One synaptic layer's (conv, linear, attention product) work for one sample.

    ``input`` is "events" (spike-driven: its energy is E_AC x exact SOPs) or "real" (its MACs are
    charged at E_MAC, and it does no SOPs). ``macs`` is the layer's dense MAC count either way.
    """

    name: str
    input: str
    macs: float
    synaptic_ops: float
    synaptic_ops_nominal: float
    energy_uj: float
    energy_share: float

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class SampleTelemetry:
    """A whole network's activity for one sample (one request).

    ``macs`` counts the MACs done on real values (charged at E_MAC); ``dense_macs`` every layer's
    MACs over all its steps. ``ann_energy_uj``: E_MAC x the MACs of one step of every layer, what an
    ANN of the same shape spends on one forward.
    """

    spike_rate: float
    spikes: int
    synaptic_ops: float
    synaptic_ops_nominal: float
    macs: float
    dense_macs: float
    energy_uj: float
    ann_energy_uj: float
    layers: tuple[LayerTelemetry, ...] = field(default_factory=tuple)
    synaptic_layers: tuple[SynapticLayerTelemetry, ...] = field(default_factory=tuple)

    def as_dict(self, with_layers: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spike_rate": self.spike_rate,
            "spikes": self.spikes,
            "synaptic_ops": self.synaptic_ops,
            "synaptic_ops_nominal": self.synaptic_ops_nominal,
            "macs": self.macs,
            "dense_macs": self.dense_macs,
            "energy_uj": self.energy_uj,
            "ann_energy_uj": self.ann_energy_uj,
        }
        if with_layers:
            out["layers"] = [layer.as_dict() for layer in self.layers]
            out["synaptic_layers"] = [layer.as_dict() for layer in self.synaptic_layers]
        return out


class TelemetryRecorder:
    """Collects per-sample reductions from the layers of one network during one forward."""

    def __init__(self, model: nn.Module, names: dict[int, str] | None = None) -> None:
        self._names = layer_names(model) if names is None else names
        self._spikes: dict[str, _SpikeTally] = {}
        self._synapses: dict[str, _SynapseTally] = {}

    def _name(self, module: nn.Module) -> str:
        return self._names.get(id(module), type(module).__name__)

    def record_spikes(
        self, module: nn.Module, spikes_per_sample: torch.Tensor, neurons: int, time_steps: int
    ) -> None:
        """A spiking layer fired ``spikes_per_sample`` ([B] int64, or float32 holding integers) over
        ``time_steps`` steps. ``neurons`` counts the layer's neurons for one sample at one step."""
        tally = self._spikes.get(self._name(module))
        if tally is None:
            tally = self._spikes[self._name(module)] = _SpikeTally(neurons=neurons)
        counts = spikes_per_sample
        tally.counts.append(counts.detach() if counts.requires_grad else counts)
        tally.time_steps += time_steps

    def remember_spikes(
        self,
        spikes: torch.Tensor,
        spikes_per_sample: torch.Tensor,
        per_position: torch.Tensor | None = None,
    ) -> None:
        """Keep the counts of the spike tensor a neuron just returned (x: [T, B, ...], counts: [B];
        ``per_position``: [S*B, H*W] float32 events summed over channels (and over the steps where
        S = 1), for x: [T, B, C, H, W]).

        The synaptic layer that consumes exactly this tensor next (the usual LIF -> conv wiring)
        then reads its input activity from here instead of reducing its input again.
        """
        self._last_spikes = (weakref.ref(spikes), spikes_per_sample, per_position)

    def input_events(self, x: torch.Tensor) -> torch.Tensor:
        """Events per sample in a synaptic layer's input x: [T, B, ...] -> [B] (int64 or float32)."""
        return self.input_activity(x)[0]

    def input_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(events per sample [B], events per position [S*B, H*W] or None) of a synaptic layer's
        input x: [T, B, ...]. The second is known only where a neuron just fired x."""
        last = getattr(self, "_last_spikes", None)
        if last is not None and last[0]() is x:
            return last[1], last[2]  # int64 counts; the SOP count converts once
        return event_count(x), None

    def record_synapse(
        self,
        module: nn.Module,
        macs_per_step: int,
        time_steps: int,
        synaptic_ops: SynapticOps | None,
    ) -> None:
        """A synaptic layer (conv/linear/attention) ran ``macs_per_step`` MACs per sample per step.

        ``synaptic_ops`` (each [B]): the exact and nominal SOPs of a layer fed by events; ``None``
        for a layer fed by real values, whose MACs all count as MACs.
        """
        name = self._name(module)
        tally = self._synapses.get(name)
        if tally is None:
            tally = self._synapses[name] = _SynapseTally(analog_input=synaptic_ops is None)
        tally.macs += macs_per_step * time_steps
        tally.time_steps += time_steps
        if synaptic_ops is not None:  # kept as the layer's reductions: report() does the arithmetic
            tally.calls.append(synaptic_ops)

    def report(self, synaptic_layers: bool = True) -> list[SampleTelemetry]:
        """Per-sample telemetry, one entry per batch element (one host transfer per dtype).

        What is the same for every sample of the batch (names, capacities, the MACs of layers fed by
        real values, the totals of MACs) is worked out once; the per-sample loop only reads counts.
        ``synaptic_layers=False`` leaves each sample's ``synaptic_layers`` empty (the totals are the
        same): only ``telemetry=layers`` answers carry them, and building them is half the report.
        """
        spiking = [(name, t) for name, t in self._spikes.items() if t.counts]
        synapses = list(self._synapses.items())
        event_layers = [t for _, t in synapses if not t.analog_input]
        reductions = [count for _, t in spiking for count in t.counts]
        for t in event_layers:
            for call in t.calls:
                reductions.extend(call.reductions())
        # lists, not tensors: indexing a tensor per sample and layer made report() 3x slower
        on_host = iter(_to_host_lists(reductions))
        spike_rows = _columns([_add_up([next(on_host) for _ in t.counts]) for _, t in spiking])
        per_layer = [[call.counts_from(on_host) for call in t.calls] for t in event_layers]
        exact_rows = _columns([_add_up([exact for exact, _ in calls]) for calls in per_layer])
        nominal_rows = _columns([_add_up([nominal for _, nominal in calls]) for calls in per_layer])
        batch = len(spike_rows) if spiking else len(exact_rows)
        capacities = [t.neurons * t.time_steps for _, t in spiking]
        total_capacity = sum(capacities)
        real_macs = float(sum(t.macs for _, t in synapses if t.analog_input))
        dense_macs = float(sum(t.macs for _, t in synapses))
        ann_energy_uj = E_MAC_PJ * sum(t.macs / t.time_steps for _, t in synapses if t.time_steps) * 1e-6
        # (name, neurons, capacity) per spiking layer; the tuples are built with tuple.__new__, which
        # skips the NamedTuple's Python-level constructor (a report builds layers x samples of them)
        static = [
            (name, t.neurons, capacity or None)
            for (name, t), capacity in zip(spiking, capacities, strict=True)
        ]
        new_layer = tuple.__new__
        samples = []
        for b in range(batch):
            spikes = spike_rows[b] if spiking else ()
            layers = tuple(
                [
                    new_layer(LayerTelemetry, (name, neurons, count, count / capacity if capacity else 0.0))
                    for (name, neurons, capacity), count in zip(static, spikes, strict=True)
                ]
            )
            exact, nominal = (exact_rows[b], nominal_rows[b]) if event_layers else ((), ())
            total_spikes = sum(spikes)
            total_exact = float(sum(exact))
            energy_pj = E_MAC_PJ * real_macs + E_AC_PJ * total_exact
            samples.append(
                SampleTelemetry(
                    spike_rate=total_spikes / total_capacity if total_capacity else 0.0,
                    spikes=total_spikes,
                    synaptic_ops=total_exact,
                    synaptic_ops_nominal=float(sum(nominal)),
                    macs=real_macs,
                    dense_macs=dense_macs,
                    energy_uj=energy_pj * 1e-6,
                    ann_energy_uj=ann_energy_uj,
                    layers=layers,
                    synaptic_layers=(
                        _synaptic_layers(synapses, exact, nominal, energy_pj) if synaptic_layers else ()
                    ),
                )
            )
        return samples


def _synaptic_layers(
    synapses: list[tuple[str, _SynapseTally]],
    exact: Sequence[float],
    nominal: Sequence[float],
    energy_pj: float,
) -> tuple[SynapticLayerTelemetry, ...]:
    """One sample's per-layer work: ``exact``/``nominal`` hold its SOPs of the event-fed layers, in order.

    Built with tuple.__new__ (as the spiking layers' entries are): a report of a batch makes
    layers x samples of these, and the NamedTuple's own constructor is a Python-level call."""
    share = 1.0 / energy_pj if energy_pj else 0.0
    new = tuple.__new__
    layers = []
    k = 0
    for name, synapse in synapses:
        macs = float(synapse.macs)
        if synapse.analog_input:
            pj = E_MAC_PJ * synapse.macs
            layers.append(new(SynapticLayerTelemetry, (name, "real", macs, 0.0, 0.0, pj * 1e-6, pj * share)))
        else:
            sops = exact[k]
            pj = E_AC_PJ * sops
            entry = (name, "events", macs, sops, nominal[k], pj * 1e-6, pj * share)
            layers.append(new(SynapticLayerTelemetry, entry))
            k += 1
    return tuple(layers)


def _to_host_lists(tensors: Sequence[torch.Tensor]) -> list[list[float]]:
    """Each tensor flattened to a host list, in order: one concatenation and one transfer per dtype,
    where one per tensor cost a host sync (on a GPU) and a few microseconds each. A tensor listed
    twice (a neuron's count, which the conv it feeds reports as its input events) moves once."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
    distinct: dict[int, list[float]] = {}
    for group in by_dtype.values():
        flat = torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in group]).tolist()
        start = 0
        for tensor in group:
            end = start + tensor.numel()
            distinct[id(tensor)] = flat[start:end]
            start = end
    return [distinct[id(tensor)] for tensor in tensors]


def _add_up(per_call: list[list[float]]) -> list[float]:
    """Per-sample sums over the calls of one layer: [[B] per call] -> [B]."""
    return per_call[0] if len(per_call) == 1 else [sum(values) for values in zip(*per_call, strict=True)]


def _columns(per_layer: list[list[float]]) -> list[tuple[float, ...]]:
    """[layer][sample] -> [sample][layer]."""
    return list(zip(*per_layer, strict=True))


def layer_names(model: nn.Module) -> dict[int, str]:
    """id(module) -> the name reports give it, for every module of ``model``. A caller that records
    many small forwards of one network that it no longer changes keeps this and passes it to
    ``record``: walking the modules costs about as much as the report of a one-step forward."""
    return {id(module): name or "input" for name, module in model.named_modules()}


@contextlib.contextmanager
def record(model: nn.Module, names: dict[int, str] | None = None) -> Iterator[TelemetryRecorder]:
    """Make a recorder active for the forward passes run inside the ``with`` block.

    ``names``: ``layer_names(model)`` kept by the caller (worked out here when None)."""
    with activate(TelemetryRecorder(model, names)) as recorder:
        yield recorder


@contextlib.contextmanager
def activate(recorder: TelemetryRecorder) -> Iterator[TelemetryRecorder]:
    """Make an existing recorder (or a subclass: a CUDA-graph capture records into a tape) active."""
    global _OPEN_RECORDERS
    token = _ACTIVE.set(recorder)
    with _OPEN_LOCK:
        _OPEN_RECORDERS += 1
    try:
        yield recorder
    finally:
        with _OPEN_LOCK:
            _OPEN_RECORDERS -= 1
        _ACTIVE.reset(token)


def current_recorder() -> TelemetryRecorder | None:
    """The recorder of the current context, or ``None`` when telemetry is off (the fast path)."""
    if _OPEN_RECORDERS == 0:
        return None
    return _ACTIVE.get()


def event_count(x: torch.Tensor) -> torch.Tensor:
    """Events per sample in x: [T, B, ...] -> [B] float32.

    A sum rather than a count of non-zeros: the same for 0/1 spikes, twice as fast on the CPU, and
    right for SEW sums where two coinciding spikes are two synaptic events.
    """
    dims = tuple(d for d in range(x.dim()) if d != 1)
    return (x.detach() if x.requires_grad else x).sum(dim=dims, dtype=torch.float32)


def events_per_sample(per_position: torch.Tensor, batch: int, most: int) -> torch.Tensor:
    """[S*B, P] float32 events per (step,) sample and position -> [B] int64 per sample.

    ``most``: the most events a sample can hold (neurons x steps): float32 counts exactly below 2**24.
    """
    dtype = torch.float64 if most >= 2**24 else torch.float32
    if per_position.shape[0] == batch:  # one row per sample: a plain row sum
        return per_position.sum(dim=1, dtype=dtype).to(torch.int64)
    return per_position.view(-1, batch, per_position.shape[-1]).sum(dim=(0, 2), dtype=dtype).to(torch.int64)


def sum_over_steps(steps: Sequence[SampleTelemetry]) -> SampleTelemetry:
    """One sample's telemetry over consecutive single-step forwards (step by step, early exit):
    the same figures one forward over those steps reports.

    Counts (spikes, SOPs, MACs, energy) add up; rates and energy shares are recomputed from the
    sums (a layer's spike rate = its spikes / (neurons x steps run)).
    """
    if not steps:
        raise ValueError("no steps to sum")
    spiking: dict[str, list[LayerTelemetry]] = {}
    synaptic: dict[str, list[SynapticLayerTelemetry]] = {}
    for step in steps:
        for layer in step.layers:
            spiking.setdefault(layer.name, []).append(layer)
        for work in step.synaptic_layers:
            synaptic.setdefault(work.name, []).append(work)
    layers = []
    total_capacity = 0
    for name, per_step in spiking.items():
        spikes = sum(layer.spikes for layer in per_step)
        capacity = per_step[0].neurons * len(per_step)
        total_capacity += capacity
        layers.append(
            LayerTelemetry(name, per_step[0].neurons, spikes, spikes / capacity if capacity else 0.0)
        )
    energy_uj = sum(step.energy_uj for step in steps)
    synaptic_layers = []
    for name, per_step in synaptic.items():
        layer_energy = sum(work.energy_uj for work in per_step)
        synaptic_layers.append(
            SynapticLayerTelemetry(
                name,
                per_step[0].input,
                sum(work.macs for work in per_step),
                sum(work.synaptic_ops for work in per_step),
                sum(work.synaptic_ops_nominal for work in per_step),
                layer_energy,
                layer_energy / energy_uj if energy_uj else 0.0,
            )
        )
    total_spikes = sum(layer.spikes for layer in layers)
    return SampleTelemetry(
        spike_rate=total_spikes / total_capacity if total_capacity else 0.0,
        spikes=total_spikes,
        synaptic_ops=sum(step.synaptic_ops for step in steps),
        synaptic_ops_nominal=sum(step.synaptic_ops_nominal for step in steps),
        macs=sum(step.macs for step in steps),
        dense_macs=sum(step.dense_macs for step in steps),
        energy_uj=energy_uj,
        ann_energy_uj=steps[0].ann_energy_uj,  # one forward of the ANN, however many steps ran
        layers=tuple(layers),
        synaptic_layers=tuple(synaptic_layers),
    )
