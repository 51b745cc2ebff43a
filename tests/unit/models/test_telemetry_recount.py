"""Recount a network's telemetry from outside, with forward hooks, and compare it with ours.

The recount knows nothing of how models/telemetry.py counts. For every layer it looks at the
tensors that actually flowed:
- a spiking layer's spikes are the non-zero outputs it returned;
- a synaptic layer (conv or linear) fed by events (its input holds only non-negative integers:
  spikes, or SEW sums where two coinciding spikes are two events) does exact synaptic operations
  = the events of its input, each times the outputs it really reaches. For a conv that is the
  same convolution run on the input with a kernel of ones (padding, stride, groups, dilation as
  the layer has them), summed; for a linear layer, input events x out_features;
- the nominal count is the papers' convention: input event rate x T x the layer's MACs;
- a synaptic layer fed by real values does MACs, counted by formula, and no synaptic operations.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import create_model, telemetry
from models.layers import SeqConv2d, SeqLinear
from models.neurons import MultiStepNeuron
from models.spikeformer_blocks import AttentionPoolHead, MultiHeadAttention


def is_event_input(x: torch.Tensor) -> bool:
    return bool(((x >= 0) & (x == x.round())).all())


def conv_recount(conv: SeqConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact SOPs [B], nominal SOPs [B], MACs per sample of a SeqConv2d on x: [T, B, C, H, W]."""
    steps, batch = x.shape[:2]
    ones = torch.ones_like(conv.weight, dtype=torch.float64)
    events, padding = x.flatten(0, 1).double(), conv.padding
    if conv.padding_mode != "zeros":  # a reflected border event is reached through its copies too
        events = F.pad(events, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    reached = F.conv2d(
        events,
        ones,
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation,
        groups=conv.groups,
    )  # [T*B, C_out, H', W']: each output's count of the input events it receives
    exact = reached.unflatten(0, (steps, batch)).sum(dim=(0, 2, 3, 4))
    height_out, width_out = reached.shape[-2:]
    kh, kw = conv.kernel_size
    macs_per_step = (conv.in_channels // conv.groups) * kh * kw * conv.out_channels * height_out * width_out
    rate = x.double().sum(dim=(0, 2, 3, 4)) / x[:, 0].numel()
    return exact, rate * steps * macs_per_step, macs_per_step * steps


def linear_recount(linear: SeqLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact SOPs [B], nominal SOPs [B], MACs per sample of a SeqLinear on x: [T, B, ..., in]."""
    steps, batch = x.shape[:2]
    events = x.double().reshape(steps, batch, -1).sum(dim=(0, 2))
    rows = x[:, 0].numel() // linear.in_features
    macs = rows * linear.in_features * linear.out_features
    rate = events / x[:, 0].numel()
    return events * linear.out_features, rate * macs, macs


class Recount:
    """Forward hooks on every neuron and synaptic layer; the expected telemetry per sample."""

    def __init__(self, model: nn.Module) -> None:
        self.spikes: dict[str, torch.Tensor] = {}
        self.synapses: dict[str, dict[str, Any]] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, MultiStepNeuron) and not module.analog_output:
                self.handles.append(module.register_forward_hook(self._neuron_hook(name)))
            elif isinstance(module, SeqConv2d | SeqLinear | MultiHeadAttention | AttentionPoolHead):
                self.handles.append(module.register_forward_hook(self._synapse_hook(name)))

    def _neuron_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
            count = (out != 0).reshape(out.shape[0], out.shape[1], -1).sum(dim=(0, 2))
            self.spikes[name] = self.spikes.get(name, 0) + count

        return hook

    def _synapse_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
            (x,) = inputs
            if isinstance(module, MultiHeadAttention):
                steps, _, tokens, dim = x.shape
                length = steps if module.axis == "time" else tokens
                exact = nominal = None
                macs = 2 * tokens * length * dim * steps  # Q K^T and A V, on real values
                events = False
            elif isinstance(module, AttentionPoolHead):
                steps, _, tokens, dim = x.shape
                exact = nominal = None
                macs = steps * tokens * dim  # the pooling weights times the tokens, once
                events = False
            else:
                recount = conv_recount if isinstance(module, SeqConv2d) else linear_recount
                exact, nominal, macs = recount(module, x)
                events = is_event_input(x)
            entry = self.synapses.setdefault(
                name, {"events": events, "silent": True, "exact": 0, "nominal": 0, "macs": 0, "steps": 0}
            )
            entry["steps"] += 1 if isinstance(module, AttentionPoolHead) else x.shape[0]
            entry["silent"] = entry["silent"] and not bool(x.any())
            entry["macs"] += macs
            if events:
                entry["exact"] = entry["exact"] + exact
                entry["nominal"] = entry["nominal"] + nominal

        return hook


def run_both(model: nn.Module, x: torch.Tensor) -> tuple[list[telemetry.SampleTelemetry], Recount]:
    model.eval()
    recount = Recount(model)
    with torch.no_grad(), telemetry.record(model) as recorder:
        model(x)
    for handle in recount.handles:
        handle.remove()
    return recorder.report(), recount


def calibrate(model: nn.Module) -> None:
    """Scale BN so every spiking layer fires at a non-trivial rate on a random input."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                module.weight.fill_(2.0)
                module.bias.fill_(1.2)


def assert_matches(samples: list[telemetry.SampleTelemetry], recount: Recount) -> None:
    for b, sample in enumerate(samples):
        assert {layer.name: layer.spikes for layer in sample.layers} == {
            name: int(count[b]) for name, count in recount.spikes.items()
        }
        ours = {layer.name: layer for layer in sample.synaptic_layers}
        assert set(ours) == set(recount.synapses)
        for name, expected in recount.synapses.items():
            layer = ours[name]
            assert layer.macs == expected["macs"], name
            if expected["silent"] and layer.input == "real":
                # an input of zeros tells events from real values apart no more than it counts
                assert layer.synaptic_ops == layer.synaptic_ops_nominal == 0.0, name
                expected["events"] = False
            elif expected["events"]:
                assert layer.input == "events", f"{name} is fed events but counted as {layer.input}"
                assert layer.synaptic_ops == pytest.approx(float(expected["exact"][b]), rel=1e-6), name
                assert layer.synaptic_ops_nominal == pytest.approx(float(expected["nominal"][b]), rel=1e-6), (
                    name
                )
            else:
                assert layer.input == "real", f"{name} is fed real values but counted as {layer.input}"
                assert layer.synaptic_ops == 0.0 and layer.synaptic_ops_nominal == 0.0, name
        exact = sum(float(e["exact"][b]) for e in recount.synapses.values() if e["events"])
        nominal = sum(float(e["nominal"][b]) for e in recount.synapses.values() if e["events"])
        real_macs = sum(e["macs"] for e in recount.synapses.values() if not e["events"])
        assert sample.synaptic_ops == pytest.approx(exact, rel=1e-6)
        assert sample.synaptic_ops_nominal == pytest.approx(nominal, rel=1e-6)
        assert sample.macs == real_macs
        assert sample.energy_uj == pytest.approx((4.6 * real_macs + 0.9 * exact) * 1e-6, rel=1e-6)
        steps = {name: e["steps"] for name, e in recount.synapses.items()}
        one_step = sum(e["macs"] / steps[name] for name, e in recount.synapses.items())
        assert sample.ann_energy_uj == pytest.approx(4.6 * one_step * 1e-6, rel=1e-9)
        shares = [layer.energy_share for layer in sample.synaptic_layers]
        assert sum(shares) == pytest.approx(1.0) if sample.energy_uj else all(s == 0 for s in shares)


DANETS = [
    ("danet_resnet18", {"connection": "sew_add"}),
    ("danet_resnet18", {"connection": "standard"}),
    ("danet_resnet18", {"connection": "dense_additive"}),
    ("danet_resnet18", {"connection": "membrane"}),
    ("danet_resnext50_32x4d", {"connection": "sew_add", "base_width": 32}),
    ("danet_vgg11", {"base_width": 8}),
]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize(("architecture", "config"), DANETS, ids=lambda v: str(v))
def test_danet_telemetry_equals_the_recount(architecture: str, config: dict[str, Any], steps: int) -> None:
    torch.manual_seed(0)
    options = {"num_classes": 5, "in_channels": 2, "stem": "small", "base_width": 8, **config}
    model = create_model(architecture, **options)
    calibrate(model)
    x = torch.rand(steps, 2, 2, 13, 11)  # odd sizes: stride 2 leaves uneven borders
    samples, recount = run_both(model, x)
    assert any(int(c.sum()) > 0 for c in recount.spikes.values()), "the network must fire"
    assert_matches(samples, recount)


@pytest.mark.parametrize("steps", [1, 3])
def test_spikeformer_telemetry_equals_the_recount(steps: int) -> None:
    torch.manual_seed(0)
    model = create_model(
        "spikeformer_nmnist", num_classes=5, channels=(8, 16), dim=32, depth=1, heads=2, in_channels=2
    )
    calibrate(model)
    x = (torch.rand(steps, 2, 2, 17, 15) < 0.3).float()  # event frames on an odd sensor
    samples, recount = run_both(model, x)
    assert_matches(samples, recount)


class Geometry(nn.Module):
    """LIF -> conv of the geometry under test -> LIF. x: [T, B, 4, H, W] analog."""

    def __init__(self, **conv: Any) -> None:
        super().__init__()
        from models.neurons import LIF

        self.lif = LIF()
        self.conv = SeqConv2d(4, 8, bias=False, **conv)
        self.out = LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(self.lif(x)))


GEOMETRIES = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "padding": 1, "stride": 2},
    {"kernel_size": 5, "padding": 3, "dilation": 2},
    {"kernel_size": 3, "padding": 2, "groups": 4},
    {"kernel_size": 1},
    {"kernel_size": 1, "stride": 2},
    {"kernel_size": 3, "padding": "same"},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
]


@pytest.mark.parametrize("conv", GEOMETRIES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("size", [(4, 4), (7, 5)])
def test_conv_geometries_are_counted_exactly(conv: dict[str, Any], size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    model = Geometry(**conv)
    x = torch.rand(3, 2, 4, *size) * 2.5
    samples, recount = run_both(model, x)
    assert_matches(samples, recount)


def test_padding_makes_the_exact_count_smaller_than_the_nominal_one() -> None:
    # Every input fires: on a 4x4 map a 3x3 conv's border inputs reach 6 or 4 of 9 outputs.
    model = Geometry(kernel_size=3, padding=1)
    with torch.no_grad(), telemetry.record(model) as recorder:
        model(torch.full((1, 1, 4, 4, 4), 10.0))
    conv = next(layer for layer in recorder.report()[0].synaptic_layers if layer.name == "conv")
    # 4 channels x 8 outputs x (sum over a 4x4 map of fan-outs 4,6,6,4 / 6,9,9,6 / ...) = 32 x 100
    assert conv.synaptic_ops == 3200.0
    assert conv.synaptic_ops_nominal == 4 * 16 * 8 * 9
