"""Pydantic shapes at the HTTP edge: the v1 answer (for the OpenAPI docs), management bodies, and
the Open Inference Protocol (KServe v2) inference request, which is validated on the way in.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TelemetryQuery = Literal["none", "summary", "layers"]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorAnswer(BaseModel):
    error: ErrorBody


class ModelRef(BaseModel):
    name: str
    version: int


class PredictionOut(BaseModel):
    label: str
    index: int
    probability: float


class LayerOut(BaseModel):
    name: str
    neurons: int
    spikes: int
    spike_rate: float


class SynapticLayerOut(BaseModel):
    name: str
    input: Literal["events", "real"]
    macs: float
    synaptic_ops: float
    synaptic_ops_nominal: float
    energy_uj: float
    energy_share: float


class TelemetryOut(BaseModel):
    """Spike telemetry of one answer; docs/MODELS.md says how each figure is counted."""

    spike_rate: float
    spikes: int
    synaptic_ops: float = Field(description="exact: each input event times the outputs it reaches")
    synaptic_ops_nominal: float = Field(description="the papers' convention: event rate x T x MACs")
    macs: float = Field(description="MACs on real values (charged at E_MAC)")
    dense_macs: float = Field(description="every layer's MACs, over all its time steps")
    energy_uj: float = Field(description="E_MAC x macs + E_AC x synaptic_ops")
    ann_energy_uj: float = Field(description="E_MAC x one step's MACs: an ANN of the same shape, run once")
    layers: list[LayerOut] | None = None
    synaptic_layers: list[SynapticLayerOut] | None = None


class TimingOut(BaseModel):
    queue: float
    compute: float
    total: float


class ClassifyAnswer(BaseModel):
    """The answer of ``/v1/models/{ref}/classify`` and ``/v1/models/{ref}/events``."""

    request_id: str = Field(description="the id the server minted for this request (its logs name it)")
    client_request_id: str | None = Field(
        None, description="the client's X-Request-ID, echoed as a label (never used to match answers)"
    )
    model: ModelRef
    time_steps: int
    time_steps_used: int | None = Field(
        default=None, description="with exit=confidence: the steps run before the answer (<= time_steps)"
    )
    predictions: list[PredictionOut]
    telemetry: TelemetryOut | None
    timing_ms: TimingOut
    batch_size: int
    warnings: list[str]


class AliasBody(BaseModel):
    """``PUT /v1/models/{name}/aliases/{alias}``: the version the alias should point at."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class UploadManifest(BaseModel):
    """The ``manifest`` part of ``POST /v1/models``: everything but the weights and the version."""

    model_config = ConfigDict(extra="forbid")
    name: str
    architecture: str
    config: dict[str, Any] = Field(default_factory=dict)
    neuron: dict[str, Any] | None = None
    time_steps: dict[str, Any]
    input: dict[str, Any]
    labels: list[str]
    metrics: list[dict[str, Any]] = Field(default_factory=list)
    description: str = ""
    tags: dict[str, str] | None = None
    aliases: list[str] = Field(default_factory=list)


# -- Open Inference Protocol (KServe v2), REST ------------------------------------------------


class V2Tensor(BaseModel):
    """``$request_input``: data row-major, flat or nested."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # None when the tensor's bytes follow the JSON (binary_data_size)


class V2RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestOutput] | None = None
