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
geometries (strides) take one reduction of the input over time and channels.
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
    kernel_h, kernel_w = conv.kernel_size
    channels_reached = conv.out_channels // conv.groups
    macs_per_step = (conv.in_channels // conv.groups) * kernel_h * kernel_w * conv.out_channels
    macs_per_step *= out_size[0] * out_size[1]
    total = events.to(torch.float64)
    nominal = total * (macs_per_step / (conv.in_channels * height * width))
    if conv.padding_mode != "zeros":
        return SynapticOps(_padded_count(conv, x) * channels_reached, nominal)
    # [W_before, W_after, H_before, H_after], as nn.Conv2d keeps it for numeric and "same" padding
    pad_w, _, pad_h, _ = conv._reversed_padding_repeated_twice
    rows = _axis_fanout(height, kernel_h, conv.stride[0], pad_h, conv.dilation[0], out_size[0])
    cols = _axis_fanout(width, kernel_w, conv.stride[1], pad_w, conv.dilation[1], out_size[1])
    exact = _exact_count(x, total, rows, cols) * channels_reached
    return SynapticOps(exact, nominal)


class _AxisFanout(NamedTuple):
    counts: tuple[int, ...]  # outputs reached from each input position along one axis
    full: int  # the largest count
    before: int  # leading positions below ``full``
    after: int  # trailing positions below ``full``
    banded: bool  # every position between the two bands reaches ``full``


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=1024)
def _deficit_map(rows: _AxisFanout, cols: _AxisFanout, device: torch.device) -> torch.Tensor:
    """[H, W] float32: the full fan-out minus each position's own (non-zero only near borders)."""
    fanout = torch.outer(torch.tensor(rows.counts, dtype=torch.float32), torch.tensor(cols.counts))
    return (rows.full * cols.full - fanout).to(device)


def _exact_count(x: torch.Tensor, total: torch.Tensor, rows: _AxisFanout, cols: _AxisFanout) -> torch.Tensor:
    """Sum over events of their spatial fan-out, per sample. x: [T, B, C, H, W] -> [B] float64."""
    deficit = _deficit_map(rows, cols, x.device)
    full = float(rows.full * cols.full)
    height, width = x.shape[-2:]
    if not (rows.banded and cols.banded):
        per_position = x.sum(dim=(0, 2), dtype=torch.float32)  # [B, H, W]
        return full * total - (per_position * deficit).sum(dim=(1, 2)).to(torch.float64)
    missing = torch.zeros_like(total)
    top, bottom, left, right = rows.before, height - rows.after, cols.before, width - cols.after
    bands = [(slice(0, top), slice(None)), (slice(bottom, height), slice(None))]
    bands += [(slice(top, bottom), slice(0, left)), (slice(top, bottom), slice(right, width))]
    for row_band, col_band in bands:
        band = x[..., row_band, col_band]
        if band.numel():
            per_position = band.sum(dim=(0, 2), dtype=torch.float32)  # [B, h, w]
            missing += (per_position * deficit[row_band, col_band]).sum(dim=(1, 2)).to(torch.float64)
    return full * total - missing


def _padded_count(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Reflect/replicate/circular padding: border events are reached through their copies too."""
    per_position = x.sum(dim=(0, 2), dtype=torch.float32).unsqueeze(1)  # [B, 1, H, W]
    padded = F.pad(per_position, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=padded.dtype, device=padded.device)
    reached = F.conv2d(padded, ones, stride=conv.stride, dilation=conv.dilation)
    return reached.sum(dim=(1, 2, 3)).to(torch.float64)
