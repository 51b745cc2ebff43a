"""Synaptic operations of a conv or linear layer fed by events, counted two ways.

- exact: every input event times the number of outputs it actually reaches. A linear layer's
  event reaches all ``out_features``; a conv's event at (h, w) reaches ``C_out / groups`` channels
  times the output positions whose receptive field covers (h, w), which zero padding, stride and
  dilation make smaller at the borders (and uneven under a stride). That per-position fan-out is
  a property of the layer's geometry alone, computed once per input size and cached.
- nominal: the SNN papers' convention, input event rate x T x the layer's MACs, which assumes
  every event reaches the full fan-out. It reads high wherever padding cuts the fan-out (up to a
  third on a 4x4 map under a 3x3 kernel); it is kept to compare with published energy tables.

An input value of 2 (a SEW sum of two coinciding spikes) is two events: counts are sums, not
counts of non-zeros. Cost: where the fan-out is the same everywhere (a 1x1 stride-1 conv) the
exact count is the event total (which the neuron that fired the input already counted) times it.
Elsewhere it needs the events per input position: the eager LIF neuron that fired the input
reduces its spikes to that [B, H*W] map in the pass that counts them, so the conv weights a small
map by its fan-out map; an input whose per-position counts nobody kept (a fused neuron backend,
a SEW sum) costs one matrix-vector product of the input, [T*B*C, H*W] x the fan-out map, the
cheapest single pass over it on a CPU. The fan-out map of a geometry on an input size is prepared
once and cached.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class InputEvents(NamedTuple):
    """A synaptic layer's input activity, as far as it is known before the layer counts.

    total: [B] events per sample (int64 or float32); per_position: [B, H*W] events per input
    position summed over steps and channels (float), when the neuron that fired them had it.
    """

    total: torch.Tensor
    per_position: torch.Tensor | None


class SynapticOps(NamedTuple):
    """Per-sample synaptic operations of one layer call: exact and nominal, each [B] float64."""

    exact: torch.Tensor
    nominal: torch.Tensor

    def first(self, batch: int) -> SynapticOps:
        """The first ``batch`` samples (a CUDA-graph replay drops its padding rows), copied."""
        return SynapticOps(self.exact[:batch].clone(), self.nominal[:batch].clone())


def linear_synaptic_ops(linear: nn.Linear, events: InputEvents) -> SynapticOps:
    """Each event of the input reaches every output."""
    count = events.total.to(torch.float64) * linear.out_features
    return SynapticOps(count, count)


def conv_synaptic_ops(
    conv: nn.Conv2d, x: torch.Tensor, events: InputEvents, out_size: tuple[int, int]
) -> SynapticOps:
    """x: [T, B, C_in, H, W] events; events: what is known of them; out_size: the conv's (H', W')."""
    height, width = x.shape[-2:]
    plan = _conv_plan(_geometry(conv), height, width, out_size, x.device)
    total = events.total.to(torch.float64)
    nominal = total * plan.nominal_per_event
    per_position = events.per_position
    if plan.padded:
        if per_position is None:
            per_position = x.detach().sum(dim=(0, 2), dtype=torch.float32)
        per_position = per_position.reshape(-1, 1, height, width)
        return SynapticOps(_padded_count(conv, per_position) * plan.channels_reached, nominal)
    if plan.fanout is None:  # every position reaches the same number of outputs
        return SynapticOps(total * plan.full_per_event, nominal)
    if per_position is not None:
        # in float64: a sum over a whole map may pass 2**24, where float32 stops counting exactly
        reached_map = per_position.to(torch.float64) @ plan.fanout.to(torch.float64)  # [B]
        return SynapticOps(reached_map * plan.channels_reached, nominal)
    # fan-out counts are small integers, exact in any float type; sums of products stay exact in
    # float32 (products summed over one map < 2**24), then add up over time and channels in float64
    flat = x.flatten(3) if x.dtype in (torch.float32, torch.float64) else x.flatten(3).float()
    reached = flat @ plan.fanout.to(flat.dtype)  # [T, B, C]
    return SynapticOps(reached.sum(dim=(0, 2), dtype=torch.float64) * plan.channels_reached, nominal)


class _Geometry(NamedTuple):
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_before: tuple[int, int]  # (H, W), as nn.Conv2d keeps it for numeric and "same" padding
    padding_mode: str


def _geometry(conv: nn.Conv2d) -> _Geometry:
    pad_w, _, pad_h, _ = conv._reversed_padding_repeated_twice
    return _Geometry(
        conv.in_channels,
        conv.out_channels,
        conv.groups,
        (int(conv.kernel_size[0]), int(conv.kernel_size[1])),
        (int(conv.stride[0]), int(conv.stride[1])),
        (int(conv.dilation[0]), int(conv.dilation[1])),
        (int(pad_h), int(pad_w)),
        conv.padding_mode,
    )


class _ConvPlan(NamedTuple):
    """What a conv of one geometry needs to count SOPs on one input size, prepared once."""

    channels_reached: int
    nominal_per_event: float
    full_per_event: float  # outputs an event reaches where nothing cuts its fan-out
    padded: bool  # a non-zero padding mode: count through the padded copies
    fanout: torch.Tensor | None  # [H*W] float32: output positions each input position reaches


@functools.lru_cache(maxsize=4096)
def _conv_plan(
    geometry: _Geometry, height: int, width: int, out_size: tuple[int, int], device: torch.device
) -> _ConvPlan:
    kernel_h, kernel_w = geometry.kernel
    channels_reached = geometry.out_channels // geometry.groups
    macs_per_step = (geometry.in_channels // geometry.groups) * kernel_h * kernel_w * geometry.out_channels
    macs_per_step *= out_size[0] * out_size[1]
    nominal = macs_per_step / (geometry.in_channels * height * width)
    rows = _axis_fanout(
        height, kernel_h, geometry.stride[0], geometry.pad_before[0], geometry.dilation[0], out_size[0]
    )
    cols = _axis_fanout(
        width, kernel_w, geometry.stride[1], geometry.pad_before[1], geometry.dilation[1], out_size[1]
    )
    plan = _ConvPlan(channels_reached, nominal, float(rows.full * cols.full * channels_reached), False, None)
    if geometry.padding_mode != "zeros":
        return plan._replace(padded=True)
    if len(set(rows.counts)) == 1 and len(set(cols.counts)) == 1:
        return plan
    fanout = torch.outer(
        torch.tensor(rows.counts, dtype=torch.float32), torch.tensor(cols.counts, dtype=torch.float32)
    )
    return plan._replace(fanout=fanout.flatten().to(device))


class _AxisFanout(NamedTuple):
    counts: tuple[int, ...]  # outputs reached from each input position along one axis
    full: int  # the largest count


def _axis_fanout(
    length: int, kernel: int, stride: int, pad: int, dilation: int, out_length: int
) -> _AxisFanout:
    counts = [0] * length
    for out in range(out_length):
        for tap in range(kernel):
            position = out * stride - pad + tap * dilation
            if 0 <= position < length:
                counts[position] += 1
    return _AxisFanout(tuple(counts), max(counts, default=0))


def _padded_count(conv: nn.Conv2d, per_position: torch.Tensor) -> torch.Tensor:
    """Reflect/replicate/circular padding: border events are reached through their copies too.

    per_position: [B, 1, H, W] events summed over steps and channels -> [B] float64."""
    padded = F.pad(per_position, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=padded.dtype, device=padded.device)
    reached = F.conv2d(padded, ones, stride=conv.stride, dilation=conv.dilation)
    return reached.sum(dim=(1, 2, 3)).to(torch.float64)
