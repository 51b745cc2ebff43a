"""Peak memory of a gateway decoding large images at once: bounded decodes vs unbounded, one run.

Two real ``spikeserve serve`` processes on the tiny registry (tiny-danet, 1x28x28, resizing):

- bounded: the defaults (``MAX_CONCURRENT_LARGE_DECODES=2``);
- unbounded: ``MAX_CONCURRENT_LARGE_DECODES`` as high as the clients, what the server did before
  large decodes waited for a slot.

Each round sends ``--clients`` concurrent ``POST /v1/models/tiny-danet/classify`` of one large RGB
PNG (``--side`` x ``--side``, a few kB compressed) to a fresh server of each kind, alternating
which goes first, and reads the server's peak resident memory (``VmHWM`` in /proc) before and
after. Prints both peaks' growth per round, their medians and the ratio bounded / unbounded.

    .venv/bin/python bench/decode_memory.py                 # 8 clients, 2896x2896 RGB, 3 rounds
    .venv/bin/python bench/decode_memory.py --rounds 5 --side 2048
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tiny_zoo and server_process: shared with the e2e tests

from server_process import ServerProcess  # noqa: E402
from tiny_zoo import IMAGE_MODEL, build_tiny_registry  # noqa: E402

MIB = 1024 * 1024


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc: this measures on Linux only")


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _growth_mib(root: Path, env: dict[str, str], body: bytes, clients: int) -> tuple[float, list[int]]:
    """How much the server's peak RSS grew while ``clients`` sent ``body`` at once; their statuses."""
    with (
        ServerProcess(root, env=env, args=["--models", IMAGE_MODEL]) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        assert server.process is not None
        url = f"/v1/models/{IMAGE_MODEL}/classify?telemetry=none"
        small = _png(28)
        for _ in range(3):  # the network, the decoder and the answer path are warm before measuring
            client.post(url, content=small, headers={"content-type": "image/png"}).raise_for_status()
        before = _peak_rss_mib(server.process.pid)

        def send(_: int) -> int:
            return client.post(url, content=body, headers={"content-type": "image/png"}).status_code

        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(send, range(clients)))
        return _peak_rss_mib(server.process.pid) - before, statuses


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--side", type=int, default=2896, help="image width and height (default 2896)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    body = _png(args.side)
    decoded_mib = 4 * 3 * args.side * args.side / MIB
    common = {"SPIKESERVE_NEURON_BACKEND": "torch", "SPIKESERVE_TORCH_THREADS": "1"}
    kinds = {
        "bounded": dict(common),
        "unbounded": {**common, "SPIKESERVE_MAX_CONCURRENT_LARGE_DECODES": str(args.clients)},
    }
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {platform.machine()}; "
        f"{args.clients} clients at once, one {args.side}x{args.side} RGB PNG each "
        f"({len(body):,} bytes; {decoded_mib:.0f} MiB as float32)"
    )
    growth: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_registry(root)
        for round_index in range(args.rounds):
            order = list(kinds) if round_index % 2 == 0 else list(reversed(kinds))
            for kind in order:
                mib, statuses = _growth_mib(root, kinds[kind], body, args.clients)
                if set(statuses) != {200}:
                    raise RuntimeError(f"{kind}: statuses {statuses}")
                growth[kind].append(mib)
            print(
                f"round {round_index + 1}: peak RSS grew {growth['bounded'][-1]:.0f} MiB bounded, "
                f"{growth['unbounded'][-1]:.0f} MiB unbounded"
            )
    bounded, unbounded = (statistics.median(growth[kind]) for kind in ("bounded", "unbounded"))
    spans = {kind: f"{min(values):.0f}-{max(values):.0f}" for kind, values in growth.items()}
    print(
        f"median growth: bounded {bounded:.0f} MiB (range {spans['bounded']}), "
        f"unbounded {unbounded:.0f} MiB (range {spans['unbounded']}); "
        f"bounded / unbounded = {bounded / unbounded:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
