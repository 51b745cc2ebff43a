"""v1 inference: one image or one event recording in, predictions and spiking telemetry out."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from registry.manifest import EventInput, ImageInput
from service import inference
from service.auth import require_api_key
from service.decoding import decode_events, decode_image, decoded_bytes, fit_to_sensor
from service.schemas import ClassifyAnswer, ErrorAnswer, TelemetryQuery
from service.state import get_state
from service.uploads import read_upload
from workers.options import ExitQuery, check_options

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])
# Routes return JSONResponse: the answer is plain JSON data already, and FastAPI's generic encoder
# walking every telemetry layer of every answer costs the event loop measurable time under load.

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (400, 401, 404, 413, 415, 422, 503, 504)
}
_ANSWERS: dict[int | str, dict[str, Any]] = {200: {"model": ClassifyAnswer}, **_ERRORS}

# Images up to this size as float32 (a 256x256 grayscale or 147x147 RGB image; 28x28 digits take
# 3 KiB) decode on the event loop: well under a millisecond, cheaper than a thread hand-off.
INLINE_DECODE_BYTES = 256 * 1024

TimeStepsQuery = Query(None, ge=1, le=256, description="time steps T (default: the model's)")
TopKQuery = Query(5, ge=1, le=1000, description="how many classes to return, most probable first")
TelemetryLevelQuery = Query("summary", description="none | summary | layers (per-layer spike rates)")
ExitModeQuery = Query(
    None,
    description="confidence: run step by step and answer at the first step where the top-1 probability "
    "of the accumulated output reaches exit_threshold (default: all T steps)",
)
# Checked in workers.options with every other option, so v1 and v2 refuse them in the same words.
ExitThresholdQuery = Query(None, description="early-exit confidence, (0, 1] (default: the model's, else 0.9)")
MinStepsQuery = Query(None, description="early exit never stops before this step, 1..T (default 1)")


@router.post("/v1/models/{ref}/classify", responses=_ANSWERS, name="classify")
async def classify(
    request: Request,
    ref: str,
    time_steps: int | None = TimeStepsQuery,
    top_k: int = TopKQuery,
    telemetry: TelemetryQuery = TelemetryLevelQuery,
    exit: str | None = ExitModeQuery,
    exit_threshold: float | None = ExitThresholdQuery,
    min_steps: int | None = MinStepsQuery,
) -> JSONResponse:
    """Classify one image: the raw body (image/png, image/jpeg, application/x-npy) or multipart ``file``."""
    started = time.perf_counter()
    state = get_state(request)
    manifest = inference.resolve(state, request, ref)
    exit_query = ExitQuery(exit, exit_threshold, min_steps)
    hint = f"POST /v1/models/{ref}/events"
    options = check_options(manifest, "image", time_steps, top_k, telemetry, hint, exit_query)
    assert isinstance(manifest.input, ImageInput)  # check_options made sure
    data, content_type = await read_upload(request)
    settings = state.settings
    decode = partial(
        decode_image,
        data,
        content_type,
        manifest.input,
        settings.max_image_pixels,
        settings.max_decoded_bytes,
    )
    size = decoded_bytes(data, content_type)
    async with state.decode_slots.slot(size, settings.request_timeout_s):
        # A small image decodes in less event-loop time than handing it to a thread costs (the
        # hand-off and the GIL passed back and forth were a fifth of the loop's time per answer).
        decoded = decode() if size <= INLINE_DECODE_BYTES else await anyio.to_thread.run_sync(decode)
    label = inference.client_label(request)
    result = await inference.run(state, manifest, decoded.array, options, label)
    return JSONResponse(
        inference.answer(result, list(decoded.warnings), started, label),
        headers=inference.echo_headers(label),
    )


@router.post("/v1/models/{ref}/events", responses=_ANSWERS, name="events")
async def classify_events(
    request: Request,
    ref: str,
    time_steps: int | None = TimeStepsQuery,
    top_k: int = TopKQuery,
    telemetry: TelemetryQuery = TelemetryLevelQuery,
    exit: str | None = ExitModeQuery,
    exit_threshold: float | None = ExitThresholdQuery,
    min_steps: int | None = MinStepsQuery,
    format: str | None = Query(
        None, description="aedat4 | nmnist | npy | aedat3 | aedat2 (default: content type, then magic bytes)"
    ),
    fit: Literal["crop", "scale"] | None = Query(
        None, description="crop or scale a larger sensor to the model's (default: refuse with 422)"
    ),
) -> JSONResponse:
    """Classify one event recording (AEDAT4, N-MNIST .bin, structured .npy): raw body or multipart ``file``.

    The format comes from ``format``, else the content type, else the file's magic bytes."""
    started = time.perf_counter()
    state = get_state(request)
    manifest = inference.resolve(state, request, ref)
    exit_query = ExitQuery(exit, exit_threshold, min_steps)
    hint = f"POST /v1/models/{ref}/classify"
    options = check_options(manifest, "events", time_steps, top_k, telemetry, hint, exit_query)
    spec = manifest.input
    assert isinstance(spec, EventInput)  # check_options made sure
    data, content_type = await read_upload(request)

    def decode() -> tuple[np.ndarray, list[str]]:
        decoded = decode_events(data, content_type, format, state.settings.max_events)
        events, fit_warnings = fit_to_sensor(decoded, spec, fit)
        return events, [*decoded.warnings, *fit_warnings]

    events, warnings = await anyio.to_thread.run_sync(decode)
    label = inference.client_label(request)
    result = await inference.run(state, manifest, events, options, label)
    return JSONResponse(
        inference.answer(result, warnings, started, label), headers=inference.echo_headers(label)
    )
