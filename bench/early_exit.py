"""Served early exit against exit off, and exit absent against the code before early exit, in one run.

1. One ``spikeserve serve`` process (embedded worker, batching on). Each round, for 1 and for 32
   concurrent clients, it answers a fixed count of ``POST /v1/models/{model}/classify`` requests
   with exit off and with ``exit=confidence&exit_threshold=X`` for each X, in an order that rotates
   every round. The clients cycle through the 1,000 held-out MNIST-5k test digits (PNG), so the
   steps used follow the data set, not one digit. Printed per threshold: req/s and p50 (median
   round), the ratio to exit off within each round (median and range), and the mean steps used.
2. "Nothing changes without ``exit``": this checkout's server and a server running the code of
   ``--baseline`` (default: the commit before early exit was added, from ``git archive``) are
   loaded side by side for the same seconds with plain requests; the ratio of their req/s, median
   over rounds (whatever else a shared machine does slows both alike).

    .venv/bin/python bench/early_exit.py                        # zoo/danet-mnist
    .venv/bin/python bench/early_exit.py --rounds 5 --thresholds 0.5 0.9 0.999
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from serve import _cpu_count, _load_average, _read_response, git_checkout  # noqa: E402
from server_process import ServerProcess  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


@dataclass
class Load:
    """One load run: latencies (ms) of the answers, the steps each ran, and non-200 answers."""

    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    steps_used: list[int] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else float("nan")


async def cycle_load(
    url: str, path: str, bodies: list[bytes], *, clients: int, requests: int | None, duration_s: float | None
) -> Load:
    """``clients`` keep-alive connections POST the PNG ``bodies`` in turn to ``url + path``:
    ``requests`` in all, or as many as fit in ``duration_s`` (then only answers within it count)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
    messages = [(head + f"Content-Length: {len(b)}\r\n\r\n").encode("latin-1") + b for b in bodies]
    load, next_index = Load(), 0
    remaining = requests if requests is not None else 1 << 62
    begin = time.perf_counter()
    deadline = begin + duration_s if duration_s is not None else float("inf")

    async def one_client() -> None:
        nonlocal remaining, next_index
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                message = messages[next_index % len(messages)]
                next_index += 1
                started = time.perf_counter()
                writer.write(message)
                await writer.drain()
                status, body = await _read_response(reader)
                finished = time.perf_counter()
                if finished > deadline:
                    break
                if status != 200:
                    load.errors += 1
                    continue
                load.latencies_ms.append((finished - started) * 1000.0)
                used = json.loads(body).get("time_steps_used")
                if used is not None:
                    load.steps_used.append(int(used))
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    load.seconds = duration_s if duration_s is not None else time.perf_counter() - begin
    return load


def test_digits() -> list[bytes]:
    """The 1,000 held-out MNIST-5k test digits as 28x28 PNGs."""
    from PIL import Image

    from training.datasets import mnist5k

    images = mnist5k("test")[0]
    bodies = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def baseline_checkout(ref: str | None, into: Path) -> tuple[Path, str]:
    """The code of ``ref`` (default: the parent of the commit that added models/early_exit.py)."""
    if ref is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "models/early_exit.py"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        ref = f"{added[-1]}~1" if added else "HEAD"
    return git_checkout(ref, into)


def engine_check(
    registry: Path, ref: str, thresholds: list[float | None], batch: int, repeats: int
) -> dict[float | None, list[float]]:
    """In-process, no HTTP: seconds of ``Engine.run_batch`` on batches of ``batch`` test digits,
    exit off and at each threshold, interleaved ``repeats`` times after one unmeasured round. It
    shows what early exit saves the worker, apart from the gateway's per-request work."""
    from registry import Registry
    from training.datasets import mnist5k
    from workers.engine import Engine
    from workers.protocol import InferenceRequest

    images = mnist5k("test")[0].astype(np.float32) / 255.0
    source = Registry(registry)
    manifest = source.resolve(ref)
    engine = Engine(source, worker_id="bench")
    loaded = engine.ensure_loaded(manifest.name, manifest.version)
    first = images[0][None]
    engine.run_batch(
        [InferenceRequest("warm", manifest.name, manifest.version, "image", first, 4, exit_threshold=0.9)]
    )
    deadline = time.monotonic() + 600  # early exit's one-step calls are compiled in the background
    while loaded.needs_preparation and not loaded.early_exit_ready and time.monotonic() < deadline:
        time.sleep(1.0)
    seconds: dict[float | None, list[float]] = {mode: [] for mode in thresholds}
    for round_index in range(1 + repeats):
        start = (round_index * batch) % (len(images) - batch)
        for mode in thresholds:
            requests = [
                InferenceRequest(f"{mode}-{i}", manifest.name, manifest.version, "image",
                                 images[start + i][None], manifest.time_steps.default,
                                 telemetry="none", exit_threshold=mode)
                for i in range(batch)
            ]  # fmt: skip
            began = time.perf_counter()
            engine.run_batch(requests)
            if round_index:
                seconds[mode].append(time.perf_counter() - began)
    return seconds


def mode_path(model: str, threshold: float | None) -> str:
    query = (
        "telemetry=none"
        if threshold is None
        else f"telemetry=none&exit=confidence&exit_threshold={threshold}"
    )
    return f"/v1/models/{model}/classify?{query}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    parser.add_argument("--model", default="danet-mnist", help="an image model of the registry (name:N too)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=320, help="requests a round at 32 clients")
    parser.add_argument("--requests-one", type=int, default=60, help="requests a round at 1 client")
    parser.add_argument("--clients", type=int, nargs="+", default=(1, 32))
    parser.add_argument("--baseline", default=None, help="git ref of the code before early exit")
    parser.add_argument("--pair-seconds", type=float, default=5.0, help="length of a side-by-side round")
    parser.add_argument("--pair-rounds", type=int, default=4)
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        default=None,
        help="a folder holding the baseline code (instead of --baseline)",
    )
    parser.add_argument("--baseline-only", action="store_true", help="only part 2, exit absent vs before")
    parser.add_argument("--engine-repeats", type=int, default=10, help="repeats of the in-process check")
    args = parser.parse_args()

    bodies = test_digits()
    name = args.model.split(":")[0].split("@")[0]
    env = {"SPIKESERVE_ADMIN_TOKEN": "bench"}
    print(f"# spikeserve early-exit benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    machine = f"{platform.processor() or platform.machine()}, {_cpu_count()} CPUs, {platform.system()}"
    print(f"# machine: {machine}, load average {', '.join(f'{x:.1f}' for x in _load_average())}")
    print(
        f"# model: {args.model} from {args.registry}; inputs: the {len(bodies)} MNIST-5k test digits, cycled"
    )

    if not args.baseline_only:
        modes: list[float | None] = [None, *args.thresholds]
        loads: dict[tuple[int, float | None], list[Load]] = {(c, m): [] for c in args.clients for m in modes}
        with ServerProcess(
            args.registry, env=env, args=["--models", name, "--log-level", "info"], ready_timeout_s=900
        ) as server:
            # The first early-exit batch has its one-step calls compiled in the background (the neuron
            # backend's variants for T=1 with kept membranes); measure once that is done.
            deadline = time.monotonic() + 600
            while "for early exit in" not in server.log() and time.monotonic() < deadline:
                warm = mode_path(args.model, 0.9)
                asyncio.run(cycle_load(server.url, warm, bodies, clients=32, requests=64, duration_s=None))
            print(f"# early exit ready: {'yes' if 'for early exit in' in server.log() else 'NO (timed out)'}")
            for round_index in range(args.rounds):
                shift = round_index % len(modes)
                for clients in args.clients:
                    requests = args.requests if clients > 1 else args.requests_one
                    for mode in modes[shift:] + modes[:shift]:
                        load = asyncio.run(
                            cycle_load(server.url, mode_path(args.model, mode), bodies, clients=clients,
                                       requests=requests, duration_s=None)
                        )  # fmt: skip
                        loads[(clients, mode)].append(load)
                print(f"# round {round_index + 1}/{args.rounds} done", flush=True)

        print()
        print(f"Same server, {args.rounds} rounds; req/s and p50 of the median round; ratio = req/s")
        print("over exit off within each round, median [min-max]; steps = mean time steps used")
        header = "| threshold | steps |" + "".join(
            f" req/s @{c} | p50 ms @{c} | ratio @{c} |" for c in args.clients
        )
        print(header)
        print("|" + "---|" * (2 + 3 * len(args.clients)))
        for mode in modes:
            cells = []
            steps_all = [s for c in args.clients for load in loads[(c, mode)] for s in load.steps_used]
            steps = f"{statistics.mean(steps_all):.2f}" if steps_all else "all"
            for clients in args.clients:
                rounds = loads[(clients, mode)]
                chosen = sorted(rounds, key=lambda load: load.rps)[len(rounds) // 2]
                ratios = [r.rps / off.rps for r, off in zip(rounds, loads[(clients, None)], strict=True)]
                ratio = f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
                cells.append(f" {chosen.rps:.1f} | {chosen.p50:.1f} | {ratio} |")
            errors = sum(load.errors for c in args.clients for load in loads[(c, mode)])
            label = "off" if mode is None else f"{mode:g}"
            print(f"| {label} | {steps} |" + "".join(cells) + (f" ({errors} errors)" if errors else ""))

        engine_seconds = engine_check(args.registry, args.model, modes, 32, args.engine_repeats)
        print()
        repeats = f"{args.engine_repeats} interleaved repeats"
        print(f"In-process (Engine.run_batch, batches of 32 test digits, {repeats}):")
        for mode, times in engine_seconds.items():
            speedup = [off / t for off, t in zip(engine_seconds[None], times, strict=True)]
            label = "off" if mode is None else f"{mode:g}"
            spread = f"[{min(speedup):.2f}-{max(speedup):.2f}]"
            print(f"  exit {label:>6}: {statistics.median(times) * 1000:7.1f} ms a batch (median), "
                  f"{statistics.median(speedup):.2f}x of exit off {spread}")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-early-exit-") as scratch:
        if args.baseline_dir is not None:
            baseline_root, commit = args.baseline_dir, str(args.baseline_dir)
        else:
            baseline_root, commit = baseline_checkout(args.baseline, Path(scratch))
        ratios = []
        with (
            ServerProcess(args.registry, env=env, args=["--models", name], ready_timeout_s=900) as current,
            ServerProcess(
                args.registry, env=env, args=["--models", name], ready_timeout_s=900, cwd=baseline_root
            ) as before,
        ):
            for server in (current, before):
                asyncio.run(
                    cycle_load(
                        server.url,
                        mode_path(args.model, None),
                        bodies,
                        clients=32,
                        requests=256,
                        duration_s=None,
                    )
                )
            for _ in range(args.pair_rounds):

                async def both() -> list[Load]:
                    return await asyncio.gather(
                        *(
                            cycle_load(server.url, mode_path(args.model, None), bodies, clients=32,
                                       requests=None, duration_s=args.pair_seconds)
                            for server in (current, before)
                        )
                    )  # fmt: skip

                now, then = asyncio.run(both())
                ratios.append(now.rps / then.rps)
    print()
    print(f"Exit absent, this checkout against {commit} (before early exit), side by side, 32 clients each,")
    spread = f"[{min(ratios):.3f}-{max(ratios):.3f}]"
    print(
        f"{args.pair_rounds} rounds of {args.pair_seconds:.0f} s: "
        f"req/s ratio median {statistics.median(ratios):.3f} {spread}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
