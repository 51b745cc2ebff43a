"""Measuring early exit over time steps on a split: accuracy, steps used, energy, time per sample.

``evaluate_early_exit`` runs a network the way the worker runs an ``exit=confidence`` request
(``models.early_exit.run_early_exit``: step by step, state kept, samples leaving the batch) and
sums what it costs; ``choose_threshold`` picks, on the validation split, the default threshold a
recipe writes into its manifest. ``spikeserve eval --exit-threshold X [X ...]`` prints these.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import telemetry
from models.base import reset_state
from models.early_exit import NonCausalNetworkError, early_exit_blocker, run_early_exit
from registry.manifest import EarlyExit
from registry.registry import Registry
from training.datasets import Split
from training.pipelines import Pipeline, dataset_pipeline

# The thresholds a recipe chooses its default from, and the accuracy it may give up for fewer steps.
THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
ACCURACY_TOLERANCE = 0.003


@dataclass(frozen=True)
class ExitReport:
    """One threshold on one split. ``steps_histogram[t - 1]``: samples that stopped after step t."""

    threshold: float | None  # None: the plain T-step forward, for comparison
    min_steps: int
    time_steps: int
    n: int
    correct: int
    accuracy: float
    mean_steps: float
    steps_histogram: tuple[int, ...]
    energy_uj: float | None  # mean per sample, over the steps it ran
    synaptic_ops: float | None
    ms_per_sample: float  # wall clock of the whole split / n, at the batch size given

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate_all_steps(
    model: nn.Module,
    data: Pipeline,
    *,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    with_telemetry: bool = True,
) -> ExitReport:
    """The same figures for the plain T-step forward (exit off), to compare against."""
    model.eval()
    correct, n, seconds, energy, sops, time_steps = 0, 0, 0.0, 0.0, 0.0, 0
    for x, y in data.batches(batch_size):
        started = time.perf_counter()
        if with_telemetry:
            with telemetry.record(model) as recorder:
                logits = model(x.to(device))
            samples = recorder.report()
        else:
            logits, samples = model(x.to(device)), []
        reset_state(model)
        seconds += time.perf_counter() - started
        time_steps = x.shape[0]
        correct += int((logits.argmax(dim=1).cpu() == y).sum())
        n += len(y)
        energy += sum(sample.energy_uj for sample in samples)
        sops += sum(sample.synaptic_ops for sample in samples)
    histogram = tuple(n if t == time_steps - 1 else 0 for t in range(time_steps))
    return ExitReport(
        threshold=None,
        min_steps=time_steps,
        time_steps=time_steps,
        n=n,
        correct=correct,
        accuracy=correct / max(1, n),
        mean_steps=float(time_steps),
        steps_histogram=histogram,
        energy_uj=energy / max(1, n) if with_telemetry else None,
        synaptic_ops=sops / max(1, n) if with_telemetry else None,
        ms_per_sample=seconds * 1000.0 / max(1, n),
    )


@torch.no_grad()
def evaluate_early_exit(
    model: nn.Module,
    data: Pipeline,
    threshold: float,
    *,
    min_steps: int = 1,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    with_telemetry: bool = True,
) -> ExitReport:
    """Early exit at ``threshold`` over every sample of ``data`` (x: [T, B, ...] batches)."""
    model.eval()
    correct, n, seconds, energy, sops = 0, 0, 0.0, 0.0, 0.0
    steps_total = 0
    histogram: np.ndarray | None = None
    for x, y in data.batches(batch_size):
        started = time.perf_counter()
        result = run_early_exit(model, x.to(device), threshold, min_steps, with_telemetry=with_telemetry)
        seconds += time.perf_counter() - started
        time_steps = x.shape[0]
        if histogram is None:
            histogram = np.zeros(time_steps, dtype=np.int64)
        histogram += np.bincount(result.steps_used.numpy() - 1, minlength=time_steps)
        steps_total += int(result.steps_used.sum())
        correct += int((result.logits.argmax(dim=1).cpu() == y).sum())
        n += len(y)
        for sample in result.telemetry or ():
            energy += sample.energy_uj
            sops += sample.synaptic_ops
    assert histogram is not None, "the split holds no samples"
    return ExitReport(
        threshold=threshold,
        min_steps=min_steps,
        time_steps=len(histogram),
        n=n,
        correct=correct,
        accuracy=correct / max(1, n),
        mean_steps=steps_total / max(1, n),
        steps_histogram=tuple(int(c) for c in histogram),
        energy_uj=energy / n if with_telemetry else None,
        synaptic_ops=sops / n if with_telemetry else None,
        ms_per_sample=seconds * 1000.0 / max(1, n),
    )


def choose_threshold(
    model: nn.Module,
    val_data: Pipeline,
    full_accuracy: float,
    *,
    grid: Sequence[float] = THRESHOLD_GRID,
    tolerance: float = ACCURACY_TOLERANCE,
    device: str | torch.device = "cpu",
) -> EarlyExit:
    """The manifest's early-exit entry: the threshold of ``grid`` with the fewest mean steps whose
    validation accuracy is within ``tolerance`` of ``full_accuracy`` (all T steps; the highest
    threshold of the grid when none is). An architecture that cannot exit early says why."""
    blocker = early_exit_blocker(model)
    if blocker is not None:
        return EarlyExit(supported=False, reason=blocker)
    best: ExitReport | None = None
    for threshold in grid:
        report = evaluate_early_exit(model, val_data, threshold, device=device, with_telemetry=False)
        if report.accuracy >= full_accuracy - tolerance and (
            best is None or report.mean_steps < best.mean_steps
        ):
            best = report
    return EarlyExit(threshold=best.threshold if best is not None else max(grid))


def evaluate_exit_ref(
    ref: str,
    registry_root: str | Path,
    dataset: str,
    thresholds: Sequence[float],
    split: Split = "test",
    *,
    min_steps: int = 1,
    time_steps: int | None = None,
    batch_size: int = 100,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> list[ExitReport]:
    """``ref`` on ``dataset``/``split``: the T-step forward first, then one report per threshold."""
    manifest, model = Registry(registry_root).load(ref, device=device)
    blocker = early_exit_blocker(model)
    if blocker is not None:
        raise NonCausalNetworkError(f"{manifest.ref}: {blocker}")
    steps = time_steps or manifest.time_steps.default
    data = dataset_pipeline(manifest.input, dataset, split, time_steps=steps, cache_dir=cache_dir)
    reports = [evaluate_all_steps(model, data, batch_size=batch_size, device=device)]
    for threshold in thresholds:
        reports.append(
            evaluate_early_exit(
                model, data, threshold, min_steps=min_steps, batch_size=batch_size, device=device
            )
        )
    return reports
