"""Architecture registry: ``@register_model`` builders, looked up by name (timm's pattern).

A builder is a plain function ``builder(**config) -> nn.Module``. Registering by decorator keeps
the list of architectures in one place per family file, with no if/elif chain anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}
_DEFAULT_INPUTS: dict[str, dict[str, Any]] = {}


class UnknownArchitectureError(KeyError):
    """Raised by ``create_model`` for a name that no family registered."""

    def __str__(self) -> str:  # KeyError quotes its message; say it plainly instead
        return str(self.args[0])


def register_model(
    fn: B | None = None, *, default_input: dict[str, Any] | None = None
) -> B | Callable[[B], B]:
    """Register ``fn`` under its own name.

    ``default_input`` documents the input the architecture was designed for, e.g.
    ``{"time_steps": 4, "shape": (3, 224, 224)}``; docs and benchmarks read it.
    """

    def wrap(builder: B) -> B:
        name = builder.__name__
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is registered twice")
        _BUILDERS[name] = builder
        _DEFAULT_INPUTS[name] = dict(default_input or {})
        return builder

    return wrap(fn) if fn is not None else wrap


def create_model(arch: str, **config: Any) -> nn.Module:
    """Build architecture ``arch`` with keyword ``config`` (num_classes, in_channels, ...)."""
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        known = ", ".join(sorted(_BUILDERS))
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {known}") from None
    return builder(**config)


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_BUILDERS)


def default_input(arch: str) -> dict[str, Any]:
    """The input an architecture was designed for: ``{"time_steps": T, "shape": (C, H, W)}``."""
    if arch not in _DEFAULT_INPUTS:
        raise UnknownArchitectureError(f"unknown architecture {arch!r}")
    return dict(_DEFAULT_INPUTS[arch])
