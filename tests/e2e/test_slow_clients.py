"""Slow and idle clients cannot hold the server: header, body and keep-alive deadlines, a connection cap.

One real server with short limits; raw sockets play the clients that a well-behaved HTTP library
never is (one that connects and says nothing, one that sends a byte a second).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess
from tiny_zoo import build_tiny_registry

TIMEOUT_S = 1  # every deadline of this server
MAX_CONNECTIONS = 8
WAIT_S = 6.0  # well past each deadline: a server that holds on fails the test, it does not hang it


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = Path(tmp_path_factory.mktemp("slow-clients-registry"))
    build_tiny_registry(root)
    env = {
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_TORCH_THREADS": "1",
        "SPIKESERVE_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "SPIKESERVE_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "SPIKESERVE_KEEP_ALIVE_TIMEOUT_S": str(TIMEOUT_S),
        "SPIKESERVE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with ServerProcess(root, env=env) as server:
        yield server


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    began = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server still holds the connection after {WAIT_S} s (got {data[:200]!r})")
        if not chunk:
            return data, time.monotonic() - began
        data += chunk


def _status_and_code(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def test_a_connection_that_sends_nothing_is_closed(strict_server: ServerProcess) -> None:
    with _connect(strict_server) as sock:
        answer, seconds = _read_until_closed(sock)
    assert _status_and_code(answer) == (408, "request_timeout") and seconds < TIMEOUT_S + 2


def test_headers_sent_a_byte_at_a_time_are_cut_off(strict_server: ServerProcess) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with _connect(strict_server) as sock:
        began = time.monotonic()
        answer = b""
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # closed on us: what we want
                break
            time.sleep(0.2)
            if time.monotonic() - began > WAIT_S:
                pytest.fail("the server kept reading headers a byte at a time")
        rest, _ = _read_until_closed(sock)
        answer += rest
    assert _status_and_code(answer) == (408, "request_timeout")


def test_a_body_sent_a_byte_at_a_time_gets_408(strict_server: ServerProcess) -> None:
    head = (
        b"POST /v1/models/tiny-danet/classify HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-npy\r\nContent-Length: 1000\r\n\r\n"
    )
    with _connect(strict_server) as sock:
        sock.sendall(head)
        began = time.monotonic()
        for _ in range(int(WAIT_S / 0.2)):
            try:
                sock.sendall(b"x")
            except OSError:
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
                sock.settimeout(WAIT_S)
        try:
            answer: bytes | None = _read_until_closed(sock)[0]
        except ConnectionResetError:
            # the server closed with our last byte unread, so its kernel reset the connection, which
            # may drop the 408 on its way; closing within the deadline while bytes still came in is
            # what this test is about (a deadline per byte would never close)
            answer = None
        seconds = time.monotonic() - began
    assert seconds < TIMEOUT_S + 3
    if answer is not None:
        assert _status_and_code(answer) == (408, "request_timeout")
        assert b"connection: close" in answer.lower()


def test_an_idle_kept_alive_connection_is_closed(strict_server: ServerProcess) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, seconds = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1  # answered, then closed
    assert seconds < TIMEOUT_S + 2


def test_connections_past_the_cap_get_503_and_the_server_recovers(strict_server: ServerProcess) -> None:
    held = [_connect(strict_server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # the server has accepted them all
        with _connect(strict_server) as extra:
            answer, seconds = _read_until_closed(extra)
        assert _status_and_code(answer) == (503, "too_many_connections") and seconds < 1.0
        assert b"retry-after: 1" in answer.lower()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{strict_server.url}/healthz", timeout=10).status_code == 200
