"""training/recipes.py: every bundled recipe builds its network, fits its data set and stays small."""

from __future__ import annotations

import pytest
import torch

from registry.manifest import EventInput, ImageInput
from training.datasets import MNIST_MEAN, MNIST_STD
from training.recipes import RECIPES, get_recipe
from training.run import build_model

MAX_WEIGHT_BYTES = 10 * 1024 * 1024


def test_the_bundled_checkpoints_have_recipes() -> None:
    assert {"danet-mnist", "spikeformer-nmnist"} <= set(RECIPES)
    with pytest.raises(KeyError, match="danet-mnist"):
        get_recipe("resnet-imagenet")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_a_small_network_for_its_input(name: str) -> None:
    recipe = get_recipe(name)
    model = build_model(recipe)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert weight_bytes <= MAX_WEIGHT_BYTES
    spec = recipe.input_spec()
    channels, height, width = (
        (spec.channels, spec.height, spec.width)
        if isinstance(spec, ImageInput)
        else (spec.polarities, spec.sensor_height, spec.sensor_width)
    )
    x = torch.zeros(recipe.time_steps, 2, channels, height, width)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
    assert recipe.time_step_spec().default == recipe.time_steps


def test_danet_mnist_is_a_dense_additive_small_stem_danet_on_normalised_images() -> None:
    recipe = get_recipe("danet-mnist")
    assert recipe.architecture.startswith("danet_")
    assert recipe.config["connection"] == "dense_additive" and recipe.config["stem"] == "small"
    assert recipe.time_steps == 4 and recipe.data == "mnist5k"
    assert recipe.input_spec() == ImageInput(channels=1, height=28, width=28, mean=MNIST_MEAN, std=MNIST_STD)


def test_spikeformer_nmnist_reads_34x34_events_in_time_bins() -> None:
    recipe = get_recipe("spikeformer-nmnist")
    assert recipe.architecture == "spikeformer_nmnist" and recipe.data == "nmnist5k"
    spec = recipe.input_spec()
    assert isinstance(spec, EventInput)
    assert (spec.sensor_width, spec.sensor_height, spec.binning) == (34, 34, "time_bins")
    assert recipe.max_time_steps == recipe.config.get("max_time_steps", 8)


def test_overrides_change_only_what_is_asked() -> None:
    recipe = get_recipe("danet-mnist")
    short = recipe.with_overrides(epochs=1, max_batches=2)
    assert (short.train.epochs, short.train.max_batches) == (1, 2)
    assert short.train.lr == recipe.train.lr and short.config == recipe.config
    assert recipe.with_overrides() is recipe


def test_danet_nmnist_is_causal_so_streams_keep_its_membranes() -> None:
    recipe = get_recipe("danet-nmnist")
    assert recipe.data == "nmnist5k" and recipe.neuron["kind"] == "lif"
    assert recipe.config["base_width"] == 16  # width 8 peaked at 95.9 % and misread the real digit
    model = build_model(recipe)
    assert model.supports_streaming  # its windows run with kept state (workers/stream_runner.py)
    spec = recipe.input_spec()
    assert isinstance(spec, EventInput) and (spec.sensor_width, spec.sensor_height) == (34, 34)
