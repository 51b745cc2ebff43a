"""Registry test set-up: an empty registry, valid manifest fields, a tiny architecture of our own.

``registry_test_tinynet`` is registered here (not taken from models/danet.py) so that these tests
depend only on the architecture-registry contract, not on another family's code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from models import _registry
from models.base import SpikingModel
from models.layers import SeqConv2d, SeqLinear, SeqToANN
from models.neurons import neuron_factory
from registry import Registry

TINY_ARCH = "registry_test_tinynet"


class TinyNet(SpikingModel):
    """x: [T, B, C, 8, 8] float -> logits [B, num_classes]: conv, neuron, pool, linear, mean over T."""

    def __init__(self, num_classes: int, in_channels: int, neuron: dict[str, Any] | None) -> None:
        super().__init__()
        self.conv = SeqConv2d(in_channels, 4, 3, padding=1, analog_input=True)
        self.spike = neuron_factory(**(neuron or {"kind": "plif", "tau": 2.0}))()
        self.pool = SeqToANN(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        self.head = SeqLinear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.spike(self.conv(x)))).mean(0)


def registry_test_tinynet(
    num_classes: int = 3, in_channels: int = 2, neuron: dict[str, Any] | None = None
) -> TinyNet:
    return TinyNet(num_classes, in_channels, neuron)


if TINY_ARCH not in _registry.list_models():
    _registry.register_model(registry_test_tinynet, default_input={"time_steps": 2, "shape": (2, 8, 8)})


def _tiny_fields(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``Registry.register`` for the tiny net, weights excluded."""
    fields: dict[str, Any] = {
        "architecture": TINY_ARCH,
        "config": {"num_classes": 3, "in_channels": 2},
        "neuron": {"kind": "plif", "tau": 3.0},
        "time_steps": {"default": 2, "min": 1, "max": 8},
        "input": {"kind": "image", "channels": 2, "height": 8, "width": 8},
        "labels": ["a", "b", "c"],
        "metrics": [{"name": "accuracy", "value": 0.5, "dataset": "toy", "split": "test"}],
        "description": "a tiny test network",
        "tags": {"team": "registry"},
    }
    fields.update(overrides)
    return {"name": name, **fields}


def _tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return registry_test_tinynet(num_classes=3, in_channels=2, neuron={"kind": "plif", "tau": 3.0}).eval()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "zoo", lock_timeout_s=5.0)


@pytest.fixture
def fields() -> dict[str, Any]:
    """Keyword arguments of ``Registry.register`` for the tiny net, weights excluded."""
    return _tiny_fields()


@pytest.fixture
def make_fields() -> Callable[..., dict[str, Any]]:
    """``make_fields(name, **overrides)``: register() keywords for another name or variant."""
    return _tiny_fields


@pytest.fixture
def make_model() -> Callable[[int], TinyNet]:
    """``make_model(seed)``: a tiny net in eval mode with seeded weights."""
    return _tiny_model


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A .safetensors file holding a seeded tiny net's state dict."""
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file(_tiny_model().state_dict(), str(path))
    return path
