"""The manifest of one checkpoint version: JSON, schema-versioned, validated by pydantic.

This module is the contract between the registry, the trainer and the service. It imports
no torch: the gateway reads manifests without loading a network.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1

# One pattern for every model name: lower-case letters, digits, '-', '_' and '.', starting with a
# letter or digit, at most 64 characters. It keeps names safe as folder names and in URLs.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


def check_model_name(name: str) -> str:
    """Return ``name`` if it follows MODEL_NAME_PATTERN, else raise ValueError saying the rule."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 characters a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it follows ALIAS_PATTERN, else raise ValueError saying the rule."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise ValueError(
            f"invalid alias {alias!r}: use 1-32 characters a-z, 0-9, '_' or '-', starting with a letter"
        )
    return alias


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeSteps(_Strict):
    """How many time steps T a request may ask for; ``default`` when it asks for none."""

    default: int = Field(ge=1, le=256)
    min: int = Field(default=1, ge=1, le=256)
    max: int = Field(default=64, ge=1, le=256)

    @model_validator(mode="after")
    def _ordered(self) -> TimeSteps:
        if not self.min <= self.default <= self.max:
            raise ValueError(
                f"time steps need min <= default <= max, got {self.min}, {self.default}, {self.max}"
            )
        return self


class ImageInput(_Strict):
    """An image model: inputs are resized to height x width, scaled to [0, 1], then (x - mean) / std."""

    kind: Literal["image"] = "image"
    channels: Literal[1, 2, 3]
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: bool = True  # accept other sizes and resize (with a warning); False: 422 on other sizes

    @model_validator(mode="after")
    def _per_channel(self) -> ImageInput:
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{label} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class EventInput(_Strict):
    """An event-camera model: events on a sensor_width x sensor_height sensor, binned into T frames.

    binning ``time_bins``: T equal-duration bins over the recording (tonic ToFrame n_time_bins);
    ``time_window``: bins of ``time_window_us``; ``event_count``: bins of ``event_count`` events.
    """

    kind: Literal["events"] = "events"
    sensor_width: int = Field(ge=1, le=4096)
    sensor_height: int = Field(ge=1, le=4096)
    polarities: Literal[2] = 2
    binning: Literal["time_bins", "time_window", "event_count"] = "time_bins"
    time_window_us: int | None = Field(default=None, ge=1)
    event_count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _binning_parameter(self) -> EventInput:
        if self.binning == "time_window" and self.time_window_us is None:
            raise ValueError("binning 'time_window' needs time_window_us")
        if self.binning == "event_count" and self.event_count is None:
            raise ValueError("binning 'event_count' needs event_count")
        return self


InputSpec = Annotated[ImageInput | EventInput, Field(discriminator="kind")]


DEFAULT_EXIT_THRESHOLD = 0.9


class EarlyExit(_Strict):
    """Whether requests may stop early over time steps (``exit=confidence``) and their defaults.

    A sample stops at the first step, not before ``min_steps``, where the top-1 probability of
    its accumulated output reaches ``threshold``. A network whose forward attends across time
    cannot: ``supported`` is False and ``reason`` says why. A manifest without this field leaves
    the answer to the architecture (the worker asks it) and uses DEFAULT_EXIT_THRESHOLD.
    """

    supported: bool = True
    threshold: float = Field(default=DEFAULT_EXIT_THRESHOLD, gt=0.0, le=1.0)
    min_steps: int = Field(default=1, ge=1, le=256)
    reason: str = ""


class Metric(_Strict):
    name: str
    value: float
    dataset: str
    split: str


class WeightsInfo(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    format: Literal["safetensors"] = "safetensors"


class Manifest(_Strict):
    """One registered version of a model. ``create_model(architecture, **config, neuron=neuron)``
    rebuilds the network that ``weights`` fit."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    architecture: str
    config: dict[str, Any] = Field(default_factory=dict)
    # None: the architecture's own default neuron (create_model(..., neuron=None))
    neuron: dict[str, Any] | None = Field(default_factory=lambda: {"kind": "lif"})
    time_steps: TimeSteps
    input: InputSpec
    labels: tuple[str, ...]
    metrics: tuple[Metric, ...] = ()
    weights: WeightsInfo
    early_exit: EarlyExit | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    software: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("architecture must name a registered architecture")
        return value

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        # the registry passes neuron settings separately: a second 'neuron' would clash at build time
        if "neuron" in value:
            raise ValueError("config must not hold 'neuron'; give neuron settings in the 'neuron' field")
        return value

    @property
    def ref(self) -> str:
        """``name:version``, the exact reference of this checkpoint."""
        return f"{self.name}:{self.version}"
