"""models/kernels/lif/inductor.py: the compiled reference loop against the eager one.

Compiling on a 2-core CPU takes tens of seconds per neuron configuration (a few with a warm
inductor cache), so the cases that compile are few and marked slow.
"""

from __future__ import annotations

import pytest
import torch

from models.kernels.lif import multistep_lif
from models.kernels.lif.inductor import StaticParams, compiled_loop, unavailable_reason
from models.kernels.lif.reference import multistep_lif as reference

pytestmark = pytest.mark.skipif(
    unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler for inductor here"
)


def _input(shape: tuple[int, ...], seed: int, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 1.5 + 0.4).to(device)


def _params(**overrides: object) -> StaticParams:
    base = {
        "inv_tau": 0.5,
        "v_threshold": 1.0,
        "v_reset": 0.0,
        "decay_input": True,
        "detach_reset": True,
        "surrogate_alpha": 4.0,
        "analog_output": False,
        "return_v": False,
        "count_spikes": False,
        "has_v_init": False,
    }
    return StaticParams(**{**base, **overrides})  # type: ignore[arg-type]


def test_each_static_combination_gets_its_own_compiled_copy() -> None:
    first = compiled_loop(_params(v_threshold=0.7))
    assert compiled_loop(_params(v_threshold=0.7)) is first
    second = compiled_loop(_params(v_threshold=0.8))
    assert second is not first
    # distinct code objects: dynamo's per-code cache never mixes (or runs out for) the two
    codes = {fn._torchdynamo_orig_callable.__code__ for fn in (first, second)}  # type: ignore[attr-defined]
    assert len(codes) == 2


@pytest.mark.slow
def test_inference_matches_the_eager_loop_across_shapes_with_one_compilation() -> None:
    params = {"inv_tau": 0.5, "v_reset": None, "return_v": True, "count_spikes": True}
    with torch.inference_mode():
        for shape in ((4, 3, 1001), (4, 5, 333), (4, 1, 77)):
            x = _input(shape, seed=shape[1])
            got = multistep_lif(x, backend="inductor", **params)
            expected = reference(x, **params)
            assert torch.equal(got.out, expected.out), shape
            assert torch.equal(got.spike_count, expected.spike_count), shape
            torch.testing.assert_close(got.v, expected.v, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_spikes_per_position_come_from_the_loops_own_totals() -> None:
    """The compiled loop adds each neuron's spikes up over the steps as it fires (S = 1 row per
    sample); the map and the totals equal the eager loop's output summed."""
    x = _input((4, 3, 2 * 45), seed=4)  # 2 channels x 45 positions
    with torch.inference_mode():
        got = multistep_lif(x, backend="inductor", inv_tau=0.5, count_positions=45)
        expected = reference(x, inv_tau=0.5)
    assert torch.equal(got.out, expected.out)
    assert got.spikes_per_neuron is not None and torch.equal(got.spikes_per_neuron, expected.out.sum(dim=0))
    assert got.spikes_per_position is not None
    assert torch.equal(got.spikes_per_position, expected.out.sum(dim=0).reshape(3, 2, 45).sum(dim=1))
    with torch.inference_mode():  # a channels_last map's features: [45 positions, 2 channels]
        inner = multistep_lif(x, backend="inductor", inv_tau=0.5, count_positions=45, channels_inner=True)
    assert inner.spikes_per_position is not None
    assert torch.equal(inner.spikes_per_position, expected.out.sum(dim=0).reshape(3, 45, 2).sum(dim=2))


@pytest.mark.slow
def test_training_gradients_match_the_eager_loop() -> None:
    """PLIF (tensor 1/tau) with an initial membrane: one forward+backward compilation."""
    x = _input((3, 2, 129), seed=1).requires_grad_()
    w = torch.tensor(0.2, requires_grad=True)
    v_init = (_input((2, 129), seed=2) * 0.3).requires_grad_()
    grad_out = _input((3, 2, 129), seed=3)
    grads = []
    for backend in ("inductor", "torch"):
        result = multistep_lif(x, backend=backend, inv_tau=torch.sigmoid(w), v_init=v_init, v_reset=None)
        grads.append(torch.autograd.grad((result.out * grad_out).sum(), (x, w, v_init)))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_inside_a_compiled_network_the_loop_joins_the_outer_graph() -> None:
    x = _input((3, 2, 17), seed=4)

    def network(inputs: torch.Tensor) -> torch.Tensor:
        return multistep_lif(inputs * 1.5, backend="inductor", inv_tau=0.5).out.sum(dim=0)

    # aot_eager: dynamo and AOT autograd only, no code generation; fullgraph fails on any break
    compiled = torch.compile(network, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), reference(x * 1.5, inv_tau=0.5).out.sum(dim=0))
