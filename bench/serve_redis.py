"""Distributed mode against embedded mode, in one run: what the trip through Redis Streams costs.

Brings up three stacks side by side on this machine: the embedded server; a gateway with one CPU
worker; a gateway with two CPU workers (a private redis-server on a free port, one key prefix per
stack). Rounds alternate between the stacks, so drift in machine load hits all of them alike.
Each round sends, to each stack, sequential requests from one client (the per-request overhead,
no batching to hide it) and then ``--clients`` concurrent clients (throughput). The load generator
is bench/serve.py's ``run_load``.

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
        sequential: dict[str, list[LoadResult]] = {name: [] for name in urls}
        concurrent: dict[str, list[LoadResult]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                sequential[name].append(load(url, model, body, 1, args.sequential))
                concurrent[name].append(load(url, model, body, args.clients, args.requests))

    print(f"# spikeserve distributed vs embedded, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {_cpu_count()} CPUs; each process: torch 1 thread, eager neurons; Redis on localhost")
    print(f"# model: {note}; input: {source}")
    print(f"# load: {args.rounds} alternating rounds; per round and stack {args.sequential} requests")
    print(f"#       from 1 client, then {args.requests} from {args.clients} concurrent clients")
    print()
    header = ["stack", "1 client p50 ms", "p99 ms", "overhead p50 ms", f"{args.clients} clients req/s"]
    header += ["p50 ms", "p99 ms", "errors"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(cell) + 2) for cell in header) + "|")
    base = pooled(sequential["embedded"])
    for name in urls:
        seq, conc = pooled(sequential[name]), pooled(concurrent[name])
        cells = [f"{seq[1]:.2f}", f"{seq[2]:.1f}", f"{seq[1] - base[1]:+.2f}", f"{conc[0]:.1f}"]
        cells += [f"{conc[1]:.1f}", f"{conc[2]:.1f}", str(seq[3] + conc[3])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    throughput = {name: pooled(results)[0] for name, results in concurrent.items()}
    for name in list(urls)[1:]:
        overhead = pooled(sequential[name])[1] - base[1]
        ratio = throughput[name] / throughput["embedded"]
        print(f"{name}: overhead per request at p50, 1 client: {overhead:+.2f} ms (target < 2 ms); ", end="")
        print(f"{args.clients}-client throughput {ratio:.2f}x embedded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
