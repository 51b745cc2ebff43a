"""registry/importers/spikeformer_authors.py: a state dict laid out as the authors' published code
lays it out (names, shapes and registration order, spatial attention before temporal; written
here from those facts, not from their code) with every tensor filled with a value that identifies
it, imported for each of the three published configs; every tensor must land in its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from registry import Registry
from registry.importers.errors import WeightMappingError
from registry.importers.spikeformer_authors import convert
from service.cli import main

# the authors' builders: name, kernel, strides, channels, dim, heads, mlp ratio, frames, classes,
# input channels, image size
PUBLISHED = [
    ("PLIF_spikeformer_7_5x3x1", 5, (2, 2, 2), (64, 128, 256), 256, 4, 2, 16, 11, 2, 128),
    ("PLIF_spikeformer_7_3x2x3", 3, (2, 1, 2, 1, 2, 1), (64, 64, 128, 128, 256, 256), 256,
     4, 2, 4, 10, 2, 128),
    ("PLIAF_spikeformer_7_3x2x4", 3, (2, 1, 2, 1, 2, 1, 2, 1), (64, 64, 128, 128, 256, 256, 512, 512), 512,
     8, 3, 4, 1000, 3, 224),
]  # fmt: skip
DEPTH = 7


def authors_layout(case: tuple) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(their name, shape, where it belongs in ours as a module path + attribute), in their order."""
    _, kernel, strides, channels, dim, _, ratio, frames, classes, in_ch, img = case
    widths = [in_ch, *channels]
    for i, stride in enumerate(strides):
        cin, cout = widths[i], widths[i + 1]
        units = [("residual_function.0", cin, cout, kernel, f"tokenizer.blocks.{i}.main.0"),
                 ("residual_function.1", cout, cout, kernel, f"tokenizer.blocks.{i}.main.1")]  # fmt: skip
        if stride != 1 or cin != cout:
            units.append(("shortcut.1", cin, cout, 1, f"tokenizer.blocks.{i}.shortcut.1"))
        for where, a, b, k, ours in units:
            base = f"model.patch_embed.conv_layers.{i}.{where}"
            yield f"{base}.0.0.weight", (b, a, k, k), f"{ours}.0.weight"
            for p in ("weight", "bias", "running_mean", "running_var"):
                yield f"{base}.0.1.{p}", (b,), f"{ours}.1.{p}"
            yield f"{base}.0.1.num_batches_tracked", (), f"{ours}.1.num_batches_tracked"
            yield f"{base}.1.w", (), f"{ours}.2.w"
    grid = img // 2 ** sum(s == 2 for s in strides)
    yield "model.pos_embed", (1, grid * grid, dim), "spatial_embed"
    yield "model.time_embed", (1, frames, dim), "temporal_embed"
    hidden = dim * ratio
    for k in range(DEPTH):
        b = f"model.blocks.{k}"
        # their Block registers spatial attention first, then temporal, then the MLP
        yield f"{b}.norm1.weight", (dim,), f"blocks.{k}.spatial_norm.weight"
        yield f"{b}.norm1.bias", (dim,), f"blocks.{k}.spatial_norm.bias"
        yield f"{b}.attn.qkv.weight", (3 * dim, dim), f"blocks.{k}.spatial_attn.qkv.weight"
        yield f"{b}.attn.proj.weight", (dim, dim), f"blocks.{k}.spatial_attn.proj.weight"
        yield f"{b}.attn.proj.bias", (dim,), f"blocks.{k}.spatial_attn.proj.bias"
        yield f"{b}.temporal_norm1.weight", (dim,), f"blocks.{k}.temporal_norm.weight"
        yield f"{b}.temporal_norm1.bias", (dim,), f"blocks.{k}.temporal_norm.bias"
        yield f"{b}.temporal_attn.qkv.weight", (3 * dim, dim), f"blocks.{k}.temporal_attn.qkv.weight"
        yield f"{b}.temporal_attn.proj.weight", (dim, dim), f"blocks.{k}.temporal_attn.proj.weight"
        yield f"{b}.temporal_attn.proj.bias", (dim,), f"blocks.{k}.temporal_attn.proj.bias"
        yield f"{b}.temporal_fc.weight", (dim, dim), f"blocks.{k}.temporal_fc.weight"
        yield f"{b}.temporal_fc.bias", (dim,), f"blocks.{k}.temporal_fc.bias"
        yield f"{b}.norm2.weight", (dim,), f"blocks.{k}.mlp_norm.weight"
        yield f"{b}.norm2.bias", (dim,), f"blocks.{k}.mlp_norm.bias"
        yield f"{b}.mlp.mlp.0.0.weight", (hidden, dim), f"blocks.{k}.mlp.fc1.weight"
        yield f"{b}.mlp.mlp.0.0.bias", (hidden,), f"blocks.{k}.mlp.fc1.bias"
        yield f"{b}.mlp.mlp.1.w", (), f"blocks.{k}.mlp.neuron.w"
        yield f"{b}.mlp.mlp.2.0.weight", (dim, hidden), f"blocks.{k}.mlp.fc2.weight"
        yield f"{b}.mlp.mlp.2.0.bias", (dim,), f"blocks.{k}.mlp.fc2.bias"
    yield "model.norm.weight", (dim,), "head.norm.weight"
    yield "model.norm.bias", (dim,), "head.norm.bias"
    yield "model.attention_pool.weight", (1, dim), "head.score.weight"
    yield "model.attention_pool.bias", (1,), "head.score.bias"
    yield "model.head.weight", (classes, dim), "head.classifier.weight"
    yield "model.head.bias", (classes,), "head.classifier.bias"


def identified(case: tuple) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Their state dict, tensor n filled with n + (0, 1e-6, 2e-6, ...) (float64, so every value is
    exact), and the place each belongs in ours."""
    tensors, places = {}, {}
    for number, (name, shape, ours) in enumerate(authors_layout(case), start=1):
        if name.endswith("num_batches_tracked"):
            tensors[name] = torch.tensor(number, dtype=torch.int64)
        else:
            ramp = torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float64).reshape(shape) * 1e-6
            tensors[name] = number + ramp
        places[name] = ours
    return tensors, places


@pytest.mark.parametrize("case", PUBLISHED, ids=[case[0] for case in PUBLISHED])
def test_every_tensor_lands_in_its_place(case: tuple) -> None:
    tensors, places = identified(case)
    architecture, config, neuron, renamed = convert(tensors, case[0])
    assert config["max_time_steps"] == case[7] and config["num_classes"] == case[8]
    assert neuron["kind"] == ("pliaf" if case[0].startswith("PLIAF") else "plif")
    from models import create_model

    with torch.device("meta"):
        model = create_model(architecture, **config, neuron=neuron)
    assert set(renamed) == set(model.state_dict())
    assert len(renamed) == len(tensors)
    for theirs, ours in places.items():
        expected = tensors[theirs]
        if theirs in ("model.pos_embed", "model.time_embed"):
            expected = expected[0]  # their [1, N, d] and [1, T, d] tables are our [N, d] and [T, d]
        assert torch.equal(renamed[ours], expected), f"{theirs} did not land in {ours}"


def test_a_checkpoint_imports_loads_and_runs(tmp_path: Path) -> None:
    case = PUBLISHED[1]  # DVS-CIFAR10, the smallest
    tensors, places = identified(case)
    state = {k: (v.float() * 1e-3 if v.is_floating_point() else v) for k, v in tensors.items()}
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 191}, checkpoint)
    registry_root = tmp_path / "registry"
    code = main(["registry", "import-spikeformer", str(checkpoint), "--arch", case[0], "--name", "sf",
                 "--registry", str(registry_root)])  # fmt: skip
    assert code == 0
    manifest, model = Registry(registry_root).load("sf")
    assert manifest.architecture == "spikeformer_dvs_cifar10"
    assert manifest.tags["source_architecture"] == case[0]
    assert manifest.input.kind == "events" and manifest.time_steps.max == 4
    got = model.state_dict()
    for theirs, ours in places.items():
        assert torch.equal(got[ours].reshape(-1), state[theirs].reshape(-1)), ours
    with torch.no_grad():
        assert model(torch.rand(4, 1, 2, 128, 128)).shape == (1, 10)


def test_a_tensor_of_another_layout_is_named_in_the_error() -> None:
    tensors, _ = identified(PUBLISHED[0])
    tensors["model.blocks.3.temporal_attn.q_bias"] = torch.zeros(256)
    with pytest.raises(WeightMappingError, match=r"temporal_attn\.q_bias"):
        convert(tensors, PUBLISHED[0][0])
    tensors, _ = identified(PUBLISHED[0])
    del tensors["model.blocks.6.norm2.bias"]
    with pytest.raises(WeightMappingError, match=r"blocks\.6\.mlp_norm\.bias"):
        convert(tensors, PUBLISHED[0][0])
    with pytest.raises(ValueError, match="published configs"):
        convert(tensors, "spikeformer_tiny")
