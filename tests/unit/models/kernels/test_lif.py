"""models/kernels/lif/__init__.py: backend names, availability, and what ``auto`` chooses.

The choice logic is tested with a stand-in timer (no compilation); one slow test lets ``auto``
measure for real on this CPU.
"""

from __future__ import annotations

import threading

import pytest
import torch

import models.kernels.lif as lif
from models.kernels.lif import (
    BackendUnavailableError,
    auto_timings,
    available_backends,
    multistep_lif,
    resolve_backend,
    set_auto_choice,
)
from models.kernels.lif.reference import multistep_lif as reference

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def forget_auto() -> None:
    set_auto_choice(CPU, None)
    yield
    set_auto_choice(CPU, None)


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown neuron backend 'cuda'"):
        resolve_backend("cuda", CPU)


def test_torch_is_always_available() -> None:
    assert "torch" in available_backends(CPU)
    assert resolve_backend("torch", CPU) == "torch"


def test_pinned_auto_choice_is_used_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    set_auto_choice(CPU, "torch")
    assert resolve_backend("auto", CPU) == "torch"
    x = torch.randn(3, 2, 9)
    assert torch.equal(multistep_lif(x, backend="auto", inv_tau=0.5).out, reference(x, inv_tau=0.5).out)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError):
        set_auto_choice(CPU, "triton")
    with pytest.raises(ValueError, match="concrete"):
        set_auto_choice(CPU, "auto")


def test_auto_takes_the_fastest_measured_backend_and_skips_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = {"torch": 3e-3, "inductor": 1e-3}
    failing: set[str] = set()

    def warm_up(backend: str, x: torch.Tensor) -> None:
        if backend in failing:
            raise RuntimeError("compiler crashed")

    monkeypatch.setattr(lif, "available_backends", lambda device: ["torch", "inductor"])
    monkeypatch.setattr(lif, "_warm_up", warm_up)
    monkeypatch.setattr(lif, "_time_once", lambda backend, x: measured[backend])
    assert resolve_backend("auto", CPU) == "inductor"
    assert auto_timings(CPU) == {"torch": 3e-3, "inductor": 1e-3}
    measured["torch"] = 1e-4  # cached: no second measurement
    assert resolve_backend("auto", CPU) == "inductor"

    set_auto_choice(CPU, None)
    failing.add("inductor")
    assert resolve_backend("auto", CPU) == "torch"
    assert set(auto_timings(CPU)) == {"torch"}


def test_auto_interleaves_its_rounds_and_keeps_each_backends_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    samples = {"torch": iter([5.0, 1.0, 9.0]), "inductor": iter([2.0, 3.0, 4.0])}
    monkeypatch.setattr(lif, "_warm_up", lambda backend, x: None)
    monkeypatch.setattr(lif, "_time_once", lambda backend, x: calls.append(backend) or next(samples[backend]))
    timings = lif._time_backends(["torch", "inductor"], torch.zeros(1), repeats=3)
    assert calls == ["torch", "inductor"] * 3
    assert timings == {"torch": 1.0, "inductor": 2.0}


def test_auto_never_times_the_interpreter_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []
    monkeypatch.setattr(lif, "available_backends", lambda device: ["torch", "triton"])
    monkeypatch.setattr(lif, "_warm_up", lambda backend, x: None)
    monkeypatch.setattr(lif, "_time_once", lambda backend, x: timed.append(backend) or 1.0)
    assert resolve_backend("auto", CPU) == "torch"
    assert set(timed) == {"torch"}


def test_auto_cannot_be_measured_while_compiling() -> None:
    def network(x: torch.Tensor) -> torch.Tensor:
        return multistep_lif(x, backend="auto", inv_tau=0.5).out

    with pytest.raises(Exception, match="resolve the 'auto' neuron backend"):
        torch.compile(network, fullgraph=True, backend="aot_eager")(torch.randn(2, 1, 3))


@pytest.mark.slow
def test_auto_measures_every_available_backend_on_this_cpu() -> None:
    chosen = resolve_backend("auto", CPU)
    timings = auto_timings(CPU)
    assert set(timings) == set(available_backends(CPU)) - {"triton"}
    assert chosen == min(timings, key=timings.__getitem__)


def test_eager_neurons_runs_the_reference_whatever_backend_is_named() -> None:
    """What a server does at a T not compiled yet: no compilation, no kernel, the same answer."""
    x = torch.randn(3, 2, 17, generator=torch.Generator().manual_seed(0))
    expected = reference(x, inv_tau=0.5, count_spikes=True)
    with lif.eager_neurons():
        got = lif.multistep_lif(x, backend="no-such-backend", inv_tau=0.5, count_spikes=True)
        seen_elsewhere: list[BaseException] = []

        def other_thread() -> None:  # the override is this thread's only
            try:
                lif.multistep_lif(x, backend="no-such-backend", inv_tau=0.5)
            except ValueError as exc:
                seen_elsewhere.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    torch.testing.assert_close(got.out, expected.out)
    torch.testing.assert_close(got.spike_count, expected.spike_count)
    assert len(seen_elsewhere) == 1
    with pytest.raises(ValueError, match="unknown neuron backend"):
        lif.multistep_lif(x, backend="no-such-backend", inv_tau=0.5)


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("analog_output", [False, True])
def test_the_reference_without_autograd_fires_exactly_as_with_it(
    v_reset: float | None, analog_output: bool
) -> None:
    # inference skips the surrogate's autograd Function; spikes, membranes and counts stay bit-identical,
    # inputs that land exactly on the threshold included
    x = torch.randn(3, 4, 77, generator=torch.Generator().manual_seed(0)) * 2
    x[:, :, :7] = 2.0  # H = 0 + (2 - 0) / 2 = 1.0 = V_th at the first step
    params = {"inv_tau": 0.5, "v_reset": v_reset, "analog_output": analog_output, "return_v": True}
    with torch.enable_grad():
        expected = reference(x, count_spikes=True, **params)
    with torch.inference_mode():
        got = reference(x, count_spikes=True, **params)
    assert torch.equal(got.out, expected.out)
    assert got.v is not None and expected.v is not None and torch.equal(got.v, expected.v)
    assert got.spike_count is not None and expected.spike_count is not None
    assert torch.equal(got.spike_count, expected.spike_count)
    assert expected.out[0, :, :7].min() > 0  # the threshold case fired


@pytest.mark.parametrize("analog_output", [False, True])
def test_spikes_per_position_are_the_output_summed_over_channels(analog_output: bool) -> None:
    """F = 3 channels x 10 positions: one row per step and sample; none for an analog output."""
    x = torch.randn(4, 2, 30, generator=torch.Generator().manual_seed(0)) * 2
    result = lif.multistep_lif(x, inv_tau=0.5, count_positions=10, analog_output=analog_output)
    if analog_output:
        assert result.spikes_per_position is None
        return
    expected = result.out.reshape(4 * 2, 3, 10).sum(dim=1)
    assert result.spikes_per_position is not None
    assert torch.equal(result.spikes_per_position, expected)
    inner = lif.multistep_lif(x, inv_tau=0.5, count_positions=10, channels_inner=True)  # [10, 3] per row
    assert inner.spikes_per_position is not None
    assert torch.equal(inner.spikes_per_position, result.out.reshape(4 * 2, 10, 3).sum(dim=2))


def test_the_reference_adds_each_neurons_spikes_up_over_the_steps() -> None:
    x = torch.randn(5, 3, 7, generator=torch.Generator().manual_seed(1)) * 2
    result = reference(x, inv_tau=0.5, count_per_neuron=True)
    assert result.spikes_per_neuron is not None
    assert torch.equal(result.spikes_per_neuron, result.out.sum(dim=0))
    assert reference(x, inv_tau=0.5, count_per_neuron=True, analog_output=True).spikes_per_neuron is None
