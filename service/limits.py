"""The body-size limit, enforced while the body streams in.

A request whose ``Content-Length`` is over the limit gets 413 before one byte of its body is read.
A chunked request (no length) is counted as it arrives: the chunk that crosses the limit makes
``receive`` raise ``PayloadTooLargeError``, which the error table answers with 413, so the server
never holds more than the limit (plus one chunk) of a hostile upload.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from workers.errors import PayloadTooLargeError


def _too_large(limit: int) -> str:
    return (
        f"the request body is over the {limit:,}-byte limit (SPIKESERVE_MAX_BODY_BYTES); send a smaller file"
    )


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_body_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = error_response(scope["path"], 413, PayloadTooLargeError.code, _too_large(limit))
            response.headers["Connection"] = "close"  # do not read (or wait for) the rest of the body
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(_too_large(limit))
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
