"""What the gateway alone costs per answer: the real app and batcher, with the network replaced.

A server process runs ``create_app`` under uvicorn (as ``spikeserve serve`` does) with an embedded
pool whose engine answers every request with a result that the real engine computed once for the
same digit (telemetry included), so HTTP parsing, routing, the body limit, PNG decoding, the
batcher hand-off, the answer's JSON and the metrics are all real and only the forward is gone.
The same client as bench/peers.py loads it; the server's CPU per answer is the gateway's
per-request cost, the bound on how much of the machine the network can get. Rounds repeat and
report medians with their range.

    .venv/bin/python bench/gateway.py                    # 5 rounds of 4 s at 32 clients
    .venv/bin/python bench/gateway.py --profile out.txt  # also py-spy's collapsed stacks of a round
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from server_process import free_port  # noqa: E402

from bench.serve import run_load  # noqa: E402


def serve(port: int, registry: Path, model: str) -> None:
    """The server side: the app with an embedded pool whose engine replays a real result."""
    import torch
    import uvicorn

    from registry import Registry
    from service.app import create_app
    from service.decoding import decode_image
    from service.settings import Settings
    from workers.batcher import Batcher
    from workers.embedded import EmbeddedPool
    from workers.engine import Engine
    from workers.protocol import InferenceRequest, InferenceResult

    torch.set_num_threads(1)
    settings = Settings(registry=registry, admin_token="bench-gateway", default_models=[model])
    registry_ = Registry(registry)
    manifest = registry_.resolve(model)
    engine = Engine(registry_, backend="torch", worker_id="bench")
    body = _digit()
    image = decode_image(body, "image/png", manifest.input, 1 << 24).array  # type: ignore[arg-type]
    probe = InferenceRequest(
        "probe", manifest.name, manifest.version, "image", image, manifest.time_steps.default
    )
    recorded = engine.run_batch([probe])[0]

    def replay(requests: list[InferenceRequest]) -> list[InferenceResult]:
        return [replace(recorded, request_id=r.request_id, batch_size=len(requests)) for r in requests]

    class ReplayPool(EmbeddedPool):
        async def start(self) -> None:
            self._engine = engine
            self._batcher = Batcher(
                replay,  # type: ignore[arg-type]
                max_batch_size_for=self.settings.batch_size_for,
                max_delay_ms_for=self.settings.delay_ms_for,
                max_queue_size=self.settings.max_queue_size,
            )
            await self._batcher.start()
            self._ready = True

        async def submit(self, request: InferenceRequest) -> Any:
            assert self._batcher is not None
            return await self._batcher.submit(request)

    app = create_app(settings, pool=ReplayPool(settings, registry=registry_))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _digit() -> bytes:
    from bench.serve import digit_png

    return digit_png()[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    parser.add_argument("--model", default="danet-mnist")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of one extra round")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.registry, args.model)
        return 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, __file__, "--serve", str(port), "--registry", str(args.registry),
               "--model", args.model]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO_ROOT)
    body = _digit()
    path = f"/v1/models/{args.model}/classify"
    headers = {"Content-Type": "image/png"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                asyncio.run(run_load(url, path, body, headers, clients=1, requests=1))
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the gateway did not start") from None
                time.sleep(0.2)
        asyncio.run(run_load(url, path, body, headers, clients=args.clients, duration_s=2.0))  # warm-up
        rates, cpus, p50s = [], [], []
        for _ in range(args.rounds):
            before = cpu_seconds(server.pid)
            result = asyncio.run(
                run_load(url, path, body, headers, clients=args.clients, duration_s=args.seconds)
            )
            answers = max(len(result.latencies_ms), 1)
            rates.append(result.rps)
            cpus.append((cpu_seconds(server.pid) - before) * 1000.0 / answers)
            p50s.append(result.percentile(50))
        if args.profile:
            spy = Path(sys.executable).with_name("py-spy")
            record = ["record", "-p", str(server.pid), "-d", str(int(args.seconds) + 1), "-r", "250"]
            profiler = subprocess.Popen(
                [str(spy), *record, "-f", "raw", "-o", str(args.profile), "--nonblocking"]
            )
            asyncio.run(run_load(url, path, body, headers, clients=args.clients, duration_s=args.seconds))
            profiler.wait()
    finally:
        server.terminate()
        server.wait(timeout=20)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# gateway alone (engine replays a recorded result), {args.clients} clients, "
          f"{args.rounds} rounds of {args.seconds:.0f} s; load average {load}")  # fmt: skip
    print(f"server CPU per answer: {statistics.median(cpus):.3f} ms [{min(cpus):.3f}-{max(cpus):.3f}]")
    print(f"answers/s: {statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}]; "
          f"p50 {statistics.median(p50s):.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
