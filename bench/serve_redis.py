"""Distributed mode against embedded mode, in one run: what Redis Streams cost per request.

Starts, one after the other on this machine: the embedded server; a gateway with one CPU worker;
a gateway with two CPU workers (a private redis-server on a free port for the last two). Each
gets the same load: sequential requests (one client: the per-request overhead, no batching),
then ``--clients`` concurrent clients. Prints requests/s and p50/p99 latency per mode and the
overhead at p50 of each distributed mode over embedded.

    .venv/bin/python bench/serve_redis.py [--requests 400] [--clients 16] [--sequential 200]

On a 2-core machine throughput cannot scale with workers (the cores are the limit, and the load
generator shares them); the figure to watch is the overhead per request at p50 (target < 2 ms).
Every process runs torch with one thread and the eager neuron backend, so modes differ only in
how requests travel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from redis_support import (  # noqa: E402  (tests/ holds the process helpers and the tiny registry)
    RedisServer,
    Service,
    free_port,
    npy_bytes,
    start_gateway,
    start_worker,
    wait_for_workers,
    wait_until,
)
from tiny_zoo import IMAGE_MODEL, build_tiny_registry  # noqa: E402

WORKER_SETTINGS = {"SPIKESERVE_TORCH_THREADS": "1", "SPIKESERVE_HEARTBEAT_INTERVAL_S": "1.0"}


async def _load(base: str, body: bytes, requests: int, clients: int) -> tuple[float, list[float]]:
    """``requests`` POSTs from ``clients`` concurrent clients: (wall seconds, per-request seconds)."""
    import httpx

    url = f"{base}/v1/models/{IMAGE_MODEL}/classify?telemetry=summary"
    headers = {"Content-Type": "application/x-npy"}
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for _ in remaining:
            started = time.perf_counter()
            answer = await http.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"{answer.status_code}: {answer.text}")

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started, latencies


def measure(base: str, body: bytes, requests: int, clients: int) -> dict[str, float]:
    asyncio.run(_load(base, body, max(20, clients * 2), clients))  # warm-up: connections, first batches
    wall, latencies = asyncio.run(_load(base, body, requests, clients))
    ms = np.array(latencies) * 1000
    return {
        "rps": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def run_embedded(registry: Path, logs: Path, args: argparse.Namespace, body: bytes) -> dict[str, dict]:
    import httpx

    port = free_port()
    serve_args = ["serve", "--registry", str(registry), "--port", str(port), "--backend", "torch"]
    server = Service([*serve_args, "--log-level", "warning"], logs / "embedded.log", WORKER_SETTINGS)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=1).status_code == 200, 120, "embedded server ready"
        )
        return {
            "sequential": measure(base, body, args.sequential, 1),
            "concurrent": measure(base, body, args.requests, args.clients),
        }
    finally:
        server.stop()


def run_distributed(
    registry: Path, logs: Path, args: argparse.Namespace, body: bytes, workers: int
) -> dict[str, dict]:
    redis = RedisServer().start()
    prefix = f"bench{workers}"
    with contextlib.ExitStack() as stack:
        stack.callback(redis.stop)
        gateway, base = start_gateway(registry, redis.url, prefix, logs, WORKER_SETTINGS)
        stack.callback(gateway.stop)
        started = []
        for index in range(workers):
            worker = start_worker(
                registry, redis.url, prefix, logs, f"w{index}", [IMAGE_MODEL], env=WORKER_SETTINGS
            )
            stack.callback(worker.stop)
            started.append(worker)
        wait_for_workers(base, {f"w{index}" for index in range(workers)}, started)
        return {
            "sequential": measure(base, body, args.sequential, 1),
            "concurrent": measure(base, body, args.requests, args.clients),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrent measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--sequential", type=int, default=200, help="requests of the one-client measurement")
    args = parser.parse_args()

    body = npy_bytes(np.random.default_rng(0).random((1, 28, 28)).astype(np.float32))
    with tempfile.TemporaryDirectory(prefix="spikeserve-bench-redis-") as tmp:
        registry, logs = Path(tmp) / "registry", Path(tmp)
        build_tiny_registry(registry)
        results = {"embedded": run_embedded(registry, logs, args, body)}
        for workers in (1, 2):
            results[f"redis + {workers} worker{'s' if workers > 1 else ''}"] = run_distributed(
                registry, logs, args, body, workers
            )

    print(
        f"# {IMAGE_MODEL} (tiny DANet, 1x28x28, T=4), {platform.processor() or platform.machine()}, "
        f"{sys.platform}, torch threads 1 per process, eager neuron backend"
    )
    base_seq, base_conc = results["embedded"]["sequential"], results["embedded"]["concurrent"]
    print(
        f"{'mode':<22}{'1 client p50':>14}{'p99':>9}{'overhead p50':>15}"
        f"{f'{args.clients} clients req/s':>20}{'p50':>9}{'p99':>9}{'vs embedded':>13}"
    )
    for mode, result in results.items():
        seq, conc = result["sequential"], result["concurrent"]
        overhead = seq["p50_ms"] - base_seq["p50_ms"]
        ratio = conc["rps"] / base_conc["rps"]
        print(
            f"{mode:<22}{seq['p50_ms']:>11.2f} ms{seq['p99_ms']:>9.2f}{overhead:>12.2f} ms"
            f"{conc['rps']:>20.1f}{conc['p50_ms']:>9.2f}{conc['p99_ms']:>9.2f}{ratio:>12.2f}x"
        )


if __name__ == "__main__":
    main()
