"""A small registry of random-weight networks for the service's tests and benchmarks.

Until the trained zoo/ exists, and to keep tests independent of it, tests build this registry
in a temporary folder:

- ``tiny-danet``: ``danet_resnet18(base_width=8, stem="small", num_classes=10, in_channels=1)``,
  image input 1x28x28 with MNIST's mean/std, T default 4 (range 1..8), alias ``production``;
- ``tiny-spikeformer``: ``spikeformer_nmnist`` narrowed (dim 32, one block), event input on a
  34x34 sensor binned in time_bins, T default 4 (range 1..8), alias ``production``.

Importable from every test (pytest puts tests/ on sys.path through tests/conftest.py) and from
bench/serve.py. Weights come from fixed seeds, so every build is identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMAGE_MODEL = "tiny-danet"
EVENTS_MODEL = "tiny-spikeformer"
LABELS = [str(i) for i in range(10)]

DANET_CONFIG: dict[str, Any] = {"num_classes": 10, "in_channels": 1, "base_width": 8, "stem": "small"}
SPIKEFORMER_CONFIG: dict[str, Any] = {
    "num_classes": 10,
    "in_channels": 2,
    "channels": (8, 16),
    "dim": 32,
    "depth": 1,
    "heads": 2,
}
IMAGE_INPUT: dict[str, Any] = {
    "kind": "image",
    "channels": 1,
    "height": 28,
    "width": 28,
    "mean": [0.1307],
    "std": [0.3081],
}
EVENTS_INPUT: dict[str, Any] = {
    "kind": "events",
    "sensor_width": 34,
    "sensor_height": 34,
    "binning": "time_bins",
}
TIME_STEPS: dict[str, Any] = {"default": 4, "min": 1, "max": 8}


def random_state_dict(architecture: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch

    from models import create_model

    torch.manual_seed(seed)
    model = create_model(architecture, **config)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def register_danet(
    registry: Any, name: str = IMAGE_MODEL, seed: int = 0, config: dict[str, Any] | None = None, **extra: Any
) -> Any:
    """Register one random-weight DANet version of ``name`` (``DANET_CONFIG`` unless ``config``)."""
    config = config or DANET_CONFIG
    return registry.register(
        name,
        architecture="danet_resnet18",
        config=config,
        neuron=None,
        time_steps=TIME_STEPS,
        input=IMAGE_INPUT,
        labels=LABELS,
        weights=random_state_dict("danet_resnet18", config, seed),
        description="random weights, for tests",
        **extra,
    )


def register_spikeformer(
    registry: Any,
    name: str = EVENTS_MODEL,
    seed: int = 0,
    neuron: dict[str, Any] | None = None,
    **extra: Any,
) -> Any:
    """A random-weight Spikeformer on 34x34 event frames (attention across time: streams slide).

    ``neuron``: the manifest's neuron settings (the architecture's default without them)."""
    return registry.register(
        name,
        architecture="spikeformer_nmnist",
        config=SPIKEFORMER_CONFIG,
        neuron=neuron,
        time_steps=TIME_STEPS,
        input=EVENTS_INPUT,
        labels=LABELS,
        # another neuron kind has other parameters (PLIF, the default, learns its tau)
        weights=random_state_dict("spikeformer_nmnist", {**SPIKEFORMER_CONFIG, "neuron": neuron}, seed),
        description="random weights, for tests",
        **extra,
    )


def build_tiny_registry(root: Path) -> Any:
    """A registry at ``root`` with tiny-danet:1 and tiny-spikeformer:1, both aliased ``production``."""
    from registry import Registry

    registry = Registry(root)
    register_danet(registry, aliases=("production",))
    register_spikeformer(registry, aliases=("production",))
    return registry


EVENT_DANET_MODEL = "tiny-event-danet"
EVENT_DANET_CONFIG: dict[str, Any] = {"num_classes": 10, "in_channels": 2, "base_width": 8, "stem": "small"}


def register_event_danet(
    registry: Any,
    name: str = EVENT_DANET_MODEL,
    seed: int = 0,
    input: dict[str, Any] | None = None,
    **extra: Any,
) -> Any:
    """A random-weight LIF DANet on 34x34 event frames: a causal network that streams with its state."""
    return registry.register(
        name,
        architecture="danet_resnet18",
        config=EVENT_DANET_CONFIG,
        neuron=None,
        time_steps={"default": 4, "min": 1, "max": 64},
        input=input or EVENTS_INPUT,
        labels=LABELS,
        weights=random_state_dict("danet_resnet18", EVENT_DANET_CONFIG, seed),
        description="random weights, for tests",
        **extra,
    )
