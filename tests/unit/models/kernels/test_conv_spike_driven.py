"""models/kernels/conv/spike_driven.py: the event-driven conv against torch's dense conv, where it runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.kernels.conv import spike_driven

pytestmark = pytest.mark.skipif(not spike_driven.available(), reason="no C compiler here")


def _events(shape: tuple[int, ...], density: float, seed: int, values: str = "spikes") -> torch.Tensor:
    """[N, C, H, W] channels_last: zeros but for ``density`` of the entries."""
    generator = torch.Generator().manual_seed(seed)
    fired = torch.rand(shape, generator=generator) < density
    if values == "spikes":
        x = fired.float()
    elif values == "counts":  # a SEW sum or binned events: small whole numbers
        x = fired * torch.randint(1, 4, shape, generator=generator).float()
    else:
        x = fired * torch.randn(shape, generator=generator)
    return x.contiguous(memory_format=torch.channels_last)


def _conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int, bias: bool, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias).eval()


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "size"),
    [
        (16, 16, 3, 1, 1, (28, 28)),  # the loops specialised by width and kernel
        (16, 32, 3, 2, 1, (28, 28)),
        (128, 128, 3, 1, 1, (4, 4)),
        (70, 64, 3, 1, 1, (5, 7)),  # channels past one 64-bit mask, a non-square map
        (3, 5, 3, 1, 0, (9, 6)),  # the generic loop: any width, no padding
        (8, 12, 1, 2, 0, (7, 7)),  # a strided 1x1 projection
        (4, 6, 5, 3, 2, (11, 13)),  # larger kernel and stride than the output's step
    ],
)
@pytest.mark.parametrize("values", ["spikes", "counts", "real"])
def test_every_shape_equals_the_dense_conv(
    c_in: int, c_out: int, kernel: int, stride: int, padding: int, size: tuple[int, int], values: str
) -> None:
    conv = _conv(c_in, c_out, kernel, stride, padding, bias=c_out % 2 == 0, seed=c_in)
    x = _events((3, c_in, *size), density=0.12, seed=c_out, values=values)
    with torch.inference_mode():
        assert spike_driven.runs(conv, x)
        got, expected = spike_driven.conv2d(conv, x, max_density=1.0), conv(x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_silent_input_gives_the_bias_and_a_dense_one_the_product() -> None:
    conv = _conv(16, 16, 3, 1, 1, bias=True, seed=0)
    with torch.inference_mode():
        silent = spike_driven.conv2d(conv, _events((2, 16, 6, 6), density=0.0, seed=1))
        dense = _events((2, 16, 6, 6), density=1.0, seed=2)
        forced = spike_driven.conv2d(conv, dense, max_density=1.0)
        torch.testing.assert_close(forced, conv(dense), rtol=1e-5, atol=1e-5)
    assert torch.equal(silent, conv.bias.detach().view(1, 16, 1, 1).expand(2, 16, 6, 6))


@pytest.mark.parametrize(("out_channels", "stride"), [(16, 1), (32, 2), (64, 1)])
def test_an_input_past_the_break_even_density_gets_the_dense_conv(
    out_channels: int, stride: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the dense product is the quicker, it is the one that runs (the same bits as torch's)."""
    conv = _conv(32, out_channels, 3, stride, 1, bias=True, seed=1)
    edge = spike_driven.break_even_density(conv)
    sparse, busy = (_events((2, 32, 8, 8), density=d, seed=4) for d in (edge * 0.5, edge * 2.0))
    with torch.inference_mode():
        expected = conv(busy)
    dense_calls = []
    real_conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(
        torch.nn.functional, "conv2d", lambda *a, **k: dense_calls.append(1) or real_conv2d(*a, **k)
    )
    with torch.inference_mode():
        spike_driven.conv2d(conv, sparse)
        assert dense_calls == []
        assert torch.equal(spike_driven.conv2d(conv, busy), expected) and dense_calls == [1]


def test_new_weights_are_packed_again() -> None:
    """The reordered weights are kept on the conv; a change of its weights (in place) is seen."""
    conv = _conv(16, 16, 3, 1, 1, bias=False, seed=0)
    x = _events((1, 16, 5, 5), density=0.3, seed=3)
    with torch.inference_mode():
        spike_driven.conv2d(conv, x)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(spike_driven.conv2d(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_it_runs_only_where_it_is_free_and_exact() -> None:
    conv = _conv(4, 4, 3, 1, 1, bias=True, seed=0)
    x = _events((2, 4, 6, 6), density=0.2, seed=0)
    with torch.inference_mode():
        assert spike_driven.runs(conv, x)
        assert not spike_driven.runs(conv, x.contiguous())  # NCHW: reading it would need a copy
        assert not spike_driven.runs(conv, x.double())
        assert not spike_driven.runs(_conv(4, 4, 3, 1, 1, True, 0).double(), x)
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
    same = nn.Conv2d(4, 4, 3, padding="same")
    circular = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        assert not any(spike_driven.runs(c, x) for c in (grouped, dilated, same, circular))
    trained = nn.Conv2d(4, 4, 3, padding=1)  # weights that want a gradient, outside no_grad
    assert not spike_driven.runs(trained, x)


def test_an_empty_batch_and_a_map_smaller_than_the_kernel_behave_as_torch() -> None:
    conv = _conv(4, 4, 3, 1, 0, bias=True, seed=0)
    with torch.inference_mode():
        empty = _events((0, 4, 6, 6), density=0.2, seed=0)
        assert spike_driven.conv2d(conv, empty).shape == conv(empty).shape
        with pytest.raises(RuntimeError):
            spike_driven.conv2d(conv, _events((1, 4, 2, 2), density=0.5, seed=0))
