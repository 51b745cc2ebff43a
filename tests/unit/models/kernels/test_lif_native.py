"""models/kernels/lif/native.py: the C loop against the reference, bit for bit, and how it is built."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from models.kernels.lif import multistep_lif, native
from models.kernels.lif.reference import multistep_lif as reference

pytestmark = pytest.mark.skipif(
    native.unavailable_reason(torch.device("cpu")) is not None, reason="no C compiler here"
)


def _input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 1.5 + 0.4


def _assert_same(got: object, expected: object, case: object) -> None:
    for field in ("out", "v", "spike_count"):
        a, b = getattr(got, field), getattr(expected, field)
        assert (a is None) == (b is None), (field, case)
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), (field, case)


@pytest.mark.parametrize(
    ("inv_tau", "v_reset", "decay_input", "analog_output"),
    list(itertools.product([0.5, 1 / 3, 0.0], [0.0, None, -0.3], [True, False], [False, True])),
)
def test_every_configuration_equals_the_reference_bit_for_bit(
    inv_tau: float, v_reset: float | None, decay_input: bool, analog_output: bool
) -> None:
    """LIF, IF (1/tau = 0, input not decayed), soft and hard reset, LIAF; from rest and from a membrane."""
    x = _input((3, 5, 2 * 77), seed=0)
    params: dict[str, Any] = {"inv_tau": inv_tau, "v_reset": v_reset, "decay_input": decay_input}
    params["analog_output"] = analog_output
    for v_init in (None, _input((5, 154), seed=1) * 0.3):
        with torch.inference_mode():
            kept: dict[str, Any] = {"v_init": v_init, "return_v": True, "count_spikes": True}
            got = multistep_lif(x, backend="native", **kept, **params)
            expected = reference(x, **kept, **params)
        _assert_same(got, expected, (params, v_init is None))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 4, 1001), (16, 2, 5), (4, 3, 12544)])
def test_odd_sizes_equal_the_reference(shape: tuple[int, int, int]) -> None:
    x = _input(shape, seed=2)
    with torch.inference_mode():
        _assert_same(
            multistep_lif(x, backend="native", inv_tau=0.5, count_spikes=True),
            reference(x, inv_tau=0.5, count_spikes=True),
            shape,
        )


def test_a_learned_time_constant_and_a_strided_input_run_in_the_loop() -> None:
    """PLIF's 1/tau is a 0-d tensor; a transposed input is made contiguous first."""
    x = _input((2, 6, 4), seed=3).transpose(0, 1)  # [6, 2, 4], not contiguous
    inv_tau = torch.sigmoid(torch.tensor(0.3))
    with torch.inference_mode():
        _assert_same(
            multistep_lif(x, backend="native", inv_tau=inv_tau, count_spikes=True),
            reference(x, inv_tau=inv_tau, count_spikes=True),
            "plif",
        )


@pytest.mark.parametrize(
    ("channels", "positions", "channels_inner"),
    [
        # F read as [C, P]: tiles of many small planes, of parts of large ones
        (3, 10, False), (200, 16, False), (2, 2500, False), (1, 4096, False),
        # F read as [P, C] (a channels_last map): tiles ending inside a position, one channel
        (16, 49, True), (3, 10, True), (3000, 2, True), (2049, 3, True), (1, 4096, True),
    ],
)  # fmt: skip
def test_spikes_are_counted_per_position_as_they_fire(
    channels: int, positions: int, channels_inner: bool
) -> None:
    """[B, P]: the spikes of each position's channels summed over channels and steps; the loop's
    output is the reference's."""
    x = _input((4, 2, channels * positions), seed=5 if channels_inner else 4)
    layout = dict(count_positions=positions, channels_inner=channels_inner)
    with torch.inference_mode():
        got = native.multistep_lif_native(x, inv_tau=0.5, count_spikes=True, **layout)
        expected = reference(x, inv_tau=0.5, count_spikes=True)
    assert torch.equal(got.out, expected.out) and torch.equal(got.spike_count, expected.spike_count)
    per_neuron = expected.out.sum(dim=0)
    if channels_inner:
        per_position = per_neuron.reshape(2, positions, channels).sum(dim=2)
    else:
        per_position = per_neuron.reshape(2, channels, positions).sum(dim=1)
    assert got.spikes_per_position is not None and torch.equal(got.spikes_per_position, per_position)
    with torch.inference_mode():  # each sample's total comes with the per-position counts, unasked
        unasked = native.multistep_lif_native(x, inv_tau=0.5, **layout)
    assert unasked.spike_count is not None and torch.equal(unasked.spike_count, expected.spike_count)


def test_positions_that_do_not_divide_the_features_are_refused() -> None:
    x = _input((4, 2, 30), seed=4)
    with pytest.raises(ValueError, match="cannot split 30 features into 7"):
        native.multistep_lif_native(x, inv_tau=0.5, count_positions=7)


def test_training_and_other_dtypes_run_the_reference() -> None:
    """Gradients flow (through the reference loop); float64 stays float64."""
    x = _input((3, 2, 9), seed=5).requires_grad_()
    result = multistep_lif(x, backend="native", inv_tau=0.5)
    result.out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    wide = _input((3, 2, 9), seed=6).double()
    assert multistep_lif(wide, backend="native", inv_tau=0.5).out.dtype == torch.float64


def test_an_empty_batch_gives_what_the_reference_gives() -> None:
    x = torch.empty((4, 0, 8))
    with torch.inference_mode():
        _assert_same(
            multistep_lif(x, backend="native", inv_tau=0.5, return_v=True, count_spikes=True),
            reference(x, inv_tau=0.5, return_v=True, count_spikes=True),
            "empty",
        )


def test_processes_starting_together_build_the_library_once_each_into_one_file(tmp_path: Path) -> None:
    """Atomic replace: every process loads a whole library, and the cache holds one, no partials."""
    script = (
        "import torch; from models.kernels.lif import native;"
        "x = torch.full((2, 1, 3), 2.0);"
        "print(native.multistep_lif_native(x, inv_tau=0.5).out.sum().item())"
    )
    env = {"SPIKESERVE_KERNEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())}
    runs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs == ["6.0"] * 3  # h = 2 x 1/2 = 1 reaches the threshold at both steps
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


def test_a_compiler_that_fails_makes_the_backend_unavailable_with_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken, calls = tmp_path / "cc", tmp_path / "calls"
    broken.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\necho 'cc: no such luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(native, "_LIBRARY", None)
    monkeypatch.setattr(native, "_FAILURE", None)
    monkeypatch.setattr(native, "compiler", lambda: str(broken))
    monkeypatch.setenv("SPIKESERVE_KERNEL_CACHE", str(tmp_path / "cache"))
    assert "no such luck" in (native.unavailable_reason(torch.device("cpu")) or "")
    with pytest.raises(OSError, match="no such luck"):
        native.library()
    builds = [line for line in calls.read_text().splitlines() if " -o " in line]
    assert len(builds) == 1  # the failure is kept, not built again at every call
    assert native.unavailable_reason(torch.device("meta")) is not None
