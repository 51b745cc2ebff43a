"""HTTP routes, thin: parse, call, shape the answer. Errors become answers in service/errors.py."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import console, health, inference, management, stream, v2, workers

ROUTERS: tuple[APIRouter, ...] = (
    console.router,
    health.router,
    inference.router,
    management.router,
    stream.router,
    v2.router,
    v2.infer_router,
    workers.router,
)
