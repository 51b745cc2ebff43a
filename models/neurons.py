"""Multi-step spiking neurons over ``[T, B, ...]`` tensors: LIF, PLIF, LIAF, PLIAF, IF.

Semantics match SpikingJelly's ``LIFNode`` defaults (see ``kernels/lif/reference.py`` for the
equations): tau=2, V_th=1, V_reset=0 (None = soft reset), decay_input=True, detach_reset=True,
sigmoid surrogate with alpha=4. LIAF/PLIAF charge, fire and reset the same way but pass
ReLU(V before reset) downstream (analog output).

State: each forward starts from V_reset unless ``streaming`` is on, in which case the final
membrane is kept and the next forward continues from it until ``reset_state()``; inside
``models.stepping.stepping(state)`` the membrane is kept in the caller's ``state`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from models import telemetry
from models.kernels.lif import BACKENDS, multistep_lif
from models.stepping import current_step_state


class MultiStepNeuron(nn.Module):
    """Base of every spiking layer. x: [T, B, ...] float -> [T, B, ...] in x's dtype."""

    analog_output = False

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = True,
        surrogate_alpha: float = 4.0,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1 (got {tau}): 1/tau is the leak per step")
        if backend not in BACKENDS:
            raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.decay_input = decay_input
        self.detach_reset = detach_reset
        self.surrogate_alpha = float(surrogate_alpha)
        self.backend = backend
        self.streaming = False
        self.v: torch.Tensor | None = None  # [B, F] float32, kept only while streaming

    def inv_tau(self) -> float | torch.Tensor:
        """1/tau: a float for LIF, a 0-d tensor for the parametric neurons."""
        return 1.0 / self.tau

    def reset_state(self) -> None:
        """Forget the membrane kept by a streaming caller."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects [T, B, ...], got shape {tuple(x.shape)}")
        steps, batch = x.shape[0], x.shape[1]
        # an elementwise loop runs in memory order: a channels_last map [T, B, C, H, W] is read as its
        # [T, B, H, W, C] view (no copy), its spikes given back in the same layout, for the next conv
        channels_inner = _channels_inner(x)
        laid = x.permute(0, 1, 3, 4, 2) if channels_inner else x
        flat = laid.reshape(steps, batch, -1)
        recorder = telemetry.current_recorder()
        step_state = current_step_state()  # a step-by-step caller's own membranes (models.stepping)
        streaming = self.streaming or step_state is not None
        kept = self.v if step_state is None else step_state.membranes.get(id(self))
        v_init = kept if streaming and kept is not None and kept.shape == flat.shape[1:] else None
        # a spiking output shaped like a conv's is also counted per position (summed over channels),
        # by the loop as it fires or in one pass after it: the conv it feeds weighs those positions
        # by their fan-out (its exact SOPs) instead of reading the spikes again
        count_by_position = recorder is not None and not self.analog_output and x.dim() == 5
        result = multistep_lif(
            flat,
            backend=self.backend,
            inv_tau=self.inv_tau(),
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            decay_input=self.decay_input,
            detach_reset=self.detach_reset,
            surrogate_alpha=self.surrogate_alpha,
            analog_output=self.analog_output,
            v_init=v_init,
            return_v=streaming,
            count_spikes=recorder is not None and not count_by_position,
            count_positions=x.shape[-1] * x.shape[-2] if count_by_position else 0,
            channels_inner=channels_inner,
        )
        if step_state is not None and result.v is not None:
            step_state.membranes[id(self)] = result.v.detach()
        elif self.streaming:
            self.v = None if result.v is None else result.v.detach()
        out = result.out.reshape(laid.shape)
        if channels_inner:
            out = out.permute(0, 1, 4, 2, 3)
        if recorder is None:
            return out
        if count_by_position and result.spikes_per_position is not None:
            per_position = result.spikes_per_position
            count = result.spike_count  # where the loop counted as it fired
            if count is None:
                count = telemetry.events_per_sample(per_position, batch, most=steps * flat.shape[2])
            recorder.record_spikes(self, count, neurons=flat.shape[2], time_steps=steps)
            recorder.remember_spikes(out, count, per_position)
        elif result.spike_count is not None:
            recorder.record_spikes(self, result.spike_count, neurons=flat.shape[2], time_steps=steps)
            if not self.analog_output:
                recorder.remember_spikes(out, result.spike_count)
        return out

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        return f"tau={self.tau}, v_threshold={self.v_threshold}, {reset}, backend={self.backend}"


def _channels_inner(x: torch.Tensor) -> bool:
    """Whether x: [T, B, C, H, W] keeps each position's channels adjacent (channels_last)."""
    return x.dim() == 5 and x.shape[2] > 1 and x.stride(2) == 1 and not x.is_contiguous()


class LIF(MultiStepNeuron):
    """Leaky integrate-and-fire with a fixed time constant."""


class PLIF(MultiStepNeuron):
    """Parametric LIF: 1/tau = sigmoid(w), w learnable, initialised so that tau = ``tau``."""

    def __init__(self, tau: float = 2.0, **kwargs: Any) -> None:
        super().__init__(tau=tau, **kwargs)
        self.w = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))

    def inv_tau(self) -> torch.Tensor:
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", learned_tau={1.0 / float(torch.sigmoid(self.w.detach())):.3f}"


class LIAF(LIF):
    """LIF that passes ReLU(membrane before reset) downstream: analog output, spiking dynamics."""

    analog_output = True


class PLIAF(PLIF):
    """Parametric LIAF: learnable 1/tau, analog ReLU output (Spikeformer on ImageNet)."""

    analog_output = True


class IF(MultiStepNeuron):
    """Integrate-and-fire, no leak: H[t] = V[t-1] + X[t] (SpikingJelly's ``IFNode``).

    The same kernels as LIF with 1/tau = 0 and the input not decayed, so IF layers imported from
    SpikingJelly or NIR run on the fused paths too.
    """

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        surrogate_alpha: float = 4.0,
        backend: str = "torch",
    ) -> None:
        super().__init__(
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=False,
            detach_reset=detach_reset,
            surrogate_alpha=surrogate_alpha,
            backend=backend,
        )

    def inv_tau(self) -> float:
        return 0.0

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        return f"no leak, v_threshold={self.v_threshold}, {reset}, backend={self.backend}"


NEURONS: dict[str, type[MultiStepNeuron]] = {
    "lif": LIF,
    "plif": PLIF,
    "liaf": LIAF,
    "pliaf": PLIAF,
    "if": IF,
}

NeuronFactory = Callable[[], nn.Module]


def neuron_factory(kind: str = "lif", **settings: Any) -> NeuronFactory:
    """A zero-argument factory for blocks (SpikingJelly's ``spiking_neuron`` pattern).

    ``neuron_factory("plif", tau=2.0, backend="triton")()`` builds one PLIF layer.
    """
    try:
        cls = NEURONS[kind]
    except KeyError:
        raise ValueError(f"unknown neuron {kind!r}; choose one of {', '.join(NEURONS)}") from None
    cls(**settings)  # validate the settings once, here, rather than deep inside a block

    def make() -> nn.Module:
        return cls(**settings)

    return make
