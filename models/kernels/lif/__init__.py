"""Multi-step LIF/PLIF/LIAF: one entry point, several backends.

- ``torch``: the eager reference (``reference.py``), always available, differentiable.
- ``triton``: the fused GPU kernel (``triton.py``); runs on the CPU only under TRITON_INTERPRET=1.
- ``inductor``: the reference loop compiled by ``torch.compile``.
- ``auto``: the fastest backend the tensor's device supports.

An explicit backend that cannot run raises ``BackendUnavailableError``; it never falls back.
"""

from __future__ import annotations

from typing import Any

import torch

from models.kernels.lif.reference import LIFResult, multistep_lif as reference_multistep_lif

BACKENDS = ("torch", "triton", "inductor", "auto")


class BackendUnavailableError(RuntimeError):
    """The requested neuron backend cannot run on this device or installation."""


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend for ``device``; validate explicit names."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "torch"
    return backend


def multistep_lif(x: torch.Tensor, *, backend: str = "torch", **params: Any) -> LIFResult:
    """Dispatch x: [T, B, F] to the chosen backend. See ``reference.multistep_lif`` for params."""
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch":
        return reference_multistep_lif(x, **params)
    raise BackendUnavailableError(f"neuron backend {chosen!r} is not built yet")


__all__ = ["BACKENDS", "BackendUnavailableError", "LIFResult", "multistep_lif", "resolve_backend"]
