"""training/trainer.py: BPTT lowers the loss, seeds fix the run, early stopping keeps the best epoch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from models import create_model
from training.datasets import MNIST_MEAN, MNIST_STD, mnist5k
from training.pipelines import Augment, ImagePipeline
from training.trainer import (
    TrainConfig,
    accuracy,
    classification_loss,
    cosine_with_warmup,
    seed_everything,
    train,
)

TINY = {"num_classes": 10, "in_channels": 1, "stem": "small", "base_width": 4}


def tiny_model() -> torch.nn.Module:
    return create_model("danet_resnet18", **TINY)


@pytest.fixture(scope="module")
def data() -> tuple[ImagePipeline, ImagePipeline]:
    images, labels, _ = mnist5k("train")
    val_images, val_labels, _ = mnist5k("val")
    common = {"time_steps": 2, "mean": MNIST_MEAN, "std": MNIST_STD}
    return (
        ImagePipeline(images[:48], labels[:48], augment=Augment(max_shift=1), **common),
        ImagePipeline(val_images[:32], val_labels[:32], **common),
    )


def test_a_few_batches_lower_the_loss(data) -> None:
    train_data, val_data = data
    seed_everything(0)
    model = tiny_model()
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, warmup_epochs=0.0, max_batches=3, seed=0)
    result = train(model, train_data, val_data, config, progress=False, log=lambda _: None)
    losses = [s.train_loss for s in result.history]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.best_val_accuracy == max(s.val_accuracy for s in result.history)
    assert accuracy(model, val_data) == pytest.approx(result.best_val_accuracy)  # the best epoch is kept


def test_same_seed_same_weights(data) -> None:
    train_data, val_data = data
    config = TrainConfig(epochs=1, batch_size=16, max_batches=2, seed=5)
    states = []
    for _ in range(2):
        seed_everything(config.seed)
        model = tiny_model()
        train(model, train_data, val_data, config, progress=False, log=lambda _: None)
        states.append(model.state_dict())
    for name, tensor in states[0].items():
        torch.testing.assert_close(tensor, states[1][name], rtol=0, atol=0, msg=name)


def test_early_stopping_ends_the_run_when_validation_stalls(data) -> None:
    train_data, val_data = data
    seed_everything(0)
    model = tiny_model()
    # lr 0: only BN statistics move, so validation soon stops improving
    config = TrainConfig(epochs=10, batch_size=16, lr=0.0, max_batches=1, patience=1, seed=0)
    result = train(model, train_data, val_data, config, progress=False, log=lambda _: None)
    assert result.stopped_early and len(result.history) == result.best_epoch + 1 < 10


def test_sgd_is_available_and_unknown_optimisers_are_refused(data) -> None:
    train_data, val_data = data
    seed_everything(0)
    config = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.05, max_batches=1)
    result = train(tiny_model(), train_data, val_data, config, progress=False, log=lambda _: None)
    assert math.isfinite(result.history[0].train_loss)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(epochs=1, optimizer="lamb")  # type: ignore[arg-type]


def test_cosine_schedule_warms_up_then_decays_to_the_floor() -> None:
    factor = cosine_with_warmup(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.505)
    assert factor(100) == pytest.approx(0.01)
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_the_per_step_loss_is_cross_entropy_on_every_step_output() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    x, y = torch.rand((3, 5, 1, 28, 28)), torch.tensor([0, 1, 2, 3, 4])
    config = TrainConfig(epochs=1, loss="per_step", label_smoothing=0.1)
    with torch.no_grad():
        loss, logits = classification_loss(model, x, y, config)
        model.reset_state()
        outputs = model.forward_steps(x)
        model.reset_state()
        mean_loss, _ = classification_loss(model, x, y, TrainConfig(epochs=1, label_smoothing=0.1))
    per_step = [F.cross_entropy(outputs[t], y, label_smoothing=0.1) for t in range(3)]
    assert float(loss) == pytest.approx(float(sum(per_step) / 3), rel=1e-5)
    torch.testing.assert_close(logits, outputs.mean(0))
    mean_loss, _ = classification_loss(model, x, y, TrainConfig(epochs=1, label_smoothing=0.1))
    assert float(mean_loss) == pytest.approx(
        float(F.cross_entropy(outputs.mean(0), y, label_smoothing=0.1)), rel=1e-5
    )
    assert float(mean_loss) != pytest.approx(float(loss))
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(epochs=1, loss="last")  # type: ignore[arg-type]


def test_the_per_step_loss_trains_and_needs_forward_steps(data) -> None:
    train_data, val_data = data
    seed_everything(0)
    config = TrainConfig(epochs=1, batch_size=16, max_batches=2, loss="per_step", seed=0)
    result = train(tiny_model(), train_data, val_data, config, progress=False, log=lambda _: None)
    assert math.isfinite(result.history[0].train_loss)
    no_steps = create_model("spikeformer_mnist", num_classes=10)
    with pytest.raises(ValueError, match="forward_steps"):
        classification_loss(no_steps, torch.rand((2, 1, 1, 28, 28)), torch.tensor([0]), config)
