"""models/synaptic_ops.py: each way of counting a conv's exact SOPs against a brute-force count.

The brute force: every output position of the conv counts the input events inside its receptive
field (a convolution of the per-position event count with a ones kernel, the definition), times
the output channels each event reaches. The network-level recount is test_telemetry_recount.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.synaptic_ops import conv_output_size, conv_synaptic_ops
from models.telemetry import event_count, events_per_sample


def brute_force(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """x: [T, B, C, H, W] events -> [B] float64 exact SOPs."""
    per_position = x.sum(dim=(0, 2), dtype=torch.float64).unsqueeze(1)  # [B, 1, H, W]
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=torch.float64)
    reached = F.conv2d(per_position, ones, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    return reached.sum(dim=(1, 2, 3)) * (conv.out_channels // conv.groups)


GEOMETRIES = {
    "3x3 same": dict(kernel_size=3, padding=1),
    "3x3 same, groups 2": dict(kernel_size=3, padding=1, groups=2),
    "1x3 same": dict(kernel_size=(1, 3), padding=(0, 1)),
    "3x3 stride 2": dict(kernel_size=3, padding=1, stride=2),
    "5x5 padding 2 (two cut rows a side)": dict(kernel_size=5, padding=2),
    "3x3 dilation 2, padding 2": dict(kernel_size=3, padding=2, dilation=2),
    "3x3 no padding": dict(kernel_size=3),
    '4x4 "same" (one more padded column on the right)': dict(kernel_size=4, padding="same"),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("size", [(8, 8), (9, 13), (28, 28), (5, 6)])
@pytest.mark.parametrize("in_channels", [4, 600])  # 600 x 28 x 28 x 9 > 2**22: a row per channel
@pytest.mark.parametrize("steps", [1, 3])
def test_exact_count_equals_the_brute_force(
    name: str, size: tuple[int, int], steps: int, in_channels: int
) -> None:
    torch.manual_seed(steps)
    conv = nn.Conv2d(in_channels, 6, **GEOMETRIES[name])
    x = torch.randint(0, 3, (steps, 2, in_channels, *size)).float()  # 2 = a SEW sum of two spikes
    x[..., 0, 0] = 2.0  # a busy corner
    out = conv(x.flatten(0, 1)).shape[-2:]
    assert conv_output_size(conv, *size) == tuple(out)
    sops = conv_synaptic_ops(conv, x, event_count(x))
    assert torch.equal(sops.exact, brute_force(conv, x))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("in_channels", [4, 600])  # 600 x 28 x 28 x 9 > 2**22: the product in float64
@pytest.mark.parametrize("over_steps", [False, True], ids=["per step", "summed over steps"])
def test_a_neurons_per_position_map_gives_the_same_exact_count(
    name: str, in_channels: int, over_steps: bool
) -> None:
    """The map a neuron makes of its spikes (summed over channels, and over steps by the inductor
    loop) stands in for the spikes."""
    conv = nn.Conv2d(in_channels, 6, **GEOMETRIES[name])
    x = (torch.rand(3, 2, in_channels, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    per_position = (x.sum(dim=(0, 2)) if over_steps else x.sum(dim=2)).reshape(-1, 28 * 28)
    events = events_per_sample(per_position, batch=2, most=x[:, 0].numel())
    assert events.tolist() == event_count(x).long().tolist()
    sops = conv_synaptic_ops(conv, x, events, per_position)
    assert torch.equal(sops.exact, brute_force(conv, x))
    assert torch.equal(sops.nominal, conv_synaptic_ops(conv, x, event_count(x)).nominal)


def test_the_first_samples_are_those_of_the_whole_batch() -> None:
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    x = (torch.rand(2, 5, 3, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    sops = conv_synaptic_ops(conv, x, event_count(x))
    first = sops.first(3)
    assert torch.equal(first.exact, sops.exact[:3]) and torch.equal(first.nominal, sops.nominal[:3])
