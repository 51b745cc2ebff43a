"""The Open Inference Protocol (KServe v2) over REST, so KServe and Triton clients work unchanged.

- ``GET /v2``: server metadata ``{"name", "version", "extensions"}``.
- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200 when true, 400 when not (the protocol's 4xx).
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata; ``.../ready``: 200 when it can infer.
- ``POST /v2/models/{name}[/versions/{v}]/infer``: one FP32 input named ``input``, an image scaled to
  [0, 1] (before the model's normalisation), shape [C, H, W] or [B, C, H, W]; the answer's output
  ``probabilities`` is FP32 [B, classes]. Request ``parameters`` may set ``time_steps``,
  ``telemetry`` (none | summary | layers) and early exit (``exit`` = "confidence",
  ``exit_threshold``, ``min_steps``, as the v1 query); telemetry and ``time_steps_used`` (one per
  image) come back in the answer's ``parameters``.

Model versions are strings in this protocol; ``{name}`` alone resolves like ``/v1`` (the
``production`` alias, else the latest version). Errors are ``{"error": "<message>", "code"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from registry.errors import ModelNotFoundError
from registry.manifest import ImageInput, Manifest
from service import inference, v2_binary
from service.auth import require_api_key
from service.decoding.errors import PayloadTooLargeError
from service.errors import BadRequestError
from service.metrics import label_model
from service.schemas import V2InferRequest
from service.state import ServiceState, get_state
from workers.errors import InvalidInputError
from workers.options import ExitQuery, check_options
from workers.protocol import InferenceResult

router = APIRouter(tags=["open inference protocol (v2)"])
# with API keys configured, what a model is (and whether it exists) is for key holders only, as
# its inference is; the server's own metadata and health stay open for probes
infer_router = APIRouter(tags=["open inference protocol (v2)"], dependencies=[Depends(require_api_key)])

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
PLATFORM = "pytorch"

try:
    SERVER_VERSION = package_version("spikeserve")
except PackageNotFoundError:  # running from a checkout that was never installed
    SERVER_VERSION = "0+unknown"


def _resolve(state: ServiceState, name: str, version: str | None) -> Manifest:
    if version is None:
        return state.resolver.resolve(name)
    # ASCII digits only: str.isdigit() also takes '¹' (which int() refuses) and '١' (which int() reads as 1)
    if not (version.isascii() and version.isdigit()):
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}: versions are positive integers")
    return state.resolver.resolve(f"{name}:{int(version)}")


def _resolve_for_inference(request: Request, state: ServiceState, name: str, version: str | None) -> Manifest:
    manifest = _resolve(state, name, version)
    label_model(request, manifest.name, manifest.version)
    return manifest


@router.get("/v2", name="v2_server_metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "spikeserve", "version": SERVER_VERSION, "extensions": [v2_binary.EXTENSION]}


@router.get("/v2/health/live", name="v2_live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", name="v2_ready")
async def ready(request: Request) -> Response:
    is_ready = get_state(request).is_ready()
    return _bool_answer("ready", is_ready)


def _bool_answer(key: str, value: bool) -> Response:
    """The protocol reads health from the status: 200 true, 4xx false; the body says it too."""
    return JSONResponse({key: value}, status_code=200 if value else 400)


def _metadata(state: ServiceState, manifest: Manifest) -> dict[str, Any]:
    spec = manifest.input
    versions = [str(m.version) for m in state.registry.versions(manifest.name)]
    if spec.kind == "image":
        inputs = [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, spec.channels, spec.height, spec.width]}
        ]
    else:  # event recordings go to /v1/models/{name}/events; the tensor protocol has no event layout
        inputs = []
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, len(manifest.labels)]}],
        "parameters": {
            "version": str(manifest.version),
            "input_kind": spec.kind,
            # the manifest's input spec (image size and normalisation, or event sensor and binning):
            # what a client needs to prepare input the way the network receives it
            "input": spec.model_dump(mode="json"),
            "time_steps": manifest.time_steps.model_dump(),
            "labels": list(manifest.labels),
        },
    }


@infer_router.get("/v2/models/{name}", name="v2_model_metadata")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    state = get_state(request)
    return _metadata(state, _resolve(state, name, None))


@infer_router.get("/v2/models/{name}/versions/{version}", name="v2_model_version_metadata")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    state = get_state(request)
    return _metadata(state, _resolve(state, name, version))


@infer_router.get("/v2/models/{name}/ready", name="v2_model_ready")
async def model_ready(request: Request, name: str) -> Response:
    state = get_state(request)
    _resolve(state, name, None)  # 404 for an unknown model
    return _bool_answer("ready", state.is_ready())


@infer_router.get("/v2/models/{name}/versions/{version}/ready", name="v2_model_version_ready")
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    state = get_state(request)
    _resolve(state, name, version)
    return _bool_answer("ready", state.is_ready())


@infer_router.post("/v2/models/{name}/infer", name="v2_infer")
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@infer_router.post("/v2/models/{name}/versions/{version}/infer", name="v2_version_infer")
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = get_state(request)
    manifest = _resolve_for_inference(request, state, name, version)
    check_options(manifest, "image", None, 1, "none", f"POST /v1/models/{manifest.name}/events")
    header, binary = v2_binary.split_body(await request.body(), request.headers.get(v2_binary.HEADER_LENGTH))
    try:
        payload = await anyio.to_thread.run_sync(V2InferRequest.model_validate_json, header)
    except ValidationError as exc:
        raise BadRequestError(f"not a valid inference request: {_first_error(exc)}") from None
    raw_inputs = v2_binary.binary_inputs(payload, binary)
    unknown = [output.name for output in payload.outputs or () if output.name != OUTPUT_NAME]
    if unknown:
        raise InvalidInputError(f"{manifest.name} has one output, '{OUTPUT_NAME}'; asked for {unknown}")
    parameters = payload.parameters or {}
    options = check_options(
        manifest,
        "image",
        _int_parameter(parameters, "time_steps"),
        len(manifest.labels) or 1,
        _telemetry(parameters),
        exit=_exit(parameters),
    )
    images = await anyio.to_thread.run_sync(
        _images, payload, raw_inputs, manifest, state.settings.max_images_per_request
    )
    # the protocol echoes the request's ``id``; it is a label, like X-Request-ID: each image is its
    # own request under its own server-minted id, and the batcher puts them back together
    label = payload.id or inference.client_label(request)
    results = await _run_all([inference.run(state, manifest, image, options, label) for image in images])
    answer: dict[str, Any] = {
        "model_name": manifest.name,
        "model_version": str(manifest.version),
        "id": label or results[0].request_id,
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "shape": [len(results), len(results[0].probabilities)],
                "datatype": "FP32",
                "data": [p for result in results for p in result.probabilities],
            }
        ],
    }
    out_parameters: dict[str, Any] = {"time_steps": options.time_steps}
    if options.exit_threshold is not None:
        out_parameters["time_steps_used"] = [result.time_steps_used for result in results]
    if options.telemetry != "none":
        out_parameters["telemetry"] = [result.telemetry for result in results]
    answer["parameters"] = out_parameters
    binary_outputs = {OUTPUT_NAME} if v2_binary.wants_binary_output(payload, OUTPUT_NAME) else set()
    return v2_binary.answer_response(answer, binary_outputs)


async def _run_all(runs: list[Coroutine[Any, Any, InferenceResult]]) -> list[InferenceResult]:
    """Every image's result, or the first error: then the others are cancelled, which takes them
    out of the queue (a refused or timed-out request's images are never computed)."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


def _int_parameter(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"parameter {key} must be an integer, got {value!r}")
    return value


def _exit(parameters: dict[str, Any]) -> ExitQuery:
    mode = parameters.get("exit")
    if mode is not None and not isinstance(mode, str):
        raise InvalidInputError(f"parameter exit must be the string 'confidence', got {mode!r}")
    threshold = parameters.get("exit_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise InvalidInputError(f"parameter exit_threshold must be a number, got {threshold!r}")
    return ExitQuery(
        mode, None if threshold is None else float(threshold), _int_parameter(parameters, "min_steps")
    )


def _telemetry(parameters: dict[str, Any]) -> str:
    level = parameters.get("telemetry", "none")
    if level not in ("none", "summary", "layers"):
        raise InvalidInputError(f"parameter telemetry must be none, summary or layers, got {level!r}")
    return str(level)


def _images(
    payload: V2InferRequest, raw_inputs: dict[str, memoryview], manifest: Manifest, max_images: int
) -> list[np.ndarray]:
    """The request's ``input`` tensor (JSON ``data``, or its bytes in ``raw_inputs``) as B images
    [C, H, W] float32, checked against the model (B at most ``max_images``)."""
    tensors = {tensor.name: tensor for tensor in payload.inputs}
    if INPUT_NAME not in tensors:
        given = ", ".join(sorted(tensors)) or "none"
        raise InvalidInputError(f"{manifest.name} takes one input named '{INPUT_NAME}' (got: {given})")
    tensor = tensors[INPUT_NAME]
    if tensor.datatype != "FP32":
        raise InvalidInputError(f"input '{INPUT_NAME}' must be FP32, got {tensor.datatype}")
    spec = manifest.input
    assert isinstance(spec, ImageInput)  # check_options made sure
    expected = (spec.channels, spec.height, spec.width)
    shape = tuple(tensor.shape)
    if shape == expected:
        shape = (1, *expected)
    if len(shape) != 4 or shape[1:] != expected or shape[0] < 1:
        dims = ", ".join(map(str, expected))
        raise InvalidInputError(
            f"input '{INPUT_NAME}' has shape {list(tensor.shape)}; {manifest.name} takes "
            f"[{dims}] or [B, {dims}] (C, H, W), values in [0, 1]"
        )
    if shape[0] > max_images:
        raise PayloadTooLargeError(
            f"input '{INPUT_NAME}' holds {shape[0]} images, over the limit of {max_images} a request "
            "(SPIKESERVE_MAX_IMAGES_PER_REQUEST); send them in several requests"
        )
    try:
        if INPUT_NAME in raw_inputs:
            flat = v2_binary.fp32_values(raw_inputs[INPUT_NAME], INPUT_NAME)
        else:
            flat = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    except OverflowError:  # a JSON integer such as 10**400 has no float32 (nor float64) value
        raise InvalidInputError(f"input '{INPUT_NAME}' holds a number too large for FP32") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"input '{INPUT_NAME}' data is not a list of numbers: {exc}") from None
    needed = int(np.prod(shape))
    if flat.size != needed:
        raise InvalidInputError(
            f"input '{INPUT_NAME}' holds {flat.size} values but its shape {list(tensor.shape)} needs {needed}"
        )
    if not np.isfinite(flat).all():
        raise InvalidInputError(f"input '{INPUT_NAME}' holds NaN or infinite values")
    batch = flat.reshape(shape)
    return [np.ascontiguousarray(image) for image in batch]
