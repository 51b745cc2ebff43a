"""The bundled registry zoo/: its checkpoints load, verify (sha256) and reach their accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eventio import read_events
from registry.registry import Registry
from training.evaluate import evaluate_ref, predict_events

ZOO = Path(__file__).resolve().parents[3] / "zoo"
# name -> (data set, top-1 it must reach on the 1,000 held-out test digits)
TARGETS = {
    "danet-mnist": ("mnist5k", 0.98),
    "danet-nmnist": ("nmnist5k", 0.97),
    "spikeformer-nmnist": ("nmnist5k", 0.96),
}
MAX_WEIGHT_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def zoo() -> Registry:
    return Registry(ZOO)


def test_zoo_verifies_and_names_production_checkpoints(zoo: Registry) -> None:
    report = zoo.verify()
    assert report.ok, report
    for name, (dataset, target) in TARGETS.items():
        manifest = zoo.resolve(f"{name}@production")
        assert manifest.weights.size <= MAX_WEIGHT_BYTES
        assert manifest.labels == tuple("0123456789")
        recorded = next(m for m in manifest.metrics if m.split == "test" and m.dataset == dataset)
        assert recorded.name == "top1_accuracy" and recorded.value >= target
        assert manifest.tags["recipe"] == name  # made by its recipe, not by hand


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_checkpoint_loads_with_its_digest_checked(zoo: Registry, name: str) -> None:
    manifest, model = zoo.load(f"{name}@production")
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == int(manifest.tags["parameters"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_checkpoint_reaches_its_accuracy(name: str) -> None:
    dataset, target = TARGETS[name]
    report = evaluate_ref(f"{name}@production", ZOO, dataset, "test")
    assert report.n == 1000
    assert report.accuracy >= target
    recorded = next(m for m in Registry(ZOO).resolve(report.ref).metrics if m.split == "test")
    assert report.accuracy == pytest.approx(recorded.value, abs=0.003)  # what the manifest claims


def test_spikeformer_reads_the_real_recording(zoo: Registry, shared_data) -> None:
    manifest, model = zoo.load("spikeformer-nmnist@production")
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes(), fmt="nmnist").events
    probabilities = predict_events(manifest, model, events)
    assert probabilities.shape == (10,) and np.isclose(probabilities.sum(), 1.0)
    assert probabilities.max() > 0.5  # a confident answer on a real digit


def test_both_event_models_read_the_real_digit_alike(zoo: Registry, shared_data) -> None:
    """The real N-MNIST recording (a 4, by eye: each saccade's ON events drawn as an image): the
    causal danet-nmnist that streams keep state for and spikeformer-nmnist give the same top-1."""
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes(), fmt="nmnist").events
    top1 = {}
    for name in ("danet-nmnist", "spikeformer-nmnist"):
        manifest, model = zoo.load(f"{name}@production")
        top1[name] = manifest.labels[int(np.argmax(predict_events(manifest, model, events)))]
    assert top1 == {"danet-nmnist": "4", "spikeformer-nmnist": "4"}
