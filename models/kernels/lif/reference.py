"""Multi-step LIF in plain PyTorch: the semantics every fused backend must reproduce.

Equations (SpikingJelly ``LIFNode`` defaults), for t = 0..T-1 with V[-1] = v_init (or V_reset):
- charge, decay_input:     H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * inv_tau
  charge, not decay_input: H[t] = V[t-1] - (V[t-1] - V_reset) * inv_tau + X[t]
- fire:                    S[t] = 1 if H[t] >= V_th else 0
- reset, hard:             V[t] = V_reset where S[t] else H[t]
  reset, soft (V_reset None): V[t] = H[t] - V_th * S[t]
With soft reset, V_reset in the charge equation is 0. The output is S (spiking) or ReLU(H)
(analog, LIAF). Autograd flows through a sigmoid surrogate of the step (alpha * sig * (1 - sig)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside step forward (x >= 0 fires); d/dx sigmoid(alpha x) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.alpha * x)
        return grad_output * ctx.alpha * sig * (1.0 - sig), None


@dataclass
class LIFResult:
    """out: [T, B, F] spikes (or ReLU(H) when analog); v: [B, F] float32 (float64 for float64 x)
    final membrane or None;
    spike_count: [B] int64 spikes per sample or None;
    spikes_per_neuron: [B, F] spikes of each neuron over the steps (compute dtype) or None;
    spikes_per_position: [S*B, P] float32, the spikes summed over channels (F = channels x P) and,
    where S = 1, over the steps too (S = T otherwise), or None (see ``kernels.lif.multistep_lif``)."""

    out: torch.Tensor
    v: torch.Tensor | None
    spike_count: torch.Tensor | None
    spikes_per_neuron: torch.Tensor | None = None
    spikes_per_position: torch.Tensor | None = None


def multistep_lif(
    x: torch.Tensor,
    *,
    inv_tau: float | torch.Tensor,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = True,
    surrogate_alpha: float = 4.0,
    analog_output: bool = False,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    count_spikes: bool = False,
    count_per_neuron: bool = False,
) -> LIFResult:
    """Run T steps of LIF over x: [T, B, F] (any float dtype; computed in float32, or in float64
    for float64 input so that fused kernels' gradients can be checked in float64).

    inv_tau: 1/tau as a float, or a 0-d tensor (PLIF: sigmoid(w), gradient flows to w).
    v_init: [B, F] membrane to start from (streaming), else V_reset (0 for soft reset).
    count_per_neuron: also return each neuron's spikes over the steps, added up as the loop runs:
    compiled (inductor), those adds fuse into the loop's one pass, where a count of the output
    afterwards is a pass of its own (spiking outputs only).
    """
    steps = x.shape[0]
    rest = 0.0 if v_reset is None else v_reset
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    v = torch.full_like(xf[0], rest) if v_init is None else v_init.to(compute)
    outs = []
    counts = None
    per_neuron = None
    grad = torch.is_grad_enabled()  # inference (no_grad, inference_mode) needs no surrogate
    for t in range(steps):
        if decay_input:
            h = v + (xf[t] - (v - rest)) * inv_tau
        else:
            h = v - (v - rest) * inv_tau + xf[t]
        if grad:
            spike = SigmoidSurrogateSpike.apply(h - v_threshold, surrogate_alpha)
        else:  # the same step (h - V_th >= 0 iff h >= V_th in IEEE floats) without autograd's overhead
            spike = (h >= v_threshold).to(compute)
        if count_spikes and analog_output:  # spiking outputs are counted once, after the loop
            # sum in the compute dtype (exact for counts below 2**24 per row), then widen the [B]
            # result: summing with dtype=int64 converts the whole [B, F] tensor first (10x slower)
            step_count = (spike.detach().sum(dim=-1) if spike.dim() > 1 else spike.detach()).to(torch.int64)
            counts = step_count if counts is None else counts + step_count
        spike_for_reset = spike.detach() if detach_reset else spike
        if v_reset is None:
            v = h - v_threshold * spike_for_reset
        else:
            v = h * (1.0 - spike_for_reset) + v_reset * spike_for_reset
        outs.append(torch.relu(h) if analog_output else spike)
        if count_per_neuron and not analog_output:
            per_neuron = spike.detach() if per_neuron is None else per_neuron + spike.detach()
    stacked = torch.stack(outs)  # [T, B, F] in the compute dtype, so the counts below are exact
    if count_spikes and not analog_output:
        spikes = stacked.detach() if stacked.requires_grad else stacked
        counts = spikes.sum(dim=(0, 2) if stacked.dim() == 3 else 0).to(torch.int64)
    out = stacked.to(x.dtype)
    return LIFResult(out=out, v=v if return_v else None, spike_count=counts, spikes_per_neuron=per_neuron)
