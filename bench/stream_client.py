"""What the ``spikeserve stream`` client costs per message, with per-message deflate and without.

1. Messages: how well what the client sends compresses, and the client CPU it takes, with the
   settings ``websockets`` negotiates by default (raw deflate, 32 KiB window, memLevel 5, level 6,
   context kept across messages): the real DVXplorer and N-MNIST recordings as 10 ms ``.npy``
   messages (``--file``), and the DVXplorer AEDAT4 file in 64 KiB reads (``--connect`` forwards
   what it reads).
2. Sessions: a real ``spikeserve serve`` process; the command's own code (``stream_url``,
   ``websocket_compression``, ``replay``) replays the DVXplorer recording in a loop at 1x for
   ``--seconds`` with ``--compression deflate`` (every client before the option existed) and
   ``none``, rounds interleaved. Per session: the client process's CPU time (user + system) from
   connect to the final message, per message sent, and the window latency p50 the server reports.

    .venv/bin/python bench/stream_client.py                       # zoo/danet-nmnist, 4 rounds of 10 s
    .venv/bin/python bench/stream_client.py --rounds 2 --seconds 5
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
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from bench.stream import DVX, NMNIST, SEND_US, loop_events  # noqa: E402
from eventio import read_events  # noqa: E402
from eventio.npy import write_npy  # noqa: E402
from service.cli import build_parser  # noqa: E402
from service.stream_command import replay, stream_url, websocket_compression  # noqa: E402

READ_BYTES = 64 * 1024


def npy_messages(events: np.ndarray) -> list[bytes]:
    t = events["t"]
    edges = np.searchsorted(t, np.arange(int(t[0]), int(t[-1]) + SEND_US + 1, SEND_US))
    return [write_npy(events[a:b]) for a, b in itertools.pairwise(edges) if b > a]


def deflate(messages: list[bytes]) -> tuple[float, float]:
    """(compressed / raw bytes, client CPU ms per message), as permessage-deflate with context
    takeover compresses: one raw-deflate stream, a sync flush closing each message."""
    raw = sum(map(len, messages))
    best = float("inf")
    for _ in range(5):
        encoder = zlib.compressobj(wbits=-15, memLevel=5)
        started = time.process_time()
        out = sum(len(encoder.compress(m) + encoder.flush(zlib.Z_SYNC_FLUSH)) - 4 for m in messages)
        best = min(best, time.process_time() - started)
    return out / raw, best * 1000 / len(messages)


def print_messages() -> None:
    dvx = DVX.read_bytes()
    inputs = {
        "DVXplorer 320x240, .npy 10 ms": npy_messages(read_events(dvx).events),
        "N-MNIST 34x34, .npy 10 ms": npy_messages(read_events(NMNIST.read_bytes()).events),
        "DVXplorer AEDAT4 file, 64 KiB reads": [
            dvx[i : i + READ_BYTES] for i in range(0, len(dvx), READ_BYTES)
        ],
    }
    print("\n## Messages: per-message deflate (websockets' settings), best of 5\n")
    print("| messages | count | bytes / message | deflated / raw | client CPU ms / message |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, messages in inputs.items():
        ratio, cpu_ms = deflate(messages)
        size = sum(map(len, messages)) / len(messages)
        print(f"| {name} | {len(messages)} | {size:,.0f} | {ratio:.2f} | {cpu_ms:.3f} |")


async def session(args: argparse.Namespace, events: np.ndarray, choice: str) -> dict[str, float]:
    import websockets

    command = ["stream", "--model", args.model, "--gateway", args.gateway, "--file", "-"]
    command += ["--fit", "scale", "--compression", choice]
    stream_args = build_parser().parse_args(command)
    url = stream_url(stream_args, {"format": "npy", "sensor_width": 320, "sensor_height": 240})
    latencies: list[float] = []
    started_cpu = time.process_time()
    compression = await websocket_compression(choice, "127.0.0.1")
    async with websockets.connect(url, max_size=None, compression=compression) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "window":
                    latencies.append(message["latency_ms"])
                elif message["type"] == "closed":
                    return

        receiver = asyncio.create_task(receive())
        await replay(ws, events, 1.0)
        await ws.send(json.dumps({"close": True}))
        await asyncio.wait_for(receiver, timeout=120)
    cpu_s = time.process_time() - started_cpu
    sent = len(npy_messages(events))
    return {
        "cpu_ms_per_message": cpu_s * 1000 / sent,
        "messages": sent,
        "p50_ms": float(np.median(latencies)),
    }


def print_sessions(args: argparse.Namespace) -> None:
    from server_process import ServerProcess

    recording = read_events(DVX.read_bytes()).events
    span_s = (int(recording["t"][-1]) - int(recording["t"][0])) / 1e6
    events = loop_events(recording, max(1, round(args.seconds / span_s)))
    env = {
        "SPIKESERVE_TORCH_THREADS": "1",
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_DEFAULT_MODELS": json.dumps([args.model]),
    }
    rows: dict[str, list[dict[str, float]]] = {"deflate": [], "none": []}
    with ServerProcess(Path(args.registry), env=env) as server:
        args.gateway = server.url
        asyncio.run(session(args, events[: len(events) // 10], "none"))  # the stream copy loads
        for round_ in range(args.rounds):
            for choice in ("deflate", "none") if round_ % 2 == 0 else ("none", "deflate"):
                load = os.getloadavg()[0]
                row = {**asyncio.run(session(args, events, choice)), "load": load}
                rows[choice].append(row)
                print({"compression": choice, **row}, flush=True)
    print(f"\n## Sessions: {args.model}, DVXplorer looped at 1x, {args.seconds:g} s each\n")
    print("| --compression | messages / session | client CPU ms / message (rounds) | median | window p50 |")
    print("| --- | ---: | --- | ---: | ---: |")
    for choice, results in rows.items():
        cpu = [r["cpu_ms_per_message"] for r in results]
        print(
            f"| {choice} | {int(results[0]['messages'])} | {', '.join(f'{c:.3f}' for c in cpu)} "
            f"| {statistics.median(cpu):.3f} | {statistics.median(r['p50_ms'] for r in results):.1f} ms |"
        )
    ratios = [d["cpu_ms_per_message"] / n["cpu_ms_per_message"] for d, n in zip(*rows.values(), strict=True)]
    print(f"\ndeflate / none, per round: {', '.join(f'{r:.2f}' for r in ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registry", default="zoo")
    parser.add_argument("--model", default="danet-nmnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="event time per session")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-sessions", action="store_true")
    args = parser.parse_args()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs (shared)")
    print(f"# load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print_messages()
    if not args.skip_sessions:
        print_sessions(args)


if __name__ == "__main__":
    main()
