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

from service.connections import LINGER_S

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


SLOW_BODY_HEAD = (
    b"POST /v1/models/tiny-danet/classify HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-npy\r\nContent-Length: 1000\r\n\r\n"
)


def _send_slowly_until_answered(sock: socket.socket) -> float:
    """A byte every 50 ms until the server answers (watching for an early answer, as curl does);
    the time it took."""
    sock.sendall(SLOW_BODY_HEAD)
    began = time.monotonic()
    while not _answered(sock):
        if time.monotonic() - began > WAIT_S:
            pytest.fail(f"the server still reads the body after {WAIT_S} s")
        sock.sendall(b"x")
        time.sleep(0.05)
    return time.monotonic() - began


def test_a_body_sent_a_byte_at_a_time_gets_408(strict_server: ServerProcess) -> None:
    with _connect(strict_server) as sock:
        seconds = _send_slowly_until_answered(sock)
        # a client goes on writing for a while after the answer arrives (bytes in flight, or one that
        # reads only once its body is sent): were the server's side fully closed, each byte would
        # draw a reset, the client's next write would fail, and it might never read the 408
        for _ in range(10):
            sock.sendall(b"x")
            time.sleep(0.05)
        answer, _ = _read_until_closed(sock)  # a reset raises here: the answer ends in a clean close
    assert seconds < TIMEOUT_S + 2
    assert _status_and_code(answer) == (408, "request_timeout")
    assert b"connection: close" in answer.lower()


def test_a_client_that_goes_on_writing_after_its_408_is_cut_off(strict_server: ServerProcess) -> None:
    with _connect(strict_server) as sock:
        _send_slowly_until_answered(sock)
        answered = time.monotonic()
        while time.monotonic() - answered < WAIT_S:
            try:
                sock.sendall(b"x" * 100)
            except OSError:  # the server's side is closed for good
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the server still reads from a client it answered {WAIT_S} s ago")
    assert time.monotonic() - answered < LINGER_S + 2


def _answered(sock: socket.socket) -> bool:
    """Whether the server has sent something (or closed), without reading it."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) is not None
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)
        sock.settimeout(WAIT_S)


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
