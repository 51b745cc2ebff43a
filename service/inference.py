"""What every inference route does between parsing and answering, in one place.

Routes resolve the reference, decode the input off the event loop, then call ``run`` here:
it checks the options against the manifest, builds the ``InferenceRequest``, submits it to the
pool, turns a worker-side error into a typed error, and shapes the v1 answer.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from service.errors import raise_for_result_error
from service.metrics import label_model
from service.state import ServiceState
from workers.errors import InvalidInputError
from workers.protocol import InferenceRequest, InferenceResult

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Options:
    time_steps: int
    top_k: int
    telemetry: str


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def resolve(state: ServiceState, request: Request, ref: str) -> Any:
    """The manifest ``ref`` names now; from here on the request's metrics carry that model."""
    manifest = state.resolver.resolve(ref)
    label_model(request, manifest.name, manifest.version)
    return manifest


def check_options(manifest: Any, time_steps: int | None, top_k: int, telemetry: str) -> Options:
    """Validate the query options against the manifest (T range: 422 naming the range)."""
    limits = manifest.time_steps
    steps = limits.default if time_steps is None else time_steps
    if not limits.min <= steps <= limits.max:
        raise InvalidInputError(
            f"time_steps={steps} is outside the range of {manifest.name}:{manifest.version}: "
            f"use {limits.min}..{limits.max} (default {limits.default})"
        )
    return Options(
        time_steps=steps, top_k=max(1, min(top_k, len(manifest.labels) or top_k)), telemetry=telemetry
    )


def check_kind(manifest: Any, kind: str, route_hint: str) -> None:
    """A model takes images or event recordings; say which route fits when the caller picked the other."""
    if manifest.input.kind != kind:
        raise InvalidInputError(
            f"{manifest.name}:{manifest.version} takes {manifest.input.kind} input, not {kind}; "
            f"use {route_hint}"
        )


async def run(
    state: ServiceState,
    request: Request,
    manifest: Any,
    kind: str,
    array: Any,
    options: Options,
    rid: str,
) -> InferenceResult:
    """Submit one decoded input to the pool and return its (successful) result."""
    inference_request = InferenceRequest(
        request_id=rid,
        model_name=manifest.name,
        model_version=manifest.version,
        kind=kind,  # type: ignore[arg-type]
        array=array,
        time_steps=options.time_steps,
        telemetry=options.telemetry,  # type: ignore[arg-type]
        top_k=options.top_k,
        deadline=time.time() + state.settings.request_timeout_s,
    )
    result = await state.pool.submit(inference_request)
    raise_for_result_error(result.error)
    return result


def answer(result: InferenceResult, warnings: list[str], started: float) -> dict[str, Any]:
    """The v1 answer: request id, model, T, predictions, telemetry, timings, warnings."""
    return {
        "request_id": result.request_id,
        "model": {"name": result.model_name, "version": result.model_version},
        "time_steps": result.time_steps,
        "predictions": [
            {"label": p.label, "index": p.index, "probability": p.probability} for p in result.predictions
        ],
        "telemetry": result.telemetry,
        "timing_ms": {
            "queue": round(result.queue_ms, 3),
            "compute": round(result.compute_ms, 3),
            "total": round((time.perf_counter() - started) * 1000.0, 3),
        },
        "batch_size": result.batch_size,
        "warnings": [*warnings, *result.warnings],
    }
