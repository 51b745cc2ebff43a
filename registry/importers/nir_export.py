"""Registered DANet versions -> NIR graphs (``.nir``), batch norm folded into the convolutions.

NIR has convolutions, affine maps, pooling by averaging and LIF/IF neurons, and it sums every edge
that enters a node. That is enough for DANet's ``plain``, ``standard``, ``sew_add`` and
``dense_additive`` connections: a residual sum becomes several edges into the layers that read it.
What NIR cannot say is refused with the layer's name: max pooling (the ImageNet stem, VGG stages),
a BN that follows no convolution (``membrane`` normalises residual sums), soft reset, analog
(LIAF) outputs, and anything that is not a DANet (Spikeformer's attention and LayerNorm).

Our neurons map to NIR's continuous time at step ``dt``: tau_NIR = tau * dt, r = 1 (input decayed;
r = tau when not), v_leak = v_reset; see ``nir_import`` for the way back. NIR has no mean over time:
the Output carries the classifier's value at each step, and the logits are their average over T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.importers.errors import NotExpressibleError
from registry.manifest import Manifest
from registry.registry import Registry


class _GraphBuilder:
    """NIR nodes and edges, with each value held as the list of nodes whose sum it is."""

    def __init__(self, dt: float, shapes: dict[Any, tuple[int, ...]], names: dict[Any, str]) -> None:
        self.dt = dt
        self.shapes = shapes  # module -> its input's per-sample shape
        self.names = names  # module -> its qualified name in the network
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def emit(self, name: str, node: Any, sources: list[str]) -> list[str]:
        self.nodes[name] = node
        self.edges += [(source, name) for source in sources]
        return [name]

    def refuse(self, module: Any, why: str) -> NotExpressibleError:
        return NotExpressibleError(f"layer {self.names.get(module, '?')} ({type(module).__name__}) {why}")

    # ---- layers --------------------------------------------------------------------------------

    def sequence(self, layers: list[Any], value: list[str]) -> list[str]:
        import torch.nn as nn

        from models.danet import Block, Branch, Stage
        from models.layers import SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqToANN
        from models.neurons import MultiStepNeuron

        index = 0
        while index < len(layers):
            layer = layers[index]
            following = layers[index + 1] if index + 1 < len(layers) else None
            if isinstance(layer, SeqConv2d):
                batch_norm = following if isinstance(following, SeqBatchNorm2d) else None
                value = self.conv(layer, batch_norm, value)
                index += 2 if batch_norm is not None else 1
                continue
            if isinstance(layer, SeqBatchNorm2d):
                raise self.refuse(
                    layer, "normalises a residual sum, not a convolution's output: NIR cannot fold it"
                )
            if isinstance(layer, MultiStepNeuron):
                value = self.neuron(layer, value)
            elif isinstance(layer, SeqToANN):
                value = self.pool(layer, value)
            elif isinstance(layer, Block):
                value = self.block(layer, value)
            elif isinstance(layer, Branch):
                value = self.sequence(list(layer.layers), value)
            elif isinstance(layer, Stage):
                value = self.stage(layer, value)
            elif isinstance(layer, nn.Sequential):
                value = self.sequence(list(layer), value)
            elif isinstance(layer, SeqLinear):
                value = self.affine(layer, value)
            elif not isinstance(layer, nn.Identity):
                raise self.refuse(layer, "has no NIR counterpart")
            index += 1
        return value

    def conv(self, conv: Any, batch_norm: Any, value: list[str]) -> list[str]:
        import nir
        import torch

        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            padding = f"{conv.padding_mode!r}/{conv.padding!r}"
            raise self.refuse(conv, f"pads with {padding}; NIR pads with zeros")
        weight = conv.weight.detach().double()
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0]).double()
        if batch_norm is not None:  # y = gamma (conv(x) - mean) / sqrt(var + eps) + beta
            scale = batch_norm.weight.detach().double() / torch.sqrt(
                batch_norm.running_var.detach().double() + batch_norm.eps
            )
            weight = weight * scale[:, None, None, None]
            bias = (
                bias - batch_norm.running_mean.detach().double()
            ) * scale + batch_norm.bias.detach().double()
        height, width = self.shapes[conv][-2:]
        node = nir.Conv2d(
            input_shape=(height, width),
            weight=weight.float().numpy(),
            stride=tuple(conv.stride),
            padding=tuple(conv.padding),
            dilation=tuple(conv.dilation),
            groups=conv.groups,
            bias=bias.float().numpy(),
        )
        return self.emit(self.names[conv], node, value)

    def neuron(self, neuron: Any, value: list[str]) -> list[str]:
        import nir
        import numpy as np

        from models.neurons import IF, LIF, PLIF

        if getattr(neuron, "analog_output", False):
            raise self.refuse(neuron, "passes its membrane on (LIAF); NIR neurons emit spikes")
        if neuron.v_reset is None:
            raise self.refuse(neuron, "resets by subtraction (soft reset); NIR neurons reset to v_reset")
        shape = self.shapes[neuron]

        def full(value: float) -> Any:
            return np.full(shape, value, dtype=np.float32)

        if isinstance(neuron, IF):
            node = nir.IF(
                r=full(1.0 / self.dt), v_threshold=full(neuron.v_threshold), v_reset=full(neuron.v_reset)
            )
        elif isinstance(neuron, LIF | PLIF):
            tau = 1.0 / float(neuron.inv_tau())
            node = nir.LIF(
                tau=full(tau * self.dt),
                r=full(1.0 if neuron.decay_input else tau),
                v_leak=full(neuron.v_reset),
                v_threshold=full(neuron.v_threshold),
                v_reset=full(neuron.v_reset),
            )
        else:
            raise self.refuse(neuron, "is a neuron NIR does not define")
        return self.emit(self.names[neuron], node, value)

    def pool(self, wrapper: Any, value: list[str]) -> list[str]:
        import nir
        import numpy as np
        import torch.nn as nn

        pool = wrapper.module
        height, width = self.shapes[wrapper][-2:]
        kernel: Any
        stride: Any
        padding: Any
        if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
            kernel, stride, padding = (height, width), (height, width), (0, 0)
        elif isinstance(pool, nn.AvgPool2d) and not pool.ceil_mode and pool.count_include_pad:
            kernel, stride, padding = (pool.kernel_size, pool.stride, pool.padding)
        else:
            raise self.refuse(
                wrapper, f"pools with {type(pool).__name__}; NIR pools only by averaging or summing"
            )
        node = nir.AvgPool2d(
            kernel_size=np.array(_pair(kernel)),
            stride=np.array(_pair(stride)),
            padding=np.array(_pair(padding)),
        )
        return self.emit(self.names[wrapper], node, value)

    def affine(self, linear: Any, value: list[str]) -> list[str]:
        import nir
        import numpy as np

        channels = self.shapes[linear]
        flatten = nir.Flatten(input_type={"input": np.array(self.flatten_input)}, start_dim=0, end_dim=-1)
        value = self.emit(f"{self.names[linear]}.flatten", flatten, value)
        weight = linear.weight.detach().float().numpy()
        bias = linear.bias.detach().float().numpy()
        assert weight.shape[1] == channels[-1]
        return self.emit(self.names[linear], nir.Affine(weight=weight, bias=bias), value)

    flatten_input: tuple[int, ...] = ()

    def block(self, block: Any, value: list[str]) -> list[str]:
        out = self.sequence(list(block.branch.layers), value)
        if block.shortcut is not None:
            out = out + self.sequence([block.shortcut], value)
        if block.out_neuron is not None:
            out = self.neuron(block.out_neuron, out)
        return out

    def stage(self, stage: Any, value: list[str]) -> list[str]:
        if stage.pool is not None:
            value = self.pool(stage.pool, value)
        if not stage.dense_additive:
            return self.sequence(list(stage.blocks), value)
        running = value if stage.projection is None else self.sequence([stage.projection], value)
        running = running + self.sequence(list(stage.blocks[0].layers), value)
        for branch in stage.blocks[1:]:
            running = running + self.sequence(list(branch.layers), running)
        return running


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def graph_of(model: Any, input_shape: tuple[int, int, int], dt: float) -> Any:
    """The NIRGraph of a DANet ``model`` for per-sample inputs of ``input_shape`` (C, H, W)."""
    import nir
    import numpy as np
    import torch

    from models.danet import DANet

    if not isinstance(model, DANet):
        offending = next(
            (
                name
                for name, m in model.named_modules()
                if type(m).__name__ in ("MultiHeadAttention", "LayerNorm")
            ),
            None,
        )
        what = f"layer {offending} ({type(model.get_submodule(offending)).__name__})" if offending else "it"
        raise NotExpressibleError(
            f"{type(model).__name__} cannot be written as NIR: {what} has no NIR counterpart "
            "(NIR has no attention or layer normalisation); only DANet networks export"
        )
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[Any, tuple[int, ...]] = {}

    def record(module: Any, args: tuple[Any, ...], _out: Any) -> None:
        shapes.setdefault(module, tuple(args[0].shape[2:]))  # [T, B, ...] -> one sample's shape

    hooks = [module.register_forward_hook(record) for module in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.reset_state()
    builder = _GraphBuilder(dt, shapes, names)
    value = builder.emit("input", nir.Input(input_type={"input": np.array(input_shape)}), [])
    value = builder.sequence([model.stem, model.stages, model.head_neuron, model.pool], value)
    builder.flatten_input = (shapes[model.fc][-1], 1, 1)  # the pooled [C, 1, 1] map
    value = builder.affine(model.fc, value)
    builder.emit("output", nir.Output(output_type={"output": np.array([model.fc.out_features])}), value)
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges)


def export_nir(registry: Registry, ref: str, path: Path, *, dt: float = 1e-4) -> Manifest:
    """Write ``ref`` as a NIR graph to ``path``; NotExpressibleError names a layer NIR cannot hold."""
    import nir

    manifest, model = registry.load(ref)
    spec = manifest.input
    if spec.kind == "image":
        shape = (spec.channels, spec.height, spec.width)
    else:
        shape = (spec.polarities, spec.sensor_height, spec.sensor_width)
    graph = graph_of(model, shape, dt)
    nir.write(str(path), graph)
    return manifest
