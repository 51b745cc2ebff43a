"""Tests of models/spikeformer.py and models/spikeformer_blocks.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models import create_model, default_input, list_models, telemetry
from models.layers import SeqLinear
from models.neurons import PLIAF, PLIF, neuron_factory
from models.spikeformer import Spikeformer
from models.spikeformer_blocks import AttentionPoolHead, MultiHeadAttention, SEWBlock, drop_path

# Parameter counts of the authors' published code, counted by instantiating it: our builders must match.
AUTHORS_PARAMETERS = {
    "spikeformer_dvs_gesture": 9_279_900,
    "spikeformer_dvs_cifar10": 8_792_993,
    "spikeformer_imagenet": 39_320_836,
}
# (architecture, tiny input [T, B, C, H, W], classes): the published configs at 32 px to stay fast.
TINY_INPUTS = [
    ("spikeformer_dvs_gesture", (2, 2, 2, 32, 32), 11),
    ("spikeformer_dvs_cifar10", (2, 2, 2, 32, 32), 10),
    ("spikeformer_imagenet", (2, 1, 3, 32, 32), 1000),
    ("spikeformer_mnist", (3, 2, 1, 28, 28), 10),
    ("spikeformer_nmnist", (4, 2, 2, 34, 34), 10),
]


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_config_is_registered_with_its_default_input() -> None:
    names = {name for name, _, _ in TINY_INPUTS}
    assert names <= set(list_models())
    assert default_input("spikeformer_dvs_gesture") == {"time_steps": 16, "shape": (2, 128, 128)}
    assert default_input("spikeformer_imagenet") == {"time_steps": 4, "shape": (3, 224, 224)}
    for name in names:
        spec = default_input(name)
        with torch.device("meta"):
            model = create_model(name)
        assert spec["time_steps"] <= model.max_time_steps
        assert spec["shape"][0] == model.in_channels
        assert model.supports_streaming is False


@pytest.mark.parametrize("arch", sorted(AUTHORS_PARAMETERS))
def test_parameter_count_within_3_percent_of_authors(arch: str) -> None:
    expected = AUTHORS_PARAMETERS[arch]
    with torch.device("meta"):  # shapes only: no memory, no weight init
        ours = n_parameters(create_model(arch))
    assert abs(ours - expected) / expected <= 0.03, f"{arch}: {ours:,} vs authors' {expected:,}"


@pytest.mark.parametrize(("arch", "shape", "classes"), TINY_INPUTS)
def test_forward_shape_and_finite(arch: str, shape: tuple[int, ...], classes: int) -> None:
    model = create_model(arch).eval()
    with torch.no_grad():
        logits = model(torch.rand(shape))
    assert logits.shape == (shape[1], classes)
    assert torch.isfinite(logits).all()


def test_run_reset_run_is_deterministic() -> None:
    model = create_model("spikeformer_nmnist").eval()
    x = (torch.rand(4, 2, 2, 34, 34) < 0.3).float()
    with torch.no_grad():
        first = model(x)
        model.reset_state()
        second = model(x)
        third = model(x)  # no reset: state must not leak between forwards either
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, third, rtol=0, atol=0)


def test_gradient_reaches_plif_w_and_both_embeddings() -> None:
    model = create_model("spikeformer_mnist", drop_path_rate=0.0).train()
    steps = 3
    loss = model(torch.rand(steps, 2, 1, 28, 28)).logsumexp(dim=1).mean()
    loss.backward()
    plifs = {name: m for name, m in model.named_modules() if isinstance(m, PLIF)}
    tokenizer_plif = plifs["tokenizer.blocks.0.main.0.2"]
    mlp_plif = plifs["blocks.1.mlp.neuron"]
    for neuron in (tokenizer_plif, mlp_plif):
        assert neuron.w.grad is not None and neuron.w.grad.abs() > 0
    assert model.spatial_embed.grad is not None and model.spatial_embed.grad.abs().sum() > 0
    temporal_grad = model.temporal_embed.grad
    assert temporal_grad is not None
    assert (temporal_grad[:steps].abs().sum(dim=1) > 0).all()
    # Rows past the request's T were sliced off: they take no part and get no gradient.
    assert torch.count_nonzero(temporal_grad[steps:]) == 0


def test_temporal_fc_is_zero_initialised_except_in_block_0() -> None:
    model = create_model("spikeformer_dvs_cifar10")
    first = model.blocks[0].temporal_fc
    assert first.weight.abs().sum() > 0
    for block in model.blocks[1:]:
        assert torch.count_nonzero(block.temporal_fc.weight) == 0
        assert torch.count_nonzero(block.temporal_fc.bias) == 0


def test_shorter_t_than_max_uses_only_its_slice_of_the_temporal_embedding() -> None:
    model = create_model("spikeformer_nmnist").eval()
    assert model.max_time_steps == 8
    with torch.no_grad():
        model.temporal_embed[3:] = float("nan")  # poison the rows a T=3 request must not read
        logits = model(torch.rand(3, 2, 2, 34, 34))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_more_time_steps_than_max_raises() -> None:
    model = create_model("spikeformer_mnist", max_time_steps=2).eval()
    with pytest.raises(ValueError, match="T=3"):
        model(torch.rand(3, 1, 1, 28, 28))


def test_wrong_channels_and_rank_raise_clearly() -> None:
    model = create_model("spikeformer_mnist").eval()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.rand(2, 1, 2, 28, 28))
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\]"):
        model(torch.rand(2, 1, 28, 28))


def test_odd_input_size_keeps_shortcut_and_main_branch_aligned() -> None:
    # 34 -> 17 -> 9: a floor-mode AvgPool would give 8 on the shortcut and the addition would fail.
    block = SEWBlock(4, 8, kernel_size=3, stride=2, spiking_neuron=neuron_factory("plif"))
    assert block(torch.rand(2, 1, 4, 17, 17)).shape == (2, 1, 8, 9, 9)
    assert create_model("spikeformer_nmnist").grid == (9, 9)


def test_other_image_size_resizes_the_spatial_embedding() -> None:
    model = create_model("spikeformer_mnist").eval()
    assert model.grid == (7, 7)
    assert model.spatial_embedding(8, 8).shape == (64, 64)
    # Nearest-neighbour resize only copies rows of the configured table.
    rows = {tuple(r.tolist()) for r in model.spatial_embed.detach()}
    assert all(tuple(r.tolist()) in rows for r in model.spatial_embedding(4, 4).detach())
    with torch.no_grad():
        assert model(torch.rand(2, 1, 1, 32, 32)).shape == (1, 10)


def test_token_projection_only_when_tokenizer_channels_differ_from_dim() -> None:
    same = create_model("spikeformer_mnist")
    assert isinstance(same.token_proj, torch.nn.Identity)
    narrow = create_model("spikeformer_mnist", channels=[16, 32])
    assert isinstance(narrow.token_proj, SeqLinear)
    assert (narrow.token_proj.in_features, narrow.token_proj.out_features) == (32, 64)
    with torch.no_grad():
        assert narrow.eval()(torch.rand(2, 1, 1, 28, 28)).shape == (1, 10)


def test_imagenet_defaults_to_pliaf_even_when_the_registry_passes_neuron_none() -> None:
    small = {"channels": [8, 8], "strides": [2, 2], "dim": 16, "heads": 2, "depth": 1, "image_size": 32}
    for model in (
        create_model("spikeformer_imagenet", **small),
        create_model("spikeformer_imagenet", **small, neuron=None),
    ):
        neurons = [m for m in model.modules() if isinstance(m, PLIF)]
        assert neurons and all(isinstance(m, PLIAF) for m in neurons)
        assert model.blocks[0].mlp.fc2.analog_input is True  # fed by analog PLIAF output
    lif = create_model("spikeformer_mnist", neuron={"kind": "lif", "tau": 2.0})
    assert not any(isinstance(m, PLIF) for m in lif.modules())
    assert create_model("spikeformer_mnist").blocks[0].mlp.fc2.analog_input is False


def test_json_config_round_trip_through_create_model() -> None:
    # What the registry does: create_model(arch, **manifest.config, neuron=manifest.neuron).
    config = json.loads(
        json.dumps({"num_classes": 5, "in_channels": 2, "strides": [2, 2], "max_time_steps": 6})
    )
    model = create_model("spikeformer_nmnist", **config, neuron={"kind": "plif", "tau": 2.0})
    assert isinstance(model, Spikeformer)
    with torch.no_grad():
        assert model.eval()(torch.rand(6, 1, 2, 34, 34)).shape == (1, 5)


@pytest.mark.parametrize("axis", ["time", "space"])
def test_attention_matches_explicit_softmax(axis: str) -> None:
    attention = MultiHeadAttention(8, 2, axis=axis)
    x = torch.randn(3, 2, 5, 8)  # [T, B, N, d]
    qkv = attention.qkv(x).unflatten(-1, (3, 2, 4))
    expected = torch.empty(3, 2, 5, 2, 4)
    for t in range(3):
        for b in range(2):
            for n in range(5):
                for h in range(2):
                    if axis == "time":
                        q, keys, values = qkv[t, b, n, 0, h], qkv[:, b, n, 1, h], qkv[:, b, n, 2, h]
                    else:
                        q, keys, values = qkv[t, b, n, 0, h], qkv[t, b, :, 1, h], qkv[t, b, :, 2, h]
                    weights = torch.softmax(keys @ q / math.sqrt(4), dim=0)
                    expected[t, b, n, h] = weights @ values
    torch.testing.assert_close(attention(x), attention.proj(expected.flatten(-2)))


def test_divided_attention_mixes_only_along_its_axis() -> None:
    x = torch.randn(4, 1, 6, 8)
    bumped = x.clone()
    bumped[:, :, 0] += 1.0  # change location 0 at every step
    temporal = MultiHeadAttention(8, 2, axis="time")
    diff = (temporal(bumped) - temporal(x)).abs().sum(dim=(0, 1, 3))
    assert diff[0] > 0 and torch.count_nonzero(diff[1:]) == 0
    bumped = x.clone()
    bumped[0] += 1.0  # change step 0 at every location
    spatial = MultiHeadAttention(8, 2, axis="space")
    diff = (spatial(bumped) - spatial(x)).abs().sum(dim=(1, 2, 3))
    assert diff[0] > 0 and torch.count_nonzero(diff[1:]) == 0


def test_attention_pool_head_weights_all_tokens_by_softmax() -> None:
    head = AttentionPoolHead(8, 3)
    x = torch.randn(2, 2, 5, 8)
    z = head.norm(x)
    for b in range(2):
        tokens = z[:, b].reshape(-1, 8)  # all T*N tokens of sample b
        weights = torch.softmax(head.score(tokens[None])[0, :, 0], dim=0)
        expected = head.classifier((weights @ tokens)[None])[0]
        torch.testing.assert_close(head(x)[b], expected)


def test_drop_path_is_per_sample_and_training_only() -> None:
    x = torch.ones(3, 64, 4)
    assert drop_path(x, 0.5, training=False) is x
    out = drop_path(x, 0.5, training=True)
    per_sample = out.transpose(0, 1).reshape(64, -1)
    # A sample is either dropped everywhere (all steps and tokens) or kept and rescaled by 1/keep.
    assert all(set(row.unique().tolist()) <= {0.0, 2.0} and row.unique().numel() == 1 for row in per_sample)
    assert 0 < int((per_sample[:, 0] == 0).sum()) < 64
    rates = [block.drop_path.drop_prob for block in create_model("spikeformer_dvs_cifar10").blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


def test_telemetry_counts_spikes_and_macs_in_one_forward() -> None:
    model = create_model("spikeformer_mnist").eval()
    with torch.no_grad(), telemetry.record(model) as recorder:
        model(torch.rand(2, 3, 1, 28, 28))
    samples = recorder.report()
    assert len(samples) == 3
    names = {layer.name for layer in samples[0].layers}
    assert "tokenizer.blocks.0.main.0.2" in names and "blocks.1.mlp.neuron" in names
    for sample in samples:
        assert sample.macs > 0 and sample.energy_uj > 0
        assert all(0.0 <= layer.spike_rate <= 1.0 for layer in sample.layers)


@pytest.mark.parametrize(
    ("axis", "attention_macs"), [("time", 2 * 5 * 3 * 8 * 3), ("space", 2 * 5 * 5 * 8 * 3)]
)
def test_attention_reports_projection_and_product_macs(axis: str, attention_macs: int) -> None:
    # A neuron after the attention gives the report its batch size; it adds no MACs.
    net = torch.nn.Sequential(MultiHeadAttention(8, 2, axis=axis), PLIF())
    with torch.no_grad(), telemetry.record(net) as recorder:
        net(torch.randn(3, 2, 5, 8))  # T=3, B=2, N=5, d=8
    qkv_macs = 3 * 5 * 8 * 24  # T * N * d * 3d, fed by LayerNorm in a block: MACs, not SOPs
    proj_macs = 3 * 5 * 8 * 8
    samples = recorder.report()
    assert len(samples) == 2
    assert all(s.macs == qkv_macs + proj_macs + attention_macs and s.synaptic_ops == 0 for s in samples)
