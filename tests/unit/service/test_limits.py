"""service/limits.py: 413 from the declared length before reading, or while the body streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from service_support import StaticPool, make_client
from starlette.types import Message

from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.settings import Settings


def _call(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Drive ``app`` as a server would; returns (status, JSON body, chunks the app pulled)."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        if pulled >= len(chunks):
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": headers, "query_string": b""}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def _reading_app() -> Any:
    """A FastAPI app whose route reads the whole body, behind the limit."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return BodyLimitMiddleware(app, max_body_bytes=250)


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    status, body, pulled = _call(_reading_app(), [(b"content-length", b"1000")], [b"x" * 100] * 10)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large" and "250-byte limit" in body["error"]["message"]
    assert pulled == 0


def test_streamed_body_is_cut_off_at_the_chunk_that_crosses_the_limit() -> None:
    status, body, pulled = _call(_reading_app(), [], [b"x" * 100] * 10)  # chunked: no length declared
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert pulled == 3  # 100, 200, 300 > 250: stop; the other 7 chunks are never read


def test_bodies_within_the_limit_pass() -> None:
    status, body, _ = _call(_reading_app(), [(b"content-length", b"200")], [b"x" * 100] * 2)
    assert (status, body) == (200, {"size": 200})


def test_the_gateway_enforces_its_limit(tiny_root: Any) -> None:
    with make_client(Settings(registry=tiny_root, max_body_bytes=1000), pool=StaticPool()) as client:
        response = client.post("/v1/models/tiny-danet/classify", content=b"\0" * 5000)
        assert response.status_code == 413
        assert client.get("/healthz").status_code == 200
