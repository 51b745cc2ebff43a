"""The Spikeformer authors' checkpoints (their published PyTorch code) -> our ``spikeformer_*``.

Their network is the same as ours layer for layer (the three published configs, parameter counts
equal), but names and a few shapes differ, and their Block registers spatial attention (``norm1``,
``attn``) before temporal (``temporal_norm1``, ``temporal_attn``, ``temporal_fc``), the reverse of
the order in which it runs. Tensors are therefore mapped by name, never by position:

    theirs (model.patch_embed.conv_layers.{i}. = PE, model.blocks.{k}. = B)  ours
    PE residual_function.{j}.0.0 / .0.1 / .1.w     tokenizer.blocks.{i}.main.{j}.0 / .1 / .2.w
    PE shortcut.1.0.0 / .1.0.1 / .1.1.w            tokenizer.blocks.{i}.shortcut.1.0 / .1.1 / .1.2.w
    model.pos_embed [1, N, d]                       spatial_embed [N, d]
    model.time_embed [1, T, d]                      temporal_embed [T, d] (T = max_time_steps)
    B temporal_norm1 / temporal_attn / temporal_fc  blocks.{k}.temporal_norm / temporal_attn / temporal_fc
    B norm1 / attn                                  blocks.{k}.spatial_norm / spatial_attn
    B norm2 / mlp.mlp.0.0 / mlp.mlp.1.w / mlp.mlp.2.0
                                                    blocks.{k}.mlp_norm / mlp.fc1 / mlp.neuron.w / mlp.fc2
    model.norm / attention_pool / head              head.norm / head.score / head.classifier

Their input is [B, T, C, H, W] and ours [T, B, C, H, W]; the engine builds ours, so a served
request needs nothing more. The qkv layout ([3, heads, head_dim] along the output) is the same.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from registry.importers.common import (
    Destination,
    expected_shapes,
    load_foreign_state_dict,
    register_imported,
    rename_exactly,
    sha256_of,
)
from registry.importers.errors import WeightMappingError
from registry.manifest import Manifest
from registry.registry import Registry

# the authors' builder names -> ours, with what their config fixes
CONFIGS: dict[str, dict[str, Any]] = {
    "PLIF_spikeformer_7_5x3x1": {"architecture": "spikeformer_dvs_gesture", "strides": (2, 2, 2),
                                 "neuron": {"kind": "plif", "tau": 2.0}},
    "PLIF_spikeformer_7_3x2x3": {"architecture": "spikeformer_dvs_cifar10", "strides": (2, 1, 2, 1, 2, 1),
                                 "neuron": {"kind": "plif", "tau": 2.0}},
    "PLIAF_spikeformer_7_3x2x4": {"architecture": "spikeformer_imagenet",
                                  "strides": (2, 1, 2, 1, 2, 1, 2, 1),
                                  "neuron": {"kind": "pliaf", "tau": 2.0}},
}  # fmt: skip
BY_ARCHITECTURE = {entry["architecture"]: name for name, entry in CONFIGS.items()}

_BLOCK_PARTS = {
    "temporal_norm1": "temporal_norm",
    "temporal_attn": "temporal_attn",
    "temporal_fc": "temporal_fc",
    "norm1": "spatial_norm",
    "attn": "spatial_attn",
    "norm2": "mlp_norm",
    "mlp.mlp.0.0": "mlp.fc1",
    "mlp.mlp.1": "mlp.neuron",
    "mlp.mlp.2.0": "mlp.fc2",
}
_TOP_LEVEL = {
    "pos_embed": "spatial_embed",
    "time_embed": "temporal_embed",
    "norm.weight": "head.norm.weight",
    "norm.bias": "head.norm.bias",
    "attention_pool.weight": "head.score.weight",
    "attention_pool.bias": "head.score.bias",
    "head.weight": "head.classifier.weight",
    "head.bias": "head.classifier.bias",
}
_TOKENIZER = re.compile(r"patch_embed\.conv_layers\.(?P<i>\d+)\.(?P<rest>.+)")
_CONV_UNIT = {
    "0.0": "0",
    "0.1": "1",
    "1": "2",
}  # conv, BN, neuron inside their conv(): Seq(Seq(conv, bn), neuron)
_CONV_UNIT_NAME = re.compile(
    r"(?P<where>residual_function\.(?P<j>[01])|shortcut\.1)\.(?P<u>0\.0|0\.1|1)\.(?P<p>.+)"
)
_BLOCK = re.compile(r"blocks\.(?P<k>\d+)\.(?P<rest>.+)")


def rename(name: str) -> str | None:
    """Our name for one of the authors' tensors (without their ``model.`` prefix), None if unknown."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _TOKENIZER.fullmatch(name)
    if match:
        unit = _CONV_UNIT_NAME.fullmatch(match["rest"])
        if unit is None:
            return None
        where = f"main.{unit['j']}" if unit["j"] is not None else "shortcut.1"
        return f"tokenizer.blocks.{match['i']}.{where}.{_CONV_UNIT[unit['u']]}.{unit['p']}"
    match = _BLOCK.fullmatch(name)
    if match:
        for theirs, ours in _BLOCK_PARTS.items():
            if match["rest"].startswith(theirs + "."):
                return f"blocks.{match['k']}.{ours}.{match['rest'][len(theirs) + 1 :]}"
    return None


def _squeeze_leading(tensor: Any) -> Any:
    return tensor[0] if tensor.dim() == 3 and tensor.shape[0] == 1 else tensor


def convert(
    state_dict: dict[str, Any], config_name: str
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(architecture, config, neuron, renamed state dict) for one of the authors' state dicts.

    ``config_name``: their builder name (``PLIF_spikeformer_7_5x3x1``, ...) or our architecture.
    Classes, input channels, frames (max_time_steps) and image size are read from the tensors.
    """
    name = BY_ARCHITECTURE.get(config_name, config_name)
    if name not in CONFIGS:
        known = ", ".join(f"{k} ({v['architecture']})" for k, v in CONFIGS.items())
        raise ValueError(f"unknown Spikeformer config {config_name!r}; published configs: {known}")
    entry = CONFIGS[name]
    tensors = {k.removeprefix("model."): v for k, v in state_dict.items()}
    first_conv = "patch_embed.conv_layers.0.residual_function.0.0.0.weight"
    for needed in ("pos_embed", "time_embed", "head.weight", first_conv):
        if needed not in tensors:
            raise WeightMappingError(f"not a checkpoint of the authors' {name}: it has no 'model.{needed}'")
    tokens = int(tensors["pos_embed"].shape[-2])
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise WeightMappingError(f"pos_embed holds {tokens} tokens, not a square grid")
    config = {
        "num_classes": int(tensors["head.weight"].shape[0]),
        "in_channels": int(tensors[first_conv].shape[1]),
        "max_time_steps": int(tensors["time_embed"].shape[-2]),
        "image_size": grid * math.prod(entry["strides"]),
    }
    architecture = entry["architecture"]
    shapes = expected_shapes(architecture, config, entry["neuron"])
    renamed = rename_exactly(
        tensors,
        rename,
        shapes,
        origin=f"Spikeformer authors' {name}",
        target=architecture,
        transforms={"spatial_embed": _squeeze_leading, "temporal_embed": _squeeze_leading},
    )
    return architecture, config, dict(entry["neuron"]), renamed


def import_spikeformer_authors(
    registry: Registry, path: Path, *, config_name: str, destination: Destination
) -> Manifest:
    """Register the authors' checkpoint at ``path`` as a new version of ``destination.name``."""
    architecture, config, neuron, renamed = convert(load_foreign_state_dict(path), config_name)
    source = BY_ARCHITECTURE.get(config_name, config_name)
    provenance = {
        "imported_from": "spikeformer-authors",
        "source_architecture": source,
        "source_file": path.name,
        "source_sha256": sha256_of(path),
    }
    return register_imported(
        registry,
        destination,
        architecture=architecture,
        config=config,
        neuron=neuron,
        state_dict=renamed,
        provenance=provenance,
        description=f"Spikeformer authors' {source} imported from {path.name}",
    )
