"""Distributed mode against embedded mode, in one run: what the trip through Redis Streams costs.

Brings up three stacks side by side on this machine: the embedded server; a gateway with one CPU
worker; a gateway with two CPU workers (a private redis-server on a free port, one key prefix per
stack). One client sends sequential requests to each stack in turn, request by request (the
per-request overhead, with no batching to hide it, and drift in the machine's load landing on every
stack alike); then alternating rounds of ``--clients`` concurrent clients measure throughput with
bench/serve.py's load generator (``run_load``). A last line times the queueing alone: the Redis pool
and a worker that answers at once, in one process.

    .venv/bin/python bench/serve_redis.py [--rounds 3] [--sequential 200] [--clients 16] [--requests 400]

Every process runs torch with one thread and the eager neuron backend, so the stacks differ only
in how a request travels. On a 2-core machine throughput cannot grow with workers (the cores are
the limit, and the load generator shares them): the figure to watch is the overhead per request
at p50 with one client, distributed minus embedded (target < 2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "bench")]

from redis_support import RedisServer, start_gateway, start_worker, wait_for_workers  # noqa: E402
from serve import LoadResult, _cpu_count, choose_registry, digit_png, run_load  # noqa: E402
from server_process import ServerProcess  # noqa: E402

SETTINGS = {
    "SPIKESERVE_TORCH_THREADS": "1",
    "SPIKESERVE_NEURON_BACKEND": "torch",
    "SPIKESERVE_HEARTBEAT_INTERVAL_S": "1.0",
}


def load(url: str, model: str, body: bytes, clients: int, requests: int) -> LoadResult:
    path = f"/v1/models/{model}/classify?telemetry=summary"
    return asyncio.run(
        run_load(url, path, body, {"Content-Type": "image/png"}, clients=clients, requests=requests)
    )


def pooled(results: list[LoadResult]) -> tuple[float, float, float, int]:
    """(median req/s over rounds, p50 ms and p99 ms over every request of every round, errors)."""
    latencies = [ms for result in results for ms in result.latencies_ms]
    errors = sum(sum(result.errors.values()) for result in results)
    return (
        statistics.median(result.rps for result in results),
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
        errors,
    )


def interleaved_sequential(
    urls: dict[str, str], model: str, body: bytes, count: int
) -> dict[str, tuple[list[float], list[float]]]:
    """One client per stack, taking turns request by request, so that a burst of load from elsewhere on
    the machine lands on every stack alike. Per stack: (latency ms, latency minus the answer's own
    ``timing_ms.compute``, i.e. everything but the forward pass)."""
    import httpx

    path = f"/v1/models/{model}/classify?telemetry=summary"
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
    measured: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in urls}
    try:
        for _ in range(count):
            for name, client in clients.items():
                started = time.perf_counter()
                answer = client.post(path, content=body, headers={"Content-Type": "image/png"})
                latency = (time.perf_counter() - started) * 1000.0
                if answer.status_code != 200:
                    raise RuntimeError(f"{name}: {answer.status_code} {answer.text}")
                measured[name][0].append(latency)
                measured[name][1].append(latency - answer.json()["timing_ms"]["compute"])
    finally:
        for client in clients.values():
            client.close()
    return measured


async def transport_round_trip(redis_url: str, count: int) -> list[float]:
    """Gateway pool -> Redis -> worker -> Redis -> gateway pool, in one process, with a worker that
    answers at once: the cost of the queueing itself, without process scheduling or a network. ms."""
    from workers.protocol import InferenceRequest, InferenceResult
    from workers.redis_pool import RedisPool
    from workers.redis_worker import RedisWorker

    async def answer(request: InferenceRequest) -> InferenceResult:
        return InferenceResult(
            request.request_id, request.model_name, request.model_version, request.time_steps
        )

    worker = RedisWorker(
        redis_url, answer, models=lambda: ["m"], prefix="transport", heartbeat_interval_s=0.2
    )
    running = asyncio.create_task(worker.run())
    pool = RedisPool(redis_url, prefix="transport", heartbeat_interval_s=0.2)
    await pool.start()
    array = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    latencies = []
    try:
        while not pool.is_ready():
            await asyncio.sleep(0.05)
        for index in range(count + 50):
            request = InferenceRequest(f"r{index}", "m", 1, "image", array, time_steps=4)
            started = time.perf_counter()
            await pool.submit(request)
            if index >= 50:  # after warm-up
                latencies.append((time.perf_counter() - started) * 1000.0)
    finally:
        await pool.stop()
        worker.stop()
        await running
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="danet-mnist", help="from zoo/ when there, else the tests' tiny DANet"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200, help="one-client requests per stack and round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="concurrent requests per stack and round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-redis-") as scratch, contextlib.ExitStack() as stack:
        root, model, note = choose_registry(None, args.model, Path(scratch) / "registry")
        body, source = digit_png()
        logs = Path(scratch)
        urls: dict[str, str] = {}

        embedded = ServerProcess(root, env=SETTINGS, args=["--models", model]).start()
        stack.callback(embedded.stop)
        urls["embedded"] = embedded.url
        redis = RedisServer().start()
        stack.callback(redis.stop)
        for count in (1, 2):
            prefix = f"bench{count}"
            gateway, url = start_gateway(root, redis.url, prefix, logs, SETTINGS)
            stack.callback(gateway.stop)
            workers = []
            for index in range(count):
                worker = start_worker(
                    root, redis.url, prefix, logs, f"{prefix}-w{index}", [model], env=SETTINGS
                )
                stack.callback(worker.stop)
                workers.append(worker)
            wait_for_workers(url, {f"{prefix}-w{index}" for index in range(count)}, workers)
            urls[f"redis + {count} CPU worker{'s' if count > 1 else ''}"] = url

        for url in urls.values():  # warm-up: connections, first batches of every size
            load(url, model, body, args.clients, 4 * args.clients)
        sequential = interleaved_sequential(urls, model, body, args.sequential)
        concurrent: dict[str, list[LoadResult]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                concurrent[name].append(load(url, model, body, args.clients, args.requests))
        transport = asyncio.run(transport_round_trip(redis.url, args.sequential))

    print(f"# spikeserve distributed vs embedded, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {_cpu_count()} CPUs; each process: torch 1 thread, eager neurons; Redis on localhost")
    print(f"# model: {note}; input: {source}")
    print(f"# load: {args.sequential} requests per stack from 1 client (stacks taking turns request by")
    print(f"#       request), then {args.rounds} rounds of {args.requests} from {args.clients} clients")
    print()
    header = ["stack", "1 client p50 ms", "p99 ms", "p50 without compute", "overhead p50 ms"]
    header += [f"{args.clients} clients req/s", "p50 ms", "p99 ms", "errors"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(cell) + 2) for cell in header) + "|")

    def p50(values: list[float]) -> float:
        return float(np.percentile(values, 50))

    base = p50(sequential["embedded"][1])
    for name in urls:
        latency, outside = sequential[name]
        rps, conc_p50, conc_p99, errors = pooled(concurrent[name])
        cells = [f"{p50(latency):.2f}", f"{np.percentile(latency, 99):.1f}", f"{p50(outside):.2f}"]
        cells += [
            f"{p50(outside) - base:+.2f}",
            f"{rps:.1f}",
            f"{conc_p50:.1f}",
            f"{conc_p99:.1f}",
            str(errors),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("overhead p50: p50 of (latency - the answer's compute time) minus embedded's, so that worker")
    print("processes computing at different speeds on a shared machine do not count as queueing")
    throughput = {name: pooled(results)[0] for name, results in concurrent.items()}
    for name in list(urls)[1:]:
        overhead = p50(sequential[name][1]) - base
        raw = p50(sequential[name][0]) - p50(sequential["embedded"][0])
        ratio = throughput[name] / throughput["embedded"]
        print(f"{name}: queueing overhead per request at p50 {overhead:+.2f} ms (target < 2 ms), ", end="")
        print(f"raw p50 latency {raw:+.2f} ms; {args.clients}-client throughput {ratio:.2f}x embedded")
    print(
        f"transport round trip in one process (pool -> Redis -> worker -> Redis -> pool, instant worker): "
        f"p50 {np.percentile(transport, 50):.2f} ms, p99 {np.percentile(transport, 99):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
