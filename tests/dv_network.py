"""A real DV network server for tests: ``dv_processing.io.NetworkWriter`` replaying a recording.

``DvNetworkServer(path, speed=1.0)`` serves the event stream of an AEDAT4 recording on a free
port the way iniVation's DV "network output" does (the IOHeader, then packets over TCP); with
``speed`` > 0 it paces the packets by their timestamps (1.0: real time), with 0 as fast as it can.
It starts sending once a client is connected, so the client sees the whole recording.

The writer runs in its own process (``python tests/dv_network.py PATH PORT SPEED``), stopped by
its pid: NetworkWriter's destructor can block once its client has gone, and a test must not hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from server_process import free_port


class DvNetworkServer:
    """``with DvNetworkServer(path) as server: connect to ("127.0.0.1", server.port)``."""

    def __init__(self, path: Path, *, speed: float = 1.0) -> None:
        self.path = path
        self.speed = speed
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DvNetworkServer:
        command = [sys.executable, __file__, str(self.path), str(self.port), str(self.speed)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # "listening" once the writer has its port
        if not line.startswith(b"listening"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the DV network server did not start: {line!r}")
        return self

    def wait(self, timeout: float) -> None:
        """Wait until every event was sent (the server process exits then)."""
        assert self._process is not None
        self._process.wait(timeout=timeout)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)


def capture(path: Path, quiet_s: float = 1.0) -> bytes:
    """Every byte a DV network client receives for ``path``'s event stream, sent as fast as possible."""
    with DvNetworkServer(path, speed=0) as server:
        client = socket.create_connection(("127.0.0.1", server.port))
        client.settimeout(quiet_s)
        received = bytearray()
        try:
            while True:
                try:
                    chunk = client.recv(1 << 16)
                except TimeoutError:
                    if server._process is not None and server._process.poll() is not None:
                        break  # everything was sent and nothing more came for quiet_s
                    continue
                if not chunk:
                    break
                received += chunk
        finally:
            client.close()
    return bytes(received)


def _serve(path: str, port: int, speed: float) -> None:
    import dv_processing as dv

    reader = dv.io.MonoCameraRecording(path)
    batches = []
    while (batch := reader.getNextEventBatch()) is not None:
        batches.append(batch)
    stream = dv.io.Stream.EventStream(0, "events", "DVXplorer", reader.getEventResolution())
    writer = dv.io.NetworkWriter("127.0.0.1", port, stream)
    print("listening", flush=True)
    deadline = time.monotonic() + 60
    while writer.getClientCount() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    first_t = batches[0].getLowestTime()
    started = time.monotonic()
    for batch in batches:
        if speed > 0:
            due = started + (batch.getLowestTime() - first_t) / 1e6 / speed
            time.sleep(max(0.0, due - time.monotonic()))
        writer.writeEvents(batch)
    deadline = time.monotonic() + 30
    while writer.getQueuedPacketCount() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    os._exit(0)  # skip the writer's destructor (see the module docstring)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
