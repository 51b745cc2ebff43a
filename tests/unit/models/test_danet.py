"""models/danet.py: the skeleton, the five connections, the DA definition, the registered builders."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models import create_model, telemetry
from models.base import spiking_layers
from models.danet import CONNECTIONS, Branch, DANet, Stage, resnet_plan, vgg_plan
from models.layers import SeqConv2d
from models.neurons import LIF, PLIF

TINY = {"base_width": 8, "stem": "small", "num_classes": 5, "in_channels": 2}


def tiny(arch: str, **overrides: object) -> DANet:
    torch.manual_seed(0)
    model = create_model(arch, **{**TINY, **overrides})
    assert isinstance(model, DANet)
    return model.eval()


def frames(steps: int = 2, batch: int = 3, channels: int = 2, size: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(steps, batch, channels, size, size) * 4.0


@pytest.mark.parametrize("connection", CONNECTIONS)
@pytest.mark.parametrize("arch", ["danet_resnet18", "danet_resnet50", "danet_resnext50_32x4d", "danet_vgg11"])
def test_every_connection_builds_and_runs(arch: str, connection: str) -> None:
    model = tiny(arch, connection=connection)
    with torch.no_grad():
        logits = model(frames())
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()


# torchvision's counts (1000 classes). DA keeps torchvision's layout conv for conv and BN for BN
# (its BN follows each conv and LIF has no parameters), so the counts are equal, not just close.
TORCHVISION_PARAMETERS = {
    "danet_resnet18": 11_689_512,
    "danet_resnet34": 21_797_672,
    "danet_resnet50": 25_557_032,
    "danet_resnet101": 44_549_160,
    "danet_resnet152": 60_192_808,
    "danet_wide_resnet50_2": 68_883_240,
    "danet_resnext50_32x4d": 25_028_904,
}


@pytest.mark.parametrize(("arch", "expected"), TORCHVISION_PARAMETERS.items())
def test_parameter_counts_at_imagenet_size(arch: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_small_stem_takes_mnist_sized_input() -> None:
    model = create_model("danet_resnet18", num_classes=10, in_channels=1, stem="small").eval()
    with torch.no_grad():
        assert model(torch.rand(2, 2, 1, 28, 28)).shape == (2, 10)


def test_dense_additive_stage_is_the_running_sum() -> None:
    # Stage 2 of a narrow ResNet-18: block 1 strides and widens (8 -> 16), so the stage input is
    # projected; block 2 must receive projection(x) + block1(x) and the stage return that plus block2.
    stage = tiny("danet_resnet18").stages[1]
    assert stage.projection is not None and len(stage.blocks) == 2
    x = torch.randn(2, 3, 8, 8, 8)
    with torch.no_grad():
        after_first = stage.projection(x) + stage.blocks[0](x)
        expected = after_first + stage.blocks[1](after_first)
        assert torch.allclose(stage(x), expected)


def test_zero_init_makes_every_da_block_start_at_zero() -> None:
    model = tiny("danet_resnet18", zero_init_residual=True)
    x = torch.randn(2, 3, 8, 16, 16)
    with torch.no_grad():
        # Stage 1 keeps the shape: with every branch silent the running sum is the input itself.
        assert torch.equal(model.stages[0](x), x)
        # Stage 2 reshapes: the sum is the projection of the input alone.
        assert torch.equal(model.stages[1](x), model.stages[1].projection(x))


def test_zero_init_does_not_apply_to_membrane_branches() -> None:
    model = tiny("danet_resnet18", connection="membrane", zero_init_residual=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.weight.abs().sum() > 0 for bn in bns)


def stage_output(connection: str, saturate: bool = False) -> torch.Tensor:
    """Stage 1 of a narrow ResNet-18 on random frames: [T, B, 8, 16, 16]."""
    model = tiny("danet_resnet18", connection=connection)
    if saturate:  # every BN outputs 3, so every neuron fires at every step (H = 1.5)
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            torch.nn.init.zeros_(bn.weight)
            torch.nn.init.constant_(bn.bias, 3.0)
    with torch.no_grad():
        return model.stages[0](model.stem(frames()))


@pytest.mark.parametrize(
    ("connection", "value"),
    [
        ("plain", 1.0),  # spikes
        ("standard", 1.0),  # LIF after the addition: spikes
        ("sew_add", 3.0),  # stem spike 1 + block 1's spike 1 = 2, + block 2's spike = 3
        ("dense_additive", 9.0),  # stem BN 3, + block 1's BN 3 = 6, + block 2's BN 3 = 9
    ],
)
def test_what_travels_between_blocks_when_everything_fires(connection: str, value: float) -> None:
    out = stage_output(connection, saturate=True)
    assert torch.equal(out, torch.full_like(out, value))


@pytest.mark.parametrize("connection", ["membrane", "dense_additive"])
def test_real_path_carries_real_values(connection: str) -> None:
    out = stage_output(connection)
    assert (out < 0).any() and not torch.equal(out, out.round())


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_stem_fires_only_on_spiking_paths(connection: str) -> None:
    model = tiny("danet_resnet18", connection=connection)
    has_neuron = any(isinstance(m, LIF) for m in model.stem)
    assert has_neuron == (connection not in ("membrane", "dense_additive"))


def test_real_valued_inputs_are_marked_analog() -> None:
    da = tiny("danet_resnet50")
    assert da.stem[0].analog_input
    projections = [s.projection[0] for s in da.stages if s.projection is not None]
    assert len(projections) == 4 and all(conv.analog_input for conv in projections)
    branch_convs = [m for s in da.stages for b in s.blocks for m in b.modules() if isinstance(m, SeqConv2d)]
    assert branch_convs and not any(conv.analog_input for conv in branch_convs)
    standard = tiny("danet_resnet50", connection="standard")
    shortcuts = [
        b.shortcut[0]
        for s in standard.stages
        for b in s.blocks
        if isinstance(b.shortcut, torch.nn.Sequential)
    ]
    assert len(shortcuts) == 4 and not any(conv.analog_input for conv in shortcuts)  # they see spikes


def test_telemetry_covers_every_neuron_layer() -> None:
    model = tiny("danet_resnet18")
    with telemetry.record(model) as recorder, torch.no_grad():
        model(frames())
    sample = recorder.report()[0]
    # 8 blocks x 2 neurons + the head's neuron.
    assert len(sample.layers) == len(spiking_layers(model)) == 17
    assert sample.macs > 0 and sample.synaptic_ops > 0 and sample.spikes > 0
    assert 0.0 < sample.spike_rate < 1.0


def test_neuron_settings_reach_every_block() -> None:
    model = tiny("danet_vgg11", neuron={"kind": "plif", "tau": 3.0, "v_reset": None})
    layers = spiking_layers(model)
    assert layers and all(isinstance(n, PLIF) and n.v_reset is None for n in layers)
    assert len({id(n) for n in layers}) == len(layers)  # one fresh neuron per site


def test_gradients_reach_the_stem_through_the_spikes() -> None:
    model = tiny("danet_resnet18").train()
    model(frames()).logsumexp(dim=1).sum().backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_resnext_and_wide_widths() -> None:
    resnext = resnet_plan("bottleneck", (3, 4, 6, 3), base_width=64, groups=32, width_per_group=4)
    assert resnext[0].blocks[0][1].out_channels == 128 and resnext[0].blocks[0][1].groups == 32
    wide = resnet_plan("bottleneck", (3, 4, 6, 3), base_width=64, width_per_group=128)
    assert wide[3].blocks[0][1].out_channels == 1024 and wide[3].blocks[-1][-1].out_channels == 2048
    narrow = resnet_plan("bottleneck", (3, 4, 6, 3), base_width=8, groups=32, width_per_group=4)
    assert narrow[0].blocks[0][1].out_channels == 32  # at least one channel per group


def test_vgg_stages_follow_the_stem() -> None:
    stem_width, stages = vgg_plan(16, base_width=64, stem="imagenet")
    assert stem_width == 64
    assert [len(s.blocks) for s in stages] == [1, 2, 3, 3, 3]
    assert [s.pool_first for s in stages] == [False, True, True, True, True]
    _, small = vgg_plan(16, base_width=16, stem="small")
    assert [len(s.blocks) for s in small] == [1, 2, 3, 6]  # the last two groups share a resolution
    assert small[-1].blocks[-1][-1].out_channels == 128
    model = tiny("danet_vgg16")
    with torch.no_grad():
        assert model(frames(size=28)).shape == (3, 5)


def test_da_rejects_a_stage_whose_later_block_reshapes() -> None:
    bad = resnet_plan("basic", (2,), base_width=8)[0]
    strided = replace(bad, blocks=(bad.blocks[0], (replace(bad.blocks[1][0], stride=2), bad.blocks[1][1])))
    with pytest.raises(ValueError, match="only its first block"):
        Stage(strided, "dense_additive", LIF)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"connection": "dense"}, ValueError, "unknown connection"),
        ({"stem": "cifar"}, ValueError, "unknown stem"),
        ({"neuron": {"kind": "relu"}}, ValueError, "unknown neuron"),
        ({"depth": 18}, TypeError, "depth"),
    ],
)
def test_bad_config_is_refused(config: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        create_model("danet_resnet18", **config)


def test_forward_checks_the_input_layout() -> None:
    model = tiny("danet_resnet18")
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        model(torch.rand(3, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\[T, B, 2, H, W\]"):
        model(torch.rand(2, 3, 3, 16, 16))


def test_branch_zero_init_targets_the_closing_bn() -> None:
    branch = tiny("danet_resnet18").stages[0].blocks[0]
    assert isinstance(branch, Branch)
    branch.zero_init_()
    bns = [m for m in branch.layers if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns[-1].weight.abs().sum() == 0 and bns[0].weight.abs().sum() > 0
