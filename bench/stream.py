"""Live streams: ingest speed per format, and sessions x replay speed against a real server.

1. Ingest (decode + fit + window, no model), in process: events/s of ``eventio.stream`` fed in
   64 KiB chunks and windowed by ``service.streams.windows.Windower`` (50 ms, fit=scale to 34x34),
   against one-shot decoding (``read_events`` + ``events_to_frames``) of the same bytes in the same
   run; rounds interleaved, medians and the per-round range.
2. Sessions: a real ``spikeserve serve`` process; 1, 4 and 16 concurrent WebSocket sessions each
   replay the real DVXplorer recording in a loop (t shifted by its length each loop) at 1x, 4x and
   as fast as the client can send, in .npy chunks of 10 ms, 50 ms windows, fit=scale. Per cell:
   real-time factor (event time answered / wall time, per session; the baseline is the speed
   asked), window latency p50/p99 as the server measures it (message in -> answer out), dropped
   (merged) windows, and the server's RSS before and after.

    .venv/bin/python bench/stream.py --registry zoo --models danet-nmnist spikeformer-nmnist
    .venv/bin/python bench/stream.py --seconds 3 --sessions 1 4 --speeds 1 0   # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

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


def cpu_rate(work: object, *args: object, min_cpu_s: float = 0.3) -> float:
    """Events per CPU second of ``work(*args)`` (which returns its event count), repeated to min_cpu_s."""
    events, started = 0, time.process_time()
    while (spent := time.process_time() - started) < min_cpu_s:
        events += work(*args)  # type: ignore[operator]
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


def bench_ingest(rounds: int) -> list[dict[str, object]]:
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


async def one_session(url: str, events: np.ndarray, speed: float, seconds: float) -> dict[str, object]:
    import websockets

    query = f"window_us={WINDOW_US}&fit=scale&format=npy&sensor_width=320&sensor_height=240&telemetry=summary"
    latencies: list[float] = []
    answered_us = 0
    closed: dict[str, object] = {}
    async with websockets.connect(f"{url}?{query}", max_size=None) as ws:
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
        span = int(events["t"][-1] - events["t"][0]) + 1
        t0 = int(events["t"][0])
        started = time.perf_counter()
        sent_us = 0
        loop = 0
        while time.perf_counter() - started < seconds:
            shifted = events.copy()
            shifted["t"] += loop * span
            t = shifted["t"]
            edges = np.searchsorted(t, np.arange(t0 + loop * span, t0 + (loop + 1) * span + SEND_US, SEND_US))
            for a, b in itertools.pairwise(edges):
                sent_us += SEND_US
                if speed > 0:
                    await asyncio.sleep(max(0.0, started + sent_us / 1e6 / speed - time.perf_counter()))
                else:
                    await asyncio.sleep(0)
                if b > a:
                    await ws.send(write_npy(shifted[a:b]))
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
    url: str, events: np.ndarray, sessions: int, speed: float, seconds: float
) -> dict[str, object]:
    results = await asyncio.gather(*(one_session(url, events, speed, seconds) for _ in range(sessions)))
    latencies = np.asarray([x for r in results for x in r["latencies"]])  # type: ignore[union-attr]
    return {
        "rtf": statistics.median(float(r["rtf"]) for r in results),  # type: ignore[arg-type]
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "dropped": sum(int(r["dropped"]) for r in results),  # type: ignore[call-overload]
        "windows": sum(int(r["windows"]) for r in results),  # type: ignore[call-overload]
    }


def bench_sessions(args: argparse.Namespace) -> list[dict[str, object]]:
    from server_process import ServerProcess

    events = read_events(DVX.read_bytes()).events
    env = {
        "SPIKESERVE_TORCH_THREADS": str(args.threads),
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_DEFAULT_MODELS": json.dumps(args.models),
        "SPIKESERVE_STREAM_MAX_SESSIONS_PER_KEY": "64",
    }
    rows = []
    with ServerProcess(Path(args.registry), env=env) as server:
        assert server.process is not None
        pid = server.process.pid
        ws_base = server.url.replace("http://", "ws://")
        for model in args.models:
            url = f"{ws_base}/v1/models/{model}/stream"
            asyncio.run(bench_cell(url, events, 1, 0, 1.0))  # load the stream copy before timing
            for sessions in args.sessions:
                for speed in args.speeds:
                    before = rss_mb(pid)
                    cell = asyncio.run(bench_cell(url, events, sessions, speed, args.seconds))
                    rows.append(
                        {"model": model, "sessions": sessions, "speed": speed, **cell,
                         "rss_before_mb": before, "rss_after_mb": rss_mb(pid)}
                    )  # fmt: skip
                    print(rows[-1], flush=True)
    return rows


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
    args = parser.parse_args()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs (shared)")
    print("\n## Ingest: decode + fit + window, no model (events per CPU second)\n")
    print("| format | events | streamed, 64 KiB chunks | one-shot decode + bin | ratio (range) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in bench_ingest(args.rounds):
        low, high = row["ratio_range"]  # type: ignore[misc]
        print(
            f"| {row['format']} | {row['events']:,} | {row['streamed_events_per_cpu_s'] / 1e6:.2f} M/s "
            f"| {row['one_shot_events_per_cpu_s'] / 1e6:.2f} M/s "
            f"| {row['ratio']:.2f} ({low:.2f}-{high:.2f}) |"
        )
    if args.skip_sessions:
        return
    rows = bench_sessions(args)
    print("\n## Sessions: DVXplorer looped, 50 ms windows, fit=scale\n")
    print(
        "| model | sessions | speed | real-time factor / speed | window p50 | p99 | dropped / windows", end=""
    )
    print(" | RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speed = "max" if r["speed"] == 0 else f"{r['speed']:g}x"
        wanted = float(r["speed"]) or float("nan")  # type: ignore[arg-type]
        rtf = f"{r['rtf']:.2f}" + (f" / {float(r['rtf']) / wanted:.2f}" if r["speed"] else "")  # type: ignore[arg-type]
        print(
            f"| {r['model']} | {r['sessions']} | {speed} | {rtf} "
            f"| {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms "
            f"| {r['dropped']} / {r['windows']} | {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
