"""Spike-rate telemetry gathered during the forward pass itself.

Spiking layers and synaptic layers report into the recorder that is active in the current
context (a ``ContextVar``, so concurrent requests in threads never mix). Each report is a
small per-sample reduction computed by the layer from values it already holds (the spike
tensor it just produced, the input it is about to convolve): no second pass over the
network and no hook that copies activations. Reductions stay on the device until
``report()`` moves them to the host in one go.

Conventions, as SNN papers report them (45 nm figures, Horowitz 2014):
- spike rate of a layer = spikes / (neurons x T)
- synaptic operations (SOPs) of a layer = rate of its incoming spikes x T x its MACs per step
- energy = E_MAC x MACs of layers fed by real values (the encoding layer, and in Spikeformer the
  projections fed by LayerNorm) + E_AC x SOPs
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

E_MAC_PJ = 4.6
E_AC_PJ = 0.9

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
    active_macs: torch.Tensor | None = None  # [B] float64: MACs weighted by input activity


@dataclass(frozen=True)
class LayerTelemetry:
    """One spiking layer's activity for one sample."""

    name: str
    neurons: int
    spikes: int
    spike_rate: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "neurons": self.neurons,
            "spikes": self.spikes,
            "spike_rate": self.spike_rate,
        }


@dataclass(frozen=True)
class SampleTelemetry:
    """A whole network's activity for one sample (one request)."""

    spike_rate: float
    spikes: int
    synaptic_ops: float
    macs: float
    energy_uj: float
    layers: tuple[LayerTelemetry, ...] = field(default_factory=tuple)

    def as_dict(self, with_layers: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spike_rate": self.spike_rate,
            "spikes": self.spikes,
            "synaptic_ops": self.synaptic_ops,
            "macs": self.macs,
            "energy_uj": self.energy_uj,
        }
        if with_layers:
            out["layers"] = [layer.as_dict() for layer in self.layers]
        return out


class TelemetryRecorder:
    """Collects per-sample reductions from the layers of one network during one forward."""

    def __init__(self, model: nn.Module) -> None:
        self._names = {id(module): name or "input" for name, module in model.named_modules()}
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

    def input_activity(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes per input position, per sample, for a synaptic layer's input x: [T, B, ...] -> [B]."""
        last = getattr(self, "_last_spikes", None)
        if last is not None and last[0]() is x:
            per_sample = x.numel() // x.shape[1] if x.shape[1] else 1
            return last[1].to(torch.float32) / per_sample
        return active_fraction(x)

    def record_synapse(
        self,
        module: nn.Module,
        macs_per_step: int,
        time_steps: int,
        active_fraction: torch.Tensor | None,
    ) -> None:
        """A synaptic layer (conv/linear) ran ``macs_per_step`` MACs per sample per step.

        ``active_fraction`` ([B] float): the share of non-zero inputs, per sample, for a layer fed
        by spikes; ``None`` for a layer fed by real values, whose MACs all count as MACs.
        """
        analog = active_fraction is None
        tally = self._synapses.setdefault(self._name(module), _SynapseTally(analog_input=analog))
        macs = macs_per_step * time_steps
        tally.macs += macs
        if active_fraction is not None:
            active = active_fraction.detach().to(torch.float64) * macs
            tally.active_macs = active if tally.active_macs is None else tally.active_macs + active

    def report(self) -> list[SampleTelemetry]:
        """Per-sample telemetry, one entry per batch element (a single host transfer per tensor)."""
        # lists, not tensors: indexing a tensor per sample and layer made report() 3x slower
        layer_counts = {
            name: t.spikes.cpu().tolist() for name, t in self._spikes.items() if t.spikes is not None
        }
        batch = next((len(c) for c in layer_counts.values()), 0)
        sop_counts = [
            t.active_macs.cpu().tolist() for t in self._synapses.values() if t.active_macs is not None
        ]
        if batch == 0 and sop_counts:
            batch = len(sop_counts[0])
        mac_total = float(sum(t.macs for t in self._synapses.values() if t.analog_input))
        samples = []
        for b in range(batch):
            layers = []
            total_spikes = 0
            total_capacity = 0
            for name, tally in self._spikes.items():
                spikes = int(layer_counts[name][b])
                capacity = tally.neurons * tally.time_steps
                total_spikes += spikes
                total_capacity += capacity
                layers.append(
                    LayerTelemetry(name, tally.neurons, spikes, spikes / capacity if capacity else 0.0)
                )
            sops = float(sum(float(c[b]) for c in sop_counts))
            energy_pj = E_MAC_PJ * mac_total + E_AC_PJ * sops
            samples.append(
                SampleTelemetry(
                    spike_rate=total_spikes / total_capacity if total_capacity else 0.0,
                    spikes=total_spikes,
                    synaptic_ops=sops,
                    macs=mac_total,
                    energy_uj=energy_pj * 1e-6,
                    layers=tuple(layers),
                )
            )
        return samples


@contextlib.contextmanager
def record(model: nn.Module) -> Iterator[TelemetryRecorder]:
    """Make a recorder active for the forward passes run inside the ``with`` block."""
    with activate(TelemetryRecorder(model)) as recorder:
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


def active_fraction(x: torch.Tensor) -> torch.Tensor:
    """Input activity per sample: spikes per input position. x: [T, B, ...] -> [B] float32.

    A sum rather than a count of non-zeros: the same for 0/1 spikes, twice as fast on the CPU, and
    right for SEW sums where two coinciding spikes are two synaptic events.
    """
    dims = tuple(d for d in range(x.dim()) if d != 1)
    per_sample = x.numel() // x.shape[1] if x.shape[1] else 1
    return x.detach().sum(dim=dims, dtype=torch.float32) / per_sample
