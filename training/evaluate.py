"""Evaluating a registered checkpoint: top-1 accuracy on a split, and the telemetry it costs.

Inputs are prepared from the manifest alone (its input spec and default T), the way the worker
prepares a request, so a number printed here is the number a served model earns:
- ``mnist5k`` needs an image model (1x28x28): scale to [0, 1], normalise, direct-encode;
- ``nmnist5k`` needs an event model on a 34x34 sensor: emulated recordings of the same digits,
  binned by ``models.encoding.events_to_frames`` with the manifest's binning.
(``training.pipelines.dataset_pipeline`` does both, for the trainer too.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import telemetry
from models.base import reset_state
from models.encoding import events_to_frames
from registry.manifest import EventInput, Manifest
from registry.registry import Registry
from training.datasets import Split
from training.pipelines import DatasetMismatchError, Pipeline, dataset_pipeline


@dataclass(frozen=True)
class TelemetrySummary:
    """Means over the evaluated samples, per sample (one forward of T steps)."""

    spike_rate: float
    spikes: float
    synaptic_ops: float
    synaptic_ops_nominal: float
    macs: float
    energy_uj: float
    ann_energy_uj: float


_SUMMED = tuple(f.name for f in fields(TelemetrySummary))


@dataclass(frozen=True)
class EvalReport:
    ref: str
    dataset: str
    split: str
    time_steps: int
    accuracy: float
    n: int
    correct: int
    telemetry: TelemetrySummary | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: Pipeline,
    *,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    with_telemetry: bool = False,
) -> tuple[int, int, TelemetrySummary | None]:
    """(correct, n, telemetry means or None) of ``model`` in eval mode over every sample of ``data``."""
    model.eval()
    correct, totals, samples = 0, np.zeros(len(_SUMMED)), 0
    for x, y in data.batches(batch_size):
        if with_telemetry:
            with telemetry.record(model) as recorder:
                logits = model(x.to(device))
            for sample in recorder.report():
                totals += [getattr(sample, name) for name in _SUMMED]
                samples += 1
        else:
            logits = model(x.to(device))
        reset_state(model)
        correct += int((logits.argmax(dim=1).cpu() == y).sum())
    summary = TelemetrySummary(*(float(v) for v in totals / max(1, samples))) if with_telemetry else None
    return correct, len(data), summary


def evaluate_ref(
    ref: str,
    registry_root: str | Path,
    dataset: str,
    split: Split = "test",
    *,
    time_steps: int | None = None,
    batch_size: int = 100,
    device: str = "cpu",
    with_telemetry: bool = False,
    cache_dir: Path | None = None,
) -> EvalReport:
    """Load ``ref`` from the registry (digest checked) and measure it on ``dataset``/``split``."""
    manifest, model = Registry(registry_root).load(ref, device=device)
    data = dataset_pipeline(
        manifest.input,
        dataset,
        split,
        time_steps=time_steps or manifest.time_steps.default,
        cache_dir=cache_dir,
    )
    correct, n, summary = evaluate_model(
        model, data, batch_size=batch_size, device=device, with_telemetry=with_telemetry
    )
    return EvalReport(
        ref=manifest.ref,
        dataset=dataset,
        split=split,
        time_steps=time_steps or manifest.time_steps.default,
        accuracy=correct / max(1, n),
        n=n,
        correct=correct,
        telemetry=summary,
    )


@torch.no_grad()
def predict_events(manifest: Manifest, model: nn.Module, events: np.ndarray) -> np.ndarray:
    """Class probabilities [classes] float64 of one recording (EVENT_DTYPE [E] on the model's sensor)."""
    spec = manifest.input
    if not isinstance(spec, EventInput):
        raise DatasetMismatchError(f"{manifest.ref} is not an event model")
    frames = events_to_frames(
        events,
        sensor_size=(spec.sensor_width, spec.sensor_height),
        time_steps=manifest.time_steps.default,
        binning=spec.binning,
        time_window_us=spec.time_window_us,
        event_count=spec.event_count,
    )
    logits = model(torch.from_numpy(frames)[:, None])  # [T, 1, 2, H, W] -> [1, classes]
    reset_state(model)
    return torch.softmax(logits.double(), dim=1)[0].numpy()
