"""spikeserve against its peers on the same checkpoint: TorchServe (1 and 2 workers) and LitServe.

Every server runs danet-mnist through spikeserve's own engine (TorchServe from the ``.mar`` that
``spikeserve export torchserve`` writes; LitServe through the LitAPI in bench/peers_litserve.py),
with the same batching (max batch 32, 5 ms delay) and the same neuron backend, and answers the
same JSON. The same asyncio HTTP/1.1 client (keep-alive connections, raw PNG bodies: the first 64
held-out MNIST-5k digits in turn) loads one server at a time at 1, 8 and 32 concurrent clients,
the servers' order rotating every round; the servers not being measured are SIGSTOPped, so they
take no CPU from the one that is. Every answer's top-1 must equal spikeserve's for that digit (a
disagreement fails the run). Reported per server and client count, as medians over rounds:
answers/s, p50 and p99 latency, server CPU per answer (all processes of the server: user + system),
RSS after the run, cold start (process start to first answer), and per-round ratios of
spikeserve's answers/s to each peer's (median [min-max]).

    .venv/bin/python bench/peers.py                          # 5 rounds of 3 s per server and level
    .venv/bin/python bench/peers.py --rounds 3 --seconds 2 --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # server_process, torchserve_process: shared with the e2e tests

from server_process import ServerProcess, free_port  # noqa: E402
from torchserve_process import TorchServeProcess, torchserve_available  # noqa: E402

from bench.serve import _read_response  # noqa: E402

DIGITS = 64


# -- processes ---------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of the live processes of ``root``'s tree."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_rss_mb(root: int) -> float:
    total_kb = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024.0


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``, by native thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from ``py-spy dump`` (a dev dependency); {} without it."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {}
    dump = subprocess.run(
        [str(spy), "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True
    )
    names = {}
    for match in re.finditer(
        r'Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)? \((?:active|idle)[^)]*\): "([^"]+)"', dump.stdout
    ):
        names[int(match.group(1))] = match.group(2).rstrip("0123456789_")
    return names


def signal_tree(root: int, sig: signal.Signals) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


@dataclass
class Peer:
    """One running server: where to POST a digit, and the root of its processes."""

    name: str
    url: str
    path: str
    root_pid: int
    cold_start_s: float
    stop: Callable[[], None]


def _post(url: str, body: bytes, timeout_s: float = 30.0) -> dict[str, object] | None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except (OSError, urllib.error.HTTPError, ValueError):
        return None


def _first_answer(url: str, body: bytes, started: float, alive: Callable[[], bool]) -> float:
    """Seconds from ``started`` to the first successful answer (cold start)."""
    while _post(url, body, timeout_s=10.0) is None:
        if not alive():
            raise RuntimeError(f"the server behind {url} exited before answering")
        time.sleep(0.05)
    return time.monotonic() - started


def start_spikeserve(root: Path, model: str, body: bytes, args: argparse.Namespace) -> Peer:
    env = {
        "SPIKESERVE_ADMIN_TOKEN": "bench-peers",
        "SPIKESERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "SPIKESERVE_MAX_DELAY_MS": str(args.max_delay_ms),
        "SPIKESERVE_NEURON_BACKEND": args.backend,
        "SPIKESERVE_TORCH_THREADS": str(args.torch_threads),
        "SPIKESERVE_CONCURRENT_BATCHES": str(args.concurrent_batches),
        "SPIKESERVE_INFERENCE_PROCESSES": str(args.inference_processes),
    }
    server = ServerProcess(root, env=env, args=["--models", model])
    started = time.monotonic()
    server.start()
    path = f"/v1/models/{model}/classify"
    assert server.process is not None
    process = server.process
    cold = _first_answer(server.url + path, body, started, lambda: process.poll() is None)
    return Peer("spikeserve", server.url, path, process.pid, cold, server.stop)


def start_torchserve(
    root: Path, model: str, body: bytes, args: argparse.Namespace, workers: int, scratch: Path
) -> Peer:
    from registry import Registry
    from service.settings import Settings
    from workers.torchserve.archive import export_torchserve

    store = scratch / f"torchserve-{workers}"
    settings = Settings(
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        neuron_backend=args.backend,
        torch_threads=args.torch_threads,
    )
    export_torchserve(Registry(root), model, store, settings, workers=workers)
    server = TorchServeProcess(store, [model])
    started = time.monotonic()
    server.start()
    path = f"/predictions/{model}"
    assert server.process is not None
    process = server.process
    cold = _first_answer(server.url + path, body, started, lambda: process.poll() is None)
    return Peer(f"TorchServe {workers}w", server.url, path, process.pid, cold, server.stop)


def start_litserve(root: Path, model: str, body: bytes, args: argparse.Namespace, scratch: Path) -> Peer:
    port = free_port()
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "peers_litserve.py"),
        "--registry", str(root), "--model", model, "--port", str(port), "--backend", args.backend,
        "--torch-threads", str(args.torch_threads),
        "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms),
    ]  # fmt: skip
    log = (scratch / "litserve.log").open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the session this function started
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()

    try:
        cold = _first_answer(url + "/predict", body, started, lambda: process.poll() is None)
    except BaseException:
        stop()
        raise
    return Peer("LitServe", url, "/predict", process.pid, cold, stop)


# -- load --------------------------------------------------------------------------------------


@dataclass
class Round:
    answers: int
    seconds: float
    latencies_ms: list[float]
    cpu_ms_per_answer: float
    errors: int
    disagreements: int
    client_cpu_ms_per_answer: float = 0.0  # the load generator's, on the same cores

    @property
    def rps(self) -> float:
        return self.answers / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class Tally:
    rounds: dict[tuple[str, int], list[Round]] = field(default_factory=dict)
    # spikeserve's CPU seconds by thread name (event loop, engine, decode threads), per client count
    threads: dict[int, dict[str, float]] = field(default_factory=dict)
    thread_answers: dict[int, int] = field(default_factory=dict)


async def _load(
    url: str, path: str, bodies: list[bytes], expected: list[str], clients: int, seconds: float
) -> tuple[list[float], int, int]:
    """``clients`` keep-alive connections POST the digits in turn for ``seconds``; each answer's top-1
    is checked against ``expected``. Returns (latencies within the window, errors, disagreements)."""
    host, port = url.removeprefix("http://").split(":")
    messages = []
    for body in bodies:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
        messages.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
    latencies: list[float] = []
    counts = {"errors": 0, "disagreements": 0, "next": 0}
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                index = counts["next"] % len(messages)
                counts["next"] += 1
                started = time.perf_counter()
                writer.write(messages[index])
                await writer.drain()
                status, payload = await _read_response(reader)
                finished = time.perf_counter()
                if finished > deadline:
                    break
                if status != 200:
                    counts["errors"] += 1
                    continue
                latencies.append((finished - started) * 1000.0)
                if json.loads(payload)["predictions"][0]["label"] != expected[index]:
                    counts["disagreements"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, counts["errors"], counts["disagreements"]


def measure(
    peer: Peer,
    bodies: list[bytes],
    expected: list[str],
    clients: int,
    seconds: float,
    threads: dict[str, float] | None = None,
    names: dict[int, str] | None = None,
) -> Round:
    """One window of load on ``peer``; with ``threads``, also add to it the CPU seconds of each
    thread of the root process (named by ``names``) and of its child processes together."""
    cpu_before = tree_cpu_s(peer.root_pid)
    threads_before = thread_cpu_s(peer.root_pid) if threads is not None else {}
    root_before = sum(threads_before.values())
    client_before = time.process_time()
    latencies, errors, disagreements = asyncio.run(
        _load(peer.url, peer.path, bodies, expected, clients, seconds)
    )
    client_ms = (time.process_time() - client_before) * 1000.0
    cpu_ms = (tree_cpu_s(peer.root_pid) - cpu_before) * 1000.0
    answers = len(latencies)
    if threads is not None:
        threads_after = thread_cpu_s(peer.root_pid)
        for tid, spent in threads_after.items():
            name = (names or {}).get(tid, "other threads")
            threads[name] = threads.get(name, 0.0) + spent - threads_before.get(tid, 0.0)
        children = cpu_ms / 1000.0 - (sum(threads_after.values()) - root_before)
        if children > 0.0:
            threads["child processes"] = threads.get("child processes", 0.0) + children
    return Round(
        answers,
        seconds,
        latencies,
        cpu_ms / max(answers, 1),
        errors,
        disagreements,
        client_ms / max(answers, 1),
    )


def only_running(peers: list[Peer], chosen: Peer) -> None:
    """SIGSTOP every server but ``chosen`` (SIGCONT it): the measured one has the machine to itself."""
    for peer in peers:
        if peer is not chosen:
            signal_tree(peer.root_pid, signal.SIGSTOP)
    signal_tree(chosen.root_pid, signal.SIGCONT)
    time.sleep(0.2)


def digits() -> list[bytes]:
    from PIL import Image

    from training.datasets import mnist5k

    images, _, _ = mnist5k("test")
    bodies = []
    for image in images[:DIGITS]:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


# -- report ------------------------------------------------------------------------------------


def _range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(peers: list[Peer], tally: Tally, levels: list[int], rss: dict[str, float]) -> None:
    reference = peers[0]
    print("| clients | server | answers/s | p50 ms | p99 ms | server CPU ms/answer | RSS MB | cold start s "
          "| spikeserve answers/s over it, per round |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for clients in levels:
        ours = tally.rounds[(reference.name, clients)]
        for peer in peers:
            rounds = tally.rounds[(peer.name, clients)]
            ratio = (
                ""
                if peer is reference
                else _range(
                    [a.rps / b.rps if b.rps else float("inf") for a, b in zip(ours, rounds, strict=True)]
                )
            )
            print(
                f"| {clients} | {peer.name} | {statistics.median(r.rps for r in rounds):.1f} "
                f"| {statistics.median(r.percentile(50) for r in rounds):.1f} "
                f"| {statistics.median(r.percentile(99) for r in rounds):.1f} "
                f"| {statistics.median(r.cpu_ms_per_answer for r in rounds):.2f} "
                f"| {rss[peer.name]:.0f} | {peer.cold_start_s:.1f} | {ratio} |"
            )


def spikeserve_mode(args: argparse.Namespace) -> str:
    if args.inference_processes:
        return f"batches in {args.inference_processes} inference process(es), one batch each"
    return f"{args.concurrent_batches} batch thread(s) in the gateway process"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    parser.add_argument("--model", default="danet-mnist")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="torch", help="neuron backend of every server (default torch)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads of every server process (default 1: on a busy 2-core machine two OpenMP "
        "threads wait on each other for whole scheduler slices)",
    )
    parser.add_argument(
        "--concurrent-batches",
        type=int,
        default=2,
        help="spikeserve's batches at once in threads of its process, without --inference-processes "
        "(default 2: with one torch thread each, the network uses both cores, as TorchServe's two "
        "workers do)",
    )
    parser.add_argument(
        "--inference-processes",
        type=int,
        default=2,
        help="spikeserve's inference processes, one batch each (default 2: the mode that measured best "
        "here, docs/PERFORMANCE.md; 0 for batches in threads of the gateway)",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="peers to leave out: torchserve, litserve")
    args = parser.parse_args()
    why = torchserve_available()
    if why is not None and "torchserve" not in args.skip:
        raise SystemExit(why)

    bodies = digits()
    print(f"# spikeserve against TorchServe and LitServe, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, load average {load}")
    print(f"# model: {args.model} from {args.registry}; {DIGITS} held-out MNIST-5k digits as PNG, in turn")
    print(f"# max batch {args.max_batch_size}, delay {args.max_delay_ms} ms, neuron backend {args.backend}, "
          f"{args.torch_threads} torch thread(s) per process, "
          f"spikeserve {spikeserve_mode(args)}; "
          f"{args.rounds} rounds of {args.seconds:.0f} s per server and client count")  # fmt: skip
    peers: list[Peer] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            peers.append(start_spikeserve(args.registry, args.model, bodies[0], args))
            signal_tree(peers[-1].root_pid, signal.SIGSTOP)  # cold starts are measured one at a time too
            if "torchserve" not in args.skip:
                for workers in (1, 2):
                    peers.append(
                        start_torchserve(args.registry, args.model, bodies[0], args, workers, scratch)
                    )
                    signal_tree(peers[-1].root_pid, signal.SIGSTOP)
            if "litserve" not in args.skip:
                peers.append(start_litserve(args.registry, args.model, bodies[0], args, scratch))
                signal_tree(peers[-1].root_pid, signal.SIGSTOP)
            reference = peers[0]
            only_running(peers, reference)
            expected = [str(_top1(_post(reference.url + reference.path, body))) for body in bodies]
            for peer in peers:  # agreement, and a warm-up at the highest load
                only_running(peers, peer)
                answers = [_top1(_post(peer.url + peer.path, body)) for body in bodies]
                if answers != expected:
                    raise SystemExit(f"{peer.name} disagrees with spikeserve on the digits' top-1")
                measure(peer, bodies, expected, max(args.clients), 2.0)
            tally = Tally()
            only_running(peers, reference)
            names = thread_names(reference.root_pid)
            for round_index in range(args.rounds):
                for clients in args.clients:
                    shift = round_index % len(peers)
                    for peer in peers[shift:] + peers[:shift]:
                        only_running(peers, peer)
                        split = tally.threads.setdefault(clients, {}) if peer is reference else None
                        measured = measure(peer, bodies, expected, clients, args.seconds, split, names)
                        if split is not None:
                            tally.thread_answers[clients] = (
                                tally.thread_answers.get(clients, 0) + measured.answers
                            )
                        tally.rounds.setdefault((peer.name, clients), []).append(measured)
                        print(f"#   {clients:3d} clients, {peer.name:<14} {measured.rps:7.1f} answers/s, "
                              f"{measured.errors} errors", file=sys.stderr)  # fmt: skip
                print(f"# round {round_index + 1} of {args.rounds} done", file=sys.stderr)
            rss = {}
            for peer in peers:
                only_running(peers, peer)
                rss[peer.name] = tree_rss_mb(peer.root_pid)
        finally:
            for peer in peers:
                signal_tree(peer.root_pid, signal.SIGCONT)
                peer.stop()
    print()
    report(peers, tally, args.clients, rss)
    every = [r for rounds in tally.rounds.values() for r in rounds]
    errors = sum(r.errors for r in every)
    disagreements = sum(r.disagreements for r in every)
    answered = sum(r.answers for r in every)
    print()
    for clients, split in tally.threads.items():
        answers = max(tally.thread_answers.get(clients, 0), 1)
        ordered = sorted(split.items(), key=lambda item: -item[1])
        parts = ", ".join(f"{name} {seconds * 1000.0 / answers:.2f}" for name, seconds in ordered)
        print(f"spikeserve CPU ms per answer by thread at {clients} clients: {parts}")
    for clients in args.clients:
        client_ms = {
            peer.name: statistics.median(
                r.client_cpu_ms_per_answer for r in tally.rounds[(peer.name, clients)]
            )
            for peer in peers
        }
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in client_ms.items())
        print(f"load generator (this process, same cores) CPU ms per answer at {clients} clients: {parts}")
    print(
        f"top-1 agreement with spikeserve: {answered - disagreements} of {answered} answers; errors: {errors}"
    )
    return 1 if disagreements or errors else 0


def _top1(answer: dict[str, object] | None) -> str:
    if answer is None:
        raise SystemExit("a server failed to answer a digit")
    predictions = answer["predictions"]
    assert isinstance(predictions, list)
    return str(predictions[0]["label"])


if __name__ == "__main__":
    sys.exit(main())
