"""NIR graphs (``.nir``, HDF5) -> registered ``nir_graph`` networks that run on our neurons.

NIR states each neuron in continuous time; we step it with forward Euler at the ``dt`` the graph
was exported with (1e-4 s by default, the convention of SpikingJelly, snnTorch and Sinabs), which is
also how those libraries read NIR back. With ``k = dt / tau``:

- LIF  ``tau dv/dt = (v_leak - v) + r I``  ->  ``v += k (v_leak - v + r I)``, fire at ``v_threshold``,
  hard reset to ``v_reset``. Our LIF charges ``H = V + (X - (V - V_reset)) k``, so it runs with
  tau = 1/k and ``X = r I + (v_leak - v_reset)``; when ``r = tau/dt`` (an exporter's way of saying
  "input not decayed") it runs with ``decay_input=False`` and ``X = I`` instead.
- IF   ``dv/dt = r I``  ->  ``v += dt r I``: our IF with ``X = dt r I``.
- LI   (no spikes): ``v[t] = (1 - k) v[t-1] + k r I + k v_leak``; its membrane is the output.
- CubaLIF: the synapse ``i += (dt/tau_syn)(w_in I - i)`` first, then the LIF on ``i``.

``r`` and ``v_leak`` may differ per neuron (they become the node's ``input_scale`` and
``input_bias``); ``tau``, ``v_threshold`` and ``v_reset`` must be uniform within a node, because
our fused kernels take them as scalars. Anything else is refused with the node's name.
"""

from __future__ import annotations

from collections.abc import Callable
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import InvalidWeightsError
from registry.importers.common import Destination, register_imported, sha256_of
from registry.importers.errors import UnsupportedGraphError
from registry.manifest import Manifest
from registry.registry import Registry

if TYPE_CHECKING:
    pass

SUPPORTED_NODES = (
    "Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "AvgPool2d", "SumPool2d", "Scale",
    "LIF", "IF", "LI", "CubaLIF",
)  # fmt: skip


def read_graph(path: Path) -> Any:
    """The NIRGraph in ``path``; InvalidWeightsError if it is not one."""
    import nir

    if not path.is_file():
        raise InvalidWeightsError(f"NIR file {path} does not exist")
    try:
        return nir.read(str(path))
    except Exception as exc:  # h5py and nir raise many types for a damaged or foreign file
        raise InvalidWeightsError(f"{path} is not a readable NIR graph: {exc}") from None


def _uniform(node_name: str, field: str, value: Any) -> float:
    import numpy as np

    array = np.asarray(value, dtype=np.float64)
    if array.size == 0 or not np.all(array == array.flat[0]):
        raise UnsupportedGraphError(
            f"node {node_name!r}: {field} differs between neurons; our kernels take one {field} a layer"
        )
    return float(array.flat[0])


def _pair(value: Any) -> list[int]:
    import numpy as np

    flat = [int(v) for v in np.atleast_1d(np.asarray(value)).tolist()]
    return flat * 2 if len(flat) == 1 else flat[:2]


def _shape_of(*arrays: Any) -> list[int]:
    import numpy as np

    return list(np.broadcast_shapes(*(np.shape(a) for a in arrays)))


class _Translation:
    """Node specs (in topological order) and tensors for ``models.nir_graph``."""

    def __init__(self, dt: float) -> None:
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.dt = dt
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, Any] = {}

    def tensor(self, key: str, value: Any) -> None:
        import numpy as np
        import torch

        self.tensors[f"layers.{len(self.nodes)}.{key}"] = torch.from_numpy(
            np.array(value, dtype=np.float32, copy=True)
        )

    def add(self, name: str, node: Any) -> None:
        kind = type(node).__name__
        method = getattr(self, f"_{kind.lower()}", None)
        if kind not in SUPPORTED_NODES or method is None:
            supported = ", ".join(SUPPORTED_NODES)
            raise UnsupportedGraphError(
                f"node {name!r} is a NIR {kind}, which spikeserve cannot run; supported: {supported}"
            )
        spec = method(name, node)
        self.nodes.append({"name": name, **spec})

    def _input(self, name: str, node: Any) -> dict[str, Any]:
        shape = [int(d) for d in next(iter(node.input_type.values())).tolist()]
        return {"kind": "input", "shape": shape}

    def _output(self, name: str, node: Any) -> dict[str, Any]:
        return {"kind": "output"}

    def _affine(self, name: str, node: Any) -> dict[str, Any]:
        self.tensor("weight", node.weight)
        self.tensor("bias", node.bias)
        return self._affine_spec(node.weight, bias=True)

    def _linear(self, name: str, node: Any) -> dict[str, Any]:
        self.tensor("weight", node.weight)
        return self._affine_spec(node.weight, bias=False)

    @staticmethod
    def _affine_spec(weight: Any, bias: bool) -> dict[str, Any]:
        out_features, in_features = weight.shape[-2:]
        return {
            "kind": "affine",
            "in_features": int(in_features),
            "out_features": int(out_features),
            "bias": bias,
        }

    def _conv2d(self, name: str, node: Any) -> dict[str, Any]:
        import numpy as np

        weight = np.asarray(node.weight)
        groups = int(np.asarray(node.groups).flat[0])
        kernel = [int(weight.shape[-2]), int(weight.shape[-1])]
        dilation = _pair(node.dilation)
        if isinstance(node.padding, str):
            if node.padding == "valid":
                padding = [0, 0]
            elif node.padding == "same" and all(k % 2 == 1 for k in kernel):
                padding = [dilation[i] * (kernel[i] - 1) // 2 for i in range(2)]
            else:
                raise UnsupportedGraphError(f"node {name!r}: padding {node.padding!r} with kernel {kernel}")
        else:
            padding = _pair(node.padding)
        self.tensor("weight", weight)
        self.tensor("bias", node.bias)
        return {
            "kind": "conv2d", "in_channels": int(weight.shape[1]) * groups,
            "out_channels": int(weight.shape[0]), "kernel_size": kernel, "stride": _pair(node.stride),
            "padding": padding, "dilation": dilation, "groups": groups, "bias": True,
        }  # fmt: skip

    def _flatten(self, name: str, node: Any) -> dict[str, Any]:
        return {"kind": "flatten", "start_dim": int(node.start_dim), "end_dim": int(node.end_dim)}

    def _pool(self, kind: str, node: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "kernel_size": _pair(node.kernel_size),
            "stride": _pair(node.stride),
            "padding": _pair(node.padding),
        }

    def _avgpool2d(self, name: str, node: Any) -> dict[str, Any]:
        return self._pool("avg_pool2d", node)

    def _sumpool2d(self, name: str, node: Any) -> dict[str, Any]:
        return self._pool("sum_pool2d", node)

    def _scale(self, name: str, node: Any) -> dict[str, Any]:
        self.tensor("scale", node.scale)
        return {"kind": "scale", "shape": _shape_of(node.scale)}

    def _membrane(
        self, name: str, kind: str, tau: Any, r: Any, v_leak: Any, v_threshold: Any, v_reset: Any
    ) -> dict[str, Any]:
        """The LIF part shared by LIF and CubaLIF (see the module docstring)."""
        import numpy as np

        tau_steps = _uniform(name, "tau", tau) / self.dt
        if not tau_steps > 1.0:
            raise UnsupportedGraphError(
                f"node {name!r}: tau / dt = {tau_steps:g} must exceed 1 "
                f"(is --dt {self.dt:g} the step the graph was written for?)"
            )
        v_reset = np.zeros_like(np.asarray(v_threshold)) if v_reset is None else v_reset
        threshold, reset = _uniform(name, "v_threshold", v_threshold), _uniform(name, "v_reset", v_reset)
        shape = _shape_of(tau, r, v_leak, v_threshold, v_reset)
        r, v_leak = np.broadcast_to(r, shape), np.broadcast_to(v_leak, shape)
        undecayed = np.allclose(r, tau_steps, rtol=1e-6, atol=0.0)
        if undecayed:  # v += k (v_leak - v) + I: our decay_input=False, bias k (v_leak - v_reset)
            scale, bias = np.ones(shape), (v_leak - reset) / tau_steps
        else:
            scale, bias = r, v_leak - reset
        self.tensor("input_scale", scale)
        self.tensor("input_bias", bias)
        return {
            "kind": kind, "shape": shape, "tau_steps": tau_steps, "v_threshold": threshold, "v_reset": reset,
            "decay_input": not undecayed,
        }  # fmt: skip

    def _lif(self, name: str, node: Any) -> dict[str, Any]:
        return self._membrane(name, "lif", node.tau, node.r, node.v_leak, node.v_threshold, node.v_reset)

    def _cubalif(self, name: str, node: Any) -> dict[str, Any]:
        import numpy as np

        synapse_steps = _uniform(name, "tau_syn", node.tau_syn) / self.dt
        if not synapse_steps >= 1.0:
            raise UnsupportedGraphError(f"node {name!r}: tau_syn / dt = {synapse_steps:g} is below 1")
        spec = self._membrane(
            name, "cuba_lif", node.tau_mem, node.r, node.v_leak, node.v_threshold, node.v_reset
        )
        shape = spec["shape"]
        gain = np.broadcast_to(np.asarray(node.w_in, dtype=np.float64), shape) / synapse_steps
        self.tensor("synapse_gain", gain)
        return {**spec, "synapse_decay": 1.0 - 1.0 / synapse_steps}

    def _if(self, name: str, node: Any) -> dict[str, Any]:
        import numpy as np

        v_reset = np.zeros_like(np.asarray(node.v_threshold)) if node.v_reset is None else node.v_reset
        shape = _shape_of(node.r, node.v_threshold, v_reset)
        self.tensor("input_scale", np.broadcast_to(np.asarray(node.r, dtype=np.float64) * self.dt, shape))
        self.tensor("input_bias", np.zeros(shape))
        return {
            "kind": "if", "shape": shape, "tau_steps": None, "decay_input": False,
            "v_threshold": _uniform(name, "v_threshold", node.v_threshold),
            "v_reset": _uniform(name, "v_reset", v_reset),
        }  # fmt: skip

    def _li(self, name: str, node: Any) -> dict[str, Any]:
        import numpy as np

        tau_steps = _uniform(name, "tau", node.tau) / self.dt
        if not tau_steps >= 1.0:
            raise UnsupportedGraphError(f"node {name!r}: tau / dt = {tau_steps:g} is below 1")
        shape = _shape_of(node.tau, node.r, node.v_leak)
        r = np.broadcast_to(np.asarray(node.r, dtype=np.float64), shape)
        v_leak = np.broadcast_to(np.asarray(node.v_leak, dtype=np.float64), shape)
        self.tensor("input_scale", r / tau_steps)
        self.tensor("input_bias", v_leak / tau_steps)
        return {"kind": "li", "shape": shape, "leak": 1.0 / tau_steps}


def translate(graph: Any, dt: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``nir_graph`` config without num_classes, state dict) for a NIRGraph."""
    predecessors: dict[str, set[str]] = {name: set() for name in graph.nodes}
    for source, target in graph.edges:
        if source not in predecessors or target not in predecessors:
            raise UnsupportedGraphError(f"edge {source!r} -> {target!r} names a node the graph lacks")
        predecessors[target].add(source)
    try:
        order = list(TopologicalSorter(predecessors).static_order())
    except CycleError as exc:
        cycle = " -> ".join(str(n) for n in exc.args[1])
        raise UnsupportedGraphError(
            f"the graph is recurrent ({cycle}); only feed-forward graphs are supported"
        ) from None
    translation = _Translation(dt)
    for name in order:
        translation.add(str(name), graph.nodes[name])
    edges = [[str(s), str(t)] for s, t in graph.edges]
    return {"nodes": translation.nodes, "edges": edges}, translation.tensors


def default_input_spec(shape: list[int]) -> dict[str, Any] | None:
    """An image spec for a [C, H, W] input with C in 1..3 (values as sent, no normalisation)."""
    if len(shape) == 3 and shape[0] in (1, 2, 3):
        return {"kind": "image", "channels": shape[0], "height": shape[1], "width": shape[2], "resize": False}
    return None


def _output_width(config: dict[str, Any], tensors: dict[str, Any]) -> int:
    """Run the graph once on zeros to learn how many values it answers with."""
    import torch

    from models.nir_graph import NIRGraphNet

    model = NIRGraphNet(**config, num_classes=0)
    model.load_state_dict(tensors, strict=True)
    shape = next(node["shape"] for node in config["nodes"] if node["kind"] == "input")
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 1, *shape))
    except (RuntimeError, ValueError) as exc:
        raise UnsupportedGraphError(f"the graph's layers do not fit together: {exc}") from None
    return int(out.shape[-1])


def import_nir(
    registry: Registry,
    path: Path,
    *,
    dt: float,
    destination_for: Callable[[list[int]], Destination],
) -> Manifest:
    """Register the NIR graph at ``path`` as a ``nir_graph`` network.

    ``destination_for(input_shape)`` gives the name and manifest fields (the input shape lets the
    caller default the input spec)."""
    config, tensors = translate(read_graph(path), dt)
    input_shape = next(node["shape"] for node in config["nodes"] if node["kind"] == "input")
    config["num_classes"] = _output_width(config, tensors)
    provenance = {
        "imported_from": "nir",
        "source_file": path.name,
        "source_sha256": sha256_of(path),
        "source_dt": repr(dt),
    }
    return register_imported(
        registry,
        destination_for(input_shape),
        architecture="nir_graph",
        config=config,
        neuron=None,
        state_dict=tensors,
        provenance=provenance,
        description=f"NIR graph imported from {path.name} (dt {dt:g} s)",
    )
