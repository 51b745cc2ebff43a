"""Telemetry overhead: forward time with telemetry on against off, same model, same input, same run.

"On" is a forward inside ``telemetry.record(model)`` followed by the report a served answer pays
for: ``report(synaptic_layers=False)`` for the default ``telemetry=summary`` answer (exact and
nominal SOPs, spike rates per layer, energy), ``report()`` for a ``telemetry=layers`` answer (each
layer's SOPs, MACs and energy share as well); "off" is the bare forward. Each round runs the three
in a rotating order, so drift in a shared machine's load falls on all; the overhead is the median
of the per-round ratios on/off, minus one. On the CPU the process's CPU time is compared the same
way: waiting for a core that another program holds does not count there, so on a busy machine it
is the steadier of the two figures. Target: under 5% on the CPU (telemetry must be cheap enough to
stay on by default). The process sets up its allocator as a serving worker does
(``workers/runtime.py``: freed tensor memory is reused, not page-faulted back at every forward);
``--system-malloc`` leaves glibc's defaults, under which the page faults of both forwards, not the
telemetry, dominate the difference.

    .venv/bin/python bench/telemetry.py                       # small DANet, MNIST-sized input
    .venv/bin/python bench/telemetry.py --arch danet_resnet50 --size 64 --batch 4
    .venv/bin/python bench/telemetry.py --backend torch      # the eager reference neurons

The neurons run on the backend a served network gets (``auto``: the one measured fastest here;
on a CPU with a C compiler the native loop, which counts spikes as it fires) unless ``--backend``
names one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Run as a file, this script has bench/ first on sys.path, where bench/models.py would shadow the
# models package: put the repository root first, as the other benchmarks do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model, telemetry
from models.kernels.lif import resolve_backend
from workers.runtime import keep_freed_memory


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="danet_resnet18")
    parser.add_argument("--base-width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--stem", default="small", choices=("small", "imagenet"))
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28, help="input height and width")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backend",
        default="auto",
        help="neuron backend: auto (as served), torch (eager), inductor, native, triton",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="leave glibc's malloc as it is (a worker tunes it)"
    )
    return parser.parse_args()


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    args = parse_args()
    kept = False if args.system_malloc else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(
        args.arch, num_classes=10, in_channels=args.channels, stem=args.stem, base_width=args.base_width
    )
    model = model.to(device).eval()
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = args.backend
    shape = (args.time_steps, args.batch, args.channels, args.size, args.size)
    x = torch.rand(shape, device=device)
    names = telemetry.layer_names(model)  # kept by a server for each network it loads

    def off() -> None:
        model(x)

    def summary() -> None:
        with telemetry.record(model, names) as recorder:
            model(x)
        recorder.report(synaptic_layers=False)

    def layers() -> None:
        with telemetry.record(model, names) as recorder:
            model(x)
        recorder.report()

    variants = {"off": off, "summary": summary, "layers": layers}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(args.warmup):
            for run in variants.values():
                run()
        order = list(variants)
        for round_index in range(args.rounds):
            for name in order[round_index % 3 :] + order[: round_index % 3]:
                seconds, cpu_seconds = timed(variants[name], device)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)

    model_line = f"{args.arch} base_width={args.base_width} stem={args.stem}"
    neurons = resolve_backend(args.backend, device)
    print(f"model   {model_line}, input [T, B, C, H, W] {list(shape)}, neurons {neurons} ({args.backend})")
    threads = torch.get_num_threads()
    print(f"device  {device}, {threads} threads, {args.rounds} rounds after {args.warmup} warm-up")
    print(f"malloc  {'freed memory kept (as a worker)' if kept else 'system defaults'}")
    print(f"forward off          median {statistics.median(wall['off']) * 1e3:8.2f} ms")
    for name, label in (("summary", "on, summary answer"), ("layers", "on, layers answer ")):
        print(f"forward {label} median {statistics.median(wall[name]) * 1e3:8.2f} ms")
    for name, label in (("summary", "summary"), ("layers", "layers ")):
        print(f"{label}  " + _ratio_line("wall", wall[name], wall["off"]))
        if device.type == "cpu":  # CPU time: waiting for a core another program holds does not count
            print(f"{label}  " + _ratio_line("CPU time", cpu[name], cpu["off"]))
    print("target: overhead < +5% (the summary answer is what every request pays by default)")


def _ratio_line(what: str, on: list[float], off: list[float]) -> str:
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    ratio = statistics.median(ratios)
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{what} on/off {ratio:.3f} (quartiles {low:.3f}-{high:.3f}); overhead {100 * (ratio - 1):+.1f}%"


if __name__ == "__main__":
    main()
