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
counts of non-zeros. Cost: for the usual stride-1 "same" conv the fan-out is full everywhere but
in a thin border band, so the exact count is the full fan-out times the event total (which the
neuron that fired the input already counted) minus the deficit summed over that band only; other
geometries (strides) take one reduction of the input over time and channels. What a geometry needs
on an input size (fan-out, deficit map, band indices) is prepared once and cached.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class SynapticOps(NamedTuple):
    """Per-sample synaptic operations of one layer call: exact and nominal, each [B] float64."""

    exact: torch.Tensor
    nominal: torch.Tensor

    def first(self, batch: int) -> SynapticOps:
        """The first ``batch`` samples (a CUDA-graph replay drops its padding rows), copied."""
        return SynapticOps(self.exact[:batch].clone(), self.nominal[:batch].clone())


def linear_synaptic_ops(linear: nn.Linear, x: torch.Tensor, events: torch.Tensor) -> SynapticOps:
    """x: [T, B, ..., in] events; events: [B] their total. Each event reaches every output."""
    count = events.to(torch.float64) * linear.out_features
    return SynapticOps(count, count)


def conv_synaptic_ops(
    conv: nn.Conv2d, x: torch.Tensor, events: torch.Tensor, out_size: tuple[int, int]
) -> SynapticOps:
    """x: [T, B, C_in, H, W] events; events: [B] their total; out_size: the conv's (H', W')."""
    height, width = x.shape[-2:]
    plan = _conv_plan(_geometry(conv), height, width, out_size, x.device)
    total = events.to(torch.float64)
    nominal = total * plan.nominal_per_event
    if plan.padded:
        return SynapticOps(_padded_count(conv, x) * plan.channels_reached, nominal)
    exact = total * plan.full_per_event
    for rows, cols, deficit in plan.shortfall:  # views of x, no copies
        per_position = x[:, :, :, rows, cols].sum(dim=(0, 2), dtype=torch.float32)  # [B, h, w]
        exact = exact - (per_position * deficit).sum(dim=(1, 2))
    return SynapticOps(exact, nominal)


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
    full_per_event: float  # every output an event could reach, the border ignored
    padded: bool  # a non-zero padding mode: count through the padded copies
    # (rows, cols, deficit [h, w] float64): where an event reaches fewer outputs than the full
    # fan-out, and by how many: the border bands, or the whole map under a stride
    shortfall: tuple[tuple[slice, slice, torch.Tensor], ...]


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
    full = rows.full * cols.full
    plan = _ConvPlan(channels_reached, nominal, float(full * channels_reached), False, ())
    if geometry.padding_mode != "zeros":
        return plan._replace(padded=True)
    fanout = torch.outer(
        torch.tensor(rows.counts, dtype=torch.float64), torch.tensor(cols.counts, dtype=torch.float64)
    )
    deficit = (full - fanout) * channels_reached
    if not deficit.any():
        return plan
    everything = slice(None)
    if not (rows.banded and cols.banded):
        return plan._replace(shortfall=((everything, everything, deficit.to(device)),))
    # top and bottom bands across the full width, then left and right bands between them
    middle = slice(rows.before, height - rows.after)
    shortfall = [(band, everything, deficit[band, :]) for band in _bands(rows.before, rows.after, height)]
    shortfall += [(middle, band, deficit[middle, band]) for band in _bands(cols.before, cols.after, width)]
    return plan._replace(shortfall=tuple((r, c, d.contiguous().to(device)) for r, c, d in shortfall))


def _bands(before: int, after: int, length: int) -> list[slice]:
    """The leading ``before`` and trailing ``after`` positions of an axis as slices (views of x).

    The usual 3x3 "same" conv has one short position at each end: one strided slice takes both.
    """
    if before == after == 1 and length > 1:
        return [slice(0, length, length - 1)]
    return [band for band in (slice(0, before), slice(length - after, length)) if band.stop > band.start]


class _AxisFanout(NamedTuple):
    counts: tuple[int, ...]  # outputs reached from each input position along one axis
    full: int  # the largest count
    before: int  # leading positions below ``full``
    after: int  # trailing positions below ``full``
    banded: bool  # every position between the two bands reaches ``full``


def _axis_fanout(
    length: int, kernel: int, stride: int, pad: int, dilation: int, out_length: int
) -> _AxisFanout:
    counts = [0] * length
    for out in range(out_length):
        for tap in range(kernel):
            position = out * stride - pad + tap * dilation
            if 0 <= position < length:
                counts[position] += 1
    full = max(counts, default=0)
    before = next((i for i, c in enumerate(counts) if c == full), length)
    after = next((i for i, c in enumerate(reversed(counts)) if c == full), length)
    banded = before + after < length and all(c == full for c in counts[before : length - after])
    return _AxisFanout(tuple(counts), full, before, after, banded)


def _padded_count(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Reflect/replicate/circular padding: border events are reached through their copies too."""
    per_position = x.sum(dim=(0, 2), dtype=torch.float32).unsqueeze(1)  # [B, 1, H, W]
    padded = F.pad(per_position, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=padded.dtype, device=padded.device)
    reached = F.conv2d(padded, ones, stride=conv.stride, dilation=conv.dilation)
    return reached.sum(dim=(1, 2, 3)).to(torch.float64)
