"""Connections a client cannot hold forever (a cap, a deadline for headers), closed so the answer arrives.

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

Every close the server decides on while the client may still be sending (the 408s, the 503, any
``connection: close`` answer such as a 413 or a 408 sent before the body was read) is graceful, as
RFC 9112 section 9.6 asks: the answer goes out followed by a FIN (a half-close), then whatever the
client still sends is read and discarded until it closes its side too, for at most ``LINGER_S``.
A full close with bytes unread, or bytes arriving after it, makes the kernel answer with a reset:
the client's next write fails, and a client that writes its body before reading (or a TCP stack that
drops its receive buffer on a reset) never sees the answer. ``LINGER_S`` bounds what a client that
goes on writing can hold: after it the connection is aborted.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

LINGER_S = 2.0  # Apache's lingering close waits as long; long enough for an answer to be read
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
    """``HttpToolsProtocol`` with a connection cap, a header deadline (class attributes, set by
    ``guarded_protocol``: uvicorn builds one protocol per connection from the class alone) and
    graceful closes."""

    max_connections = 1024
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: TimerHandle | None = None
        self._linger_deadline: TimerHandle | None = None  # set while closing gracefully

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            message = (
                f"the server holds its limit of {self.max_connections} connections "
                "(SPIKESERVE_MAX_CONNECTIONS); retry shortly"
            )
            transport.write(raw_error(503, TOO_MANY_CONNECTIONS, message, (("retry-after", "1"),)))
            self.close_gracefully()
            return
        self._arm_header_deadline()

    @property
    def closing(self) -> bool:
        return self._linger_deadline is not None or self.transport.is_closing()

    def close_gracefully(self) -> None:
        """Half-close now (a FIN after what was written), discard what the client still sends, and
        close when it closes its side or ``LINGER_S`` after this call, whichever comes first."""
        if self.closing:
            return
        self._disarm_header_deadline()
        if not self.transport.can_write_eof():  # TLS has no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # uvicorn pauses reading while a body waits for the app
        # abort, not close: close would wait for a client that reads nothing to take our answer
        self._linger_deadline = self.loop.call_later(LINGER_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._linger_deadline is None:
            super().data_received(data)
        # else: the rest of a request already answered; the client's EOF ends the connection
        # (asyncio closes the transport when eof_received returns nothing)

    def on_response_complete(self) -> None:
        if self._linger_deadline is None:
            super().on_response_complete()
            return
        # closing: no keep-alive timer and no pipelined request after this answer
        self.server_state.total_requests += 1

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # the first byte of a request on a kept-alive connection
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # the request just parsed (not an upgrade)
            cycle.transport = _GracefulCloseTransport(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        if self._linger_deadline is not None:
            self._linger_deadline.cancel()
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
        if self.closing:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its body has a deadline of its own
        message = (
            f"the request's headers did not arrive within {self.header_timeout_s:g} s "
            "(SPIKESERVE_HEADER_TIMEOUT_S)"
        )
        self.transport.write(raw_error(408, REQUEST_TIMEOUT, message))
        self.close_gracefully()


class _GracefulCloseTransport(asyncio.Transport):
    """The connection's transport as a request's cycle sees it: uvicorn's cycle closes the transport
    itself after a ``connection: close`` answer, and here that close is the protocol's graceful one."""

    def __init__(self, protocol: GuardedHttpProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._protocol.closing:  # after the half-close nothing more can be sent
            self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.closing

    def close(self) -> None:
        self._protocol.close_gracefully()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._protocol.transport.get_extra_info(name, default)


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's ``http=``, with ``settings``' cap and header deadline."""
    return type(
        "SpikeserveHttpProtocol",
        (GuardedHttpProtocol,),
        {"max_connections": settings.max_connections, "header_timeout_s": settings.header_timeout_s},
    )
