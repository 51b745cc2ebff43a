"""Connections a client cannot hold forever: a cap on open connections and a deadline for headers.

uvicorn's own HTTP protocol waits as long as a client likes for a request's headers, and keeps
every connection a client opens. ``guarded_protocol(settings)`` is that protocol (httptools) with

- ``max_connections``: the connection past the cap gets 503 (``too_many_connections``, with
  ``Retry-After``) and is closed at once, before it can send anything;
- ``header_timeout_s``: from the moment a connection opens, or the first byte of a request on a
  kept-alive connection, the headers must be complete within this many seconds, else 408
  (``request_timeout``) and the connection is closed. A request that trickles its headers one
  byte a second gets the same answer as one that sends none.

Idle kept-alive connections are closed by uvicorn after ``keep_alive_timeout_s``; the body's own
deadline (``body_timeout_s``) is enforced while the app reads it (service/limits.py), so it
answers in the error table's format.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

TOO_MANY_CONNECTIONS = "too_many_connections"
REQUEST_TIMEOUT = "request_timeout"
_REASONS = {408: b"Request Timeout", 503: b"Service Unavailable"}


def raw_error(status: int, code: str, message: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 error answer in the project's format, written before any app runs."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {_REASONS[status].decode()}"]
    head += ["content-type: application/json", f"content-length: {len(body)}", "connection: close"]
    head += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin1") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a connection cap and a header deadline (class attributes, set by
    ``guarded_protocol``: uvicorn builds one protocol per connection from the class alone)."""

    max_connections = 1024
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            message = (
                f"the server holds its limit of {self.max_connections} connections "
                "(SPIKESERVE_MAX_CONNECTIONS); retry shortly"
            )
            transport.write(raw_error(503, TOO_MANY_CONNECTIONS, message, (("retry-after", "1"),)))
            transport.close()
            return
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # the first byte of a request on a kept-alive connection
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its body has a deadline of its own
        message = (
            f"the request's headers did not arrive within {self.header_timeout_s:g} s "
            "(SPIKESERVE_HEADER_TIMEOUT_S)"
        )
        self.transport.write(raw_error(408, REQUEST_TIMEOUT, message))
        self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's ``http=``, with ``settings``' cap and header deadline."""
    return type(
        "SpikeserveHttpProtocol",
        (GuardedHttpProtocol,),
        {"max_connections": settings.max_connections, "header_timeout_s": settings.header_timeout_s},
    )
