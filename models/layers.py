"""Time-distributed layers over ``[T, B, ...]``: the step-wise ops fold T into the batch.

``SeqConv2d`` and ``SeqLinear`` are the synaptic layers: when telemetry is on they report their
MACs and, when fed by events, their synaptic operations (exact and nominal: models/synaptic_ops.py).
Set ``analog_input=True`` on a layer fed by real values (projections after a LayerNorm, a classifier
after average pooling): its MACs then count as MACs, not as synaptic operations. The encoding layer
takes ``analog_input="auto"``: a direct-encoded image is real values, but binned event frames are
event counts, so it looks at what it is fed (non-negative integers are events).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn

from models import telemetry
from models.kernels.conv import spike_driven as spike_driven_conv
from models.synaptic_ops import conv_plan, conv_synaptic_ops, linear_synaptic_ops

InputKind = bool | Literal["auto"]  # the ``analog_input`` of a synaptic layer


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] -> [T*B, ...] (a view when x is contiguous)."""
    return x.flatten(0, 1)


def unfold_time(y: torch.Tensor, steps: int) -> torch.Tensor:
    """[T*B, ...] -> [T, B, ...]."""
    return y.unflatten(0, (steps, y.shape[0] // steps))


def fed_by_real_values(analog_input: InputKind, x: torch.Tensor) -> bool:
    """Whether a synaptic layer's input x counts as real values (MACs) rather than events (SOPs)."""
    if analog_input == "auto":  # events are non-negative integer counts
        # an image shows its real values in its first few (a normalised background is negative):
        # checking those first spares the three passes over the whole input for every image
        head = x.reshape(-1)[:256]
        return not torch.equal(head, head.trunc().abs()) or not torch.equal(x, x.trunc().abs())
    return bool(analog_input)


class SeqConv2d(nn.Conv2d):
    """Conv2d applied at every step. x: [T, B, C_in, H, W] -> [T, B, C_out, H', W'].

    ``spike_driven`` (set by ``models.optimize`` on a CPU, for a layer fed by spikes): the conv adds
    only the weights of its non-zero inputs where ``models.kernels.conv.spike_driven`` can run.
    """

    def __init__(self, *args: Any, analog_input: InputKind = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.analog_input = analog_input
        self.spike_driven = False

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H', W']."""
        if self.spike_driven and spike_driven_conv.runs(self, x):
            return spike_driven_conv.conv2d(self, x)
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        steps = x.shape[0]
        recorder = telemetry.current_recorder()
        if recorder is None:
            return unfold_time(self._conv(fold_time(x)), steps)
        # counted before the conv runs: its input was just written and is still in the cache, where
        # after the conv its output and workspace have pushed it out (the count then read it from memory)
        plan = conv_plan(self, x)
        sops = None
        if not fed_by_real_values(self.analog_input, x):
            sops = conv_synaptic_ops(self, x, *recorder.input_activity(x), plan=plan)
        y = unfold_time(self._conv(fold_time(x)), steps)
        recorder.record_synapse(self, plan.macs_per_step, steps, sops)
        return y


class SeqLinear(nn.Linear):
    """Linear on the last axis. x: [T, B, ..., in] -> [T, B, ..., out]."""

    def __init__(self, *args: Any, analog_input: InputKind = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.analog_input = analog_input

    def forward(self, x: torch.Tensor, analog_input: InputKind | None = None) -> torch.Tensor:  # type: ignore[override]
        """``analog_input`` overrides the layer's own setting for this call (see DANet's classifier)."""
        y = super().forward(x)
        recorder = telemetry.current_recorder()
        if recorder is not None:
            steps, batch = x.shape[0], x.shape[1]
            rows_per_step = x.numel() // (steps * batch * self.in_features)
            macs_per_step = rows_per_step * self.in_features * self.out_features
            kind = self.analog_input if analog_input is None else analog_input
            sops = (
                None
                if fed_by_real_values(kind, x)
                else linear_synaptic_ops(self, x, recorder.input_events(x))
            )
            recorder.record_synapse(self, macs_per_step, steps, sops)
        return y


class SeqBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with statistics over time and batch. x: [T, B, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return unfold_time(super().forward(fold_time(x)), x.shape[0])


class SeqBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over features. x: [T, B, F] or [T, B, N, F] (features last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        flat = x.reshape(-1, x.shape[-1])
        return super().forward(flat).reshape(x.shape)


class SeqToANN(nn.Module):
    """Apply any step-wise module (pooling, flatten) at every step. x: [T, B, ...]."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_time(self.module(fold_time(x)), x.shape[0])
