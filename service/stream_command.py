"""``spikeserve stream``: feed a live event stream to a served model and print one line per window.

The source is a DV network server (``--connect HOST:PORT``: iniVation DV's network output or
``dv_processing.io.NetworkWriter``, the AEDAT4 IOHeader then packets over TCP; its bytes are
forwarded as they arrive, split wherever TCP split them) or a recording replayed in (scaled)
real time (``--file RECORDING --speed 1.0``; 0 = as fast as possible), sent as ``.npy`` chunks of
10 ms of events. The gateway's ``WS /v1/models/{ref}/stream`` answers each window; the command
prints time, top-1, confidence and spike rate, or the answers as JSON lines with ``--json``.

``--compression``: per-message deflate (RFC 7692) shrinks a 10 ms ``.npy`` message of a DVXplorer's
events to about 40 % of its bytes, for about 1 ms of the client's CPU per message (docs/PERFORMANCE.md,
live streams). That pays over a slow link, not on this host or a LAN, so ``auto`` (the default)
sends uncompressed to a gateway whose addresses are all loopback, private or link-local, and
deflates to any other; ``deflate`` and ``none`` choose outright.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPLAY_CHUNK_US = 10_000
SOCKET_READ_BYTES = 1 << 16


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="stream events from a DV camera server or a recording to a served model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--connect", metavar="HOST:PORT", help="a DV network server (AEDAT4 over TCP)")
    source.add_argument(
        "--file", type=Path, metavar="RECORDING", help="replay a recording (any upload format)"
    )
    parser.add_argument(
        "--model", required=True, metavar="REF", help="model reference (name, name:3, name@alias)"
    )
    parser.add_argument(
        "--gateway", default="http://127.0.0.1:8000", metavar="URL", help="the spikeserve gateway"
    )
    parser.add_argument("--fit", choices=("crop", "scale"), help="fit a larger sensor to the model's")
    parser.add_argument(
        "--window-ms", type=float, default=50.0, metavar="N", help="window length (default 50)"
    )
    parser.add_argument(
        "--time-steps", type=int, default=1, metavar="N", help="time steps per window (default 1)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="--file replay speed; 0 = as fast as possible"
    )
    parser.add_argument("--telemetry", default="summary", choices=("none", "summary", "layers"))
    parser.add_argument("--json", action="store_true", help="print every server message as one JSON line")
    parser.add_argument(
        "--compression",
        choices=("auto", "deflate", "none"),
        default="auto",
        help="per-message deflate; auto (default): none to a loopback or private-network gateway",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SPIKESERVE_API_KEY"),
        help="API key (default $SPIKESERVE_API_KEY)",
    )
    parser.set_defaults(handler=_stream)


def stream_url(args: argparse.Namespace, extra: dict[str, Any]) -> str:
    """The WebSocket URL of the gateway's stream route for ``args``."""
    parts = urlsplit(args.gateway if "://" in args.gateway else f"http://{args.gateway}")
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    query = {"window_ms": f"{args.window_ms:g}", "time_steps": args.time_steps, "telemetry": args.telemetry}
    if args.fit:
        query["fit"] = args.fit
    query.update(extra)
    return f"{scheme}://{parts.netloc}/v1/models/{args.model}/stream?{urlencode(query)}"


async def websocket_compression(choice: str, host: str) -> str | None:
    """``websockets.connect``'s ``compression`` for ``--compression choice`` and the gateway ``host``."""
    if choice != "auto":
        return "deflate" if choice == "deflate" else None
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return "deflate"  # the connection will say what is wrong with the host
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found}
    near = all(a.is_loopback or a.is_private or a.is_link_local for a in addresses)
    return None if near and addresses else "deflate"


def describe(message: dict[str, Any]) -> str:
    """One human line for a window answer."""
    top = message["predictions"][0] if message["predictions"] else {"label": "?", "probability": 0.0}
    rate = (message.get("telemetry") or {}).get("spike_rate")
    spikes = f"  spike rate {rate:.4f}" if rate is not None else ""
    return (
        f"{message['start_us'] / 1e6:10.3f}-{message['end_us'] / 1e6:.3f} s  top-1 {top['label']:>6} "
        f"({top['probability']:.3f}){spikes}  latency {message['latency_ms']:.1f} ms"
        f"  dropped {message['dropped_windows']}{'  STATE RESET' if message.get('state_reset') else ''}"
    )


def _stream(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (OSError, ValueError) as exc:
        print(f"spikeserve stream: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    import websockets

    extra: dict[str, Any] = {}
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--connect wants HOST:PORT, got {args.connect!r}")
        extra["format"] = "aedat4"
    else:
        events, sensor = _load_recording(args.file)
        extra["format"] = "npy"
        if sensor is not None:
            extra["sensor_width"], extra["sensor_height"] = sensor
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    url = stream_url(args, extra)
    compression = await websocket_compression(args.compression, urlsplit(url).hostname or "")
    async with websockets.connect(
        url, additional_headers=headers, max_size=None, compression=compression
    ) as ws:
        ready = json.loads(await ws.recv())
        deflate = any(extension.name == "permessage-deflate" for extension in ws.protocol.extensions)
        _print(args, ready, "per-message deflate" if deflate else "uncompressed")
        if ready.get("type") != "ready":
            return 1
        printer = asyncio.create_task(_print_answers(args, ws))
        if args.connect:
            await _forward_socket(ws, host, int(port))
        else:
            await replay(ws, events, args.speed)
        await ws.send(json.dumps({"close": True}))
        return await printer


async def _forward_socket(ws: Any, host: str, port: int) -> None:
    """Forward every byte of the DV network server until it closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while chunk := await reader.read(SOCKET_READ_BYTES):
            await ws.send(chunk)
    finally:
        writer.close()


def _load_recording(path: Path) -> tuple[Any, tuple[int, int] | None]:
    from eventio import read_events

    recording = read_events(path.read_bytes(), fmt=path.suffix.lstrip(".") or None)
    return recording.events, recording.sensor_size


async def replay(ws: Any, events: Any, speed: float) -> None:
    """Send ``events`` as .npy chunks of 10 ms of event time, paced at ``speed`` x real time."""
    import numpy as np

    from eventio.npy import write_npy

    if len(events) == 0:
        return
    t = events["t"]
    edges = np.searchsorted(t, np.arange(int(t[0]), int(t[-1]) + REPLAY_CHUNK_US + 1, REPLAY_CHUNK_US))
    started = time.perf_counter()
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        if speed > 0:
            due = started + (i + 1) * REPLAY_CHUNK_US / 1e6 / speed  # a chunk leaves once its time has passed
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if hi > lo:
            await ws.send(write_npy(events[lo:hi]))


async def _print_answers(args: argparse.Namespace, ws: Any) -> int:
    """Print until the server's final message; the exit status says how the session ended."""
    import websockets

    try:
        async for raw in ws:
            message = json.loads(raw)
            _print(args, message)
            if message.get("type") == "closed":
                return 0
    except websockets.ConnectionClosed:
        pass
    code = ws.close_code
    if code not in (None, 1000):
        print(f"spikeserve stream: the server closed the stream ({code}: {ws.close_reason})", file=sys.stderr)
        return 1
    return 0


def _print(args: argparse.Namespace, message: dict[str, Any], compression: str = "") -> None:
    if args.json:
        print(json.dumps(message), flush=True)
        return
    kind = message.get("type")
    if kind == "window":
        print(describe(message), flush=True)
    elif kind == "ready":
        print(
            f"streaming to {message['model']['name']}:{message['model']['version']} ({message['mode']}, "
            f"{message['window_us'] / 1000:g} ms windows of {message['steps_per_window']} steps, "
            f"{compression})",
            file=sys.stderr,
            flush=True,
        )
    elif kind == "error":
        print(
            f"error: {message['error']['code']}: {message['error']['message']}", file=sys.stderr, flush=True
        )
    elif kind == "closed":
        print(
            f"closed ({message['reason']}): {message['windows']} windows, "
            f"{message['dropped_windows']} dropped, {message['events']} events",
            file=sys.stderr,
            flush=True,
        )
