"""The body's limits, enforced while the body streams in: its size and how long it may take.

A request whose ``Content-Length`` is over the size limit gets 413 before one byte of its body is
read. A chunked request (no length) is counted as it arrives: the chunk that crosses the limit
makes ``receive`` raise ``PayloadTooLargeError``, which the error table answers with 413, so the
server never holds more than the limit (plus one chunk) of a hostile upload.

The whole body must arrive within ``body_timeout_s`` of the headers: a client that sends one byte
a second would otherwise hold a connection, a task and its buffer for as long as it likes.
``receive`` raises ``RequestTimeoutError`` (408) when the time is up, and the answer closes the
connection, since the rest of the body was never read.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.decoding.errors import PayloadTooLargeError
from service.errors import error_response
from workers.errors import SpikeserveError


class RequestTimeoutError(SpikeserveError):
    """The client did not send the request (its body) in time: HTTP 408, connection closed."""

    code = "request_timeout"


def _too_large(limit: int) -> str:
    return (
        f"the request body is over the {limit:,}-byte limit (SPIKESERVE_MAX_BODY_BYTES); send a smaller file"
    )


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_body_bytes``, declared or streamed; 408 for
    bodies not complete ``body_timeout_s`` after the headers."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 60.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

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
        loop_deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        body_done = False
        close_after = False

        async def limited_receive() -> Message:
            nonlocal received, body_done, close_after
            if body_done:  # after the body, receive waits for the client to go away: no deadline
                return await receive()
            try:
                # a timeout scope, not wait_for: wait_for wraps every receive in a new task
                async with asyncio.timeout_at(loop_deadline):
                    message = await receive()
            except TimeoutError:
                close_after = True
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_s:g} s "
                    "(SPIKESERVE_BODY_TIMEOUT_S)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    close_after = True
                    raise PayloadTooLargeError(_too_large(limit))
                body_done = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if close_after and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
