"""The bundled DANets answer alike through every CPU conv path of models/optimize.py: contiguous
dense convs, and channels_last with spike-driven convs (the CPU default), on held-out digits and
their emulated N-MNIST recordings. The spike-driven sums are the dense ones in another order, so
a membrane within float32 rounding of its threshold could fire in one and not the other: the
answers and the spike counts must still agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import telemetry
from models.kernels.conv import spike_driven
from models.optimize import optimize_for_inference
from registry import Registry
from training.datasets import held_out_inputs

ZOO = Registry(Path(__file__).resolve().parents[3] / "zoo")
BATCH = 24

pytestmark = pytest.mark.skipif(not spike_driven.available(), reason="no C compiler here")


@pytest.mark.parametrize("name", ["danet-mnist", "danet-nmnist"])
def test_a_bundled_danet_answers_alike_through_dense_and_spike_driven_convs(name: str) -> None:
    if name not in {summary.name for summary in ZOO.list()}:
        pytest.skip(f"zoo/ lacks {name}")
    runs = []
    for keywords in ({"channels_last": False, "spike_driven": False}, {}):
        manifest, network = ZOO.load(name)
        prepared = optimize_for_inference(network, "cpu", backend="native", **keywords)
        x = torch.from_numpy(held_out_inputs(manifest, BATCH))
        with torch.inference_mode(), telemetry.record(prepared.model) as recorder:
            logits = prepared(x)
            samples = recorder.report()
        runs.append((prepared.report, logits, [sample.spikes for sample in samples]))
    (dense_report, dense, dense_spikes), (report, driven, spikes) = runs
    assert not dense_report.spike_driven_convs and report.channels_last
    assert len(report.spike_driven_convs) >= 8
    assert torch.equal(driven.argmax(dim=1), dense.argmax(dim=1))
    torch.testing.assert_close(driven.softmax(dim=1), dense.softmax(dim=1), rtol=0, atol=1e-4)
    assert sum(spikes) > 0
    assert abs(sum(spikes) - sum(dense_spikes)) <= 1e-4 * sum(dense_spikes)
