"""The figures of docs/MODELS.md for the bundled checkpoints, measured now, printed as Markdown.

    python -m training.report [--registry zoo] [--real ../shared/data/nmnist_sample.bin]

For every recipe registered in the registry (``@production``): parameters, weight file size, T,
data, top-1 on the held-out test split, and per-sample telemetry (mean spike rate, SOPs, MACs and
the energy estimate of models.telemetry) over that split; then what each event model predicts for
the real N-MNIST recording.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eventio import read_events
from registry.errors import ModelNotFoundError
from registry.manifest import EventInput
from registry.registry import Registry
from training.emulator_stats import DEFAULT_REAL
from training.evaluate import evaluate_model, predict_events
from training.pipelines import dataset_pipeline
from training.recipes import RECIPES


def recipe_table() -> str:
    """Markdown: what each recipe fixes (architecture, config, neuron, T, data, optimiser, schedule, seed)."""
    lines = [
        "| recipe | architecture and config | neuron | T | data | optimiser | schedule | seed |",
        "| --- | --- | --- | ---: | --- | --- | --- | ---: |",
    ]
    for name, recipe in sorted(RECIPES.items()):
        train = recipe.train
        config = ", ".join(
            f"{k}={v}" for k, v in recipe.config.items() if k not in ("num_classes", "in_channels")
        )
        neuron = ", ".join(f"{k}={v}" for k, v in recipe.neuron.items())
        optimiser = f"{train.optimizer}, lr {train.lr:g}, weight decay {train.weight_decay:g}"
        optimiser += f", batch {train.batch_size}"
        schedule = (
            f"{train.epochs} epochs max, {train.warmup_epochs:g} warm-up, cosine to {train.min_lr_ratio:g}x, "
            f"early stop after {train.patience}, label smoothing {train.label_smoothing:g}, "
            f"clip {train.grad_clip}"
        )
        augment = recipe.augment
        schedule += f"; shifts ±{augment.max_shift} px" + (
            f", rotations ±{augment.max_rotation_deg:g}°, zoom ±{augment.max_scale:.0%}"
            if augment.max_rotation_deg or augment.max_scale
            else ""
        )
        lines.append(
            f"| `{name}` | `{recipe.architecture}`: {config} | {neuron} | {recipe.time_steps} | "
            f"{recipe.data} | {optimiser} | {schedule} | {train.seed} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", type=Path, default=Path("zoo"))
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="a real N-MNIST .bin recording")
    args = parser.parse_args(argv)
    registry = Registry(args.registry)
    print(recipe_table(), end="\n\n")

    print("| model | architecture | parameters | weights | T | data | top-1 (test) | spike rate | "
          "SOPs / sample (exact) | SOPs nominal | MACs / sample | energy / sample | as an ANN | "
          "training |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    event_models = []
    for name, recipe in sorted(RECIPES.items()):
        try:
            manifest, model = registry.load(f"{name}@production")
        except ModelNotFoundError:
            continue
        data = dataset_pipeline(
            manifest.input,
            recipe.data,
            "test",
            time_steps=manifest.time_steps.default,
            emulator=recipe.emulator,
        )
        correct, n, telemetry = evaluate_model(model, data, with_telemetry=True)
        assert telemetry is not None
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"| `{manifest.ref}` | `{manifest.architecture}` | {parameters:,} | "
            f"{manifest.weights.size / 1e6:.2f} MB | {manifest.time_steps.default} | {recipe.data} | "
            f"{correct / n:.2%} ({correct}/{n}) | {telemetry.spike_rate:.4f} | "
            f"{telemetry.synaptic_ops / 1e6:.2f} M | {telemetry.synaptic_ops_nominal / 1e6:.2f} M | "
            f"{telemetry.macs / 1e6:.2f} M | {telemetry.energy_uj:.2f} µJ | "
            f"{telemetry.ann_energy_uj:.2f} µJ | "
            f"{manifest.tags.get('train_seconds', '?')} s, {manifest.tags.get('epochs_run', '?')} epochs |"
        )
        if isinstance(manifest.input, EventInput):
            event_models.append((manifest, model))

    if event_models and args.real.is_file():
        events = read_events(args.real.read_bytes(), fmt="nmnist").events
        print(f"\nReal recording `{args.real.name}` ({len(events):,} events):\n")
        for manifest, model in event_models:
            probabilities = predict_events(manifest, model, events)
            top = np.argsort(probabilities)[::-1][:3]
            ranked = ", ".join(f"{manifest.labels[i]}: {probabilities[i]:.3f}" for i in top)
            print(f"- `{manifest.ref}` predicts **{manifest.labels[top[0]]}** (top 3: {ranked})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
