"""models/neurons.py against sequences worked out by hand from the LIF equations (see models/neurons.py).

Every input below is a dyadic fraction (0.5, 1.5, 0.625, ...) or chosen far from the threshold,
so the float32 arithmetic is exact or cannot flip a spike, and the expectations are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import telemetry
from models.neurons import LIAF, LIF, PLIAF, PLIF, MultiStepNeuron, neuron_factory


def run(neuron: MultiStepNeuron, inputs: list[float]) -> list[float]:
    """Feed one neuron (B=1, F=1) the sequence ``inputs``; return its output sequence."""
    x = torch.tensor(inputs, dtype=torch.float32).reshape(len(inputs), 1, 1)
    return neuron(x).reshape(-1).tolist()


def test_defaults_are_tau_2_threshold_1_hard_reset_to_0() -> None:
    lif = LIF()
    assert (lif.tau, lif.v_threshold, lif.v_reset) == (2.0, 1.0, 0.0)
    assert lif.decay_input and lif.detach_reset and lif.surrogate_alpha == 4.0


def test_input_exactly_at_threshold_fires() -> None:
    # H[0] = 0 + (2 - 0) / 2 = 1.0 == V_th: fires; reset to 0, so every step repeats.
    assert run(LIF(), [2.0, 2.0, 2.0]) == [1.0, 1.0, 1.0]
    # Just below: H = 0.9990234375 < 1, then 0.999... + (1.998 - 0.999) / 2 = 1.4985 fires.
    assert run(LIF(), [1.998046875, 1.998046875]) == [0.0, 1.0]


def test_charge_with_decay_input() -> None:
    # H = V + (X - V) / 2 with X = 0.625: 0.3125, 0.46875, 0.546875 -> crosses V_th = 0.5 at step 2.
    lif = LIF(v_threshold=0.5)
    assert run(lif, [0.625, 0.625, 0.625]) == [0.0, 0.0, 1.0]


def test_charge_without_decay_input() -> None:
    # H = V - V / 2 + X: 0.625, 0.9375, 1.09375 -> fires at the third step.
    assert run(LIF(decay_input=False), [0.625, 0.625, 0.625]) == [0.0, 0.0, 1.0]
    # The same input with decay_input=True only reaches 0.546875: no spike.
    assert run(LIF(decay_input=True), [0.625, 0.625, 0.625]) == [0.0, 0.0, 0.0]


def test_hard_reset_returns_to_v_reset() -> None:
    # t0: H = 3/2 fires, V = 0.   t1: H = 0 + (1.5 - 0) / 2 = 0.75: silent.
    assert run(LIF(), [3.0, 1.5]) == [1.0, 0.0]


def test_soft_reset_subtracts_the_threshold() -> None:
    # t0: H = 1.5 fires, V = 0.5.   t1: H = 0.5 + (1.5 - 0.5) / 2 = 1.0 fires again.
    assert run(LIF(v_reset=None), [3.0, 1.5]) == [1.0, 1.0]


def test_nonzero_v_reset_is_the_resting_potential() -> None:
    # V[-1] = V_reset = -1. t0: H = -1 + (2 - 0) / 2 = 0; t1: H = 0 + (2 - 1) / 2 = 0.5: silent,
    # where the same input fires at every step from a resting potential of 0.
    lif = LIF(v_reset=-1.0)
    assert run(lif, [2.0, 2.0]) == [0.0, 0.0]
    # t0: H = -1 + (4 - 0) / 2 = 1 fires, resets to -1.
    assert run(lif, [4.0, 4.0]) == [1.0, 1.0]


def test_liaf_passes_relu_of_the_membrane_before_reset() -> None:
    # t0: H = 0.25; t1: H = 0.25 + (3 - 0.25) / 2 = 1.625 (fires, reset to 0); t2: H = -0.5 -> 0.
    assert run(LIAF(), [0.5, 3.0, -1.0]) == [0.25, 1.625, 0.0]
    assert LIAF.analog_output and PLIAF.analog_output and not LIF.analog_output


def test_liaf_resets_like_lif() -> None:
    # After the spike at t1 the membrane is 0, so t2 sees H = 0 + 0.5 / 2 = 0.25 (not 1.625 + ...).
    assert run(LIAF(), [0.5, 3.0, 0.5]) == [0.25, 1.625, 0.25]


def test_multistep_shape_and_dtype_are_kept() -> None:
    x = torch.full((3, 2, 4, 5), 2.0, dtype=torch.float64)
    out = LIF()(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert torch.equal(out, torch.ones_like(x))


def test_plif_starts_at_tau_and_matches_lif() -> None:
    plif = PLIF(tau=4.0)
    assert float(plif.inv_tau().detach()) == pytest.approx(0.25)
    x = torch.tensor([[[1.5]], [[2.5]], [[0.0]], [[4.0]]])
    assert torch.equal(plif(x), LIF(tau=4.0)(x))


def test_plif_gradient_reaches_w() -> None:
    # One step from rest: H = X * sigmoid(w), S = step(H - 1).
    # dS/dw = alpha * s * (1 - s) * X * sigmoid'(w), with s = sigmoid(alpha * (H - 1)).
    plif = PLIF(tau=2.0)
    x = torch.tensor([[[1.5]]])
    plif(x).sum().backward()
    h = 1.5 * 0.5
    s = 1.0 / (1.0 + math.exp(-4.0 * (h - 1.0)))
    expected = 4.0 * s * (1.0 - s) * 1.5 * 0.25
    assert plif.w.grad is not None
    assert float(plif.w.grad) == pytest.approx(expected, rel=1e-5)


def test_surrogate_gradient_reaches_the_input() -> None:
    # LIF, one step: dS/dX = alpha * s * (1 - s) / tau at H = X / tau.
    x = torch.tensor([[[1.5]]], requires_grad=True)
    LIF()(x).sum().backward()
    s = 1.0 / (1.0 + math.exp(-4.0 * (0.75 - 1.0)))
    assert float(x.grad) == pytest.approx(4.0 * s * (1.0 - s) * 0.5, rel=1e-5)


def test_state_does_not_survive_between_forwards() -> None:
    lif = LIF()
    first = run(lif, [1.5, 1.5])
    assert run(lif, [1.5, 1.5]) == first == [0.0, 1.0]
    assert lif.v is None


def test_streaming_continues_the_membrane() -> None:
    x = torch.tensor([1.5, 1.5, 0.5, 3.0, 1.5]).reshape(5, 1, 1)
    whole = LIF()(x)
    streamer = LIF()
    streamer.streaming = True
    parts = torch.cat([streamer(x[:1]), streamer(x[1:3]), streamer(x[3:])])
    assert torch.equal(parts, whole)
    # Step 1 fires only because step 0 charged the membrane to 0.75 (alone it would reach 0.75).
    assert whole.reshape(-1).tolist()[:2] == [0.0, 1.0]


def test_reset_state_forgets_the_membrane() -> None:
    streamer = LIF()
    streamer.streaming = True
    streamer(torch.tensor([1.5]).reshape(1, 1, 1))  # membrane now 0.75
    assert streamer.v is not None and float(streamer.v) == pytest.approx(0.75)
    streamer.reset_state()
    assert streamer.v is None
    # From rest, 1.5 gives H = 0.75: silent (with the kept 0.75 it would have fired).
    assert run(streamer, [1.5]) == [0.0]


def test_neurons_report_spikes_to_telemetry() -> None:
    lif = LIF()
    x = torch.tensor([[2.0, 0.0], [2.0, 2.0], [0.0, 2.0]]).reshape(3, 2, 1)  # [T=3, B=2, F=1]
    with telemetry.record(lif) as recorder:
        lif(x)
    samples = recorder.report()
    assert [s.spikes for s in samples] == [2, 2]
    assert samples[0].layers[0].neurons == 1
    assert samples[0].spike_rate == pytest.approx(2 / 3)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_a_channels_last_map_fires_the_same_spikes_and_keeps_its_layout(backend: str) -> None:
    """[T, B, C, H, W] laid out channels_last: the values and the per-position map of the same
    input laid out contiguously; the spikes come back channels_last, for the next conv."""
    from models.kernels.lif import native

    if backend == "native" and native.unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler here")
    x = torch.rand(3, 2, 5, 4, 6, generator=torch.Generator().manual_seed(0)) * 3
    laid = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 2))
    assert laid.stride(2) == 1 and torch.equal(laid, x)
    maps = []
    for given in (x, laid):
        lif = LIF(backend=backend)
        with torch.inference_mode(), telemetry.record(lif) as recorder:
            spikes = lif(given)
            events, per_position = recorder.input_activity(spikes)
        maps.append((spikes, events, per_position))
    (spikes, events, per_position), (laid_spikes, laid_events, laid_map) = maps
    assert laid_spikes.stride(2) == 1 and torch.equal(laid_spikes, spikes)
    assert torch.equal(laid_events, events)
    assert per_position is not None and laid_map is not None and torch.equal(laid_map, per_position)


def test_factory_builds_fresh_configured_neurons() -> None:
    make = neuron_factory("plif", tau=3.0, v_reset=None)
    first, second = make(), make()
    assert isinstance(first, PLIF) and first is not second and first.w is not second.w
    assert first.v_reset is None and float(first.inv_tau().detach()) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "izhikevich"}, "unknown neuron"),
        ({"kind": "lif", "tau": 1.0}, "tau must be > 1"),
        ({"kind": "lif", "backend": "cuda"}, "unknown neuron backend"),
    ],
)
def test_factory_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        neuron_factory(**kwargs)


def test_rejects_input_without_time_and_batch_axes() -> None:
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        LIF()(torch.ones(3))


def test_if_integrates_without_leak_on_the_lif_kernels() -> None:
    from models.neurons import IF

    x = torch.full((6, 1, 1), 0.4)
    spikes = IF()(x).flatten().tolist()
    assert spikes == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]  # 0.4, 0.8, 1.2 fires and resets to 0, ...
    low_threshold = neuron_factory("if", v_threshold=0.5)()
    assert low_threshold(torch.full((2, 1, 1), 0.3)).flatten().tolist() == [0.0, 1.0]
