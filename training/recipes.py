"""Named recipes: one per bundled checkpoint, everything needed to make it again.

A recipe fixes the architecture and its config, the neuron, T, the data set and its input spec,
the optimiser and schedule, the epochs and the seed. ``spikeserve train --recipe NAME`` runs one
and registers the result under the recipe's name; the bundled zoo/ is made only this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from registry.manifest import EventInput, ImageInput, TimeSteps
from training.datasets import EMULATION_SEED, MNIST_MEAN, MNIST_STD
from training.emulator import EmulatorConfig
from training.pipelines import Augment
from training.trainer import TrainConfig

DatasetName = Literal["mnist5k", "nmnist5k"]
DATASETS: tuple[str, ...] = ("mnist5k", "nmnist5k")


@dataclass(frozen=True)
class Recipe:
    """How one checkpoint is made. ``name`` is the model name it registers under."""

    name: str
    architecture: str
    config: dict[str, Any]
    neuron: dict[str, Any]
    time_steps: int
    max_time_steps: int  # the largest T a request may ask for (the manifest's time_steps.max)
    data: DatasetName
    train: TrainConfig
    augment: Augment = field(default_factory=lambda: Augment(max_shift=2))  # training samples only
    description: str = ""
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)  # nmnist5k only
    emulation_seed: int = EMULATION_SEED  # nmnist5k only

    def input_spec(self) -> ImageInput | EventInput:
        """What the manifest says about inputs; the worker prepares requests by it."""
        if self.data == "mnist5k":
            return ImageInput(channels=1, height=28, width=28, mean=MNIST_MEAN, std=MNIST_STD)
        size = self.emulator.sensor_size
        return EventInput(sensor_width=size, sensor_height=size, binning="time_bins")

    def time_step_spec(self) -> TimeSteps:
        return TimeSteps(default=self.time_steps, min=1, max=self.max_time_steps)

    def with_overrides(
        self,
        *,
        epochs: int | None = None,
        max_batches: int | None = None,
        seed: int | None = None,
        loss: str | None = None,
    ) -> Recipe:
        """This recipe with another length, seed or loss (``spikeserve train --epochs/--max-batches/
        --seed/--loss``)."""
        changes: dict[str, Any] = {}
        if loss is not None:
            changes["loss"] = loss
        if epochs is not None:
            changes["epochs"] = epochs
        if max_batches is not None:
            changes["max_batches"] = max_batches
        if seed is not None:
            changes["seed"] = seed
        return replace(self, train=replace(self.train, **changes)) if changes else self


RECIPES: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> None:
    RECIPES[recipe.name] = recipe


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None


_add(
    Recipe(
        name="spikeformer-nmnist",
        architecture="spikeformer_nmnist",
        # T=4 bins of ~79 ms: the three saccades' shapes, at half the cost of T=8 on a CPU
        config={"num_classes": 10, "in_channels": 2, "max_time_steps": 4, "drop_path_rate": 0.0},
        # decay_input off: a neuron's first step sees its whole input (H = X), so the sparse spiking
        # tokenizer passes on more of the digit early in training (faster learning on 3,600 digits)
        neuron={"kind": "plif", "tau": 2.0, "decay_input": False},
        time_steps=4,
        max_time_steps=4,
        data="nmnist5k",
        train=TrainConfig(
            epochs=26,
            batch_size=32,
            optimizer="adamw",
            lr=3e-3,
            weight_decay=0.05,
            warmup_epochs=1.0,
            label_smoothing=0.1,
            grad_clip=5.0,
            patience=10,
            seed=1,
        ),
        augment=Augment(max_shift=2, max_rotation_deg=10.0, max_scale=0.1),
        description="Spikeformer (2 tokenizer blocks, 2 space-time attention blocks, dim 64, PLIF) on "
        "emulated N-MNIST recordings of MNIST-5k digits, 34x34x2 event frames in 4 time bins",
    )
)


_add(
    Recipe(
        name="danet-nmnist",
        architecture="danet_resnet18",
        # base width 16, as danet-mnist: width 8 (a quarter of the MACs) peaked at 95.9 % held-out and
        # misread the real recording
        config={
            "num_classes": 10,
            "in_channels": 2,
            "stem": "small",
            "connection": "dense_additive",
            "base_width": 16,
        },
        # LIF layers only: causal in time, so a stream can keep the membranes from window to window
        neuron={"kind": "lif", "tau": 2.0},
        time_steps=4,
        max_time_steps=64,
        data="nmnist5k",
        train=TrainConfig(
            epochs=14,
            batch_size=32,
            optimizer="adamw",
            lr=5e-3,
            weight_decay=0.01,
            warmup_epochs=0.5,
            label_smoothing=0.1,
            grad_clip=5.0,
            patience=8,
            seed=0,
        ),
        augment=Augment(max_shift=2, max_rotation_deg=10.0, max_scale=0.1),
        description="DANet ResNet-18 (dense additive connections, small stem, base width 16, LIF) on "
        "emulated N-MNIST recordings of MNIST-5k digits, 34x34x2 event frames in 4 time bins",
    )
)


_add(
    Recipe(
        name="danet-mnist",
        architecture="danet_resnet18",
        config={
            "num_classes": 10,
            "in_channels": 1,
            "stem": "small",
            "connection": "dense_additive",
            "base_width": 16,
        },
        neuron={"kind": "lif", "tau": 2.0},
        time_steps=4,
        max_time_steps=64,
        data="mnist5k",
        train=TrainConfig(
            epochs=20,
            batch_size=32,
            optimizer="adamw",
            lr=5e-3,
            weight_decay=0.01,
            warmup_epochs=0.5,
            label_smoothing=0.1,
            grad_clip=5.0,
            patience=10,
            seed=0,
        ),
        description="DANet ResNet-18 (dense additive connections, small stem, base width 16, LIF) on "
        "MNIST-5k digits, direct-encoded over T=4",
    )
)
