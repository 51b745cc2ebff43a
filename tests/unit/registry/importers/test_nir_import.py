"""registry/importers/nir_import.py and models/nir_graph.py: NIR graphs written by a real exporter
(SpikingJelly 2.0's ``export_to_nir``, nir 1.0.8 + nirtorch 2.6) and graphs built with the ``nir``
API are imported, served, and their outputs equal SpikingJelly's own simulation of the same graph
(``import_from_nir``) over T steps; nodes we cannot run are named in the error."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import nir
import numpy as np
import pytest
import torch
from service_support import make_client, npy_bytes, wait_ready
from spikingjelly_support import spikingjelly_modules

from registry import Registry
from service.cli import main
from service.settings import Settings

STEPS = 6


def spikingjelly_simulation(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """SpikingJelly's run of the graph at ``path`` on x: [T, B, ...] -> (outputs averaged over T,
    the spike rate of every spiking layer)."""
    spikingjelly_modules()
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    module = import_from_nir(nir.read(str(path)), step_mode="m")
    rates: list[float] = []
    # its neurons run inside stateful wrappers that answer (spikes, state)
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: rates.append(float(out[0].float().mean())))
        for m in module.modules()
        if type(m).__name__ == "_NIRStatefulModule"
    ]
    with torch.no_grad():
        out, _ = module(x)
    for hook in hooks:
        hook.remove()
    return out.mean(0), rates


def import_graph(tmp_path: Path, graph_file: Path, spec: dict[str, Any] | None = None) -> int:
    flags = ["--input-spec", json.dumps(spec)] if spec else []
    return main(
        ["registry", "import-nir", str(graph_file), "--name", "graph",
         "--registry", str(tmp_path / "registry"), "--time-steps", str(STEPS), *flags]
    )  # fmt: skip


def ours(tmp_path: Path, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    manifest, model = Registry(tmp_path / "registry").load("graph")
    with torch.no_grad():
        return manifest, model(x)


def exported_by_spikingjelly(path: Path) -> torch.Tensor:
    """A SpikingJelly conv/LIF/IF/pool/linear network written with its NIR exporter; returns a
    batch of inputs [T, B, 2, 10, 10] on which every spiking layer fires at a non-trivial rate."""
    spikingjelly_modules()
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1), neuron.LIFNode(tau=2.0),
        layer.AvgPool2d(2, 2), layer.Conv2d(8, 8, 3, padding=1, bias=False), neuron.IFNode(),
        layer.Flatten(), layer.Linear(8 * 5 * 5, 16),
        neuron.LIFNode(tau=3.0, decay_input=False, v_reset=-0.1),
        layer.Linear(16, 4),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[0].bias.fill_(0.8)
        net[3].weight.mul_(10.0)
        net[6].weight.mul_(6.0)
    functional.set_step_mode(net, "m")
    images = torch.rand(5, 2, 10, 10, generator=torch.Generator().manual_seed(1))
    x = images.unsqueeze(0).repeat(STEPS, 1, 1, 1, 1)
    export_to_nir(net, x, save_path=path)
    return x


@pytest.mark.slow
def test_a_graph_written_by_spikingjelly_serves_as_spikingjelly_simulates_it(tmp_path: Path) -> None:
    graph_file = tmp_path / "sj.nir"
    x = exported_by_spikingjelly(graph_file)
    expected, rates = spikingjelly_simulation(graph_file, x)
    assert len(rates) == 3 and all(0.02 < r < 0.98 for r in rates), rates
    assert import_graph(tmp_path, graph_file) == 0  # the [2, 10, 10] input becomes a 2x10x10 image spec
    manifest, got = ours(tmp_path, x)
    assert manifest.architecture == "nir_graph" and manifest.tags["imported_from"] == "nir"
    assert manifest.config["num_classes"] == 4 and manifest.input.kind == "image"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[0], expected[1])

    settings = Settings(registry=tmp_path / "registry", max_delay_ms=1.0, neuron_backend="torch")
    with make_client(settings) as client:
        wait_ready(client)
        for index in range(x.shape[1]):
            response = client.post(
                "/v1/models/graph/classify?telemetry=layers",
                content=npy_bytes(x[0, index].numpy().astype(np.float32)),
                headers={"content-type": "application/x-npy"},
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["predictions"][0]["index"] == int(expected[index].argmax())
            assert len(answer["telemetry"]["layers"]) == 3  # our three neuron layers report spikes


def cuba_graph(tau_syn_steps: float = 2.0, tau_mem_steps: float = 4.0, dt: float = 1e-4) -> nir.NIRGraph:
    """Built with the nir API: conv (stride 2) -> CubaLIF -> flatten -> linear -> LIF (input not
    decayed, v_reset = v_leak = 0.1) -> affine, in SpikingJelly's conventions for each node."""
    rng = np.random.default_rng(3)
    conv_shape, hidden = (6, 4, 4), 12
    tau_syn, tau_mem = tau_syn_steps * dt, tau_mem_steps * dt
    nodes = {
        "in": nir.Input(input_type={"input": np.array([3, 8, 8])}),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0, 0.8, (6, 3, 3, 3)).astype(np.float32),
                           stride=2, padding=1, dilation=1, groups=1, bias=np.full(6, 0.2, np.float32)),
        "cuba": nir.CubaLIF(tau_syn=np.full(conv_shape, tau_syn), tau_mem=np.full(conv_shape, tau_mem),
                            r=np.full(conv_shape, tau_mem / dt), v_leak=np.zeros(conv_shape),
                            v_threshold=np.full(conv_shape, 1.0), v_reset=np.zeros(conv_shape),
                            w_in=np.full(conv_shape, tau_syn / dt)),
        "flat": nir.Flatten(input_type={"input": np.array(conv_shape)}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(weight=rng.normal(0, 0.4, (hidden, 96)).astype(np.float32)),
        "lif": nir.LIF(tau=np.full(hidden, 3 * dt), r=np.full(hidden, 3.0), v_leak=np.full(hidden, 0.1),
                       v_threshold=np.full(hidden, 1.0), v_reset=np.full(hidden, 0.1)),
        "head": nir.Affine(weight=rng.normal(0, 1, (5, hidden)).astype(np.float32),
                           bias=np.zeros(5, np.float32)),
        "out": nir.Output(output_type={"output": np.array([5])}),
    }  # fmt: skip
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(itertools.pairwise(names)))


@pytest.mark.slow
def test_a_graph_built_with_the_nir_api_equals_spikingjelly(tmp_path: Path) -> None:
    graph_file = tmp_path / "cuba.nir"
    nir.write(str(graph_file), cuba_graph())
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(4)).repeat(STEPS, 4, 1, 1, 1)
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(5))  # differs per sample and step
    expected, rates = spikingjelly_simulation(graph_file, x)
    assert len(rates) == 2 and all(0.02 < r < 0.98 for r in rates), rates
    assert import_graph(tmp_path, graph_file) == 0
    manifest, got = ours(tmp_path, x)
    assert [n["kind"] for n in manifest.config["nodes"]][2:6] == ["cuba_lif", "flatten", "affine", "lif"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_leaky_integrator_follows_nir_euler_step(tmp_path: Path) -> None:
    dt, tau = 1e-3, 4e-3
    weight = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32)
    r, v_leak = np.array([2.0, 0.5]), np.array([0.0, 0.3])  # per-neuron r and v_leak
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "fc": nir.Linear(weight=weight),
            "li": nir.LI(tau=np.full(2, tau), r=r, v_leak=v_leak),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "fc"), ("fc", "li"), ("li", "out")],
    )
    graph_file = tmp_path / "li.nir"
    nir.write(str(graph_file), graph)
    spec = {"kind": "image", "channels": 2, "height": 1, "width": 1}
    registry_flags = ["--registry", str(tmp_path / "registry"), "--input-spec", json.dumps(spec)]
    assert (
        main(["registry", "import-nir", str(graph_file), "--name", "graph", "--dt", str(dt), *registry_flags])
        == 0
    )
    x = torch.rand(STEPS, 3, 2, generator=torch.Generator().manual_seed(0))
    _, got = ours(tmp_path, x)
    current = x.double().numpy() @ weight.T.astype(np.float64)
    v, total = np.zeros((3, 2)), np.zeros((3, 2))
    for step in range(STEPS):  # tau dv/dt = (v_leak - v) + r I, forward Euler at dt
        v = v + dt / tau * (v_leak - v + r * current[step])
        total += v
    np.testing.assert_allclose(got.numpy(), total / STEPS, rtol=1e-5, atol=1e-6)
    _, streamed = ours(tmp_path, x)
    torch.testing.assert_close(streamed, got)  # the integrator starts from rest on every forward


def write(tmp_path: Path, graph: nir.NIRGraph) -> Path:
    path = tmp_path / "bad.nir"
    nir.write(str(path), graph)
    return path


def simple_nodes(neuron: Any) -> dict[str, Any]:
    return {
        "in": nir.Input(input_type={"input": np.array([3])}),
        "fc": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
        "cell": neuron,
        "out": nir.Output(output_type={"output": np.array([3])}),
    }


def test_what_cannot_run_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = json.dumps({"kind": "image", "channels": 3, "height": 1, "width": 1})
    chain = [("in", "fc"), ("fc", "cell"), ("cell", "out")]

    def refused(graph: nir.NIRGraph) -> str:
        assert main(["registry", "import-nir", str(write(tmp_path, graph)), "--name", "x",
                     "--registry", str(tmp_path / "registry"), "--input-spec", spec]) == 1  # fmt: skip
        return capsys.readouterr().err

    delay = nir.Delay(delay=np.ones(3))
    assert "node 'cell' is a NIR Delay" in refused(nir.NIRGraph(nodes=simple_nodes(delay), edges=chain))
    lif = nir.LIF(tau=np.array([2e-4, 3e-4, 2e-4]), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    message = refused(nir.NIRGraph(nodes=simple_nodes(lif), edges=chain))
    assert "node 'cell'" in message and "tau differs between neurons" in message
    uniform = nir.LIF(tau=np.full(3, 2e-4), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    recurrent = nir.NIRGraph(nodes=simple_nodes(uniform), edges=[*chain, ("cell", "fc")])
    assert "recurrent" in refused(recurrent)
    not_a_graph = tmp_path / "noise.nir"
    not_a_graph.write_bytes(b"\x89HDF? no")
    assert main(["registry", "import-nir", str(not_a_graph), "--name", "x", "--registry", str(tmp_path)]) == 1
    assert "not a readable NIR graph" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "models" / "x").exists()


def test_graphs_with_synapse_state_say_why_they_do_not_stream() -> None:
    from models.nir_graph import NIRGraphNet
    from registry.importers.nir_import import translate

    config, tensors = translate(cuba_graph(), dt=1e-4)
    model = NIRGraphNet(**config, num_classes=5)
    model.load_state_dict(tensors, strict=True)
    assert not model.supports_streaming and "cuba_lif" in model.streaming_blocker
