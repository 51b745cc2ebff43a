"""Training loop: BPTT through the T steps with the neurons' surrogate gradient.

The loss (``TrainConfig.loss``) is cross-entropy either on the network's logits (``mean``: the mean
over time or the architecture's own head) or on every time step's output, averaged over the steps
(``per_step``: TET's cross-entropy term, as SEENN trains for early exit; it needs the network's
``forward_steps``). The mean-only loss leaves the first steps' outputs free to be unsure, so a
network trained with it can rarely stop early; the per-step loss makes each step's output a good
prediction on its own. Autograd unrolls the neurons' time loop, so this is backpropagation through
time, and the spike's step function passes gradient through its sigmoid surrogate (models/kernels/lif).

AdamW or SGD (Nesterov), a per-step cosine schedule after a linear warm-up, mixed precision on
CUDA (bfloat16 autocast where supported, else float16 with a gradient scaler), fixed seeds, a tqdm
bar showing loss and accuracy, and early stopping on the validation split: the weights kept are
those of the best validation epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models.base import reset_state
from training.evaluate import evaluate_model
from training.pipelines import Pipeline

LOSSES = ("mean", "per_step")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and stopping rule of one run."""

    epochs: int
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # the cosine ends at lr x min_lr_ratio
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    max_batches: int | None = None  # per epoch; a short run for smoke tests
    seed: int = 0
    amp: bool = True  # mixed precision, on CUDA only
    loss: Literal["mean", "per_step"] = "mean"  # cross-entropy on the mean over T, or on every step

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What a run produced: the model holds the best validation epoch's weights."""

    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that shuffles and augments."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only (not on norms, biases, embeddings, PLIF w)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and "embed" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier at step s: linear from ~0 to 1 over warm-up, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _autocast(
    device: torch.device, enabled: bool
) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    """The mixed-precision context and, for float16, the gradient scaler (None otherwise)."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def accuracy(
    model: nn.Module, data: Pipeline, batch_size: int = 128, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on every sample of ``data``."""
    correct, n, _ = evaluate_model(model, data, batch_size=batch_size, device=device)
    return correct / max(1, n)


def classification_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits [B, classes]) of one batch x: [T, B, ...], y: [B] int64, by ``config.loss``.

    ``per_step``: the mean over t of CE(output_t, y), outputs from ``model.forward_steps`` ([T, B,
    classes]); the logits returned are their mean over T, which is what ``forward`` answers.
    """
    if config.loss == "mean":
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing), logits
    forward_steps = getattr(model, "forward_steps", None)
    if forward_steps is None:
        raise ValueError(f"{type(model).__name__} has no forward_steps: the per_step loss needs one")
    outputs = forward_steps(x).float()  # [T, B, classes]
    steps = outputs.shape[0]
    loss = F.cross_entropy(
        outputs.flatten(0, 1), y.repeat(steps), label_smoothing=config.label_smoothing
    )  # the mean over T x B: every step weighs the same
    return loss, outputs.mean(0)


def _limited(batches: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(batches):
        if limit is not None and i >= limit:
            return
        yield item


def train(
    model: nn.Module,
    train_data: Pipeline,
    val_data: Pipeline,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model`` on ``train_data``, select the epoch by accuracy on ``val_data``.

    Call ``seed_everything(config.seed)`` before building the model for a reproducible run (this
    function seeds again for shuffling and augmentation, which keeps those fixed either way).
    """
    device = torch.device(device)
    generator = seed_everything(config.seed)
    model.to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    if config.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    total = steps_per_epoch * config.epochs
    warmup = min(total, max(1, round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total, warmup, config.min_lr_ratio)
    )
    amp_context, scaler = _autocast(device, config.amp)

    result = TrainResult(model=model, best_epoch=0, best_val_accuracy=-1.0)
    best_state: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = _limited(train_data.batches(config.batch_size, generator, shuffle=True), config.max_batches)
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with amp_context:
                loss, logits = classification_loss(model, x, y, config)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            reset_state(model)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        val_accuracy = accuracy(model, val_data, device=device)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / max(1, seen),
            train_accuracy=correct / max(1, seen),
            val_accuracy=val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
        )
        result.history.append(stats)
        improved = val_accuracy > result.best_val_accuracy
        if improved:
            result.best_epoch, result.best_val_accuracy = epoch, val_accuracy
            best_state = copy.deepcopy(model.state_dict())
        log(
            f"epoch {epoch}: loss {stats.train_loss:.4f} train acc {stats.train_accuracy:.4f} "
            f"val acc {val_accuracy:.4f}{' *' if improved else ''} lr {stats.lr:.2e} ({stats.seconds:.0f} s)"
        )
        if (
            config.patience is not None
            and epoch - result.best_epoch >= config.patience
            and epoch < config.epochs
        ):
            result.stopped_early = True
            log(f"early stop: no better validation accuracy for {config.patience} epochs")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
