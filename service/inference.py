"""What every inference route does between parsing and answering, in one place.

Routes resolve the reference, check the options (``workers.options.check_options``, the one place
for T, kind and top-k), decode the input off the event loop, then call ``run`` here: it mints the
request's id, submits it to the pool (which raises a failed request as its typed error), and
``answer`` shapes the v1 answer.

The id the server correlates on is always one it minted (``new_request_id``): two clients, or one
retrying proxy, may send the same ``X-Request-ID``, and each must still get its own answer. The
client's value is only a label: checked, logged beside the server's id, echoed in the answer.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
from fastapi import Request

from registry.manifest import Manifest
from service.metrics import label_model
from service.state import ServiceState
from workers.options import RunOptions
from workers.protocol import InferenceRequest, InferenceResult, new_request_id

log = logging.getLogger("spikeserve.requests")

_CLIENT_LABEL = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
LABEL_HEADER = "X-Request-ID"


def client_label(request: Request) -> str | None:
    """The caller's ``X-Request-ID`` when it is a sane token (a label only), else None."""
    given = request.headers.get("x-request-id", "")
    return given if _CLIENT_LABEL.fullmatch(given) else None


def echo_headers(label: str | None) -> dict[str, str]:
    """The response header that gives the client its own label back."""
    return {LABEL_HEADER: label} if label is not None else {}


def resolve(state: ServiceState, request: Request, ref: str) -> Manifest:
    """The manifest ``ref`` names now; from here on the request's metrics carry that model."""
    manifest = state.resolver.resolve(ref)
    label_model(request, manifest.name, manifest.version)
    return manifest


async def run(
    state: ServiceState,
    manifest: Manifest,
    array: np.ndarray,
    options: RunOptions,
    label: str | None = None,
) -> InferenceResult:
    """Submit one decoded input to the pool under a fresh server-minted id; its successful result.

    array: [C, H, W] float32 image, or structured events (see ``InferenceRequest``)."""
    request_id = new_request_id()
    if label is not None:
        log.info("request %s carries the client label %s", request_id, label)
    inference_request = InferenceRequest(
        request_id=request_id,
        model_name=manifest.name,
        model_version=manifest.version,
        kind=options.kind,
        array=array,
        time_steps=options.time_steps,
        telemetry=options.telemetry,
        top_k=options.top_k,
        deadline=time.time() + state.settings.request_timeout_s,
        exit_threshold=options.exit_threshold,
        min_steps=options.min_steps,
    )
    return await state.pool.submit(inference_request)


def answer(result: InferenceResult, warnings: list[str], started: float, label: str | None) -> dict[str, Any]:
    """The v1 answer: the server's request id and the client's label, model, T, predictions,
    telemetry, timings, warnings."""
    return {
        "request_id": result.request_id,
        "client_request_id": label,
        "model": {"name": result.model_name, "version": result.model_version},
        "time_steps": result.time_steps,
        **({} if result.time_steps_used is None else {"time_steps_used": result.time_steps_used}),
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
