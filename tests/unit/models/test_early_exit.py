"""models/early_exit.py: the exit rule, samples leaving the batch, telemetry over the steps run,
and the refusal of networks that attend across time."""

from __future__ import annotations

import pytest
import torch

from models import create_model, telemetry
from models.base import spiking_layers
from models.early_exit import NonCausalNetworkError, early_exit_blocker, run_early_exit

STEPS = 4


@pytest.fixture(scope="module")
def danet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("danet_resnet18", num_classes=10, in_channels=1, base_width=8, stem="small")
    return model.eval()


def digits(batch: int, seed: int = 0) -> torch.Tensor:
    """x: [T, B, 1, 28, 28], the same image at every step (direct encoding)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((batch, 1, 28, 28), generator=generator) * 3.0
    return images.unsqueeze(0).expand(STEPS, -1, -1, -1, -1).contiguous()


@torch.no_grad()
def prefix_logits(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The multi-step forward over the first t steps, t = 1..T, each from rest: [B, classes] each."""
    outputs = []
    for t in range(1, x.shape[0] + 1):
        outputs.append(model(x[:t]).float())
        model.reset_state()
    return outputs


def test_each_sample_stops_at_its_first_confident_step(danet: torch.nn.Module) -> None:
    x = digits(8)
    prefixes = prefix_logits(danet, x)
    confidence = torch.stack([torch.softmax(p, dim=-1).amax(dim=-1) for p in prefixes])  # [T, B]
    threshold = float(confidence.median())  # some samples stop early, some run on
    expected_steps = torch.full((8,), STEPS)
    for b in range(8):
        hits = (confidence[:, b] >= threshold).nonzero()
        if len(hits):
            expected_steps[b] = int(hits[0]) + 1
    assert len(set(expected_steps.tolist())) > 1, "the threshold should split the batch"

    result = run_early_exit(danet, x, threshold)

    assert result.steps_used.tolist() == expected_steps.tolist()
    for b, steps in enumerate(expected_steps.tolist()):
        torch.testing.assert_close(result.logits[b], prefixes[steps - 1][b])


def test_min_steps_holds_a_confident_sample_back(danet: torch.nn.Module) -> None:
    x = digits(3)
    result = run_early_exit(danet, x, threshold=1e-6, min_steps=torch.tensor([1, 3, 4]))
    assert result.steps_used.tolist() == [1, 3, 4]
    never = run_early_exit(danet, x, threshold=1.0 + 1e-6)
    assert never.steps_used.tolist() == [STEPS] * 3
    torch.testing.assert_close(never.logits, prefix_logits(danet, x)[-1])


def test_samples_leaving_the_batch_answer_as_if_alone(danet: torch.nn.Module) -> None:
    x = digits(6, seed=1)
    min_steps = torch.tensor([2, 1, 4, 3, 1, 2])
    thresholds = torch.tensor([1e-6, 1e-6, 1e-6, 1e-6, 2.0, 1e-6])  # the fifth never gets sure

    together = run_early_exit(danet, x, thresholds, min_steps, with_telemetry=True)

    assert together.steps_used.tolist() == [2, 1, 4, 3, 4, 2]
    assert together.telemetry is not None
    for b in range(6):
        alone = run_early_exit(
            danet, x[:, b : b + 1], thresholds[b : b + 1], min_steps[b : b + 1], with_telemetry=True
        )
        assert alone.steps_used.tolist() == together.steps_used[b : b + 1].tolist()
        torch.testing.assert_close(together.logits[b : b + 1], alone.logits)
        assert alone.telemetry is not None
        assert together.telemetry[b].spikes == alone.telemetry[0].spikes
        assert together.telemetry[b].synaptic_ops == pytest.approx(alone.telemetry[0].synaptic_ops)


def test_telemetry_counts_only_the_steps_run(danet: torch.nn.Module) -> None:
    x = digits(2, seed=2)
    result = run_early_exit(danet, x, 1e-6, torch.tensor([2, 4]), with_telemetry=True)
    assert result.telemetry is not None
    for b, steps in enumerate((2, 4)):
        with torch.no_grad(), telemetry.record(danet) as recorder:
            danet(x[:steps, b : b + 1])
        danet.reset_state()
        (expected,) = recorder.report()
        got = result.telemetry[b]
        assert got.spikes == expected.spikes
        assert got.spike_rate == pytest.approx(expected.spike_rate)
        assert got.synaptic_ops == pytest.approx(expected.synaptic_ops, rel=1e-5)
        assert got.macs == pytest.approx(expected.macs)
        assert got.energy_uj == pytest.approx(expected.energy_uj, rel=1e-5)
        assert got.synaptic_ops_nominal == pytest.approx(expected.synaptic_ops_nominal, rel=1e-5)
        assert got.dense_macs == pytest.approx(expected.dense_macs)
        assert got.ann_energy_uj == pytest.approx(expected.ann_energy_uj)
        assert [layer.spikes for layer in got.layers] == [layer.spikes for layer in expected.layers]
        assert [layer.spike_rate for layer in got.layers] == pytest.approx(
            [layer.spike_rate for layer in expected.layers]
        )
        for mine, theirs in zip(got.synaptic_layers, expected.synaptic_layers, strict=True):
            assert (mine.name, mine.input, mine.macs) == (theirs.name, theirs.input, theirs.macs)
            assert mine.synaptic_ops == pytest.approx(theirs.synaptic_ops, rel=1e-5)
            assert mine.energy_share == pytest.approx(theirs.energy_share, rel=1e-4, abs=1e-9)
    assert result.telemetry[0].macs < result.telemetry[1].macs  # two steps cost half of four


def test_no_state_outlives_the_call(danet: torch.nn.Module) -> None:
    run_early_exit(danet, digits(3), 1e-6, torch.tensor([1, 2, 4]))
    for neuron in spiking_layers(danet):
        assert neuron.v is None and not neuron.streaming


def test_networks_attending_across_time_refuse_with_the_reason() -> None:
    model = create_model("spikeformer_nmnist", num_classes=10, in_channels=2, dim=32, depth=1, heads=2)
    reason = early_exit_blocker(model)
    assert reason is not None and "temporal attention" in reason
    with pytest.raises(NonCausalNetworkError, match="temporal attention"):
        run_early_exit(model, torch.zeros((STEPS, 1, 2, 34, 34)), 0.9)
    for neuron in spiking_layers(model):
        assert not neuron.streaming
