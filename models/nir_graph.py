"""``nir_graph``: a feed-forward network rebuilt from a stored graph description (NIR's node set).

A NIR graph (Neuromorphic Intermediate Representation) that is neither a DANet nor a Spikeformer
is registered as this architecture: the manifest's ``config`` holds the graph (nodes in
topological order, edges, the input's per-sample shape), the safetensors blob holds the tensors.
``registry/importers/nir_import.py`` turns a ``.nir`` file into that description; this module only
builds and runs it, so it never needs the ``nir`` package.

Nodes (``config["nodes"]``, each ``{"name", "kind", ...}``; ``name`` is the graph's own name):

- ``input`` ``{"shape"}`` / ``output``: where samples enter and logits leave.
- ``affine`` ``{"in_features", "out_features", "bias"}``: ``W x + b`` on the last axis (NIR Linear
  is an affine without bias); ``conv2d`` ``{"in_channels", "out_channels", "kernel_size",
  "stride", "padding", "dilation", "groups", "bias"}``.
- ``flatten`` ``{"start_dim", "end_dim"}``: dims of one sample (NIR's convention, no batch axis).
- ``avg_pool2d`` / ``sum_pool2d`` ``{"kernel_size", "stride", "padding"}``; ``scale``: x * s.
- ``lif`` / ``if`` ``{"shape", "tau_steps", "v_threshold", "v_reset", "decay_input"}``: one of our
  multi-step neurons (fused kernels) fed by ``input_scale * x + input_bias``, two per-neuron
  buffers that carry NIR's ``r``, ``v_leak`` and ``dt / tau`` (see docs/MODELS.md).
- ``cuba_lif``: the same neuron behind a first-order synapse
  ``i[t] = synapse_decay * i[t-1] + synapse_gain * x[t]``.
- ``li``: a leaky integrator, ``v[t] = v[t-1] + input_scale * x[t] + input_bias - leak * v[t-1]``,
  whose membrane is the output (NIR's read-out layer).

Several edges into one node are summed, as NIR defines. Every node runs all T steps at once on
``[T, B, ...]``; the logits are the output node's values averaged over T. Graphs with a synapse or
leaky-integrator state (``cuba_lif``, ``li``) start from rest on every forward, so they do not
stream; LIF/IF-only graphs stream like any network of our neurons.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models._registry import register_model
from models.base import SpikingModel
from models.layers import SeqConv2d, SeqLinear, SeqToANN
from models.neurons import IF, LIF, MultiStepNeuron

SPIKING_KINDS = ("lif", "if", "cuba_lif")
NODE_KINDS = (
    "input", "output", "affine", "conv2d", "flatten", "avg_pool2d", "sum_pool2d", "scale", "li",
    *SPIKING_KINDS,
)  # fmt: skip


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = (int(v) for v in value)
    return first, second


class NeuronNode(nn.Module):
    """A NIR neuron on our kernels. x: [T, B, *shape] -> spikes [T, B, *shape].

    ``input_scale`` and ``input_bias`` ([*shape] buffers) turn NIR's continuous-time input term
    into our discrete charge; a ``cuba_lif`` node first filters x through its synapse.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        shape = tuple(int(d) for d in spec["shape"])
        self.register_buffer("input_scale", torch.ones(shape))
        self.register_buffer("input_bias", torch.zeros(shape))
        settings = {"v_threshold": float(spec["v_threshold"]), "v_reset": float(spec["v_reset"])}
        self.neuron: MultiStepNeuron
        if spec["kind"] == "if":
            self.neuron = IF(**settings)
        else:
            self.neuron = LIF(tau=float(spec["tau_steps"]), decay_input=bool(spec["decay_input"]), **settings)
        self.synapse_decay: float | None = None
        if spec["kind"] == "cuba_lif":
            self.synapse_decay = float(spec["synapse_decay"])
            self.register_buffer("synapse_gain", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.synapse_decay is not None:
            x = _leaky_scan(x * self.synapse_gain, self.synapse_decay)
        return self.neuron(x * self.input_scale + self.input_bias)


def _leaky_scan(x: torch.Tensor, decay: float) -> torch.Tensor:
    """y[t] = decay * y[t-1] + x[t] from y[-1] = 0. x: [T, B, ...] -> [T, B, ...]."""
    state = torch.zeros_like(x[0])
    out = []
    for step in x:
        state = decay * state + step
        out.append(state)
    return torch.stack(out)


class LeakyIntegratorNode(nn.Module):
    """NIR LI: v[t] = (1 - leak) v[t-1] + input_scale * x[t] + input_bias. x: [T, B, *shape] -> v."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        shape = tuple(int(d) for d in spec["shape"])
        self.leak = float(spec["leak"])
        self.register_buffer("input_scale", torch.ones(shape))
        self.register_buffer("input_bias", torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _leaky_scan(x * self.input_scale + self.input_bias, 1.0 - self.leak)


class ScaleNode(nn.Module):
    """x * scale, the scale broadcast over [T, B]. x: [T, B, *shape]."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(tuple(int(d) for d in spec["shape"])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SumPool2d(nn.Module):
    """Sum over each window (NIR SumPool2d): average pooling times the window size. x: [N, C, H, W]."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        area = self.kernel_size[0] * self.kernel_size[1]
        pooled = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return pooled * area


class FlattenNode(nn.Module):
    """Flatten dims of one sample (NIR numbering, no batch axis). x: [T, B, ...]."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() - 2
        start = self.start_dim % rank + 2
        end = self.end_dim % rank + 2
        return x.flatten(start, end)


def _build_node(spec: dict[str, Any], analog_input: bool) -> nn.Module:
    kind = spec["kind"]
    if kind in ("input", "output"):
        return nn.Identity()
    if kind == "affine":
        return SeqLinear(
            spec["in_features"], spec["out_features"], bias=bool(spec["bias"]), analog_input=analog_input
        )
    if kind == "conv2d":
        return SeqConv2d(
            spec["in_channels"],
            spec["out_channels"],
            _pair(spec["kernel_size"]),
            stride=_pair(spec["stride"]),
            padding=_pair(spec["padding"]),
            dilation=_pair(spec["dilation"]),
            groups=int(spec["groups"]),
            bias=bool(spec["bias"]),
            analog_input=analog_input,
        )
    if kind == "flatten":
        return FlattenNode(int(spec["start_dim"]), int(spec["end_dim"]))
    if kind in ("avg_pool2d", "sum_pool2d"):
        window = (_pair(spec["kernel_size"]), _pair(spec["stride"]), _pair(spec["padding"]))
        if kind == "sum_pool2d":
            return SeqToANN(SumPool2d(*window))
        return SeqToANN(nn.AvgPool2d(*window, count_include_pad=True))
    if kind == "scale":
        return ScaleNode(spec)
    if kind == "li":
        return LeakyIntegratorNode(spec)
    if kind in SPIKING_KINDS:
        return NeuronNode(spec)
    raise ValueError(f"node {spec.get('name')!r} has unknown kind {kind!r}; known: {', '.join(NODE_KINDS)}")


class NIRGraphNet(SpikingModel):
    """A stored feed-forward graph. forward(x: [T, B, *input_shape]) -> [B, *output_shape] (mean over T).

    x may also be [T, B, C, H, W] for a graph whose input is flat (C*H*W,): it is flattened, so that
    image requests reach graphs exported from fully connected networks.
    """

    def __init__(
        self,
        *,
        nodes: Sequence[dict[str, Any]],
        edges: Sequence[Sequence[str]],
        num_classes: int,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        names = [str(node["name"]) for node in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        position = {name: index for index, name in enumerate(names)}
        self.sources: list[list[int]] = [[] for _ in nodes]
        for edge in edges:
            source, target = str(edge[0]), str(edge[1])
            if source not in position or target not in position:
                raise ValueError(f"edge {source!r} -> {target!r} names a node the graph lacks")
            if position[source] >= position[target]:
                raise ValueError(
                    f"edge {source!r} -> {target!r} goes backwards: only feed-forward graphs, in "
                    "topological order, are supported"
                )
            self.sources[position[target]].append(position[source])
        kinds = [str(node["kind"]) for node in nodes]
        if kinds.count("input") != 1 or kinds.count("output") != 1:
            raise ValueError("a graph needs exactly one input node and one output node")
        self.input_index, self.output_index = kinds.index("input"), kinds.index("output")
        self.input_shape = tuple(int(d) for d in nodes[self.input_index]["shape"])
        self.node_names = names
        self.num_classes = num_classes
        self.in_channels = in_channels
        layers = []
        for index, spec in enumerate(nodes):
            fed_by_spikes = bool(self.sources[index]) and all(
                kinds[source] in SPIKING_KINDS for source in self.sources[index]
            )
            layers.append(_build_node(dict(spec), analog_input=not fed_by_spikes))
        self.layers = nn.ModuleList(layers)
        # state that our neuron layers do not hold (synapses, integrators) restarts every forward
        stateful = sorted({kind for kind in kinds if kind in ("li", "cuba_lif")})
        self.supports_streaming = not stateful
        if stateful:
            self.streaming_blocker = (
                f"its {' and '.join(stateful)} nodes keep a synapse or integrator state that restarts "
                "on every forward, so it cannot run step by step"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape
        if tuple(x.shape[2:]) != expected:
            if len(expected) == 1 and x[0, 0].numel() == expected[0]:
                x = x.flatten(2)
            else:
                raise ValueError(
                    f"this graph expects [T, B, {', '.join(map(str, expected))}], got shape {tuple(x.shape)}"
                )
        values: list[torch.Tensor | None] = [None] * len(self.layers)
        values[self.input_index] = x
        for index, layer in enumerate(self.layers):
            if index == self.input_index:
                continue
            inputs = [values[source] for source in self.sources[index]]
            if not inputs:
                raise ValueError(f"node {self.node_names[index]!r} has no input")
            total = inputs[0]
            for extra in inputs[1:]:
                total = total + extra  # type: ignore[operator]
            values[index] = layer(total)
        out = values[self.output_index]
        assert out is not None
        return out.mean(0).flatten(1)


def example_graph(num_classes: int, in_channels: int, size: int = 28) -> dict[str, Any]:
    """A small conv -> LIF -> linear graph on ``size`` px frames, what ``nir_graph()`` builds
    without a stored graph (the architecture tests run every registered builder that way)."""
    features = 8 * (size // 2) ** 2
    nodes: list[dict[str, Any]] = [
        {"name": "input", "kind": "input", "shape": [in_channels, size, size]},
        {"name": "conv", "kind": "conv2d", "in_channels": in_channels, "out_channels": 8,
         "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
         "bias": True},
        {"name": "lif", "kind": "lif", "shape": [8, size // 2, size // 2], "tau_steps": 2.0,
         "v_threshold": 1.0, "v_reset": 0.0, "decay_input": True},
        {"name": "flatten", "kind": "flatten", "start_dim": 0, "end_dim": -1},
        {"name": "fc", "kind": "affine", "in_features": features, "out_features": num_classes, "bias": True},
        {"name": "output", "kind": "output"},
    ]  # fmt: skip
    names = [node["name"] for node in nodes]
    return {"nodes": nodes, "edges": [[a, b] for a, b in itertools.pairwise(names)]}


@register_model(default_input={"time_steps": 4, "shape": (1, 28, 28)})
def nir_graph(**config: Any) -> NIRGraphNet:
    """A network stored as a NIR-style graph (``registry/importers/nir_import.py`` writes the config)."""
    config.pop("neuron", None)  # each node carries its own neuron settings
    if "nodes" not in config:
        config.update(example_graph(config.get("num_classes", 10), config.get("in_channels") or 1))
    config.setdefault("num_classes", 10)
    return NIRGraphNet(**config)
