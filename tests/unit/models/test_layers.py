"""models/layers.py: what counts as real values, and a conv's output size worked out without running it."""

from __future__ import annotations

import pytest
import torch

from models import telemetry
from models.layers import SeqConv2d, fed_by_real_values


def test_binned_event_counts_are_events() -> None:
    frames = torch.randint(0, 4, (3, 2, 2, 16, 16)).float()
    assert not fed_by_real_values("auto", frames)


@pytest.mark.parametrize(
    "where", [0, 255, 256, 3 * 2 * 2 * 16 * 16 - 1], ids=["first", "last of the head", "after it", "last"]
)
@pytest.mark.parametrize("value", [0.5, -1.0], ids=["a fraction", "a negative count"])
def test_one_real_value_anywhere_makes_the_input_real(where: int, value: float) -> None:
    frames = torch.randint(0, 4, (3, 2, 2, 16, 16)).float()
    frames.view(-1)[where] = value
    assert fed_by_real_values("auto", frames)


def test_a_layer_told_what_it_is_fed_does_not_look() -> None:
    assert fed_by_real_values(True, torch.zeros(2, 2, 1, 3, 3))
    assert not fed_by_real_values(False, torch.rand(2, 2, 1, 3, 3))


@pytest.mark.parametrize(
    "geometry",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=4, padding="same"),
    ],
)
def test_the_reported_macs_are_those_of_the_output_the_conv_makes(geometry: dict[str, object]) -> None:
    conv = SeqConv2d(2, 3, **geometry)  # type: ignore[arg-type]
    x = (torch.rand(2, 1, 2, 9, 7) < 0.5).float()
    with torch.inference_mode(), telemetry.record(conv) as recorder:
        y = conv(x)
    (layer,) = recorder.report()[0].synaptic_layers
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    assert layer.macs == 2 * kernel * 2 * y[0, 0].numel()  # T x (C_in x kernel) x C_out x H' x W'
