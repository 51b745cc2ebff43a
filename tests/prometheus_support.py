"""A real Prometheus for the tests: Debian's ``prometheus`` package, fetched and unpacked on first use.

``prometheus_tools()`` returns the ``prometheus`` and ``promtool`` binaries: the ones on PATH when
the package is installed, else the ones unpacked from the package (``apt-get download`` then
``dpkg -x``, no install, no service started) into a cache folder that later runs reuse. It fails,
never skips, when neither works: these tests are part of what CI must run.

``PrometheusServer(config_text)`` runs one on a free loopback port with its data in a temporary
folder, and wraps the HTTP API calls the tests need (targets, instant queries).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikeserve" / "prometheus-deb"


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: Path
    promtool: Path


def _fail(message: str) -> None:
    import pytest

    pytest.fail(message)


def prometheus_tools() -> PrometheusTools:
    """``prometheus`` and ``promtool`` from PATH, the cache, or Debian's package unpacked into the cache."""
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if on_path[0] and on_path[1]:
        return PrometheusTools(Path(on_path[0]), Path(on_path[1]))
    unpacked = PrometheusTools(CACHE / "usr/bin/prometheus", CACHE / "usr/bin/promtool")
    if unpacked.prometheus.is_file() and unpacked.promtool.is_file():
        return unpacked
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spikeserve-prometheus-deb-") as folder:
        # _apt cannot write into a private temporary folder; this makes apt say so, not fail
        os.chmod(folder, 0o755)
        download = ["apt-get", "download", "-q", "prometheus"]
        done = subprocess.run(download, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            done = subprocess.run(download, cwd=folder, capture_output=True, text=True)
        debs = glob.glob(os.path.join(folder, "prometheus_*.deb"))
        if done.returncode != 0 or not debs:
            _fail(f"apt-get download prometheus failed (Debian package):\n{done.stderr}")
        subprocess.run(["dpkg", "-x", debs[0], str(CACHE)], check=True)
    if not (unpacked.prometheus.is_file() and unpacked.promtool.is_file()):
        _fail(f"the prometheus package unpacked into {CACHE} has no usr/bin/prometheus and promtool")
    return unpacked


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """``with PrometheusServer(tools, config_text) as prometheus: prometheus.query("up")``."""

    def __init__(self, tools: PrometheusTools, config_text: str) -> None:
        self.tools = tools
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="spikeserve-prometheus-"))
        (self.folder / "prometheus.yml").write_text(config_text)
        self.log_path = self.folder / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        args = [
            str(self.tools.prometheus),
            f"--config.file={self.folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus was not ready within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, each with its ``health`` and ``lastError``."""
        answer = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return list(answer["data"]["activeTargets"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if answer.get("status") != "success":
            raise AssertionError(f"prometheus refused {expr!r}: {answer}")
        return list(answer["data"]["result"])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
