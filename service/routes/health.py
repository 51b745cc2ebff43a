"""Probes and scraping: ``/healthz`` (the process answers), ``/readyz`` (default models loaded and
warmed up; ``failed`` names versions that cannot load), ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.errors import error_response
from service.metrics import exposition, refresh_queue_depth
from service.state import get_state

router = APIRouter(tags=["health"])


@router.get("/healthz", name="healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", name="readyz")
async def readyz(request: Request) -> Response:
    state = get_state(request)
    if state.startup_error is not None:
        return error_response(
            "/readyz",
            503,
            "unavailable",
            f"the worker failed to start: {state.startup_error}",
            {"Retry-After": "30"},
        )
    if not state.pool.is_ready():
        return error_response("/readyz", 503, "unavailable", "loading and warming up the default models")
    # ready while at least the pool runs: a version that cannot load is listed under "failed"
    # (its requests get 503 load_failed) rather than keeping every other model from serving
    body: dict[str, Any] = {
        "status": "ready",
        "models": [f"{name}:{version}" for name, version in state.pool.loaded_models()],
        "failed": state.pool.failed_models(),
    }
    return JSONResponse(body)


@router.get("/metrics", name="metrics")
async def metrics(request: Request) -> Response:
    refresh_queue_depth(get_state(request).pool)
    data, content_type = exposition()
    return Response(data, media_type=content_type)
