"""Two or more spikeserve servers under the same load in alternating rounds: CPU per answer, by thread.

Each server is ``NAME=CHECKOUT[,VAR=VALUE...]``: ``spikeserve serve`` run from that checkout (its own
code; the registry is ``CHECKOUT/zoo``) with those environment variables, e.g. the commit before a
change in a ``git worktree`` beside this one, or the same code with other settings. Every round
loads each server in turn for the same seconds with the same client (bench/serve.py's ``run_load``,
a PNG digit to ``/classify``) while the others are SIGSTOPped, rotating the order, and reads each
thread's CPU from /proc (named by py-spy: the event loop is MainThread, the batch threads
spikeserve-batch, torch's OpenMP threads "other"; inference processes together as "child
processes"). Printed: medians and ranges over rounds of server CPU per answer, answers/s, p50
and the mean batch the server formed, and per-round ratios to the first server. On a shared
machine read the CPU ratios: the other jobs slow every round's throughput, but CPU per answer
moves much less.

    git worktree add /tmp/before HEAD~3
    .venv/bin/python bench/compare.py before=/tmp/before after=.
    .venv/bin/python bench/compare.py one=.,SPIKESERVE_CONCURRENT_BATCHES=1 two=. --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from server_process import ServerProcess  # noqa: E402

from bench.peers import signal_tree, thread_cpu_s, thread_names, tree_cpu_s  # noqa: E402
from bench.serve import batch_stats, digit_png, run_load  # noqa: E402


@dataclass
class Server:
    name: str
    checkout: Path
    env: dict[str, str]
    rounds: list[dict[str, float]] = field(default_factory=list)  # one per round: cpu, rps, p50, batch
    threads: list[dict[str, float]] = field(default_factory=list)  # ms per answer by thread name


def parse_server(text: str) -> Server:
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=CHECKOUT[,VAR=VALUE...]")
    checkout, *pairs = rest.split(",")
    env = dict(pair.split("=", 1) for pair in pairs)
    return Server(name, Path(checkout).resolve(), env)


def measure(
    server: Server, process: ServerProcess, model: str, names: dict[int, str], args: argparse.Namespace
) -> None:
    pid = process.process.pid if process.process is not None else 0
    path, body = f"/v1/models/{model}/classify", digit_png()[0]
    batches0, requests0 = batch_stats(process.url, model)
    before = thread_cpu_s(pid)
    tree_before = tree_cpu_s(pid)
    result = asyncio.run(
        run_load(process.url, path, body, {"Content-Type": "image/png"}, clients=args.clients,
                 duration_s=args.seconds)
    )  # fmt: skip
    after = thread_cpu_s(pid)
    children = tree_cpu_s(pid) - tree_before - (sum(after.values()) - sum(before.values()))
    batches1, requests1 = batch_stats(process.url, model)
    answers = max(len(result.latencies_ms), 1)
    split: dict[str, float] = {}
    for tid, seconds in after.items():
        name = names.get(tid, "other")
        split[name] = split.get(name, 0.0) + (seconds - before.get(tid, 0.0)) * 1000.0 / answers
    if children > 0.0:  # inference processes (SPIKESERVE_INFERENCE_PROCESSES)
        split["child processes"] = children * 1000.0 / answers
    server.threads.append(split)
    server.rounds.append(
        {
            "cpu": sum(split.values()),
            "rps": result.rps,
            "p50": result.percentile(50),
            "batch": (requests1 - requests0) / max(batches1 - batches0, 1),
            "errors": float(sum(result.errors.values())),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", type=parse_server, metavar="NAME=CHECKOUT[,VAR=VALUE...]")
    parser.add_argument("--model", default="danet-mnist")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    servers: list[Server] = args.servers
    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    with contextlib.ExitStack() as stack:
        processes, names = [], []
        for server in servers:  # started one at a time, each stopped while the next starts
            env = {"SPIKESERVE_ADMIN_TOKEN": "bench-compare", **server.env}
            process = ServerProcess(server.checkout / "zoo", env=env, args=["--models", args.model],
                                    cwd=server.checkout)  # fmt: skip
            stack.enter_context(process)
            assert process.process is not None
            stack.callback(signal_tree, process.process.pid, signal.SIGCONT)  # so that it can stop
            path, headers = f"/v1/models/{args.model}/classify", {"Content-Type": "image/png"}
            warm_up = run_load(
                process.url, path, digit_png()[0], headers, clients=args.clients, duration_s=2.0
            )
            asyncio.run(warm_up)
            names.append(thread_names(process.process.pid))
            signal_tree(process.process.pid, signal.SIGSTOP)
            processes.append(process)
        for round_index in range(args.rounds):
            shift = round_index % len(servers)
            for index in [*range(shift, len(servers)), *range(shift)]:
                pid = processes[index].process.pid
                signal_tree(pid, signal.SIGCONT)
                time.sleep(0.3)
                measure(servers[index], processes[index], args.model, names[index], args)
                signal_tree(pid, signal.SIGSTOP)
            loads.append(os.getloadavg()[0])
    print(f"# {started} UTC, {args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per server, "
          f"load average {min(loads):.1f} to {max(loads):.1f} (1 min)")  # fmt: skip
    first = servers[0]
    for server in servers:

        def median(key: str, server: Server = server) -> float:
            return statistics.median(r[key] for r in server.rounds)

        cpus = [r["cpu"] for r in server.rounds]
        threads = sorted({name for split in server.threads for name in split})
        split = ", ".join(
            f"{name} {statistics.median(s.get(name, 0.0) for s in server.threads):.2f}"
            for name in threads
            if any(s.get(name, 0.0) >= 0.005 for s in server.threads)
        )
        cpu_range = f"[{min(cpus):.2f}-{max(cpus):.2f}]"
        print(f"{server.name}: CPU per answer {median('cpu'):.2f} ms {cpu_range} ({split}); "
              f"{median('rps'):.1f} answers/s, p50 {median('p50'):.0f} ms, mean batch {median('batch'):.1f}, "
              f"errors {sum(r['errors'] for r in server.rounds):.0f}")  # fmt: skip
        if server is not first:
            cpu = [a["cpu"] / b["cpu"] for a, b in zip(server.rounds, first.rounds, strict=True)]
            rps = [a["rps"] / b["rps"] for a, b in zip(server.rounds, first.rounds, strict=True)]
            cpu_range = f"[{min(cpu):.2f}-{max(cpu):.2f}]"
            print(f"  over {first.name}: CPU per answer x{statistics.median(cpu):.3f} {cpu_range}, "
                  f"answers/s x{statistics.median(rps):.2f} [{min(rps):.2f}-{max(rps):.2f}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
