"""Live streams: ingest speed per format, and sessions x replay speed against a real server.

1. Ingest (decode + fit + window, no model), in process: events/s of ``eventio.stream`` fed in
   64 KiB chunks and windowed by ``service.streams.windows.Windower`` (50 ms, fit=scale to 34x34),
   against one-shot decoding (``read_events`` + ``events_to_frames``) of the same bytes in the same
   run; rounds interleaved, medians and the per-round range.
2. Sessions: a real ``spikeserve serve`` process; 1, 4 and 16 concurrent WebSocket sessions each
   replay the real DVXplorer recording in a loop (t shifted by its length each loop) at 1x, 4x and
   as fast as the client can send, in uncompressed .npy chunks of 10 ms, 50 ms windows, fit=scale,
   telemetry=summary. Per cell: real-time factor (event time answered / wall time, per session;
   the baseline is the speed asked), window latency p50/p99 as the server measures it (message in
   -> answer out), dropped (merged) windows, the server's CPU time per window answered (the figure
   that moves least with the machine's load), the load average, and the server's RSS (sampled
   every second: start, 10 s in, max, end; one long cell, ``--seconds 120``, shows whether it is
   flat once the first batches have been allocated).
   ``--baseline REF`` runs the server of that git ref too, the cells of both alternating.

    .venv/bin/python bench/stream.py --registry zoo --models danet-nmnist spikeformer-nmnist
    .venv/bin/python bench/stream.py --seconds 3 --sessions 1 4 --speeds 1 0   # shorter
    # a danet-nmnist of the recipe's architecture with random weights, against main, 3 rounds:
    .venv/bin/python bench/stream.py --random-danet-width 16 --skip-ingest --sessions 4 --speeds 1 \
        --baseline main --session-rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from bench.serve import git_checkout  # noqa: E402
from eventio import read_events  # noqa: E402
from eventio.nmnist import write_nmnist  # noqa: E402
from eventio.npy import write_npy  # noqa: E402
from eventio.stream import StreamDecoder  # noqa: E402
from eventio.transforms import scale_events  # noqa: E402
from service.streams.windows import Windower  # noqa: E402

SHARED = REPO_ROOT.parent / "shared" / "data"
DVX = SHARED / "dvxplorer_320x240.aedat4"
NMNIST = SHARED / "nmnist_sample.bin"
CHUNK_BYTES = 64 * 1024
WINDOW_US = 50_000
SEND_US = 10_000


# -- 1. ingest ------------------------------------------------------------------------------------


def loop_events(events: np.ndarray, loops: int) -> np.ndarray:
    """The recording ``loops`` times, each copy shifted by its span: [N * loops] in time order."""
    span = int(events["t"][-1] - events["t"][0]) + 1
    copies = []
    for i in range(loops):
        copy = events.copy()
        copy["t"] += i * span
        copies.append(copy)
    return np.concatenate(copies)


def ingest_inputs() -> dict[str, tuple[bytes, bytes, tuple[int, int]]]:
    """format -> (stream bytes, one-shot bytes, sensor): the real recordings (N-MNIST and npy looped
    to about 1 M events; npy streams as 10 ms arrays, its one-shot baseline is one array)."""
    dvx = DVX.read_bytes()
    dvx_events = read_events(dvx).events
    nmnist = loop_events(read_events(NMNIST.read_bytes()).events, 200)
    npy_events = loop_events(dvx_events, 8)
    t = npy_events["t"]
    edges = np.searchsorted(t, np.arange(int(t[0]), int(t[-1]) + SEND_US + 1, SEND_US))
    npy = b"".join(write_npy(npy_events[a:b]) for a, b in itertools.pairwise(edges) if b > a)
    nmnist_bytes = write_nmnist(nmnist)
    return {
        "aedat4": (dvx, dvx, (320, 240)),
        "nmnist": (nmnist_bytes, nmnist_bytes, (34, 34)),
        "npy": (npy, write_npy(npy_events), (320, 240)),
    }


def cpu_rate(work: Any, *args: object, min_cpu_s: float = 0.3) -> float:
    """Events per CPU second of ``work(*args)`` (which returns its event count), repeated to min_cpu_s."""
    events, started = 0, time.process_time()
    while (spent := time.process_time() - started) < min_cpu_s:
        events += work(*args)
    return events / spent


def ingest_streamed(data: bytes, fmt: str, sensor: tuple[int, int]) -> int:
    decoder = StreamDecoder(fmt)
    windower = Windower(WINDOW_US, 1, (34, 34))
    count = 0
    for start in range(0, len(data), CHUNK_BYTES):
        events = decoder.feed(data[start : start + CHUNK_BYTES])
        if len(events):
            count += len(events)
            windower.push(scale_events(events, sensor, (34, 34)) if sensor != (34, 34) else events)
    decoder.finish()
    return count


def ingest_one_shot(data: bytes, fmt: str, sensor: tuple[int, int]) -> int:
    from models.encoding import events_to_frames

    events = read_events(data, fmt=fmt).events
    fitted = scale_events(events, sensor, (34, 34)) if sensor != (34, 34) else events
    span = int(events["t"][-1] - events["t"][0]) + 1
    events_to_frames(fitted, (34, 34), -(-span // WINDOW_US), "time_window", time_window_us=WINDOW_US)
    return len(events)


def bench_ingest(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for fmt, (data, whole, sensor) in ingest_inputs().items():
        streamed, one_shot, ratios = [], [], []
        n = ingest_streamed(data, fmt, sensor)
        assert n == ingest_one_shot(whole, fmt, sensor)  # the same events both ways
        for _ in range(rounds):
            a = cpu_rate(ingest_streamed, data, fmt, sensor)
            b = cpu_rate(ingest_one_shot, whole, fmt, sensor)
            streamed.append(a)
            one_shot.append(b)
            ratios.append(a / b)
        rows.append(
            {
                "format": fmt,
                "events": n,
                "streamed_events_per_cpu_s": statistics.median(streamed),
                "one_shot_events_per_cpu_s": statistics.median(one_shot),
                "ratio": statistics.median(ratios),
                "ratio_range": (min(ratios), max(ratios)),
            }
        )
    return rows


# -- 2. sessions ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Replay:
    """The recording looped, cut into ``.npy`` messages of ``SEND_US``: loop i's messages are built
    once and shared by every session (each loop shifts t by the recording's span), so the client's
    own CPU, which competes with the server's on a small machine, stays low."""

    def __init__(self, events: np.ndarray) -> None:
        self.events = events
        self.span = int(events["t"][-1] - events["t"][0]) + 1
        self._loops: dict[int, list[bytes | None]] = {}

    def loop(self, i: int) -> list[bytes | None]:
        """Loop i: one entry per ``SEND_US`` of event time, the message or None (no events)."""
        if i not in self._loops:
            shifted = self.events.copy()
            shifted["t"] += i * self.span
            t = shifted["t"]
            t0 = int(self.events["t"][0]) + i * self.span
            edges = np.searchsorted(t, np.arange(t0, t0 + self.span + SEND_US, SEND_US))
            self._loops[i] = [
                write_npy(shifted[a:b]) if b > a else None for a, b in itertools.pairwise(edges)
            ]
            self._loops.pop(i - 2, None)  # sessions run at one pace: two loops cover them all
        return self._loops[i]


async def one_session(url: str, replay: Replay, speed: float, seconds: float) -> dict[str, Any]:
    import websockets

    query = f"window_us={WINDOW_US}&fit=scale&format=npy&sensor_width=320&sensor_height=240&telemetry=summary"
    latencies: list[float] = []
    answered_us = 0
    closed: dict[str, Any] = {}
    # uncompressed, as a camera client on the same machine sends: deflating 10 ms of events costs
    # the client about 0.6 ms of CPU a message, which competes with the server on a small machine
    async with websockets.connect(f"{url}?{query}", max_size=None, compression=None) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready

        async def receive() -> None:
            nonlocal answered_us, closed
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "window":
                    latencies.append(message["latency_ms"])
                    answered_us += message["end_us"] - message["start_us"]
                elif message["type"] == "closed":
                    closed = message
                    return

        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        sent_us = 0
        loop = 0
        while time.perf_counter() - started < seconds:
            for message in replay.loop(loop):
                sent_us += SEND_US
                if speed > 0:
                    await asyncio.sleep(max(0.0, started + sent_us / 1e6 / speed - time.perf_counter()))
                else:
                    await asyncio.sleep(0)
                if message is not None:
                    await ws.send(message)
                if time.perf_counter() - started >= seconds:
                    break
            loop += 1
        wall = time.perf_counter() - started
        await ws.send(json.dumps({"close": True}))
        await asyncio.wait_for(receiver, timeout=120)
    return {
        "latencies": latencies,
        "rtf": answered_us / 1e6 / wall,
        "dropped": closed.get("dropped_windows", 0),
        "windows": closed.get("windows", 0),
    }


async def bench_cell(
    url: str, pid: int, replay: Replay, sessions: int, speed: float, seconds: float
) -> dict[str, Any]:
    """One cell against the server ``pid``; RSS sampled every second while it runs."""
    rss = [rss_mb(pid)]
    cpu_before, load_before = cpu_s(pid), os.getloadavg()[0]

    async def sample() -> None:
        while True:
            await asyncio.sleep(1.0)
            rss.append(rss_mb(pid))

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(one_session(url, replay, speed, seconds) for _ in range(sessions)))
    finally:
        sampler.cancel()
    rss.append(rss_mb(pid))
    latencies = np.asarray([x for r in results for x in r["latencies"]])
    windows = sum(int(r["windows"]) for r in results)
    return {
        "rtf": statistics.median(float(r["rtf"]) for r in results),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "dropped": sum(int(r["dropped"]) for r in results),
        "windows": windows,
        "cpu_ms_per_window": (cpu_s(pid) - cpu_before) * 1000 / windows if windows else float("nan"),
        "load": (load_before + os.getloadavg()[0]) / 2,
        "rss_mb": rss,
    }


def random_danet_registry(source: Path, width: int, into: Path) -> Path:
    """A copy of the registry ``source`` with a random-weight ``danet-nmnist`` of base width ``width``
    (the recipe's architecture otherwise): latency does not depend on the weights, so this measures
    a checkpoint before it is trained."""
    from tiny_zoo import LABELS, random_state_dict

    from registry import Registry
    from training.recipes import get_recipe

    shutil.copytree(source, into, ignore=shutil.ignore_patterns("danet-nmnist"), dirs_exist_ok=True)
    recipe = get_recipe("danet-nmnist")
    config = {**recipe.config, "base_width": width}
    Registry(into).register(
        recipe.name,
        architecture=recipe.architecture,
        config=config,
        neuron=recipe.neuron,
        time_steps=recipe.time_step_spec(),
        input=recipe.input_spec(),
        labels=LABELS,
        weights=random_state_dict(recipe.architecture, {**config, "neuron": recipe.neuron}, seed=0),
        description=f"random weights, base width {width}: for latency measurements only",
    )
    return into


def bench_sessions(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """Every cell on this checkout's server and, with ``--baseline``, on the baseline's, alternately
    (baseline first in odd rounds, this checkout first in even ones) for ``--session-rounds``."""
    from server_process import ServerProcess

    registry = Path(args.registry)
    if args.random_danet_width:
        registry = random_danet_registry(registry, args.random_danet_width, scratch / "registry")
    replay = Replay(read_events(DVX.read_bytes()).events)
    env = {
        "SPIKESERVE_TORCH_THREADS": str(args.threads),
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_DEFAULT_MODELS": json.dumps(args.models),
        "SPIKESERVE_STREAM_MAX_SESSIONS_PER_KEY": "64",
    }
    trees = [("this checkout", REPO_ROOT, env)]
    if args.baseline:
        folder, commit = git_checkout(args.baseline, scratch / "baseline")
        settings = dict(item.split("=", 1) for item in args.baseline_env)
        label = " ".join([f"baseline {commit}", *args.baseline_env])
        trees.insert(0, (label, folder, {**env, **settings}))
    rows = []
    with contextlib.ExitStack() as stack:
        servers = [
            (label, stack.enter_context(ServerProcess(registry, env=tree_env, cwd=cwd)))
            for label, cwd, tree_env in trees
        ]
        for model in args.models:
            for _, server in servers:  # load the stream copy before timing
                url = server.url.replace("http://", "ws://") + f"/v1/models/{model}/stream"
                assert server.process is not None
                asyncio.run(bench_cell(url, server.process.pid, replay, 1, 0, 1.0))
            for sessions, speed, round_ in itertools.product(
                args.sessions, args.speeds, range(args.session_rounds)
            ):
                for label, server in servers if round_ % 2 == 0 else servers[::-1]:
                    url = server.url.replace("http://", "ws://") + f"/v1/models/{model}/stream"
                    assert server.process is not None
                    cell = asyncio.run(
                        bench_cell(url, server.process.pid, replay, sessions, speed, args.seconds)
                    )
                    rows.append({"code": label, "model": model, "sessions": sessions, "speed": speed, **cell})
                    print({k: v for k, v in rows[-1].items() if k != "rss_mb"}, flush=True)
    return rows


def print_sessions(rows: list[dict[str, Any]]) -> None:
    print("\n## Sessions: DVXplorer looped, 50 ms windows, fit=scale, telemetry=summary\n")
    print(
        "| code | model | sessions | speed | real-time factor / speed | window p50 | p99 "
        "| dropped / windows | server CPU ms / window | load | RSS MB (start, 10 s in, max, end) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speed = "max" if r["speed"] == 0 else f"{r['speed']:g}x"
        wanted = float(r["speed"]) or float("nan")
        rtf = f"{r['rtf']:.2f}" + (f" / {float(r['rtf']) / wanted:.2f}" if r["speed"] else "")
        rss: list[float] = r["rss_mb"]
        print(
            f"| {r['code']} | {r['model']} | {r['sessions']} | {speed} | {rtf} "
            f"| {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['dropped']} / {r['windows']} "
            f"| {r['cpu_ms_per_window']:.1f} | {r['load']:.1f} "
            f"| {rss[0]:.0f}, {rss[min(10, len(rss) - 1)]:.0f}, {max(rss):.0f}, {rss[-1]:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registry", default="zoo")
    parser.add_argument("--models", nargs="+", default=["danet-nmnist", "spikeformer-nmnist"])
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--speeds", nargs="+", type=float, default=[1.0, 4.0, 0.0], help="0 = as fast as possible"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell")
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--skip-sessions", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--random-danet-width",
        type=int,
        default=0,
        help="serve a random-weight danet-nmnist of this base width (the recipe's architecture)",
    )
    parser.add_argument("--baseline", default=None, help="git ref: also run its server, cells alternating")
    parser.add_argument(
        "--baseline-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="settings of the baseline server only",
    )
    parser.add_argument("--session-rounds", type=int, default=1, help="rounds of every session cell")
    args = parser.parse_args()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs (shared)")
    print(f"# load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.skip_ingest:
        print_ingest(args.rounds)
    if args.skip_sessions:
        return
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch:
        print_sessions(bench_sessions(args, Path(scratch)))


def print_ingest(rounds: int) -> None:
    print("\n## Ingest: decode + fit + window, no model (events per CPU second)\n")
    print("| format | events | streamed, 64 KiB chunks | one-shot decode + bin | ratio (range) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in bench_ingest(rounds):
        low, high = row["ratio_range"]
        print(
            f"| {row['format']} | {row['events']:,} | {row['streamed_events_per_cpu_s'] / 1e6:.2f} M/s "
            f"| {row['one_shot_events_per_cpu_s'] / 1e6:.2f} M/s "
            f"| {row['ratio']:.2f} ({low:.2f}-{high:.2f}) |"
        )


if __name__ == "__main__":
    main()
