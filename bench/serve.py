"""Serving throughput and latency: batching on vs off, telemetry "layers" vs "none", in one run.

Starts real ``spikeserve serve`` processes (uvicorn, embedded worker) and drives them with N
concurrent keep-alive HTTP/1.1 clients sending ``POST /v1/models/{model}/classify`` (a 28x28 PNG
digit each). Prints requests/s, p50/p99 latency and the mean batch size the server formed, and the
ratios, all measured in the same run on the same machine:

- batching speed-up: req/s with ``max_batch_size`` (default 32) over req/s with ``max_batch_size=1``,
  one server at a time, a fixed count of requests each, the two alternating round by round;
- telemetry cost: 1 - req/s with ``telemetry=layers`` over req/s with ``telemetry=none``, measured
  on two batching servers loaded side by side for the same seconds (they swap levels every round),
  so whatever else a shared machine does slows both sides of the ratio alike;
- an in-process check of the worker alone (``Engine.run_batch``, telemetry levels interleaved).

Each ratio is the median over rounds of the ratio within a round.

    .venv/bin/python bench/serve.py                      # zoo/danet-mnist, or a tiny DANet if absent
    .venv/bin/python bench/serve.py --clients 32 --requests 300 --rounds 8
    .venv/bin/python bench/serve.py --model spikeformer-nmnist --device cuda   # an event model, on a GPU

An image model gets a 28x28 PNG digit on ``/classify``; an event model an emulated N-MNIST recording
of the same digit on ``/events``. Each server's cold start (process start to ``/readyz``) is printed
too: with ``--device cuda`` that includes CUDA initialisation and the warm-up compilations.

The load generator (``run_load``) is a small asyncio HTTP/1.1 client rather than httpx: on a
2-core machine the client shares the CPU with the server, and a lighter client disturbs less.
bench/serve_redis.py reuses ``run_load``, ``LoadResult`` and ``batch_stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tiny_zoo and server_process: shared with the e2e tests

from server_process import ServerProcess  # noqa: E402


@dataclass
class LoadResult:
    """What one load run measured. latencies_ms: one per successful request."""

    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (non-200)
    late: int = 0  # duration mode: answers that arrived after the window (not counted above)
    server_cpu_ms: float = float("nan")  # server process CPU (user + system) per answer, when measured

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise RuntimeError("the server answered without Content-Length")
    return status, await reader.readexactly(length)


async def run_load(
    url: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    clients: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> LoadResult:
    """``clients`` keep-alive connections POST ``body`` to ``url + path``: ``requests`` in all, or as
    many as they can for ``duration_s`` (then only answers that arrived within it count)."""
    if (requests is None) == (duration_s is None):
        raise ValueError("give requests or duration_s")
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    message = head.encode("latin-1") + b"\r\n" + body
    remaining = requests if requests is not None else 1 << 62
    result = LoadResult(requests=requests or 0, seconds=0.0)
    begin = time.perf_counter()
    deadline = begin + duration_s if duration_s is not None else float("inf")

    async def one_client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                started = time.perf_counter()
                writer.write(message)
                await writer.drain()
                status, _ = await _read_response(reader)
                finished = time.perf_counter()
                if finished > deadline:
                    result.late += 1
                    break
                if status == 200:
                    result.latencies_ms.append((finished - started) * 1000.0)
                else:
                    result.errors[status] = result.errors.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    result.seconds = duration_s if duration_s is not None else time.perf_counter() - begin
    result.requests = len(result.latencies_ms) + sum(result.errors.values())
    return result


def git_checkout(ref: str, into: Path) -> tuple[Path, str]:
    """The code of the git ref ``ref``, extracted into ``into``: (folder, short commit)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into, commit


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(batches, requests) the server has run for ``model``, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for name in ("spikeserve_batch_size_count", "spikeserve_batch_size_sum"):
        prefix = f'{name}{{model="{model}"}} '
        values[name] = next(
            (float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0
        )
    return values["spikeserve_batch_size_count"], values["spikeserve_batch_size_sum"]


@dataclass(frozen=True)
class Payload:
    """What every client sends: ``route`` is "classify" (an image) or "events" (a recording)."""

    route: str
    body: bytes
    content_type: str
    source: str

    def path(self, model: str, telemetry: str) -> str:
        return f"/v1/models/{model}/{self.route}?telemetry={telemetry}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type}


def payload_for(root: Path, model: str) -> Payload:
    """A held-out digit as the model takes it: a PNG, or an emulated N-MNIST recording of it."""
    from registry import Registry
    from registry.manifest import EventInput

    png, source = digit_png()
    if not isinstance(Registry(root).resolve(model).input, EventInput):
        return Payload("classify", png, "image/png", source)
    from PIL import Image

    from eventio.nmnist import write_nmnist
    from training.emulator import emulate

    events = emulate(np.asarray(Image.open(io.BytesIO(png)).convert("L")), seed=0)
    return Payload("events", write_nmnist(events), "application/octet-stream", f"{source}, emulated events")


def digit_png() -> tuple[bytes, str]:
    """A 28x28 PNG: a held-out MNIST-5k digit when the data set is installed, else a drawn stroke."""
    from PIL import Image, ImageDraw

    try:
        from training.datasets import mnist5k

        pixels = np.asarray(mnist5k("test")[0][0])
        source = "MNIST-5k test digit 0"
    except Exception:
        picture = Image.new("L", (28, 28))
        ImageDraw.Draw(picture).ellipse((7, 4, 21, 24), outline=255, width=3)
        pixels = np.asarray(picture)
        source = "a drawn zero (MNIST-5k not installed)"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), source


def choose_registry(
    registry: Path | None, model: str, scratch: Path, base_width: int = 8
) -> tuple[Path, str, str]:
    """(registry, model, note): zoo/ when it holds ``model``, else the tests' tiny DANet (random
    weights; ``base_width`` 8 as in the tests, 16 for danet-mnist's own width)."""
    from registry import Registry

    root = registry or REPO_ROOT / "zoo"
    try:
        names = {summary.name for summary in Registry(root).list()}
    except Exception:
        names = set()
    if model in names:
        return root, model, f"{model} from {root}"
    if registry is not None:
        raise SystemExit(f"{registry} has no model {model!r}")
    from tiny_zoo import DANET_CONFIG, IMAGE_MODEL, register_danet

    register_danet(Registry(scratch), config={**DANET_CONFIG, "base_width": base_width})
    note = (
        f"{IMAGE_MODEL} (danet_resnet18, base_width {base_width}, random weights): {root} has no {model} yet"
    )
    return scratch, IMAGE_MODEL, note


@dataclass
class Row:
    name: str
    result: LoadResult
    mean_batch: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def measure(
    server: ServerProcess, model: str, payload: Payload, telemetry: str, args: argparse.Namespace
) -> Row:
    path, body = payload.path(model, telemetry), payload.body
    batches0, requests0 = batch_stats(server.url, model)
    cpu0 = cpu_seconds(_pid(server))
    result = asyncio.run(
        run_load(server.url, path, body, payload.headers, clients=args.clients, requests=args.requests)
    )
    result.server_cpu_ms = (cpu_seconds(_pid(server)) - cpu0) * 1000.0 / max(result.requests, 1)
    batches1, requests1 = batch_stats(server.url, model)
    mean_batch = (requests1 - requests0) / (batches1 - batches0) if batches1 > batches0 else float("nan")
    return Row(f"{telemetry}", result, mean_batch)


def measure_side_by_side(
    first: ServerProcess,
    second: ServerProcess,
    model: str,
    payload: Payload,
    levels: tuple[str, str],
    seconds: float,
    clients: int,
) -> tuple[LoadResult, LoadResult]:
    """Load two servers at once for the same ``seconds``, telemetry ``levels[0]`` on the first and
    ``levels[1]`` on the second: whatever else the machine does then slows both alike."""

    async def both() -> list[LoadResult]:
        return await asyncio.gather(
            *(
                run_load(server.url, payload.path(model, level), payload.body, payload.headers,
                         clients=clients, duration_s=seconds)
                for server, level in ((first, levels[0]), (second, levels[1]))
            )
        )  # fmt: skip

    cpu0 = [cpu_seconds(_pid(server)) for server in (first, second)]
    first_result, second_result = asyncio.run(both())
    for server, result, before in zip((first, second), (first_result, second_result), cpu0, strict=True):
        answered = max(result.requests + result.late, 1)
        result.server_cpu_ms = (cpu_seconds(_pid(server)) - before) * 1000.0 / answered
    return first_result, second_result


def warm_up(server: ServerProcess, model: str, payload: Payload, args: argparse.Namespace) -> None:
    asyncio.run(run_load(server.url, payload.path(model, "layers"), payload.body, payload.headers,
                         clients=args.clients, requests=2 * args.clients))  # fmt: skip


def median_row(name: str, rows: list[Row]) -> Row:
    """The round with the median throughput (latencies of that same round)."""
    ordered = sorted(rows, key=lambda row: row.result.rps)
    chosen = ordered[len(ordered) // 2]
    return Row(name, chosen.result, statistics.median(row.mean_batch for row in rows))


def print_table(rows: list[Row]) -> None:
    print(f"| {'scenario':<38} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'mean batch':>10} "
          f"| server CPU ms/req | errors |")  # fmt: skip
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 19}|--------|")
    for row in rows:
        r = row.result
        errors = sum(r.errors.values())
        print(f"| {row.name:<38} | {r.rps:7.1f} | {r.percentile(50):7.1f} | {r.percentile(99):7.1f} "
              f"| {row.mean_batch:10.1f} | {r.server_cpu_ms:17.2f} | {errors:6d} |")  # fmt: skip


def engine_check(
    root: Path, model: str, payload: Payload, batch: int, repeats: int, device: str
) -> dict[str, dict[str, list[float]]]:
    """In-process, no HTTP: wall and CPU seconds of ``Engine.run_batch`` on ``batch`` copies of the
    digit, per telemetry level, the levels interleaved ``repeats`` times after three unmeasured rounds
    (the compiled neuron backend settles its shapes then). Isolates what telemetry costs the worker
    (the recorder in the forward, the per-sample report, the metrics) from the gateway."""
    from registry import Registry
    from registry.manifest import EventInput
    from service.decoding import decode_image
    from service.decoding.events import decode_events, fit_to_sensor
    from service.settings import Settings
    from workers.engine import Engine
    from workers.protocol import InferenceRequest

    registry = Registry(root)
    manifest = registry.resolve(model)
    input_kind = "events" if isinstance(manifest.input, EventInput) else "image"
    if input_kind == "events":
        decoded = decode_events(payload.body, payload.content_type, None, 1 << 24)
        array = fit_to_sensor(decoded, manifest.input, None)[0]
    else:
        array = decode_image(payload.body, payload.content_type, manifest.input, 1 << 24).array
    engine = Engine(registry, backend=Settings().neuron_backend, worker_id="bench", device=device)
    engine.ensure_loaded(manifest.name, manifest.version)
    levels = ("none", "summary", "layers")
    measured: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    for kind in measured.values():
        kind.update({level: [] for level in levels})
    for round_index in range(3 + repeats):
        for level in levels:
            requests = [
                InferenceRequest(f"{level}{i}", manifest.name, manifest.version, input_kind, array,  # type: ignore[arg-type]
                                 manifest.time_steps.default, telemetry=level)  # type: ignore[arg-type]
                for i in range(batch)
            ]  # fmt: skip
            wall, cpu = time.perf_counter(), time.process_time()
            engine.run_batch(requests)
            if round_index >= 3:
                measured["wall"][level].append(time.perf_counter() - wall)
                measured["cpu"][level].append(time.process_time() - cpu)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=None, help="registry folder (default: zoo/)")
    parser.add_argument("--model", default="danet-mnist")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300, help="requests per batching round and server")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each comparison")
    parser.add_argument("--pair-seconds", type=float, default=4.0, help="length of a telemetry round")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--engine-repeats", type=int, default=15, help="repeats of the in-process check")
    parser.add_argument("--base-width", type=int, default=8, help="width of the stand-in DANet without a zoo")
    parser.add_argument("--device", default="cpu", help="where the servers run the network: cpu or cuda")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        root, model, note = choose_registry(args.registry, args.model, Path(scratch), args.base_width)
        payload = payload_for(root, model)
        env = {
            "SPIKESERVE_ADMIN_TOKEN": "bench",
            "SPIKESERVE_MAX_DELAY_MS": str(args.max_delay_ms),
            "SPIKESERVE_DEVICE": args.device,
        }
        if args.torch_threads:
            env["SPIKESERVE_TORCH_THREADS"] = str(args.torch_threads)
        print(f"# spikeserve serving benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        machine = f"{platform.processor() or platform.machine()}, {_cpu_count()} CPUs, {platform.system()}"
        print(f"# machine: {machine}, load average {', '.join(f'{x:.1f}' for x in _load_average())}")
        print(f"# model: {note}; input: {payload.source}; device: {args.device}")
        print(f"# {args.clients} concurrent clients per server, {args.rounds} rounds per comparison")

        on_env = {**env, "SPIKESERVE_MAX_BATCH_SIZE": str(args.max_batch_size)}
        off_env = {**env, "SPIKESERVE_MAX_BATCH_SIZE": "1"}
        batching: dict[str, list[Row]] = {"on": [], "off": []}
        telemetry: dict[str, list[LoadResult]] = {"none": [], "layers": []}
        cold_starts: list[float] = []
        with (
            timed_start(ServerProcess(root, env=on_env, args=["--models", model]), cold_starts) as on_a,
            timed_start(ServerProcess(root, env=on_env, args=["--models", model]), cold_starts) as on_b,
            timed_start(ServerProcess(root, env=off_env, args=["--models", model]), cold_starts) as off,
        ):
            for server in (on_a, on_b, off):
                warm_up(server, model, payload, args)
            for round_index in range(args.rounds):
                # Batching: one server at a time, a fixed count of requests, alternating which goes first.
                order = [("on", on_a), ("off", off)]
                for name, server in order if round_index % 2 == 0 else order[::-1]:
                    batching[name].append(measure(server, model, payload, "none", args))
                # Telemetry: two batching servers side by side; they swap levels every round.
                levels = ("none", "layers") if round_index % 2 == 0 else ("layers", "none")
                results = measure_side_by_side(
                    on_a, on_b, model, payload, levels, args.pair_seconds, args.clients
                )
                for level, result in zip(levels, results, strict=True):
                    telemetry[level].append(result)
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        engine_seconds = engine_check(
            root, model, payload, args.max_batch_size, args.engine_repeats, args.device
        )

    print()
    starts = ", ".join(f"{seconds:.1f} s" for seconds in cold_starts)
    print(f"Cold start (process start to /readyz, the three servers one after another): {starts}")
    print()
    print(f"Batching: one server at a time, {args.requests} requests a round (median round shown)")
    print_table(
        [
            median_row(f"batching on (max {args.max_batch_size}), telemetry none", batching["on"]),
            median_row("batching off (max 1), telemetry none", batching["off"]),
        ]
    )
    speedups = [
        on.result.rps / off.result.rps for on, off in zip(batching["on"], batching["off"], strict=True)
    ]
    print(f"speed-up (req/s on / off), median of rounds: {statistics.median(speedups):.2f}x  (target >= 3x)")
    print(f"  per round: {', '.join(f'{x:.2f}x' for x in speedups)}")

    print()
    print(f"Telemetry: two batching servers side by side for {args.pair_seconds:.0f} s a round, one asked")
    print("'none', the other 'layers' (they swap every round); each has about half the machine")
    for level, results in telemetry.items():
        rps = statistics.median(r.rps for r in results)
        p50 = statistics.median(r.percentile(50) for r in results)
        p99 = statistics.median(r.percentile(99) for r in results)
        cpu = statistics.median(r.server_cpu_ms for r in results)
        print(f"  telemetry {level:<6}: {rps:6.1f} req/s, p50 {p50:6.1f} ms, p99 {p99:6.1f} ms, "
              f"server CPU {cpu:5.2f} ms/req (round medians)")  # fmt: skip
    costs = [
        1.0 - layers.rps / none.rps
        for none, layers in zip(telemetry["none"], telemetry["layers"], strict=True)
    ]
    cost = statistics.median(costs) * 100
    print(f"cost of 'layers' (1 - req/s layers / none), median of rounds: {cost:+.1f}%  (target < 5%)")
    print(f"  per round: {', '.join(f'{cost * 100:+.1f}%' for cost in costs)}")
    cpu_costs = [
        layers.server_cpu_ms / none.server_cpu_ms - 1.0
        for none, layers in zip(telemetry["none"], telemetry["layers"], strict=True)
    ]
    cpu_cost = statistics.median(cpu_costs) * 100
    print(f"extra server CPU per request with 'layers', median of rounds: {cpu_cost:+.1f}%")
    print(f"  per round: {', '.join(f'{cost * 100:+.1f}%' for cost in cpu_costs)}")

    print()
    repeats = f"{args.engine_repeats} interleaved repeats"
    print(f"In-process check (Engine.run_batch, batch {args.max_batch_size}, {repeats}, no HTTP):")
    wall, cpu = engine_seconds["wall"], engine_seconds["cpu"]
    from models.kernels.lif import auto_timings

    timings = auto_timings("cpu")
    if timings:  # what "auto" measured in this process (each server measures for itself the same way)
        fastest = min(timings, key=timings.__getitem__)
        listed = ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in timings.items())
        print(f"  neuron backend 'auto' chose {fastest} ({listed} on its test layer)")
    for level in wall:
        print(f"  telemetry {level:<7}: wall {min(wall[level]) * 1000:7.1f} ms min, "
              f"{statistics.median(wall[level]) * 1000:7.1f} ms median; "
              f"CPU {statistics.median(cpu[level]) * 1000:7.1f} ms median")  # fmt: skip
    print(
        f"  cost of 'layers': wall {(min(wall['layers']) / min(wall['none']) - 1) * 100:+.1f}% (min), "
        f"{(statistics.median(wall['layers']) / statistics.median(wall['none']) - 1) * 100:+.1f}% (median); "
        f"CPU {(statistics.median(cpu['layers']) / statistics.median(cpu['none']) - 1) * 100:+.1f}% (median)"
    )
    return 0


@contextlib.contextmanager
def timed_start(server: ServerProcess, seconds: list[float]) -> Iterator[ServerProcess]:
    """Start ``server`` (it returns once /readyz answers 200) and note how long that took."""
    began = time.perf_counter()
    with server as started:
        seconds.append(time.perf_counter() - began)
        yield started


def _load_average() -> tuple[float, ...]:
    return os.getloadavg() if hasattr(os, "getloadavg") else ()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
