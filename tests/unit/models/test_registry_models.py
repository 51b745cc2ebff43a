"""Every ``list_models()`` entry, driven by the architecture registry (timm's pattern).

Each architecture runs on a small input: its ``default_input`` shape with T=2 and B=2, or, for a
family whose builders take a width and a stem, a narrow build on 16x16 frames. Checks: logits
[B, classes], no NaN, state that never leaks between forwards (run, other input, reset, run), and
for ``supports_streaming`` models, T single-step streaming calls equal one T-step forward.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import create_model, default_input, list_models
from models._registry import _BUILDERS
from models.base import spiking_layers

NUM_CLASSES = 7
BATCH = 2
STEPS = 2
# Families whose builders take these keywords get a narrow build on small frames, so that the
# deep ImageNet networks stay fast; others run at their default input size.
SHRINK: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "danet_": ({"base_width": 8, "stem": "small"}, (16, 16)),
}
SLOW_AREA = 64 * 64  # default inputs larger than this (DVS 128x128, ImageNet 224x224) are marked slow


def small_case(arch: str) -> tuple[dict[str, Any], tuple[int, ...]]:
    """(builder keywords, input shape [T, B, C, H, W]) for a quick check of ``arch``."""
    spec = default_input(arch)
    channels, height, width = spec["shape"]
    config: dict[str, Any] = {"num_classes": NUM_CLASSES, "in_channels": channels}
    for prefix, (overrides, size) in SHRINK.items():
        if arch.startswith(prefix):
            config.update(overrides)
            height, width = size
    return config, (min(STEPS, spec["time_steps"]), BATCH, channels, height, width)


def product_models() -> list[str]:
    """The architectures the ``models`` package registers: tests register stand-ins of their own
    (a net that raises on purpose, say) in the same registry, and those are not under test here."""
    return [arch for arch in list_models() if _BUILDERS[arch].__module__.startswith("models.")]


def arch_params() -> list[Any]:
    params = []
    for arch in product_models():
        _, shape = small_case(arch)
        slow = shape[-2] * shape[-1] > SLOW_AREA
        params.append(pytest.param(arch, marks=pytest.mark.slow) if slow else arch)
    return params


def build(
    arch: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model in eval mode and two different inputs."""
    config, shape = small_case(arch)
    torch.manual_seed(0)
    model = create_model(arch, **config).eval().to(dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=generator, dtype=dtype) * 2.0
    other = torch.rand(shape, generator=generator, dtype=dtype) * 2.0
    return model, x, other


DANETS = {
    "danet_resnet18", "danet_resnet34", "danet_resnet50", "danet_resnet101", "danet_resnet152",
    "danet_wide_resnet50_2", "danet_resnext50_32x4d", "danet_vgg11", "danet_vgg16",
}  # fmt: skip


def test_every_architecture_states_its_default_input() -> None:
    names = product_models()
    assert DANETS.issubset(names)
    for arch in names:
        spec = default_input(arch)
        assert spec["time_steps"] >= 1, arch
        channels, height, width = spec["shape"]
        assert channels in (1, 2, 3) and height > 0 and width > 0, arch


@pytest.mark.parametrize("arch", arch_params())
def test_forward_is_finite_and_stateless(arch: str) -> None:
    model, x, other = build(arch)
    with torch.no_grad():
        first = model(x)
        assert first.shape == (BATCH, NUM_CLASSES)
        assert torch.isfinite(first).all()
        model(other)
        again = model(x)  # no state survives a forward unless a streaming caller asks
        model.reset_state()
        after_reset = model(x)
    assert torch.equal(first, again)
    assert torch.equal(first, after_reset)


@pytest.mark.parametrize("arch", arch_params())
def test_streaming_steps_equal_one_multistep_forward(arch: str) -> None:
    # float64 keeps batch-size-dependent summation order (T*B folded vs B) from flipping a spike
    # that sits exactly at threshold; the neurons still compute in float32.
    config, _ = small_case(arch)
    with torch.device("meta"):  # shapes only: asking costs no initialisation
        streams = getattr(create_model(arch, **config), "supports_streaming", False)
    if not streams:
        pytest.skip(f"{arch} does not support streaming (it attends across time)")
    model, x, _ = build(arch, torch.float64)
    with torch.no_grad():
        whole = model(x)
        model.set_streaming(True)
        steps = [model(x[t : t + 1]) for t in range(x.shape[0])]
        kept = [n for n in spiking_layers(model) if n.v is not None]
        model.set_streaming(False)
    assert kept, "streaming kept no membrane: the step-by-step calls were independent"
    # Logits are the mean over time of per-step logits, so the streamed steps average to the whole.
    assert torch.allclose(torch.stack(steps).mean(0), whole, rtol=1e-9, atol=1e-9)
