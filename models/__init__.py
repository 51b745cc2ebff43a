"""What a network IS: neurons, kernels, layers, DANet, Spikeformer, encodings, telemetry.

Importing this package registers every architecture family, so ``create_model`` and
``list_models`` see them all. Nothing here imports from registry/, workers/ or service/.
"""

from models import danet, nir_graph, spikeformer  # noqa: F401  (registers the architectures)
from models._registry import create_model, default_input, list_models, register_model
from models.base import SpikingModel, reset_state, set_backend, set_streaming

__all__ = [
    "SpikingModel",
    "create_model",
    "default_input",
    "list_models",
    "register_model",
    "reset_state",
    "set_backend",
    "set_streaming",
]
