"""registry/importers/nir_export.py: the bundled danet-mnist, written as NIR and read back by
SpikingJelly 2.0 (``import_from_nir``) and by our own ``import-nir``, gives the same top-1 as the
served network on the 1,000 held-out MNIST-5k digits in at least 99% of cases; a network with a
layer NIR cannot express is refused with that layer's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nir
import pytest
import torch
from spikingjelly_support import spikingjelly_modules

from models import create_model
from registry import Registry
from service.cli import main

ZOO = Path(__file__).resolve().parents[4] / "zoo"
STEPS = 4


def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST-5k test split, normalised as danet-mnist's manifest says: [1000, 1, 28, 28]."""
    from training.datasets import MNIST_MEAN, MNIST_STD, mnist5k

    images, labels, _ = mnist5k("test")
    x = (torch.from_numpy(images).float() / 255.0 - MNIST_MEAN[0]) / MNIST_STD[0]
    return x[:, None], torch.from_numpy(labels)


def top1(run: Any, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Top-1 of ``run(x: [T, B, 1, 28, 28]) -> [B, 10]`` over images, direct-encoded over T."""
    picks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            picks.append(run(chunk.unsqueeze(0).repeat(STEPS, 1, 1, 1, 1)).argmax(1))
    return torch.cat(picks)


@pytest.mark.slow
def test_exported_danet_mnist_reads_back_with_the_same_answers(tmp_path: Path) -> None:
    graph_file = tmp_path / "danet-mnist.nir"
    assert main(["registry", "export-nir", "danet-mnist", str(graph_file), "--registry", str(ZOO)]) == 0
    graph = nir.read(str(graph_file))
    assert {type(node).__name__ for node in graph.nodes.values()} == {
        "Input", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "Output",
    }  # fmt: skip

    images, labels = held_out_digits()
    _, served = Registry(ZOO).load("danet-mnist")
    ours = top1(served, images)
    assert (ours == labels).float().mean() > 0.95  # the network is the trained one

    spikingjelly_modules()
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    theirs = import_from_nir(graph, step_mode="m")
    agreement = (top1(lambda x: theirs(x)[0].mean(0), images) == ours).float().mean()
    assert agreement >= 0.99, agreement

    root = tmp_path / "registry"
    assert main(["registry", "import-nir", str(graph_file), "--name", "back", "--registry", str(root)]) == 0
    manifest, back = Registry(root).load("back")
    assert manifest.architecture == "nir_graph"
    assert (top1(back, images) == ours).float().mean() >= 0.99


def register_random(
    root: Path, architecture: str, config: dict[str, Any], shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    model = create_model(architecture, **config)
    Registry(root).register(
        "net",
        architecture=architecture,
        config=config,
        neuron=None,
        time_steps={"default": 2},
        input={"kind": "image", "channels": shape[0], "height": shape[1], "width": shape[2]},
        labels=[str(i) for i in range(config["num_classes"])],
        weights=model.state_dict(),
    )


@pytest.mark.parametrize(
    ("architecture", "config", "layer"),
    [
        ("spikeformer_mnist", {"num_classes": 10}, "blocks.0.temporal_norm (LayerNorm)"),
        ("danet_resnet18", {"num_classes": 3, "in_channels": 1, "base_width": 8},
         "stem.2 (SeqToANN) pools with MaxPool2d"),
        ("danet_resnet18", {"num_classes": 3, "in_channels": 1, "base_width": 8, "stem": "small",
                            "connection": "membrane"}, "stages.0.blocks.0.branch.layers.0 (SeqBatchNorm2d)"),
    ],
    ids=["attention", "max-pool", "bn-on-a-sum"],
)  # fmt: skip
def test_a_layer_nir_cannot_express_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], architecture: str, config: dict[str, Any], layer: str
) -> None:
    register_random(tmp_path, architecture, config, (1, 28, 28))
    out = tmp_path / "net.nir"
    assert main(["registry", "export-nir", "net", str(out), "--registry", str(tmp_path)]) == 1
    assert layer in capsys.readouterr().err
    assert not out.exists()


def test_a_sew_resnet_round_trips_through_nir(tmp_path: Path) -> None:
    """SEW's spike sums become several edges into one node; our importer sums them back."""
    config = {"num_classes": 4, "in_channels": 1, "base_width": 8, "stem": "small", "connection": "sew_add"}
    register_random(tmp_path, "danet_resnet18", config, (1, 12, 12))
    out = tmp_path / "sew.nir"
    assert main(["registry", "export-nir", "net", str(out), "--registry", str(tmp_path)]) == 0
    assert main(["registry", "import-nir", str(out), "--name", "back", "--registry", str(tmp_path)]) == 0
    registry = Registry(tmp_path)
    _, original = registry.load("net")
    _, back = registry.load("back")
    x = torch.randn(STEPS, 3, 1, 12, 12, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        torch.testing.assert_close(back(x), original(x), rtol=1e-4, atol=1e-4)
