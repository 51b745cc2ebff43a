"""registry/importers/spikingjelly.py against SpikingJelly 2.0 itself: its sew_resnet18 (cnf ADD)
and spiking_resnet18 with random, calibrated weights are saved as its scripts save them, imported
with the CLI, loaded by the registry and served; logits equal SpikingJelly's own multi-step forward
averaged over T, and the served top-1 agrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from service_support import make_client, npy_bytes, wait_ready
from spikingjelly_support import spikingjelly_modules

from registry import Registry
from service.cli import main
from service.settings import Settings

STEPS, BATCH, SIZE = 4, 6, 32
INPUT_SPEC = {"kind": "image", "channels": 3, "height": SIZE, "width": SIZE, "mean": [0.0], "std": [1.0]}


def calibrated_network(arch: str, seed: int) -> Any:
    """SpikingJelly's ``arch`` with LIF neurons, multi-step, and BN set so that every layer fires
    at a rate well inside (0, 1): running statistics from one batch, then scale ~ U(0.8, 1.6) and
    shift ~ U(0.6, 1.4) on the normalised values, which LIF (tau 2, threshold 1) turns into spikes."""
    sj = spikingjelly_modules()
    torch.manual_seed(seed)
    family = sj["sew_resnet"] if arch.startswith("sew") else sj["spiking_resnet"]
    extra = {"cnf": "ADD"} if arch.startswith("sew") else {}
    net = getattr(family, arch)(spiking_neuron=sj["neuron"].LIFNode, num_classes=10, **extra)
    sj["functional"].set_step_mode(net, "m")
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = 1.0  # the running statistics become this batch's
    net.train()
    with torch.no_grad():
        net(torch.rand(STEPS, 8, 3, SIZE, SIZE))
        for bn in batch_norms:
            bn.weight.uniform_(0.8, 1.6)
            bn.bias.uniform_(0.6, 1.4)
    net.eval()
    sj["functional"].reset_net(net)
    return net


def spikingjelly_logits(net: Any, images: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """SpikingJelly's forward on images [B, 3, H, W] repeated over T -> (logits [B, 10], layer rates)."""
    sj = spikingjelly_modules()
    rates: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: rates.append(float(out.float().mean())))
        for m in net.modules()
        if isinstance(m, sj["neuron"].LIFNode)
    ]
    with torch.no_grad():
        out = net(images.unsqueeze(0).repeat(STEPS, 1, 1, 1, 1)).mean(0)
    for hook in hooks:
        hook.remove()
    sj["functional"].reset_net(net)
    return out, rates


def import_with_cli(tmp_path: Path, checkpoint: Path, *flags: str) -> int:
    return main(
        [
            "registry", "import-spikingjelly", str(checkpoint), *flags,
            "--registry", str(tmp_path / "registry"), "--input-spec", json.dumps(INPUT_SPEC),
            "--time-steps", str(STEPS),
        ]
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "cnf"), [("sew_resnet18", "ADD"), ("spiking_resnet18", None)])
def test_imported_network_equals_spikingjelly_and_serves_its_top1(
    tmp_path: Path, arch: str, cnf: str | None
) -> None:
    net = calibrated_network(arch, seed=3)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    expected, rates = spikingjelly_logits(net, images)
    assert len(rates) >= 17 and all(0.02 < r < 0.98 for r in rates), rates  # spikes everywhere, not saturated
    checkpoint = tmp_path / f"{arch}.pth"
    torch.save({"net": net.state_dict(), "epoch": 11, "max_test_acc": 0.5}, checkpoint)  # its scripts' layout

    flags = ["--arch", arch, "--name", "imported", *(["--cnf", cnf] if cnf else [])]
    assert import_with_cli(tmp_path, checkpoint, *flags) == 0
    registry = Registry(tmp_path / "registry")
    manifest, model = registry.load("imported")
    assert manifest.architecture == "danet_resnet18"
    assert manifest.config["connection"] == ("sew_add" if cnf else "standard")
    assert manifest.tags["imported_from"] == "spikingjelly"
    assert manifest.tags["source_architecture"].startswith(arch)
    assert len(manifest.tags["source_sha256"]) == 64
    with torch.no_grad():
        ours = model(images.unsqueeze(0).repeat(STEPS, 1, 1, 1, 1))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected[0], expected[1])  # the logits depend on the input

    settings = Settings(registry=tmp_path / "registry", max_delay_ms=1.0, neuron_backend="torch")
    with make_client(settings) as client:
        wait_ready(client)
        for index in range(BATCH):
            body = npy_bytes(images[index].numpy().astype(np.float32))
            response = client.post(
                "/v1/models/imported/classify", content=body, headers={"content-type": "application/x-npy"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["index"] == int(expected[index].argmax())


def test_every_tensor_must_be_accounted_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sj = spikingjelly_modules()
    net = sj["sew_resnet"].sew_resnet18(spiking_neuron=sj["neuron"].LIFNode, cnf="ADD", num_classes=10)
    state = net.state_dict()
    flags = ["--arch", "sew_resnet18", "--cnf", "ADD", "--name", "broken"]

    extra = tmp_path / "extra.pth"
    torch.save({**state, "layer1.0.attention.weight": torch.zeros(3)}, extra)
    assert import_with_cli(tmp_path, extra, *flags) == 1
    assert "layer1.0.attention.weight" in capsys.readouterr().err

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "layer3.1.bn2.weight"}, missing)
    assert import_with_cli(tmp_path, missing, *flags) == 1
    assert "stages.2.blocks.1.branch.layers.4.weight" in capsys.readouterr().err

    assert import_with_cli(tmp_path, extra, "--arch", "sew_resnet18", "--cnf", "IAND", "--name", "x") == 1
    assert "IAND" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "models" / "broken").exists()


def test_pickled_objects_are_refused_before_they_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    checkpoint = tmp_path / "with-args.pth"
    torch.save({"net": {"fc.weight": torch.zeros(2, 2)}, "args": argparse.Namespace(lr=0.1)}, checkpoint)
    assert import_with_cli(tmp_path, checkpoint, "--arch", "spiking_resnet18", "--name", "x") == 1
    assert "weights_only=True" in capsys.readouterr().err


def test_parametric_neurons_bring_their_learned_time_constants() -> None:
    from registry.importers.spikingjelly import NeuronSettings, convert

    sj = spikingjelly_modules()
    net = sj["spiking_resnet"].spiking_resnet34(spiking_neuron=sj["neuron"].ParametricLIFNode, num_classes=5)
    state = {
        k: (torch.full_like(v, i / 100) if k.endswith(".w") else v)
        for i, (k, v) in enumerate(net.state_dict().items())
    }
    _, _, neuron, renamed = convert(state, "spiking_resnet34", None, NeuronSettings(kind="plif"))
    assert neuron["kind"] == "plif"
    assert torch.equal(renamed["stages.3.blocks.2.out_neuron.w"], state["layer4.2.sn2.w"])
    assert torch.equal(renamed["stages.0.blocks.0.branch.layers.2.w"], state["layer1.0.sn1.w"])
    assert torch.equal(renamed["stem.2.w"], state["sn1.w"])
