"""Helpers for the gateway's tests (imported by conftest.py and the test modules).

``StaticPool``: a real, torch-free ``WorkerPool`` that answers uniform probabilities (or raises a
given error), for tests of auth, limits, errors and metrics that need no network.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Any

import numpy as np
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from workers.errors import WorkerUnavailableError
from workers.pool import WorkerPool
from workers.protocol import InferenceRequest, InferenceResult, Prediction
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow

ADMIN = "admin-secret-for-tests"


class StaticPool:
    """Answers every request with uniform probabilities over ``classes``, or raises ``error``."""

    def __init__(self, classes: int = 10, error: Exception | None = None, ready: bool = True) -> None:
        self.classes = classes
        self.error = error
        self.ready = ready
        self.submitted: list[InferenceRequest] = []
        self.depths: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        self.submitted.append(request)
        if self.error is not None:
            raise self.error
        p = 1.0 / self.classes
        return InferenceResult(
            request_id=request.request_id,
            model_name=request.model_name,
            model_version=request.model_version,
            time_steps=request.time_steps,
            predictions=tuple(Prediction(str(i), i, p) for i in range(min(request.top_k, self.classes))),
            probabilities=(p,) * self.classes,
        )

    def is_ready(self) -> bool:
        return self.ready

    def queue_depth(self) -> int:
        return sum(self.depths.values())

    def queue_depth_by_model(self) -> dict[str, int]:
        return dict(self.depths)

    def loaded_models(self) -> list[tuple[str, int]]:
        return []

    def describe_workers(self) -> list[dict[str, Any]]:
        return []

    def failed_models(self) -> dict[str, str]:
        return {}

    def unload_model(self, name: str, version: int) -> None:
        pass

    async def open_stream(self, session_id: str, name: str, version: int) -> tuple[StreamMode, int]:
        raise WorkerUnavailableError("StaticPool runs no streams")

    async def run_stream_window(self, window: StreamWindow) -> StreamAnswer:
        raise WorkerUnavailableError("StaticPool runs no streams")

    async def close_stream(self, session_id: str) -> None:
        pass


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout_s} s: {client.get('/readyz').json()}")


def make_client(settings: Settings, pool: WorkerPool | None = None) -> TestClient:
    return TestClient(create_app(settings, pool=pool), raise_server_exceptions=False)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png_bytes(array: Any) -> bytes:
    """array: [H, W] uint8 (grayscale) or [H, W, 3]."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
