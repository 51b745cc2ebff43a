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
    spikes: torch.Tensor | None = None  # [B] int64, on the layer's device


@dataclass
class _SynapseTally:
    analog_input: bool
    macs: int = 0  # per sample, summed over time steps
    time_steps: int = 0
    synaptic_ops: torch.Tensor | None = None  # [B] float64, exact
    synaptic_ops_nominal: torch.Tensor | None = None  # [B] float64, rate x T x MACs


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
        """A spiking layer fired ``spikes_per_sample`` ([B] int) over ``time_steps`` steps.

        ``neurons`` counts the layer's neurons for one sample at one step.
        """
        tally = self._spikes.setdefault(self._name(module), _SpikeTally(neurons=neurons))
        counts = spikes_per_sample.detach().to(torch.int64)
        tally.spikes = counts if tally.spikes is None else tally.spikes + counts
        tally.time_steps += time_steps

    def remember_spikes(self, spikes: torch.Tensor, spikes_per_sample: torch.Tensor) -> None:
        """Keep the count of the spike tensor a neuron just returned (x: [T, B, ...], counts: [B]).

        The synaptic layer that consumes exactly this tensor next (the usual LIF -> conv wiring)
        then reads its input activity from here instead of reducing its input again.
        """
        self._last_spikes = (weakref.ref(spikes), spikes_per_sample)

    def input_events(self, x: torch.Tensor) -> torch.Tensor:
        """Events per sample in a synaptic layer's input x: [T, B, ...] -> [B] (int64 or float32)."""
        last = getattr(self, "_last_spikes", None)
        if last is not None and last[0]() is x:
            return last[1]  # int64 counts; the SOP count converts once
        return event_count(x)

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
        analog = synaptic_ops is None
        tally = self._synapses.setdefault(self._name(module), _SynapseTally(analog_input=analog))
        tally.macs += macs_per_step * time_steps
        tally.time_steps += time_steps
        if synaptic_ops is not None:  # float64 already (SynapticOps); no conversion on this hot path
            exact, nominal = synaptic_ops.exact.detach(), synaptic_ops.nominal.detach()
            tally.synaptic_ops = exact if tally.synaptic_ops is None else tally.synaptic_ops + exact
            nominal_so_far = tally.synaptic_ops_nominal
            tally.synaptic_ops_nominal = nominal if nominal_so_far is None else nominal_so_far + nominal

    def report(self) -> list[SampleTelemetry]:
        """Per-sample telemetry, one entry per batch element (a single host transfer per tensor).

        What is the same for every sample of the batch (names, capacities, the MACs of layers fed by
        real values, the totals of MACs) is worked out once; the per-sample loop only reads counts.
        """
        # lists, not tensors: indexing a tensor per sample and layer made report() 3x slower
        spiking = [(name, t) for name, t in self._spikes.items() if t.spikes is not None]
        spike_rows = list(zip(*(t.spikes.cpu().tolist() for _, t in spiking), strict=True))
        synapses = list(self._synapses.items())
        event_layers = [t for _, t in synapses if not t.analog_input]
        exact_rows = list(zip(*(t.synaptic_ops.cpu().tolist() for t in event_layers), strict=True))
        nominal_rows = list(zip(*(t.synaptic_ops_nominal.cpu().tolist() for t in event_layers), strict=True))
        batch = len(spike_rows) if spiking else len(exact_rows)
        capacities = [t.neurons * t.time_steps for _, t in spiking]
        total_capacity = sum(capacities)
        real_macs = float(sum(t.macs for _, t in synapses if t.analog_input))
        dense_macs = float(sum(t.macs for _, t in synapses))
        ann_energy_uj = E_MAC_PJ * sum(t.macs / t.time_steps for _, t in synapses if t.time_steps) * 1e-6
        samples = []
        for b in range(batch):
            spikes = spike_rows[b] if spiking else ()
            layers = tuple(
                LayerTelemetry(name, t.neurons, count, count / capacity if capacity else 0.0)
                for (name, t), count, capacity in zip(spiking, spikes, capacities, strict=True)
            )
            exact, nominal = (exact_rows[b], nominal_rows[b]) if event_layers else ((), ())
            work = []  # (name, input, macs, exact, nominal, energy in pJ)
            k = 0
            for name, synapse in synapses:
                if synapse.analog_input:
                    work.append((name, "real", synapse.macs, 0.0, 0.0, E_MAC_PJ * synapse.macs))
                else:
                    work.append((name, "events", synapse.macs, exact[k], nominal[k], E_AC_PJ * exact[k]))
                    k += 1
            energy_pj = sum(entry[5] for entry in work)
            share = 1.0 / energy_pj if energy_pj else 0.0
            total_spikes = sum(spikes)
            samples.append(
                SampleTelemetry(
                    spike_rate=total_spikes / total_capacity if total_capacity else 0.0,
                    spikes=total_spikes,
                    synaptic_ops=float(sum(exact)),
                    synaptic_ops_nominal=float(sum(nominal)),
                    macs=real_macs,
                    dense_macs=dense_macs,
                    energy_uj=energy_pj * 1e-6,
                    ann_energy_uj=ann_energy_uj,
                    layers=layers,
                    synaptic_layers=tuple(
                        SynapticLayerTelemetry(name, kind, float(macs), ex, nom, pj * 1e-6, pj * share)
                        for name, kind, macs, ex, nom, pj in work
                    ),
                )
            )
        return samples


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
    return x.detach().sum(dim=dims, dtype=torch.float32)


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
