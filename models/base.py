"""Network-wide operations on spiking models: reset, backend choice, streaming."""

from __future__ import annotations

import torch.nn as nn

from models.neurons import MultiStepNeuron


def spiking_layers(model: nn.Module) -> list[MultiStepNeuron]:
    """Every spiking neuron layer of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, MultiStepNeuron)]


def reset_state(model: nn.Module) -> None:
    """Reset the membrane of every neuron in ``model``."""
    for neuron in spiking_layers(model):
        neuron.reset_state()


def set_backend(model: nn.Module, backend: str) -> None:
    """Run every neuron of ``model`` on ``backend`` (torch, triton, inductor or auto)."""
    for neuron in spiking_layers(model):
        neuron.backend = backend


def set_streaming(model: nn.Module, streaming: bool) -> None:
    """Keep membranes across forwards (step-by-step callers) or start each forward from rest."""
    for neuron in spiking_layers(model):
        neuron.streaming = streaming
        neuron.reset_state()


class SpikingModel(nn.Module):
    """Base class of the architectures: ``forward(x: [T, B, C, H, W]) -> logits [B, classes]``.

    ``supports_streaming`` says whether feeding T steps one at a time (with ``set_streaming``)
    equals one T-step forward; architectures that attend across time set it False and say why in
    ``streaming_blocker`` (shown to a client that asks for early exit).
    """

    supports_streaming = True
    streaming_blocker = ""

    def reset_state(self) -> None:
        reset_state(self)

    def set_backend(self, backend: str) -> None:
        set_backend(self, backend)

    def set_streaming(self, streaming: bool) -> None:
        set_streaming(self, streaming)
