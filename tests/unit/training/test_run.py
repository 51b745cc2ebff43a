"""training/run.py and training/cli.py: a short run registers a loadable checkpoint; eval reads it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from registry.registry import Registry
from service.cli import main
from training import datasets, recipes
from training.early_exit import THRESHOLD_GRID
from training.pipelines import Augment
from training.recipes import Recipe
from training.run import PRODUCTION_ALIAS, run_recipe
from training.trainer import TrainConfig

TINY = Recipe(
    name="tiny-mnist",
    architecture="danet_resnet18",
    config={"num_classes": 10, "in_channels": 1, "stem": "small", "base_width": 4},
    neuron={"kind": "lif", "tau": 2.0},
    time_steps=2,
    max_time_steps=8,
    data="mnist5k",
    train=TrainConfig(epochs=2, batch_size=16, lr=1e-2, warmup_epochs=0.0, max_batches=3, seed=0),
    augment=Augment(max_shift=1, max_rotation_deg=10.0, max_scale=0.1),
)


def _shrink_splits(patch: pytest.MonkeyPatch) -> None:
    """20 validation and 20 test digits: the held-out sets are read in full, so keep them short."""
    patch.setattr(datasets, "TEST_PER_CLASS", 2)
    patch.setattr(datasets, "VAL_PER_CLASS", 2)


@pytest.fixture
def small_splits(monkeypatch) -> None:
    _shrink_splits(monkeypatch)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One short run shared by the tests that read its result (the splits stay small meanwhile)."""
    root = tmp_path_factory.mktemp("registry") / "zoo"
    with pytest.MonkeyPatch.context() as patch:
        _shrink_splits(patch)
        yield root, run_recipe(TINY, root, progress=False, log=lambda _: None)


def test_a_short_run_registers_a_loadable_checkpoint(registered) -> None:
    root, outcome = registered
    manifest, model = Registry(root).load(f"tiny-mnist@{PRODUCTION_ALIAS}")
    assert manifest.ref == outcome.manifest.ref == "tiny-mnist:1"
    assert manifest.labels == tuple("0123456789")
    assert manifest.architecture == TINY.architecture and manifest.neuron == TINY.neuron
    assert manifest.time_steps.default == 2 and manifest.input.kind == "image"
    test_metric = next(m for m in manifest.metrics if m.split == "test")
    assert (test_metric.name, test_metric.dataset) == ("top1_accuracy", "mnist5k")
    assert test_metric.value == pytest.approx(outcome.test_accuracy)
    assert manifest.tags["recipe"] == "tiny-mnist" and manifest.tags["seed"] == "0"
    assert Registry(root).verify().ok
    # the registered weights are the trained ones, not a fresh network's
    for name, tensor in outcome.result.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_eval_json_reports_the_registered_accuracy(registered, capsys) -> None:
    root, outcome = registered
    code = main(
        ["eval", "tiny-mnist", "--registry", str(root), "--dataset", "mnist5k", "--split", "test", "--json"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 20 and report["accuracy"] == pytest.approx(outcome.test_accuracy)
    assert report["ref"] == "tiny-mnist:1" and report["split"] == "test"


def test_eval_with_telemetry_prints_spike_rate_and_energy(registered, capsys) -> None:
    root, _ = registered
    assert main(["eval", "tiny-mnist:1", "--registry", str(root), "--dataset", "mnist5k", "--telemetry"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "spike rate" in out and "uJ" in out


def test_the_manifest_carries_the_early_exit_default_chosen_on_validation(registered) -> None:
    _, outcome = registered
    early_exit = outcome.manifest.early_exit
    assert early_exit is not None and early_exit.supported
    assert early_exit.threshold in THRESHOLD_GRID
    assert outcome.manifest.tags["loss"] == "mean"


def test_eval_with_exit_thresholds_reports_each_against_all_steps(registered, capsys) -> None:
    root, outcome = registered
    args = ["eval", "tiny-mnist", "--registry", str(root), "--dataset", "mnist5k", "--json"]
    assert main([*args, "--exit-threshold", "0.000001", "1.0"]) == 0
    full, eager, never = json.loads(capsys.readouterr().out)["reports"]
    assert full["threshold"] is None and full["mean_steps"] == 2 and full["steps_histogram"] == [0, 20]
    assert full["accuracy"] == pytest.approx(outcome.test_accuracy)
    assert eager["mean_steps"] == 1 and eager["steps_histogram"] == [20, 0]
    assert eager["energy_uj"] < full["energy_uj"]
    assert never["steps_histogram"][-1] >= 1 and never["n"] == 20
    assert main([*args[:-1], "--exit-threshold", "0.5", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "mean steps" in out and "off" in out and "0.9" in out
    with pytest.raises(SystemExit):
        main([*args, "--exit-threshold", "1.5"])


def test_eval_errors_are_one_line_and_exit_1(registered, capsys) -> None:
    root, _ = registered
    assert main(["eval", "missing-model", "--registry", str(root), "--dataset", "mnist5k"]) == 1
    assert "spikeserve eval: error:" in capsys.readouterr().err
    # an image model cannot be fed event recordings
    assert main(["eval", "tiny-mnist", "--registry", str(root), "--dataset", "nmnist5k"]) == 1
    assert "nmnist5k" in capsys.readouterr().err


def test_train_command_runs_a_recipe_into_a_registry(tmp_path, small_splits, monkeypatch, capsys) -> None:
    monkeypatch.setitem(recipes.RECIPES, TINY.name, replace(TINY, train=replace(TINY.train, epochs=5)))
    args = [
        "train",
        "--recipe",
        "tiny-mnist",
        "--registry",
        str(tmp_path),
        "--epochs",
        "1",
        "--max-batches",
        "1",
    ]
    assert main([*args, "--no-progress", "--no-alias"]) == 0
    assert "registered tiny-mnist:1" in capsys.readouterr().out
    registry = Registry(tmp_path)
    assert registry.aliases("tiny-mnist") == {}
    assert registry.resolve("tiny-mnist:1").tags["epochs_run"] == "1"
    assert main(["train", "--recipe", "no-such-recipe", "--registry", str(tmp_path)]) == 1
    assert "unknown recipe" in capsys.readouterr().err


def test_emulate_command_writes_a_recording_the_readers_accept(tmp_path, capsys) -> None:
    from eventio.nmnist import read_nmnist

    target = tmp_path / "digit.bin"
    assert main(["emulate", "--split", "test", "--position", "3", "-o", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out
    recording = read_nmnist(target.read_bytes())
    assert recording.sensor_size == (34, 34) and len(recording.events) > 500
    assert main(["emulate", "--position", "5000", "-o", str(target)]) == 1
    assert main(["emulate", "-o", str(tmp_path / "digit.txt")]) == 1


def test_emulate_writes_the_digit_itself_as_a_png_for_the_image_route(tmp_path, capsys) -> None:
    from training.datasets import mnist5k

    target = tmp_path / "digit.png"
    assert main(["emulate", "--split", "test", "--position", "3", "-o", str(target)]) == 0
    assert "digit" in capsys.readouterr().out
    images, _, _ = mnist5k("test")
    with Image.open(target) as png:
        assert png.mode == "L" and png.size == (28, 28)
        assert np.array_equal(np.asarray(png), images[3])
