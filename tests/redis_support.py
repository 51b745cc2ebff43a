"""Real processes for the distributed-mode tests and benchmark: a private redis-server, gateways, workers.

Each helper starts a real process (``redis-server``, ``spikeserve serve --redis``, ``spikeserve
worker``) on a free port, waits until it answers, and stops it by its own pid. Nothing here mocks
Redis or the service: what the tests see is what a deployment runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "redis-tests-admin-token"
REDIS_URL = "redis://127.0.0.1:6379/0"  # the shared Redis; tests keep to their own key prefix


@contextmanager
def own_key_prefix(label: str) -> Iterator[str]:
    """A fresh key prefix on the shared Redis, every key under it deleted afterwards.

    Fails (not skips) when Redis is absent: these tests are part of the suite CI must run.
    """
    import pytest
    import redis

    prefix = f"test-{label}-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("these tests need Redis on 127.0.0.1:6379 (apt-get install redis-server)")
    try:
        yield prefix
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s (last error: {last_error})")


class RedisServer:
    """A redis-server of our own on a free port, without persistence, that tests may stop and restart."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_until(client.ping, 10, f"redis-server on port {self.port} answering")
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class Service:
    """A ``spikeserve`` subprocess (``serve`` or ``worker``) with its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SPIKESERVE_ADMIN_TOKEN": ADMIN_TOKEN,
            **(env or {}),
        }
        self.log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no goodbye, no drain; what it held stays pending in Redis."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout_s: float = 20) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def start_gateway(
    registry: Path, redis_url: str, prefix: str, log_dir: Path, env: dict[str, str] | None = None
) -> tuple[Service, str]:
    """``spikeserve serve --redis``; returns the process and its base URL once /healthz answers."""
    port = free_port()
    args = [
        "serve",
        "--redis",
        redis_url,
        "--registry",
        str(registry),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    gateway = Service(
        args, log_dir / f"gateway-{port}.log", {"SPIKESERVE_REDIS_PREFIX": prefix, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{gateway.output()}")
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200

    wait_until(healthy, 60, "the gateway answering /healthz")
    return gateway, base


def start_worker(
    registry: Path,
    redis_url: str,
    prefix: str,
    log_dir: Path,
    worker_id: str,
    models: list[str],
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """``spikeserve worker`` on the CPU with the eager neuron backend (no compile time in tests)."""
    args = [
        "worker",
        "--redis",
        redis_url,
        "--registry",
        str(registry),
        "--device",
        "cpu",
        "--backend",
        "torch",
    ]
    args += ["--worker-id", worker_id, "--torch-threads", "1", "--log-level", "info", "--models", *models]
    args += extra or []
    return Service(
        args, log_dir / f"worker-{worker_id}.log", {"SPIKESERVE_REDIS_PREFIX": prefix, **(env or {})}
    )


def live_workers(base: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/v1/workers", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    answer.raise_for_status()
    return list(answer.json()["workers"])


def wait_for_workers(base: str, ids: set[str], workers: list[Service], timeout_s: float = 120) -> None:
    """Until the gateway lists every worker in ``ids`` (models loaded, heartbeating)."""

    def listed() -> bool:
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"a worker exited:\n{worker.output()}")
        return ids <= {w["id"] for w in live_workers(base)}

    wait_until(listed, timeout_s, f"workers {sorted(ids)} heartbeating", interval_s=0.25)


@contextmanager
def gateway_and_workers(
    registry: Path,
    label: str,
    log_dir: Path,
    models: list[str],
    gateway_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    worker_ids: tuple[str, ...] = ("w1", "w2"),
) -> Iterator[tuple[str, str, dict[str, Service]]]:
    """(gateway URL, key prefix, workers by id): a gateway in Redis mode and its workers, all
    listed by the gateway, on a key prefix of their own; stopped and their keys deleted after."""
    with own_key_prefix(label) as prefix, ExitStack() as stack:
        gateway, base = start_gateway(registry, REDIS_URL, prefix, log_dir, gateway_env)
        stack.callback(gateway.stop)
        workers = {}
        for worker_id in worker_ids:
            workers[worker_id] = start_worker(
                registry, REDIS_URL, prefix, log_dir, worker_id, models, env=worker_env
            )
            stack.callback(workers[worker_id].stop)
        wait_for_workers(base, set(worker_ids), list(workers.values()))
        yield base, prefix, workers


def npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


async def classify_all(
    base: str, model: str, bodies: list[bytes], concurrency: int, query: str = "top_k=10&telemetry=none"
) -> list[tuple[int, dict[str, Any]]]:
    """POST each body to ``/v1/models/{model}/classify`` from ``concurrency`` clients: (status, JSON) each."""
    import asyncio

    results: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    next_index = iter(range(len(bodies)))
    url = f"{base}/v1/models/{model}/classify?{query}"
    headers = {"Content-Type": "application/x-npy"}

    async def client(http: httpx.AsyncClient) -> None:
        for index in next_index:
            answer = await http.post(url, content=bodies[index], headers=headers)
            results[index] = (answer.status_code, answer.json())

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return results


def probabilities(answer: dict[str, Any]) -> dict[str, float]:
    """label -> probability from a classify answer asked with top_k = every class."""
    return {p["label"]: p["probability"] for p in answer["predictions"]}


def reference_probabilities(registry: Path, model: str, arrays: list[Any]) -> list[dict[str, float]]:
    """What the network answers for each array when run here, in this process, one at a time."""
    from registry import Registry
    from workers.engine import Engine
    from workers.protocol import InferenceRequest

    engine = Engine(Registry(registry), device="cpu", backend="torch")
    version = Registry(registry).resolve(model).version
    answers = []
    for index, array in enumerate(arrays):
        request = InferenceRequest(
            request_id=f"reference-{index}",
            model_name=model,
            model_version=version,
            kind="image",
            array=array,
            time_steps=4,
            telemetry="none",
            top_k=10,
        )
        (result,) = engine.run_batch([request])
        answers.append({p.label: p.probability for p in result.predictions})
    return answers


def replies_written(redis_url: str, prefix: str) -> int:
    """Entries ever added to the (one) gateway's reply stream under ``prefix``; trimming leaves it alone."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        (key,) = list(client.scan_iter(f"{prefix}:replies:*"))
        return int(client.xinfo_stream(key)["entries-added"])
    finally:
        client.close()


def assert_answers_match(
    results: list[tuple[int, dict[str, Any]]], input_index: Any, expected: list[dict[str, float]]
) -> None:
    """Each answer is 200 and gives the probabilities the network gives its own input."""
    for (status, answer), index in zip(results, input_index, strict=True):
        assert status == 200, answer
        got, want = probabilities(answer), expected[index]
        assert got.keys() == want.keys()
        assert max(abs(got[label] - want[label]) for label in want) < 1e-5, (index, got, want)
