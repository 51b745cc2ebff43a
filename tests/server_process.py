"""A real ``spikeserve serve`` process on a free port, for end-to-end tests and bench/serve.py.

``ServerProcess(registry, env=...)`` starts ``python -m service.cli serve`` (uvicorn inside), waits
for ``/readyz``, and stops it by its own pid (SIGTERM, then SIGKILL). Its stderr goes to a log
file so a failure can show what the server said.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
E2E_ADMIN_TOKEN = "e2e-admin-token"  # what tests/e2e's servers are started with
E2E_MAX_BODY_BYTES = 2_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``with ServerProcess(root, env={...}) as server: server.url``."""

    def __init__(
        self,
        registry: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_timeout_s: float = 120.0,
        cwd: Path | None = None,
    ) -> None:
        self.registry = Path(registry)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.args = list(args or [])
        self.ready_timeout_s = ready_timeout_s
        self.cwd = cwd or REPO_ROOT  # another checkout's folder runs that checkout's code
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="spikeserve-server-", suffix=".log")[1])

    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        command += ["--registry", str(self.registry), "--log-level", "warning", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the server was not ready within {self.ready_timeout_s:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> Any:
        self.stop()
        self.log_path.unlink(missing_ok=True)
