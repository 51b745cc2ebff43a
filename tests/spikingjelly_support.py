"""Import SpikingJelly 2.0's model zoo in tests, beside our CPU torch.

SpikingJelly's ResNet modules import ``load_state_dict_from_url`` from torchvision, only to
download pretrained weights, which tests never do. torchvision's PyPI wheels are built against
the CUDA torch and fail to load beside our CPU build ("operator torchvision::nms does not
exist"), so the Makefile installs SpikingJelly with --no-deps and, when torchvision is absent,
this module gives those two import paths torch's own ``torch.hub.load_state_dict_from_url``.
Nothing else of torchvision is provided: any other use would fail loudly.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any


def _provide_download_helper() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    import torch.hub

    package = types.ModuleType("torchvision")
    package.__path__ = []  # a package, so that submodule imports resolve to the ones below
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    sys.modules.update(
        {"torchvision": package, "torchvision.models": models, "torchvision.models.utils": utils}
    )


def spikingjelly_modules() -> dict[str, Any]:
    """SpikingJelly's ``sew_resnet``, ``spiking_resnet``, ``neuron``, ``functional`` modules."""
    _provide_download_helper()
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.model import sew_resnet, spiking_resnet

    return {
        "sew_resnet": sew_resnet,
        "spiking_resnet": spiking_resnet,
        "neuron": neuron,
        "functional": functional,
    }
