"""The engine's early-exit path: a batch of ``exit=confidence`` requests, run step by step.

Each request keeps its own threshold and ``min_steps``; ``models.early_exit.run_early_exit`` runs
the batch one time step at a time with the neurons' state kept, and drops each sample from the
batch at its first confident step. The step runs the loaded network itself (BN folded, the
neurons' fused backend, state on the network's device), not the CUDA graphs of a whole T-step
forward: a captured graph replays a fixed batch and T, while here both change from step to step.
On a GPU each step is one launch of the fused neuron kernel per layer, with the membranes kept on
the device.

This module imports torch; the gateway checks the options themselves (``workers.options``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from models.early_exit import early_exit_blocker, run_early_exit
from models.kernels.lif import eager_neurons
from workers.errors import EarlyExitUnsupportedError
from workers.protocol import InferenceRequest

# Engine._prepare_later's "T" for early exit: its one-step calls, streaming, with and without telemetry
PREPARATION = 0


def warm_up(loaded: Any) -> None:
    """Compile what early exit runs (one step at a time, membranes kept, batches shrinking) before a
    request waits for it; runs in the engine's preparing thread, beside the batch thread: the
    membranes live in this call's own state, so the batches running meanwhile are not touched."""
    module = loaded.module
    weight = next(module.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    x = torch.zeros(
        (2, 2, *loaded.sample_shape), device=device, dtype=weight.dtype if weight is not None else None
    )
    with torch.inference_mode():
        for with_telemetry in (False, True):  # steps 1 and 2: from rest and from a kept membrane
            run_early_exit(module, x, 1e-6, torch.tensor([1, 2]), with_telemetry=with_telemetry)
    loaded.early_exit_ready = True


def check(loaded: Any, request: InferenceRequest) -> None:
    """Refuse early exit where the network cannot stop early (422 with its architecture's reason).

    loaded: a ``workers.engine.LoadedModel``. The options (threshold, min_steps) were checked by
    ``workers.options.check_options``; whether the network is causal only the worker knows for
    sure (a manifest registered without an ``early_exit`` entry does not say).
    """
    if not request.early_exit:
        return
    manifest = loaded.manifest
    blocker = early_exit_blocker(loaded.module)
    if blocker is None and manifest.early_exit is not None and not manifest.early_exit.supported:
        blocker = manifest.early_exit.reason or "its manifest says it cannot exit early"
    if blocker is not None:
        raise EarlyExitUnsupportedError(f"{manifest.ref}: {blocker}")


def run(
    loaded: Any,
    x: torch.Tensor,
    requests: Sequence[InferenceRequest],
    want_telemetry: bool,
    eager: bool = False,
) -> tuple[torch.Tensor, list[int], list[dict[str, Any]]]:
    """(logits [B, classes], steps used per request, telemetry dicts over the steps run or [])
    of one batch x: [T, B, ...] of early-exit requests. ``eager``: the neurons' fused backend is
    not ready for one-step calls yet (it is prepared in the background): run them on torch."""
    module = loaded.module
    weight = next(module.parameters(), None)
    if weight is not None:  # bf16 on a GPU, after optimize_for_inference
        x = x.to(device=weight.device, dtype=weight.dtype)
    with eager_neurons() if eager else contextlib.nullcontext():
        result = run_early_exit(
            module,
            x,
            torch.tensor([float(request.exit_threshold or 1.0) for request in requests]),
            torch.tensor([request.min_steps for request in requests]),
            with_telemetry=want_telemetry,
            names=loaded.layer_names,
        )
    samples = [sample.as_dict(with_layers=True) for sample in result.telemetry or ()]
    return result.logits, result.steps_used.tolist(), samples
