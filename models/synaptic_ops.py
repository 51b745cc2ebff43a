"""Synaptic operations of a conv or linear layer fed by events, counted two ways.

- exact: every input event times the number of outputs it actually reaches. A linear layer's
  event reaches all ``out_features``; a conv's event at (h, w) reaches ``C_out / groups`` channels
  times the output positions whose receptive field covers (h, w), which zero padding, stride and
  dilation make smaller at the borders (and uneven under a stride). That per-position fan-out is
  a property of the layer's geometry alone, computed once per input size and kept on the layer.
- nominal: the SNN papers' convention, input event rate x T x the layer's MACs, which assumes
  every event reaches the full fan-out. It reads high wherever padding cuts the fan-out (up to a
  third on a 4x4 map under a 3x3 kernel); it is kept to compare with published energy tables.

An input value of 2 (a SEW sum of two coinciding spikes) is two events: counts are sums, not
counts of non-zeros. Cost: where the fan-out is the same everywhere (a 1x1 stride-1 conv) the
exact count is the event total (which the neuron that fired the input already counted) times it.
Elsewhere, where a neuron fired the input, it also left the events summed over channels per
position (models/kernels/lif: the native loop counts them as it fires, the inductor loop sums
each neuron over the steps, the others add the channel planes afterwards), and the count is one
small product of that map, [S*B, H*W] x [H*W]; the input itself is not read again. For any other
input (a SEW sum, an encoded frame) it is one matrix-vector product of the input with the fan-out
map, one row per step and sample, [T*B, C*H*W] x [C*H*W] (the map repeated over the channels).
Where a row's sum could pass 2**24 (float32 stops counting exactly there) the product runs per
channel and the channels add up in float64, or the map's product runs in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class SynapticOps(NamedTuple):
    """Per-sample synaptic operations of one layer call, kept as the reductions the layer made.

    A forward reports about one of these per synaptic layer, so turning them into counts is left to
    ``telemetry.TelemetryRecorder.report``, which moves every layer's reductions to the host in one
    go and does the arithmetic on lists: per layer and call that is two tensor ops (the product and
    its reshape), where doing it here cost about seven small ops, each dearer than the numbers.

    events: [B] input events per sample (int64, or float32 holding integers);
    weighted: the input weighted by its fan-out map, [S, B] (S: steps, or 1) or None where every
    event reaches ``per_event`` outputs; exact = ``per_weighted`` x the sum of a sample's column,
    else ``per_event`` x events; nominal = ``nominal_per_event`` x events.
    position_map, position_weights: the weighted sums still to be made, a neuron's events per
    position [S*B, H*W] and the conv's fan-out per position [H*W]: the small product runs in the
    report, with the others, rather than between two convolutions that have just filled the caches.
    """

    events: torch.Tensor
    weighted: torch.Tensor | None
    per_weighted: float
    per_event: float
    nominal_per_event: float
    position_map: torch.Tensor | None = None
    position_weights: torch.Tensor | None = None

    def weighted_sums(self) -> torch.Tensor | None:
        """[S, B] the input weighted by its fan-out, or None where every event reaches ``per_event``."""
        if self.position_map is None or self.position_weights is None:
            return self.weighted
        weights, values = self.position_weights, self.position_map
        values = values if values.dtype == weights.dtype else values.to(weights.dtype)
        return torch.mv(values, weights).view(-1, self.events.shape[0])

    @property
    def exact(self) -> torch.Tensor:
        """[B] float64."""
        weighted = self.weighted_sums()
        if weighted is None:
            return self.events.to(torch.float64) * self.per_event
        return weighted.sum(dim=0, dtype=torch.float64) * self.per_weighted

    @property
    def nominal(self) -> torch.Tensor:
        """[B] float64."""
        return self.events.to(torch.float64) * self.nominal_per_event

    def reductions(self) -> list[torch.Tensor]:
        """The tensors ``counts_from`` reads, in order: events, then the weighted sums if any."""
        weighted = self.weighted_sums()
        return [self.events] if weighted is None else [self.events, weighted]

    def counts_from(self, host: Iterator[list[float]]) -> tuple[list[float], list[float]]:
        """(exact, nominal) per sample, from the host lists of ``reductions()`` taken off ``host``."""
        events = next(host)
        if self.weighted is None and self.position_map is None:
            exact = [count * self.per_event for count in events]
        else:
            weighted, batch = next(host), len(events)  # [S, B] flattened: a sample every B values
            if len(weighted) > batch:
                weighted = [sum(weighted[b::batch]) for b in range(batch)]
            exact = [value * self.per_weighted for value in weighted]
        return exact, [count * self.nominal_per_event for count in events]

    def first(self, batch: int) -> SynapticOps:
        """The first ``batch`` samples (a CUDA-graph replay drops its padding rows), copied."""
        weighted = None if self.weighted is None else self.weighted[:, :batch].clone()
        position_map = self.position_map
        if position_map is not None:
            rows = position_map.view(-1, self.events.shape[0], position_map.shape[-1])[:, :batch]
            position_map = rows.reshape(-1, position_map.shape[-1]).clone()
        return self._replace(events=self.events[:batch].clone(), weighted=weighted, position_map=position_map)


def linear_synaptic_ops(linear: nn.Linear, x: torch.Tensor, events: torch.Tensor) -> SynapticOps:
    """x: [T, B, ..., in] events; events: [B] their total. Each event reaches every output."""
    return SynapticOps(events, None, 0.0, float(linear.out_features), float(linear.out_features))


def conv_synaptic_ops(
    conv: nn.Conv2d,
    x: torch.Tensor,
    events: torch.Tensor,
    per_position: torch.Tensor | None = None,
    plan: ConvPlan | None = None,
) -> SynapticOps:
    """x: [T, B, C_in, H, W] events; events: [B] their total; per_position: [S*B, H*W] float32, x
    summed over its channels (and steps, S = 1), where the neuron that fired x made it: then x is
    not read again. ``plan``: ``conv_plan(conv, x)`` where the caller has it already."""
    plan = conv_plan(conv, x) if plan is None else plan
    reached, full, nominal = plan.channels_reached, plan.full_per_event, plan.nominal_per_event
    if plan.padded:
        return SynapticOps(events, _padded_count(conv, x).unsqueeze(0), reached, full, nominal)
    if plan.weights is None:  # every position reaches the same number of outputs
        return SynapticOps(events, None, reached, full, nominal)
    steps, batch = x.shape[0], x.shape[1]
    if per_position is not None and plan.position_weights is not None:  # C times smaller than x
        return SynapticOps(events, None, reached, full, nominal, per_position, plan.position_weights)
    values = x.detach() if x.requires_grad else x  # no graph behind a count (training with telemetry on)
    values = values if values.dtype == plan.weights.dtype else values.float()
    if plan.weights.numel() > x.shape[-1] * x.shape[-2]:  # the map repeated over the channels
        weighted = torch.mv(values.reshape(steps * batch, -1), plan.weights).view(steps, batch)
    else:  # one row per channel: a row's sum stays exact in float32, the channels add up in float64
        per_channel = torch.mv(values.reshape(-1, plan.weights.numel()), plan.weights)  # [T*B*C]
        weighted = per_channel.view(steps, batch, -1).sum(dim=2, dtype=torch.float64)
    return SynapticOps(events, weighted, reached, full, nominal)


class ConvPlan(NamedTuple):
    """What a conv needs to count SOPs on one input size, prepared once.

    ``weights``: None where the fan-out is the same everywhere; else the fan-out of every input
    position, float32, [C*H*W] (repeated over the input channels) or [H*W] (one channel).
    ``position_weights``: the same fan-out, [H*W], in the dtype that keeps a row of a per-position
    event map times it exact (float32, or float64 for very wide layers); None with ``weights``.
    """

    macs_per_step: int  # per sample
    channels_reached: float
    nominal_per_event: float
    full_per_event: float  # outputs an event reaches where nothing cuts its fan-out
    padded: bool  # a non-zero padding mode: count through the padded copies
    weights: torch.Tensor | None
    position_weights: torch.Tensor | None


# float32 counts exactly up to 2**24; a row of the product sums at most C*H*W products of an input
# value (a spike, or a SEW sum of a few) and a fan-out, so rows up to a quarter of that are safe
_EXACT_ROW_LIMIT = 2**22


# The plans of one conv, by (input height, width, device). Kept on the layer itself, so that the
# per-call look-up is one dict access: a conv's geometry is fixed when it is built.
_PLANS_ATTRIBUTE = "_synaptic_ops_plans"


def conv_plan(conv: nn.Conv2d, x: torch.Tensor) -> ConvPlan:
    """The counting plan of ``conv`` for inputs of x's size (x: [..., C_in, H, W]), made once."""
    key = (x.shape[-2], x.shape[-1], x.device)
    plans: dict[tuple[object, ...], ConvPlan] = conv.__dict__.setdefault(_PLANS_ATTRIBUTE, {})
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _conv_plan(conv, x.shape[-2], x.shape[-1], x.device)
    return plan


def conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """(H', W') of ``conv`` on an (H, W) input, without running it."""
    left, right, top, bottom = (int(pad) for pad in conv._reversed_padding_repeated_twice)
    sizes = []
    paddings = (top + bottom, left + right)
    for size, padding, kernel, stride, dilation in zip(
        (height, width), paddings, conv.kernel_size, conv.stride, conv.dilation, strict=True
    ):
        sizes.append((size + padding - dilation * (kernel - 1) - 1) // stride + 1)
    return sizes[0], sizes[1]


def _conv_plan(conv: nn.Conv2d, height: int, width: int, device: torch.device) -> ConvPlan:
    out_size = conv_output_size(conv, height, width)
    kernel_h, kernel_w = int(conv.kernel_size[0]), int(conv.kernel_size[1])
    pad_w, _, pad_h, _ = conv._reversed_padding_repeated_twice  # as kept for numeric and "same" padding
    channels_reached = conv.out_channels // conv.groups
    macs_per_step = (conv.in_channels // conv.groups) * kernel_h * kernel_w * conv.out_channels
    macs_per_step *= out_size[0] * out_size[1]
    nominal = macs_per_step / (conv.in_channels * height * width)
    rows = _axis_fanout(height, kernel_h, conv.stride[0], int(pad_h), conv.dilation[0], out_size[0])
    cols = _axis_fanout(width, kernel_w, conv.stride[1], int(pad_w), conv.dilation[1], out_size[1])
    full = rows.full * cols.full
    reached = float(channels_reached)
    plan = ConvPlan(macs_per_step, reached, nominal, full * reached, False, None, None)
    if conv.padding_mode != "zeros":
        return plan._replace(padded=True)
    if len(set(rows.counts)) == 1 and len(set(cols.counts)) == 1:
        return plan
    fanout = torch.outer(
        torch.tensor(rows.counts, dtype=torch.float32), torch.tensor(cols.counts, dtype=torch.float32)
    ).flatten()
    exact_in_float32 = conv.in_channels * fanout.numel() * full <= _EXACT_ROW_LIMIT
    position_weights = fanout if exact_in_float32 else fanout.to(torch.float64)
    weights = fanout.repeat(conv.in_channels) if exact_in_float32 else fanout
    return plan._replace(weights=weights.to(device), position_weights=position_weights.to(device))


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


def _padded_count(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Reflect/replicate/circular padding: border events are reached through their copies too."""
    per_position = x.sum(dim=(0, 2), dtype=torch.float32).unsqueeze(1)  # [B, 1, H, W]
    padded = F.pad(per_position, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=padded.dtype, device=padded.device)
    reached = F.conv2d(padded, ones, stride=conv.stride, dilation=conv.dilation)
    return reached.sum(dim=(1, 2, 3)).to(torch.float64)
