"""Spikeformer building blocks: convolutional tokenizer, divided space-time attention, spiking MLP.

Every block works on time-first tensors. The tokenizer takes frames ``[T, B, C, H, W]``; the
transformer blocks take tokens ``[T, B, N, d]`` (N = h * w token grid) and keep that layout, so the
time-distributed layers of ``models.layers`` report telemetry per sample, and the neurons run
multi-step over T. Attention only regroups Q, K and V for ``scaled_dot_product_attention``:
over T for each location (temporal) or over N for each step (spatial).

Blocks take a ``spiking_neuron`` factory (``models.neurons.neuron_factory``), so one block serves
PLIF and PLIAF. ``analog_neurons`` says whether that neuron passes real values downstream (LIAF):
layers fed by such a neuron then count their MACs as MACs, not synaptic operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import telemetry
from models.layers import InputKind, SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqToANN
from models.neurons import NeuronFactory

LAYER_NORM_EPS = 1e-6


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole samples. x: [T, B, ...] (batch on axis 1).

    One draw per sample, shared by every time step and token, so a dropped sample skips the branch.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ConvBNNeuron(nn.Sequential):
    """Conv kxk (no bias) -> BN -> spiking neuron. x: [T, B, C_in, H, W] -> [T, B, C_out, H', W']."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        spiking_neuron: NeuronFactory,
        analog_input: InputKind,
    ) -> None:
        super().__init__(
            SeqConv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=False,
                analog_input=analog_input,
            ),
            SeqBatchNorm2d(out_channels),
            spiking_neuron(),
        )


class SEWBlock(nn.Module):
    """SEW-style residual conv block (ADD): main branch + shortcut, both ending in spikes.

    Main branch: [Conv kxk -> BN -> neuron] x2, the first conv strided. Shortcut, where stride or
    channels change: AvgPool(stride) -> 1x1 Conv -> BN -> neuron; otherwise the identity.
    x: [T, B, C_in, H, W] -> [T, B, C_out, ceil(H / stride), ceil(W / stride)].

    The pool uses ``ceil_mode`` so that it yields the strided conv's size on odd inputs too (34 px
    N-MNIST frames: 17 -> 9); on even sizes it is the plain AvgPool of the published model.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        spiking_neuron: NeuronFactory,
        analog_input: InputKind = False,
        analog_neurons: bool = False,
    ) -> None:
        super().__init__()
        self.main = nn.Sequential(
            ConvBNNeuron(
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                spiking_neuron=spiking_neuron,
                analog_input=analog_input,
            ),
            ConvBNNeuron(
                out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=1,
                spiking_neuron=spiking_neuron,
                analog_input=analog_neurons,
            ),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Average-pooled spikes are fractions, so the 1x1 conv after a real pool sees real values.
            pooled_is_analog: InputKind = True if analog_neurons or stride != 1 else analog_input
            self.shortcut = nn.Sequential(
                SeqToANN(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True)),
                ConvBNNeuron(
                    in_channels,
                    out_channels,
                    kernel_size=1,
                    stride=1,
                    spiking_neuron=spiking_neuron,
                    analog_input=pooled_is_analog,
                ),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class ConvTokenizer(nn.Module):
    """Convolutional Tokenizer: a chain of SEW blocks; every output pixel becomes one token.

    x: [T, B, C_in, H, W] -> tokens [T, B, N, C_last] with N = h * w, h = ceil(H / prod(strides)).
    Downsampling happens only in the stride-2 convs (and the matching shortcut pools).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        *,
        kernel_size: int,
        spiking_neuron: NeuronFactory,
        analog_neurons: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"need one stride per block: channels {list(channels)}, strides {list(strides)}")
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"tokenizer strides must be 1 or 2, got {list(strides)}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.strides = tuple(int(s) for s in strides)
        self.out_channels = int(channels[-1])
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(
            *(
                SEWBlock(
                    widths[i],
                    widths[i + 1],
                    kernel_size=kernel_size,
                    stride=self.strides[i],
                    spiking_neuron=spiking_neuron,
                    # the first block reads the encoded input itself: an image, or event counts
                    analog_input="auto" if i == 0 else False,
                    analog_neurons=analog_neurons,
                )
                for i in range(len(self.strides))
            )
        )

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an input of height x width pixels."""
        for stride in self.strides:
            height, width = -(-height // stride), -(-width // stride)
        return height, width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: [T, B, C, H, W] -> (tokens [T, B, h*w, C_last], (h, w))."""
        y = self.blocks(x)
        height, width = y.shape[-2:]
        return y.flatten(3).transpose(2, 3), (height, width)


class MultiHeadAttention(nn.Module):
    """Real-valued multi-head self-attention along one axis of tokens x: [T, B, N, d] -> same.

    ``axis="time"``: each location attends over its T steps; ``axis="space"``: each step attends over
    its N locations. qkv Linear without bias, output projection with bias (the published model);
    softmax(Q K^T / sqrt(d_head)) V through ``F.scaled_dot_product_attention`` on 4-D inputs, the
    layout its fused GPU kernels take.
    """

    def __init__(self, dim: int, heads: int, *, axis: str) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if axis not in ("time", "space"):
            raise ValueError(f"axis must be 'time' or 'space', got {axis!r}")
        self.heads = heads
        self.axis = axis
        self.qkv = SeqLinear(dim, 3 * dim, bias=False, analog_input=True)  # fed by LayerNorm
        self.proj = SeqLinear(dim, dim, analog_input=True)  # fed by the real attention output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, head_dim))  # [T, B, N, 3, h, dh]
        if self.axis == "time":
            q, k, v = qkv.permute(3, 1, 2, 4, 0, 5).reshape(3, batch * tokens, self.heads, steps, head_dim)
        else:
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, steps * batch, self.heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        if self.axis == "time":
            out = out.view(batch, tokens, self.heads, steps, head_dim).permute(3, 0, 1, 2, 4)
        else:
            out = out.view(steps, batch, self.heads, tokens, head_dim).permute(0, 1, 3, 2, 4)
        recorder = telemetry.current_recorder()
        if recorder is not None:
            # Q K^T and A V: 2 * (sequence length) MACs per query channel, all on real values.
            length = steps if self.axis == "time" else tokens
            recorder.record_synapse(self, 2 * tokens * length * dim, steps, None)
        return self.proj(out.reshape(steps, batch, tokens, dim))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, axis={self.axis}"


class SpikingMlp(nn.Module):
    """Linear d -> r*d -> spiking neuron (multi-step over T) -> Linear r*d -> d. x: [T, B, N, d]."""

    def __init__(
        self, dim: int, hidden: int, *, spiking_neuron: NeuronFactory, analog_neurons: bool = False
    ) -> None:
        super().__init__()
        self.fc1 = SeqLinear(dim, hidden, analog_input=True)  # fed by LayerNorm
        self.neuron = spiking_neuron()
        self.fc2 = SeqLinear(hidden, dim, analog_input=analog_neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.neuron(self.fc1(x)))


class STABlock(nn.Module):
    """Spatio-temporal attention block, divided space-time. x: [T, B, N, d] -> [T, B, N, d].

    1. temporal: x += drop(temporal_fc(MHSA_time(LN(x))))
    2. spatial:  x += drop(MHSA_space(LN(x)))
    3. MLP:      x += drop(MLP(LN(x)))
    ``temporal_fc`` starts at zero in every block but the first (``zero_temporal_fc``), so a fresh
    block begins as spatial attention only and learns how much temporal mixing to add.
    Stochastic depth drops the whole branch (after ``temporal_fc``), in training only.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        spiking_neuron: NeuronFactory,
        analog_neurons: bool = False,
        drop_path_rate: float = 0.0,
        zero_temporal_fc: bool = False,
    ) -> None:
        super().__init__()
        self.temporal_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.temporal_attn = MultiHeadAttention(dim, heads, axis="time")
        self.temporal_fc = SeqLinear(dim, dim, analog_input=True)
        self.spatial_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.spatial_attn = MultiHeadAttention(dim, heads, axis="space")
        self.mlp_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = SpikingMlp(
            dim, int(dim * mlp_ratio), spiking_neuron=spiking_neuron, analog_neurons=analog_neurons
        )
        self.drop_path = DropPath(drop_path_rate)
        self.zero_temporal_fc = zero_temporal_fc

    def reset_parameters(self) -> None:
        """Zero ``temporal_fc`` where asked; the model calls this after its global weight init."""
        if self.zero_temporal_fc:
            nn.init.zeros_(self.temporal_fc.weight)
            nn.init.zeros_(self.temporal_fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.temporal_fc(self.temporal_attn(self.temporal_norm(x))))
        x = x + self.drop_path(self.spatial_attn(self.spatial_norm(x)))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class AttentionPoolHead(nn.Module):
    """LN -> attention pooling over all N*T tokens -> Linear classifier. x: [T, B, N, d] -> [B, classes].

    The pooling weights are softmax over the T*N scores of Linear(d -> 1), per sample.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.score = SeqLinear(dim, 1, analog_input=True)
        self.classifier = SeqLinear(dim, num_classes, analog_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        weights = torch.softmax(self.score(z).squeeze(-1).transpose(0, 1).flatten(1), dim=1)  # [B, T*N]
        weights = weights.unflatten(1, (x.shape[0], x.shape[2]))  # [B, T, N]
        pooled = torch.einsum("btn,tbnd->bd", weights, z)
        recorder = telemetry.current_recorder()
        if recorder is not None:  # the pooling product: T*N weights times d channels, real values
            recorder.record_synapse(self, x.shape[0] * x.shape[2] * x.shape[3], 1, None)
        return self.classifier(pooled.unsqueeze(0)).squeeze(0)  # one "step": the head runs once
