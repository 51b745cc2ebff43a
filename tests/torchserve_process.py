"""A real TorchServe (Java frontend, Python workers) on free loopback ports, for tests and bench/peers.py.

``TorchServeProcess(store, models)`` exports nothing itself: ``store`` is a model store written by
``spikeserve export torchserve`` (its config.properties is used, with the ports rewritten to free
ones). It starts ``torchserve --foreground`` in its own session with a private TMPDIR (TorchServe
keeps a pid file there and refuses to start beside another), waits until every model has a READY
worker, and stops the whole process group it started (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from server_process import free_port

TORCHSERVE = Path(sys.executable).with_name("torchserve")
ADDRESS_KEYS = (
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_port",
    "grpc_management_port",
    "initial_worker_port",
)
MAX_WORKERS = 8  # worker sockets reserved per TorchServe


def torchserve_available() -> str | None:
    """Why TorchServe cannot start here, or None when it can (the dev extra and Java 17)."""
    if not TORCHSERVE.exists():
        return "torchserve is not installed (pip install -e '.[dev]')"
    if shutil.which("java") is None:
        return "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)"
    return None


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _free_socket_base() -> int:
    while True:
        base = random.randrange(20_000, 60_000, MAX_WORKERS)
        if not any(Path(f"/tmp/.ts.sock.{base + i}").exists() for i in range(MAX_WORKERS)):
            return base


class TorchServeProcess:
    """``with TorchServeProcess(store, ["danet-mnist"]) as ts: ts.url, ts.management_url``."""

    def __init__(
        self,
        store: Path,
        models: list[str],
        *,
        ready_timeout_s: float = 240.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store = Path(store)
        self.models = list(models)
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = dict(env or {})
        inference, management, metrics, self.grpc_inference, self.grpc_management = _free_ports(5)
        self.url = f"http://127.0.0.1:{inference}"
        self.management_url = f"http://127.0.0.1:{management}"
        self.metrics_url = f"http://127.0.0.1:{metrics}"
        self.home = Path(tempfile.mkdtemp(prefix="spikeserve-torchserve-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def _config(self) -> Path:
        lines = [
            line
            for line in (self.store / "config.properties").read_text().splitlines()
            if line.split("=", 1)[0] not in ADDRESS_KEYS
        ]
        lines += [
            f"inference_address={self.url}",
            f"management_address={self.management_url}",
            f"metrics_address={self.metrics_url}",
            # TorchServe also opens two gRPC ports (7070, 7071 by default): free ones, so two can run
            f"grpc_inference_port={self.grpc_inference}",
            f"grpc_management_port={self.grpc_management}",
            # worker N listens on the unix socket /tmp/.ts.sock.<initial_worker_port + N> (Java's
            # temp dir, whatever TMPDIR says): a base no other TorchServe on this machine uses
            f"initial_worker_port={_free_socket_base()}",
        ]
        config = self.home / "config.properties"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> TorchServeProcess:
        command = [
            str(TORCHSERVE), "--start", "--foreground", "--ncs",
            "--ts-config", str(self._config()),
            "--model-store", str(self.store),
            "--models", *(f"{name}={name}.mar" for name in self.models),
        ]  # fmt: skip
        tmp = self.home / "tmp"
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), "LOG_LOCATION": str(self.home / "logs"),
               "METRICS_LOCATION": str(self.home / "logs"), **self.extra_env}  # fmt: skip
        self.started_at = time.monotonic()
        with (self.home / "console.log").open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.log()}")
            if all(self._ready(name) for name in self.models):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"TorchServe was not ready within {self.ready_timeout_s:.0f} s:\n{self.log()}")

    def _ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.management_url}/models/{name}", timeout=2) as response:
                described: list[dict[str, Any]] = json.loads(response.read())
        except (OSError, ValueError):
            return False
        workers = described[0].get("workers", []) if described else []
        return bool(workers) and all(worker.get("status") == "READY" for worker in workers)

    def scale(self, name: str, workers: int) -> None:
        """Run ``workers`` workers for ``name`` (synchronously: returns when they are up)."""
        request = urllib.request.Request(
            f"{self.management_url}/models/{name}?min_worker={workers}&max_worker={workers}&synchronous=true",
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=self.ready_timeout_s):
            pass

    def pids(self) -> list[int]:
        """Every process of this TorchServe (frontend and workers): its own session."""
        assert self.process is not None
        session = os.getsid(self.process.pid)
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == session:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def log(self) -> str:
        parts = []
        for path in [self.home / "console.log", *sorted((self.home / "logs").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM to the process group this object started, then SIGKILL to whatever outlives 20 s."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the launcher leads its own group
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and _group_alive(group):
            process.poll()  # reap the launcher so it does not linger as a zombie of the group
            time.sleep(0.1)
        _signal_group(group, signal.SIGKILL)
        process.wait(timeout=10)

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> Any:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
