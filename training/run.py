"""Running a recipe end to end: data, model, training, the held-out test, registration.

The test split is touched once, after training has chosen its epoch on the validation split; its
accuracy goes into the manifest's metrics with the data set and split it was measured on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from models import create_model
from registry.manifest import Manifest, Metric
from registry.registry import Registry
from training.datasets import LABELS, Split
from training.early_exit import choose_threshold
from training.pipelines import Pipeline, dataset_pipeline
from training.recipes import Recipe
from training.trainer import TrainResult, accuracy, seed_everything, train

PRODUCTION_ALIAS = "production"


@dataclass
class RunOutcome:
    manifest: Manifest
    result: TrainResult
    test_accuracy: float
    seconds: float  # the whole run: data, training, test and registration


def build_model(recipe: Recipe) -> nn.Module:
    """The recipe's network, built as the registry will rebuild it from the manifest."""
    return create_model(recipe.architecture, **recipe.config, neuron=recipe.neuron)


def recipe_data(recipe: Recipe, split: Split, *, cache_dir: Path | None = None) -> Pipeline:
    """One split of the recipe's data set, augmented (``recipe.augment``) only for ``train``."""
    return dataset_pipeline(
        recipe.input_spec(),
        recipe.data,
        split,
        time_steps=recipe.time_steps,
        augment=recipe.augment if split == "train" else None,
        emulator=recipe.emulator,
        emulation_seed=recipe.emulation_seed,
        cache_dir=cache_dir,
    )


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}


def run_recipe(
    recipe: Recipe,
    registry_root: str | Path,
    *,
    device: str = "cpu",
    set_production: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunOutcome:
    """Train ``recipe``, measure it on the held-out test split, register it (and alias it production)."""
    started = time.perf_counter()
    train_data = recipe_data(recipe, "train", cache_dir=cache_dir)
    val_data = recipe_data(recipe, "val", cache_dir=cache_dir)
    log(f"{recipe.name}: {len(train_data)} training and {len(val_data)} validation samples of {recipe.data}")
    seed_everything(recipe.train.seed)
    model = build_model(recipe)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{recipe.architecture}: {parameters:,} parameters, T={recipe.time_steps}")
    result = train(model, train_data, val_data, recipe.train, device=device, progress=progress, log=log)

    test_data = recipe_data(recipe, "test", cache_dir=cache_dir)
    test_accuracy = accuracy(model, test_data, device=device)
    log(f"test accuracy {test_accuracy:.4f} on {len(test_data)} held-out samples (epoch {result.best_epoch})")

    early_exit = choose_threshold(model, val_data, result.best_val_accuracy, device=device)
    log(
        f"early exit: default threshold {early_exit.threshold} (chosen on the validation split)"
        if early_exit.supported
        else f"early exit: not supported ({early_exit.reason})"
    )

    metrics = [
        Metric(name="top1_accuracy", value=test_accuracy, dataset=recipe.data, split="test"),
        Metric(name="top1_accuracy", value=result.best_val_accuracy, dataset=recipe.data, split="val"),
    ]
    tags = {
        "recipe": recipe.name,
        "seed": str(recipe.train.seed),
        "epochs_run": str(len(result.history)),
        "best_epoch": str(result.best_epoch),
        "train_seconds": f"{result.seconds:.0f}",
        "parameters": str(parameters),
        "loss": recipe.train.loss,
    }
    if recipe.data == "nmnist5k":
        tags["emulator"] = recipe.emulator.key()
        tags["emulation_seed"] = str(recipe.emulation_seed)
    registry = Registry(registry_root)
    manifest = registry.register(
        recipe.name,
        architecture=recipe.architecture,
        config=recipe.config,
        neuron=recipe.neuron,
        time_steps=recipe.time_step_spec(),
        input=recipe.input_spec(),
        labels=LABELS,
        weights=state_dict_for_saving(model),
        metrics=metrics,
        description=recipe.description,
        tags=tags,
        aliases=(PRODUCTION_ALIAS,) if set_production else (),
        early_exit=early_exit,
    )
    log(
        f"registered {manifest.ref} in {registry_root}"
        + (f" as @{PRODUCTION_ALIAS}" if set_production else "")
    )
    return RunOutcome(manifest, result, test_accuracy, time.perf_counter() - started)
