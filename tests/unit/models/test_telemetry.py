"""models/telemetry.py on a two-layer toy network whose every count is worked out by hand.

Toy: SeqConv2d(1 -> 2, 2x2 kernel, analog stem) -> LIF -> flatten -> SeqLinear(2 -> 3) -> LIF,
input [T=2, B=2, 1, 2, 2]; sample 0 is 0.5 everywhere, sample 1 is all zeros.

By hand (LIF: tau 2, V_th 1, hard reset to 0, H = V + (X - V) / 2):
- conv: filter 0 = ones -> 2.0 at each step; filter 1 = 0.25s -> 0.5.  MACs/step = 1*2*2 * 2*1*1 = 8.
- lif1, sample 0: neuron 0 sees 2.0: H = 1.0 at both steps -> 2 spikes; neuron 1 sees 0.5:
  H = 0.25, 0.375 -> none.  Spikes [1, 0] at both steps: 2 of 2 neurons x 2 steps, rate 0.5.
- fc rows [2, 0], [1, 1], [0, 4] -> currents [2, 1, 0] at both steps.  MACs/step = 2*3 = 6;
  active inputs 2 of 4 -> SOPs = 0.5 x 2 steps x 6 = 6 (each of the 2 spikes reaches 3 synapses).
- lif2, sample 0: H = 1.0 (fires, twice); 0.5 then 0.75 (silent); 0 -> 2 of 3 x 2, rate 1/3.
- network, sample 0: 4 spikes of 10 neuron-steps, rate 0.4; MACs (analog conv only) 8 x 2 = 16;
  energy 4.6 pJ x 16 + 0.9 pJ x 6 = 79.0 pJ.  Sample 1: no spikes, no SOPs, energy 73.6 pJ.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn

from models import telemetry
from models.base import set_streaming
from models.layers import SeqConv2d, SeqLinear, SeqToANN
from models.neurons import LIF


class Toy(nn.Module):
    """x: [T, B, 1, 2, 2] -> spikes [T, B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = SeqConv2d(1, 2, kernel_size=2, bias=False, analog_input=True)
        self.lif1 = LIF()
        self.flatten = SeqToANN(nn.Flatten())
        self.fc = SeqLinear(2, 3, bias=False)
        self.lif2 = LIF()
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.25)]))
            self.fc.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 4.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif2(self.fc(self.flatten(self.lif1(self.conv(x)))))


def toy_input(steps: int = 2) -> torch.Tensor:
    x = torch.zeros(steps, 2, 1, 2, 2)
    x[:, 0] = 0.5
    return x


def test_toy_network_matches_the_hand_count() -> None:
    model = Toy()
    with telemetry.record(model) as recorder:
        out = model(toy_input())
    expected_out = torch.zeros(2, 2, 3)
    expected_out[:, 0, 0] = 1.0
    assert torch.equal(out, expected_out)

    first, second = recorder.report()
    assert [layer.name for layer in first.layers] == ["lif1", "lif2"]
    assert [(layer.neurons, layer.spikes) for layer in first.layers] == [(2, 2), (3, 2)]
    assert [layer.spike_rate for layer in first.layers] == pytest.approx([0.5, 1 / 3])
    assert first.spikes == 4 and first.spike_rate == pytest.approx(0.4)
    assert first.macs == 16.0
    assert first.synaptic_ops == pytest.approx(6.0)
    assert first.energy_uj == pytest.approx((4.6 * 16 + 0.9 * 6) * 1e-6)

    assert second.spikes == 0 and second.spike_rate == 0.0
    assert [layer.spikes for layer in second.layers] == [0, 0]
    assert second.synaptic_ops == 0.0 and second.macs == 16.0
    assert second.energy_uj == pytest.approx(4.6 * 16 * 1e-6)


def test_as_dict_carries_the_same_numbers() -> None:
    model = Toy()
    with telemetry.record(model) as recorder:
        model(toy_input())
    summary = recorder.report()[0].as_dict()
    assert summary["spikes"] == 4 and summary["synaptic_ops"] == pytest.approx(6.0)
    assert summary["layers"][1] == {
        "name": "lif2",
        "neurons": 3,
        "spikes": 2,
        "spike_rate": pytest.approx(1 / 3),
    }
    assert "layers" not in recorder.report()[0].as_dict(with_layers=False)


def test_telemetry_changes_nothing_in_the_forward() -> None:
    model = Toy()
    x = toy_input() + torch.linspace(0, 1, 8).reshape(1, 2, 1, 2, 2)
    plain = model(x)
    with telemetry.record(model):
        recorded = model(x)
    assert torch.equal(plain, recorded)
    assert telemetry.current_recorder() is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_streamed_steps_add_up_to_the_multistep_count() -> None:
    model = Toy()
    set_streaming(model, True)
    with telemetry.record(model) as recorder:
        model(toy_input(1))
        model(toy_input(1))
    first = recorder.report()[0]
    # Same totals as one T=2 forward: the layers accumulate time steps, spikes and SOPs.
    assert [layer.spikes for layer in first.layers] == [2, 2]
    assert [layer.spike_rate for layer in first.layers] == pytest.approx([0.5, 1 / 3])
    assert first.macs == 16.0 and first.synaptic_ops == pytest.approx(6.0)


def test_recorders_in_concurrent_threads_do_not_mix() -> None:
    results: dict[str, int] = {}
    barrier = threading.Barrier(2)

    def worker(name: str, scale: float) -> None:
        model = Toy()
        with telemetry.record(model) as recorder:
            barrier.wait()  # both recorders are active at the same time
            model(toy_input() * scale)
        results[name] = recorder.report()[0].spikes

    threads = [
        threading.Thread(target=worker, args=("busy", 1.0)),
        threading.Thread(target=worker, args=("idle", 0.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"busy": 4, "idle": 0}


def test_event_count_is_per_sample_and_counts_sew_sums_twice() -> None:
    x = torch.zeros(2, 3, 4)
    x[0, 0, :2] = 1.0
    x[1, 2] = 1.0
    x[1, 2, 0] = 2.0  # two coinciding spikes summed by a SEW block: two events
    assert telemetry.event_count(x).tolist() == [2.0, 0.0, 5.0]


def test_names_kept_by_the_caller_give_the_same_report() -> None:
    net = nn.Sequential(SeqConv2d(2, 4, 3, padding=1), LIF(), SeqConv2d(4, 4, 3, padding=1), LIF())
    x = (torch.rand(2, 3, 2, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    names = telemetry.layer_names(net)
    with torch.inference_mode(), telemetry.record(net) as fresh:
        net(x)
    with torch.inference_mode(), telemetry.record(net, names) as kept:
        net(x)
    assert fresh.report() == kept.report()
    assert [layer.name for layer in kept.report()[0].layers] == ["1", "3"]


def test_a_report_without_the_synaptic_layers_has_the_same_totals() -> None:
    net = nn.Sequential(SeqConv2d(2, 4, 3, padding=1), LIF(), SeqConv2d(4, 4, 3, stride=2, padding=1), LIF())
    x = (torch.rand(3, 4, 2, 7, 7, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    with torch.inference_mode(), telemetry.record(net) as recorder:
        net(x)
    full, summary = recorder.report(), recorder.report(synaptic_layers=False)
    assert all(sample.synaptic_layers for sample in full)
    assert all(sample.synaptic_layers == () for sample in summary)
    for whole, short in zip(full, summary, strict=True):
        assert short.layers == whole.layers
        assert short.spikes == whole.spikes and short.synaptic_ops == whole.synaptic_ops
        assert short.synaptic_ops_nominal == whole.synaptic_ops_nominal
        assert short.energy_uj == pytest.approx(sum(layer.energy_uj for layer in whole.synaptic_layers))


def test_a_layer_called_twice_in_one_forward_adds_up_its_calls() -> None:
    conv, lif = SeqConv2d(2, 3, 3, padding=1), LIF()
    x = (torch.rand(2, 2, 2, 5, 5, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    with torch.inference_mode(), telemetry.record(nn.ModuleList([conv, lif])) as twice:
        lif(conv(x))
        lif(conv(x.flip(-1)))
    with torch.inference_mode(), telemetry.record(nn.ModuleList([conv, lif])) as once:
        lif(conv(x))
    first = once.report()
    with torch.inference_mode(), telemetry.record(nn.ModuleList([conv, lif])) as other:
        lif(conv(x.flip(-1)))
    second = other.report()
    for both, a, b in zip(twice.report(), first, second, strict=True):
        assert both.spikes == a.spikes + b.spikes
        assert both.synaptic_ops == a.synaptic_ops + b.synaptic_ops
        assert both.synaptic_ops_nominal == pytest.approx(a.synaptic_ops_nominal + b.synaptic_ops_nominal)


def test_a_neuron_keeps_a_per_position_map_of_conv_shaped_spikes_for_the_next_conv() -> None:
    """[T, B, C, H, W] spikes: one pass gives the total and the map the next conv's exact count
    reads; other shapes keep only the total."""
    lif = LIF()
    with telemetry.record(lif) as recorder:
        spikes = lif(torch.rand(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 3)
        events, per_position = recorder.input_activity(spikes)
        tokens = lif(torch.rand(2, 3, 7, 8, generator=torch.Generator().manual_seed(1)) * 3)
        token_events, no_map = recorder.input_activity(tokens)
    assert per_position is not None and no_map is None
    assert torch.equal(per_position, spikes.sum(dim=2).reshape(6, 30))
    assert events.dtype == torch.int64 and events.tolist() == spikes.sum(dim=(0, 2, 3, 4)).long().tolist()
    assert token_events.tolist() == tokens.sum(dim=(0, 2, 3)).long().tolist()
    assert [layer.spikes for layer in recorder.report()[0].layers] == [
        int(spikes[:, 0].sum() + tokens[:, 0].sum())
    ]
