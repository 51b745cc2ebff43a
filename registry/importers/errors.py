"""Errors of the importers and exporters. They keep the registry's codes, so the service and the
CLI report them like any other registry error."""

from __future__ import annotations

from registry.errors import InvalidWeightsError, RegistryError


class WeightMappingError(InvalidWeightsError):
    """A foreign checkpoint whose tensors do not map one-to-one onto the target architecture:
    a tensor that maps nowhere, one that is missing, or one of the wrong shape."""


class UnsupportedGraphError(InvalidWeightsError):
    """A NIR graph with a node (or a parameter of one) that our networks cannot run."""


class NotExpressibleError(RegistryError, ValueError):
    """A registered network with a layer that the target format cannot express."""

    code = "not_expressible"
