"""Tests of registry/manifest.py: the one name pattern, aliases, and field validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registry.manifest import EventInput, ImageInput, Manifest, TimeSteps, check_alias, check_model_name

WEIGHTS = {"sha256": "0" * 64, "size": 10}


def _manifest(**overrides):
    values = {
        "name": "danet-mnist",
        "version": 1,
        "architecture": "danet_resnet18",
        "time_steps": {"default": 4},
        "input": {"kind": "image", "channels": 1, "height": 28, "width": 28},
        "labels": [str(i) for i in range(10)],
        "weights": WEIGHTS,
        **overrides,
    }
    return Manifest.model_validate(values)


@pytest.mark.parametrize("name", ["a", "danet-mnist", "v1.2_x", "0model", "a" * 64])
def test_model_names_that_follow_the_pattern(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../x", "..", "a/b", "a\\b", ".hidden", "-x", "Tiny", "modèle", "a" * 65, "a" * 300, "a..b", "x\n"],
)
def test_model_names_that_break_the_pattern(name):
    with pytest.raises(ValueError, match="invalid model name"):
        check_model_name(name)


@pytest.mark.parametrize("alias", ["production", "staging", "canary-2", "a_b"])
def test_aliases_that_follow_the_pattern(alias):
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["", "Prod", "1st", "../p", "a" * 33, "a.b"])
def test_aliases_that_break_the_pattern(alias):
    with pytest.raises(ValueError, match="invalid alias"):
        check_alias(alias)


def test_manifest_json_round_trip():
    manifest = _manifest(neuron=None, tags={"k": "v"})
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.neuron is None
    assert again.ref == "danet-mnist:1"


def test_manifest_refuses_bad_fields():
    with pytest.raises(ValidationError, match="neuron"):
        _manifest(config={"neuron": {"kind": "lif"}})
    with pytest.raises(ValidationError, match="architecture"):
        _manifest(architecture=" ")
    with pytest.raises(ValidationError, match="invalid model name"):
        _manifest(name="../x")
    with pytest.raises(ValidationError):
        _manifest(unknown_field=1)
    with pytest.raises(ValidationError):
        _manifest(weights={"sha256": "xyz", "size": 1})


def test_time_steps_and_inputs_validate():
    with pytest.raises(ValidationError, match="min <= default <= max"):
        TimeSteps(default=10, max=4)
    with pytest.raises(ValidationError, match="1 or 3 values"):
        ImageInput(channels=3, height=2, width=2, mean=(0.1, 0.2))
    with pytest.raises(ValidationError, match="time_window_us"):
        EventInput(sensor_width=34, sensor_height=34, binning="time_window")
    spec = _manifest(input={"kind": "events", "sensor_width": 128, "sensor_height": 128}).input
    assert isinstance(spec, EventInput)


def test_early_exit_is_optional_and_checked() -> None:
    from registry.manifest import EarlyExit

    assert EarlyExit().threshold == 0.9 and EarlyExit().supported
    with pytest.raises(ValueError):
        EarlyExit(threshold=0.0)
    with pytest.raises(ValueError):
        EarlyExit(threshold=1.2)
    with pytest.raises(ValueError):
        EarlyExit(min_steps=0)
    refused = EarlyExit(supported=False, reason="attends across time")
    assert EarlyExit.model_validate_json(refused.model_dump_json()) == refused
