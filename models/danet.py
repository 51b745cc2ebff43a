"""DANet: spiking ResNets and VGGs whose blocks are joined by a selectable connection.

"Rethinking Residual Connection in Training Large-Scale Spiking Neural Networks" (Li, Lei and
Yang, arXiv 2311.05171) compares residual connections in spiking ResNets and abstracts the best
into a *densely additive* (DA) connection. Its full text is not available to us, so the DA used
here is spikeserve's own definition, stated exactly:

Within a stage (the blocks that share one output resolution and width), with stage input ``x``
and block branches ``f_1 .. f_n``::

    s_0 = P(x)                 P = 1x1 conv + BN on real values where the shape changes, else identity
    s_1 = s_0 + f_1(x)         block 1 receives the stage input (it does the stride, if any)
    s_k = s_{k-1} + f_k(s_{k-1})   block k receives the stage input plus every earlier block's output
    stage output = s_n         the running sum, real-valued

and each branch is ``[LIF -> Conv -> BN]`` per convolution, so spikes exist only inside branches
and the sum itself is never thresholded. The head fires one last neuron layer on ``s_n`` of the
last stage, average-pools and classifies.

Honest note: summing the stage input and all earlier outputs with unit weights is, algebraically,
a pre-activation residual stream (``x_k = x_{k-1} + f_k(x_{k-1})`` unrolls to the same sum), and
the 1x1 conv + BN where shapes change is the usual projection shortcut. In a ResNet, DA thus has
the topology of ``membrane`` (MS-ResNet); the one difference is the branch. DA's is
``LIF -> Conv -> BN``: every contribution is batch-normalised before it joins the sum, and
``zero_init_residual`` can start each block at zero (that is also the order of MS-ResNet's
published code); ``membrane`` here is the ``BN -> LIF -> Conv`` order of MS-ResNet's paper, which adds
a raw conv output and needs one more BN before the head's neuron. DA gives a network something it
lacked only in VGG, where a plain chain of conv-BN-LIF layers gains the real-valued running sum
inside each stage. Whatever the paper's DA adds beyond this is not reproduced here.

Connections (``connection=``), the same skeleton for ResNets and VGGs so that they compare:
- ``plain``: no shortcut, conv -> BN -> LIF throughout (a spiking VGG; a ResNet without shortcuts).
- ``standard``: Spiking ResNet, LIF after the addition; shortcut projection acts on spikes.
- ``sew_add``: SEW-ResNet ADD, block spikes + shortcut spikes (outputs are spike counts, not 0/1).
- ``membrane``: MS-ResNet, pre-activation ``BN -> LIF -> Conv`` blocks, real values added.
- ``dense_additive`` (default): DA as above.

Layers fed by real values (shortcut projections of ``membrane`` and DA, the classifier after average
pooling) are built with ``analog_input=True`` so that telemetry counts their MACs as MACs; the stem
conv looks at its input (an image is real values, binned event frames are events). Tensors are ``[T, B, ...]``
throughout; every step-wise op folds T into the batch, so nothing here loops over time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from models._registry import register_model
from models.base import SpikingModel
from models.layers import SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqToANN
from models.neurons import NeuronFactory, neuron_factory

CONNECTIONS = ("plain", "standard", "sew_add", "membrane", "dense_additive")
STEMS = ("imagenet", "small")
DEFAULT_NEURON: dict[str, Any] = {"kind": "lif"}
# Connections whose path between blocks carries real values: neurons live only inside branches.
_REAL_PATH = ("membrane", "dense_additive")
# Connections whose branch ends with a BN that zero_init_residual can zero.
_ZERO_INITIALISABLE = ("standard", "sew_add", "dense_additive")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a branch (padding keeps the size: kernel_size // 2)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    groups: int = 1


@dataclass(frozen=True)
class StageSpec:
    """The blocks of one stage, each a list of convolutions; ``pool_first`` max-pools 2x2 first (VGG)."""

    blocks: tuple[tuple[ConvSpec, ...], ...]
    pool_first: bool = False


def _reshapes(convs: Sequence[ConvSpec]) -> bool:
    """Whether a branch changes the shape (bottlenecks stride in their middle conv)."""
    return math.prod(spec.stride for spec in convs) != 1 or convs[0].in_channels != convs[-1].out_channels


def _conv(spec: ConvSpec) -> SeqConv2d:
    padding = spec.kernel_size // 2
    return SeqConv2d(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        spec.stride,
        padding,
        groups=spec.groups,
        bias=False,
    )


def _projection(
    convs: Sequence[ConvSpec], connection: str, spiking_neuron: NeuronFactory
) -> nn.Module | None:
    """1x1 conv + BN for a shortcut around ``convs`` where they change the shape, else None.

    It sees real values under membrane and DA (analog input), spikes otherwise; SEW fires it, so
    that spikes meet spikes.
    """
    if not _reshapes(convs):
        return None
    in_channels, out_channels = convs[0].in_channels, convs[-1].out_channels
    stride = math.prod(spec.stride for spec in convs)
    analog = connection in _REAL_PATH
    layers = [
        SeqConv2d(in_channels, out_channels, 1, stride=stride, bias=False, analog_input=analog),
        SeqBatchNorm2d(out_channels),
    ]
    if connection == "sew_add":
        layers.append(spiking_neuron())
    return nn.Sequential(*layers)


class Branch(nn.Module):
    """A block's residual function: its convolutions with BN and neurons ordered by the connection.

    x: [T, B, C_in, H, W] (spikes for plain/standard/sew_add, real values for membrane and DA)
    -> [T, B, C_out, H / stride, W / stride].
    """

    def __init__(self, convs: Sequence[ConvSpec], connection: str, spiking_neuron: NeuronFactory) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, spec in enumerate(convs):
            if connection == "membrane":
                layers += [SeqBatchNorm2d(spec.in_channels), spiking_neuron(), _conv(spec)]
            elif connection == "dense_additive":
                layers += [spiking_neuron(), _conv(spec), SeqBatchNorm2d(spec.out_channels)]
            else:
                layers += [_conv(spec), SeqBatchNorm2d(spec.out_channels)]
                # Spiking ResNet fires the sum of branch and shortcut, not the branch alone.
                if not (connection == "standard" and index == len(convs) - 1):
                    layers.append(spiking_neuron())
        self.layers = nn.Sequential(*layers)

    def zero_init_(self) -> None:
        """Zero the BN that ends the branch, so the block starts as its shortcut alone."""
        last_bn = next(m for m in reversed(self.layers) if isinstance(m, SeqBatchNorm2d))
        nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Block(nn.Module):
    """A block that owns its shortcut (plain, standard, sew_add, membrane).

    x: [T, B, C_in, H, W] -> [T, B, C_out, H / stride, W / stride].
    """

    def __init__(self, convs: Sequence[ConvSpec], connection: str, spiking_neuron: NeuronFactory) -> None:
        super().__init__()
        self.branch = Branch(convs, connection, spiking_neuron)
        self.shortcut: nn.Module | None = None
        if connection != "plain":
            self.shortcut = _projection(convs, connection, spiking_neuron) or nn.Identity()
        self.out_neuron = spiking_neuron() if connection == "standard" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        if self.out_neuron is not None:
            out = self.out_neuron(out)
        return out


class Stage(nn.Module):
    """The blocks at one resolution. x: [T, B, C_in, H, W] -> [T, B, C_out, H', W'].

    For ``dense_additive`` the stage forms the DA running sum itself (see the module docstring);
    the other connections chain blocks that carry their own shortcuts.
    """

    def __init__(self, spec: StageSpec, connection: str, spiking_neuron: NeuronFactory) -> None:
        super().__init__()
        if not spec.blocks:
            raise ValueError("a stage needs at least one block")
        self.dense_additive = connection == "dense_additive"
        self.pool = SeqToANN(nn.MaxPool2d(2)) if spec.pool_first else None
        self.projection: nn.Module | None = None
        if self.dense_additive:
            if any(_reshapes(convs) for convs in spec.blocks[1:]):
                raise ValueError("DA sums the outputs of a stage: only its first block may change shape")
            self.projection = _projection(spec.blocks[0], connection, spiking_neuron)
            self.blocks = nn.ModuleList(Branch(convs, connection, spiking_neuron) for convs in spec.blocks)
        else:
            self.blocks = nn.ModuleList(Block(convs, connection, spiking_neuron) for convs in spec.blocks)

    def branches(self) -> list[Branch]:
        return [b if isinstance(b, Branch) else b.branch for b in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if not self.dense_additive:
            for block in self.blocks:
                x = block(x)
            return x
        running = x if self.projection is None else self.projection(x)
        running = running + self.blocks[0](x)
        for branch in self.blocks[1:]:
            running = running + branch(running)
        return running


class DANet(SpikingModel):
    """Stem -> stages -> head. x: [T, B, C, H, W] float -> logits [B, num_classes] (mean over T).

    ``stem``: "imagenet" is a 7x7 stride-2 conv + BN and a 3x3 stride-2 max-pool (H / 4);
    "small" a 3x3 stride-1 conv + BN (28-64 px inputs, and every VGG's own first layer).
    ``neuron``: settings for ``neuron_factory`` (None: LIF), one fresh neuron per site.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec],
        *,
        stem: str,
        stem_width: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        connection: str = "dense_additive",
        neuron: dict[str, Any] | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if connection not in CONNECTIONS:
            raise ValueError(f"unknown connection {connection!r}; choose one of {', '.join(CONNECTIONS)}")
        _check_stem(stem)
        spiking_neuron = neuron_factory(**(DEFAULT_NEURON if neuron is None else neuron))
        self.connection = connection
        self.in_channels = in_channels
        imagenet = stem == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, 1)
        conv = SeqConv2d(
            in_channels, stem_width, kernel, stride, kernel // 2, bias=False, analog_input="auto"
        )
        layers: list[nn.Module] = [conv, SeqBatchNorm2d(stem_width)]
        if connection not in _REAL_PATH:
            layers.append(spiking_neuron())
        if imagenet:
            layers.append(SeqToANN(nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
        self.stem = nn.Sequential(*layers)
        self.stages = nn.Sequential(*(Stage(spec, connection, spiking_neuron) for spec in stages))
        features = stages[-1].blocks[-1][-1].out_channels
        head: list[nn.Module] = []
        if connection == "membrane":
            head += [SeqBatchNorm2d(features), spiking_neuron()]
        elif connection == "dense_additive":
            head.append(spiking_neuron())
        self.head_neuron = nn.Sequential(*head)
        self.pool = SeqToANN(nn.AdaptiveAvgPool2d(1))
        self.fc = SeqLinear(features, num_classes, analog_input=True)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual and self.connection in _ZERO_INITIALISABLE:
            for stage in self.stages:
                for branch in stage.branches():
                    branch.zero_init_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Each step's output, whose mean over T is ``forward``: x: [T, B, C, H, W] -> [T, B, classes]."""
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"DANet expects [T, B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        x = self.stages(self.stem(x))
        x = self.head_neuron(x)
        # Average-pooled spikes are fractions, real values the classifier does MACs on; only a 1x1
        # final map passes the spikes (or SEW sums) through as they are, as events.
        pooled_is_real = x.shape[-2] * x.shape[-1] != 1
        x = self.pool(x).flatten(2)  # [T, B, C]
        return self.fc(x, analog_input=pooled_is_real)


# --- plans: which convolutions each architecture has --------------------------------------------


def _basic(
    in_channels: int, planes: int, stride: int, groups: int, width_per_group: int
) -> tuple[ConvSpec, ...]:
    if groups != 1 or width_per_group != 64:
        raise ValueError("basic blocks support only groups=1 and width_per_group=64")
    return (ConvSpec(in_channels, planes, 3, stride), ConvSpec(planes, planes, 3))


def _bottleneck(
    in_channels: int, planes: int, stride: int, groups: int, width_per_group: int
) -> tuple[ConvSpec, ...]:
    # torchvision's width rule; max(1, ...) keeps narrow ResNeXts (base_width 16) buildable.
    width = max(1, planes * width_per_group // 64) * groups
    return (
        ConvSpec(in_channels, width, 1),
        ConvSpec(width, width, 3, stride, groups),
        ConvSpec(width, planes * 4, 1),
    )


_BLOCKS = {"basic": (_basic, 1), "bottleneck": (_bottleneck, 4)}


def resnet_plan(
    block: str, layers: Sequence[int], base_width: int, groups: int = 1, width_per_group: int = 64
) -> list[StageSpec]:
    """Four stages of ``layers[i]`` blocks, ``base_width * 2**i`` planes, stride 2 from stage 2 on."""
    make, expansion = _BLOCKS[block]
    stages, channels = [], base_width
    for index, count in enumerate(layers):
        planes = base_width * 2**index
        blocks = []
        for position in range(count):
            stride = 2 if index > 0 and position == 0 else 1
            blocks.append(make(channels, planes, stride, groups, width_per_group))
            channels = planes * expansion
        stages.append(StageSpec(tuple(blocks)))
    return stages


_VGG_GROUPS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


def vgg_plan(depth: int, base_width: int, stem: str) -> tuple[int, list[StageSpec]]:
    """(stem width, stages) of a VGG: its first 3x3 conv is the stem, each later conv one block.

    ImageNet inputs max-pool before each of the four later groups (224 -> 14); small inputs
    (28-64 px) pool three times, so the last two groups share a resolution and form one stage.
    """
    _check_stem(stem)
    groups = [[max(1, width * base_width // 64) for width in group] for group in _VGG_GROUPS[depth]]
    if stem == "small":
        groups[3] += groups.pop(4)
    stem_width, channels = groups[0][0], groups[0][0]
    groups[0] = groups[0][1:]
    stages = []
    for index, group in enumerate(groups):
        blocks = []
        for width in group:
            blocks.append((ConvSpec(channels, width, 3),))
            channels = width
        if blocks:
            stages.append(StageSpec(tuple(blocks), pool_first=index > 0))
    return stem_width, stages


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")


def _resnet(
    block: str,
    layers: Sequence[int],
    *,
    stem: str = "imagenet",
    base_width: int = 64,
    groups: int = 1,
    width_per_group: int = 64,
    **config: Any,
) -> DANet:
    plan = resnet_plan(block, layers, base_width, groups, width_per_group)
    return DANet(plan, stem=stem, stem_width=base_width, **config)


def _vgg(depth: int, *, stem: str = "imagenet", base_width: int = 64, **config: Any) -> DANet:
    stem_width, plan = vgg_plan(depth, base_width, stem)
    return DANet(plan, stem="small", stem_width=stem_width, **config)  # VGG's first 3x3 conv


# --- registered architectures --------------------------------------------------------------------
# Keywords: num_classes=1000, in_channels=3, stem="imagenet"|"small", connection="dense_additive",
# neuron=None ({"kind": "lif"}), base_width=64, zero_init_residual=False.

_IMAGENET = {"time_steps": 4, "shape": (3, 224, 224)}


@register_model(default_input=_IMAGENET)
def danet_resnet18(**config: Any) -> DANet:
    return _resnet("basic", (2, 2, 2, 2), **config)


@register_model(default_input=_IMAGENET)
def danet_resnet34(**config: Any) -> DANet:
    return _resnet("basic", (3, 4, 6, 3), **config)


@register_model(default_input=_IMAGENET)
def danet_resnet50(**config: Any) -> DANet:
    return _resnet("bottleneck", (3, 4, 6, 3), **config)


@register_model(default_input=_IMAGENET)
def danet_resnet101(**config: Any) -> DANet:
    return _resnet("bottleneck", (3, 4, 23, 3), **config)


@register_model(default_input=_IMAGENET)
def danet_resnet152(**config: Any) -> DANet:
    return _resnet("bottleneck", (3, 8, 36, 3), **config)


@register_model(default_input=_IMAGENET)
def danet_wide_resnet50_2(**config: Any) -> DANet:
    return _resnet("bottleneck", (3, 4, 6, 3), width_per_group=128, **config)


@register_model(default_input=_IMAGENET)
def danet_resnext50_32x4d(**config: Any) -> DANet:
    return _resnet("bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4, **config)


@register_model(default_input=_IMAGENET)
def danet_vgg11(**config: Any) -> DANet:
    return _vgg(11, **config)


@register_model(default_input=_IMAGENET)
def danet_vgg16(**config: Any) -> DANet:
    return _vgg(16, **config)
