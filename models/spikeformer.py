"""Spikeformer (Li, Lei, Yang, arXiv 2211.10686): convolutional tokenizer + divided space-time attention.

x: [T, B, C, H, W] -> Convolutional Tokenizer (SEW residual conv blocks, PLIF) -> tokens [T, B, N, C]
-> (1x1 projection to d when C != d) -> + spatial embedding [N, d] + temporal embedding [T, d]
-> STA blocks (temporal MHSA, spatial MHSA, spiking MLP) -> LN -> attention pooling -> logits [B, classes].

Choices the paper leaves open, made here and stated once:
- Tokens to d dimensions: every published config ends its tokenizer at C = d, so tokens enter the
  transformer as they are (no extra parameters, as in the authors' code). A config with C != d gets a
  per-token Linear C -> d with bias (a 1x1 conv), fed by the tokenizer's spikes.
- Temporal embedding: a learnable [max_time_steps, d] table, sliced to the request's T, so one
  checkpoint runs at any T <= max_time_steps (T > max raises). Initialised to zero, as the authors do.
- Spatial embedding: a learnable [N, d] table for the configured image size (truncated normal, std
  0.02). An input of another size gets the table resized to its token grid (nearest neighbour, as the
  authors' code does at inference); serving resizes inputs to the manifest size, so this is a fallback.
- Q, K, V and the attention scores are real-valued; spikes live in the tokenizer and the MLP.
- Attention products (Q K^T, A V) are reported to telemetry as MACs, so the energy estimate includes them.
- Stochastic depth drops the whole residual branch; the authors' code applies it before temporal_fc.
  The two agree at inference, which is all a served checkpoint sees.

Parameter counts against the authors' code (instantiated there: 9,279,900 / 8,792,993 / 39,320,836):
this build gives the same numbers exactly, because its layer shapes are the same (the test asserts 3%).
``supports_streaming`` is False: temporal attention needs all T steps at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models._registry import register_model
from models.base import SpikingModel
from models.layers import SeqConv2d, SeqLinear
from models.neurons import neuron_factory
from models.spikeformer_blocks import AttentionPoolHead, ConvTokenizer, STABlock

DEFAULT_NEURON: dict[str, Any] = {"kind": "plif", "tau": 2.0}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class Spikeformer(SpikingModel):
    """The whole network. forward(x: [T, B, C, H, W] float) -> logits [B, num_classes] float.

    T may be anything from 1 to ``max_time_steps``; H x W any size (``image_size`` is the size the
    spatial embedding was built for).

    Keywords (every registered builder accepts them all and overrides its defaults with them):
    num_classes, in_channels; image_size (int or (H, W)); channels and strides (one per tokenizer
    block, strides 1 or 2); kernel_size (odd); dim, depth, heads, mlp_ratio; max_time_steps (rows of
    the temporal embedding); drop_path_rate (stochastic depth of the last block, training only);
    neuron (settings for ``neuron_factory``, None for {"kind": "plif", "tau": 2.0}).
    """

    supports_streaming = False
    streaming_blocker = (
        "its temporal attention mixes all T time steps in every block, so the output after step t "
        "depends on later steps: it cannot stop early in one pass (run it with all T steps)"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int | Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: int = 3,
        dim: int = 256,
        depth: int = 7,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        max_time_steps: int = 4,
        drop_path_rate: float = 0.1,
        neuron: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if max_time_steps < 1:
            raise ValueError(f"max_time_steps must be >= 1, got {max_time_steps}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        spiking_neuron = neuron_factory(**(neuron if neuron is not None else DEFAULT_NEURON))
        # LIAF-style neurons pass real values on: layers they feed then count MACs, not SOPs.
        analog_neurons = bool(getattr(spiking_neuron(), "analog_output", False))
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.max_time_steps = max_time_steps
        self.tokenizer = ConvTokenizer(
            in_channels,
            channels,
            strides,
            kernel_size=kernel_size,
            spiking_neuron=spiking_neuron,
            analog_neurons=analog_neurons,
        )
        self.grid = self.tokenizer.grid(*_pair(image_size))
        token_channels = self.tokenizer.out_channels
        self.token_proj: nn.Module = (
            nn.Identity()
            if token_channels == dim
            else SeqLinear(token_channels, dim, analog_input=analog_neurons)
        )
        self.spatial_embed = nn.Parameter(torch.zeros(self.grid[0] * self.grid[1], dim))
        self.temporal_embed = nn.Parameter(torch.zeros(max_time_steps, dim))
        # Stochastic depth grows linearly with depth, from 0 to drop_path_rate (timm's rule); plain
        # floats rather than torch.linspace so the model also builds on the meta device.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            STABlock(
                dim,
                heads,
                mlp_ratio,
                spiking_neuron=spiking_neuron,
                analog_neurons=analog_neurons,
                drop_path_rate=rates[i],
                zero_temporal_fc=i > 0,
            )
            for i in range(depth)
        )
        self.head = AttentionPoolHead(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.spatial_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, SeqConv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            if isinstance(block, STABlock):  # always true; narrows the type for mypy
                block.reset_parameters()

    def spatial_embedding(self, height: int, width: int) -> torch.Tensor:
        """The spatial embedding for an h x w token grid: [h*w, d]."""
        if (height, width) == self.grid:
            return self.spatial_embed
        table = self.spatial_embed.t().reshape(1, -1, *self.grid)  # [1, d, h0, w0]
        resized = F.interpolate(table, size=(height, width), mode="nearest")
        return resized.flatten(2)[0].t()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, B, C, H, W] -> tokens after the last block, [T, B, N, d]."""
        if x.dim() != 5:
            raise ValueError(f"Spikeformer expects [T, B, C, H, W], got shape {tuple(x.shape)}")
        steps = x.shape[0]
        if not 1 <= steps <= self.max_time_steps:
            raise ValueError(
                f"T={steps} is outside this model's range 1..{self.max_time_steps} (max_time_steps)"
            )
        if x.shape[2] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[2]}")
        tokens, (height, width) = self.tokenizer(x)
        tokens = self.token_proj(tokens)
        tokens = tokens + self.spatial_embedding(height, width) + self.temporal_embed[:steps, None, None, :]
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _build(overrides: dict[str, Any], **defaults: Any) -> Spikeformer:
    """A config's defaults, overridden by the caller's keywords.

    ``neuron=None`` (what the registry passes for a manifest without neuron settings) keeps the
    architecture's default neuron rather than falling back to PLIF.
    """
    if overrides.get("neuron") is None:
        overrides = {k: v for k, v in overrides.items() if k != "neuron"}
    return Spikeformer(**{**defaults, **overrides})


@register_model(default_input={"time_steps": 16, "shape": (2, 128, 128)})
def spikeformer_dvs_gesture(**config: Any) -> Spikeformer:
    """DVS128 Gesture (authors' PLIF_spikeformer_7_5x3x1): 3 CT blocks 5x5, 16x16 tokens, 9.28M params."""
    return _build(
        config, num_classes=11, in_channels=2, image_size=128, kernel_size=5, strides=(2, 2, 2),
        channels=(64, 128, 256), depth=7, dim=256, heads=4, mlp_ratio=2.0, max_time_steps=16,
    )  # fmt: skip


@register_model(default_input={"time_steps": 4, "shape": (2, 128, 128)})
def spikeformer_dvs_cifar10(**config: Any) -> Spikeformer:
    """CIFAR10-DVS (authors' PLIF_spikeformer_7_3x2x3): 6 CT blocks 3x3, 16x16 tokens, 8.79M params."""
    return _build(
        config, num_classes=10, in_channels=2, image_size=128, kernel_size=3, strides=(2, 1, 2, 1, 2, 1),
        channels=(64, 64, 128, 128, 256, 256), depth=7, dim=256, heads=4, mlp_ratio=2.0, max_time_steps=4,
    )  # fmt: skip


@register_model(default_input={"time_steps": 4, "shape": (3, 224, 224)})
def spikeformer_imagenet(**config: Any) -> Spikeformer:
    """ImageNet (authors' PLIAF_spikeformer_7_3x2x4): 8 CT blocks 3x3, 14x14 tokens, PLIAF, 39.3M params."""
    return _build(
        config, num_classes=1000, in_channels=3, image_size=224, kernel_size=3,
        strides=(2, 1, 2, 1, 2, 1, 2, 1), channels=(64, 64, 128, 128, 256, 256, 512, 512), depth=7, dim=512,
        heads=8, mlp_ratio=3.0, max_time_steps=4, neuron={"kind": "pliaf", "tau": 2.0},
    )  # fmt: skip


@register_model(default_input={"time_steps": 4, "shape": (1, 28, 28)})
def spikeformer_mnist(**config: Any) -> Spikeformer:
    """MNIST 28x28, direct-encoded: 2 CT blocks 3x3 to 7x7 tokens, depth 2, dim 64, 4 heads."""
    return _build(
        config, num_classes=10, in_channels=1, image_size=28, kernel_size=3, strides=(2, 2),
        channels=(32, 64), depth=2, dim=64, heads=4, mlp_ratio=2.0, max_time_steps=4,
    )  # fmt: skip


@register_model(default_input={"time_steps": 8, "shape": (2, 34, 34)})
def spikeformer_nmnist(**config: Any) -> Spikeformer:
    """N-MNIST 34x34x2 event frames: 2 CT blocks 3x3 to 9x9 tokens, depth 2, dim 64, 4 heads."""
    return _build(
        config, num_classes=10, in_channels=2, image_size=34, kernel_size=3, strides=(2, 2),
        channels=(32, 64), depth=2, dim=64, heads=4, mlp_ratio=2.0, max_time_steps=8,
    )  # fmt: skip
