"""Early exit over time steps: stop each sample once its accumulated output is confident enough.

SEENN-I (Li et al., NeurIPS 2023, arXiv 2304.01230): a spiking network's cost grows with T, yet
most inputs are decided after a step or two. The network runs step by step with its state kept
(the neurons' streaming mode, in a ``models.stepping.StepState`` of this call: the same layers and
kernels as a T-step forward, one step per call);
after step t a sample's prediction is the softmax of the mean of its outputs so far, and it stops
at the first step t >= min_steps where the top-1 probability reaches its threshold, or at T.

Samples leave the batch as they exit: every kept membrane is cut down to the rows still running
(``StepState.keep_rows``), so a batch costs what its samples need, not what its slowest
one needs, and a sample's answer does not depend on who shared its batch.

Only causal networks can do this (an output after step t that depends on steps <= t only): an
architecture with ``supports_streaming = False`` raises ``NonCausalNetworkError`` with its
``streaming_blocker`` as the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from models import telemetry
from models.stepping import StepState, stepping
from models.telemetry import SampleTelemetry

Forward = Callable[[torch.Tensor], torch.Tensor]


class NonCausalNetworkError(ValueError):
    """The architecture attends across time: its output after step t depends on later steps."""


@dataclass(frozen=True)
class EarlyExitResult:
    """logits: [B, classes] float32, the mean of the step outputs each sample ran;
    steps_used: [B] int64 on the host; telemetry: per sample over the steps it ran, or None."""

    logits: torch.Tensor
    steps_used: torch.Tensor
    telemetry: list[SampleTelemetry] | None = None


def early_exit_blocker(model: nn.Module) -> str | None:
    """Why ``model`` cannot exit early (its architecture's words), or None when it can."""
    if getattr(model, "supports_streaming", True):
        return None
    reason = getattr(model, "streaming_blocker", "") or "its output depends on every time step at once"
    return f"{type(model).__name__} cannot exit early: {reason}"


def _per_sample(values: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(values, device=device)
    return tensor.expand(batch) if tensor.dim() == 0 else tensor.to(device)


@torch.no_grad()
def run_early_exit(
    model: nn.Module,
    x: torch.Tensor,
    threshold: torch.Tensor | float,
    min_steps: torch.Tensor | int = 1,
    *,
    forward: Forward | None = None,
    with_telemetry: bool = False,
    names: dict[int, str] | None = None,
) -> EarlyExitResult:
    """Run ``x`` step by step and stop each sample at its first confident step.

    model: a causal spiking network (its membranes are kept in a state of this call, so the network
    itself is never changed and another thread may use it meanwhile). x: [T, B, ...] in the
    network's dtype and device. threshold: a float or [B] floats in (0, 1]; min_steps: an int or
    [B] ints >= 1 (a sample never stops before it). forward: what runs one step, ``[1, b, ...] ->
    [b, classes]`` (default: ``model`` itself, whose mean over one step is that step's output).
    with_telemetry: record each step and sum each sample's steps with ``telemetry.sum_over_steps``;
    names: ``telemetry.layer_names(model)`` kept by the caller (else worked out once here).
    """
    blocker = early_exit_blocker(model)
    if blocker is not None:
        raise NonCausalNetworkError(blocker)
    run = forward or model
    steps, batch = x.shape[0], x.shape[1]
    thresholds = _per_sample(threshold, batch, x.device).float()
    minimum = _per_sample(min_steps, batch, x.device).long()
    rows = torch.arange(batch, device=x.device)  # the batch rows still running, as indices into x
    sums: torch.Tensor | None = None  # [B, classes] float32: each sample's step outputs summed
    steps_used = torch.full((batch,), steps, dtype=torch.int64)
    per_step: list[list[SampleTelemetry]] = [[] for _ in range(batch)]
    state = StepState()  # this call's membranes; the network's own attributes stay as they are
    if with_telemetry and names is None:
        names = telemetry.layer_names(model)  # once, not at every step
    with stepping(state):
        for t in range(steps):
            step_x = x[t : t + 1] if len(rows) == batch else x[t : t + 1].index_select(1, rows)
            recording = telemetry.record(model, names) if with_telemetry else contextlib.nullcontext()
            with recording as recorder:
                out = run(step_x).float()  # [b, classes]
            if recorder is not None:
                for row, sample in zip(rows.tolist(), recorder.report(), strict=True):
                    per_step[row].append(sample)
            if sums is None:
                sums = torch.zeros((batch, out.shape[-1]), dtype=torch.float32, device=out.device)
            sums.index_add_(0, rows, out)
            if t + 1 == steps:
                break
            confidence = torch.softmax(sums.index_select(0, rows) / (t + 1), dim=-1).amax(dim=-1)
            done = (confidence >= thresholds[rows]) & (minimum[rows] <= t + 1)
            if not bool(done.any()):
                continue
            steps_used[rows[done].cpu()] = t + 1
            rows = rows[~done]
            if len(rows) == 0:
                break
            state.keep_rows((~done).nonzero().squeeze(1))
    assert sums is not None, "x has no time steps"
    logits = sums / steps_used.to(sums.device).unsqueeze(1).float()
    samples = [telemetry.sum_over_steps(steps_run) for steps_run in per_step] if with_telemetry else None
    return EarlyExitResult(logits=logits, steps_used=steps_used, telemetry=samples)
