"""Whole networks, every path on the same workload in one run, with ratios against the baselines.

    python3 bench/models.py --device cuda              # T=4, batch 64, 224 px, bf16 (the GPU target workload)
    .venv/bin/python bench/models.py                   # CPU: T=2, batch 2, 64 px, float32, ResNet-18 size

Networks and paths (a path that cannot run here is reported with its reason, not fatal):
- ``danet_resnet50`` (ours, models/danet.py): eager (torch neurons, bf16 autocast on a GPU),
  torch.compile of that, and ``ours``: ``optimize_for_inference`` (BN folded, bf16 weights,
  fused Triton neurons, channels_last if it measured faster, CUDA graphs), with telemetry off
  and on; ``ours+compile`` lets optimize measure torch.compile too (last: compiling is slow).
- ``sew_resnet50`` (SpikingJelly 2.0, ADD connection, LIFNode multi-step, its own CUDA kernels):
  eager and torch.compile, bf16 autocast.
- ``spikeformer_imagenet`` (ours, models/spikeformer.py): eager and ours.
- ``resnet50`` (torchvision ANN, one pass, no T): eager with bf16 autocast, for scale.
Images/s = batch / median forward time (CUDA events on a GPU; each timed call includes the
network reset a server does between batches). Rows print as they finish; ``--budget-s`` skips
what is left once the run has used that long.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model, list_models, telemetry
from models.base import reset_state, set_backend
from models.optimize import optimize_for_inference


@dataclass
class Row:
    network: str
    path: str
    ms: float
    images_per_s: float
    note: str = ""


@dataclass
class Workload:
    device: str
    time_steps: int
    batch: int
    size: int
    dtype: torch.dtype
    resnet_depth: int

    def input(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        shape = (self.time_steps, self.batch, 3, self.size, self.size)
        return torch.rand(shape, generator=generator).to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()


def time_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


def danet(work: Workload) -> torch.nn.Module:
    arch = f"danet_resnet{work.resnet_depth}"
    if arch not in list_models():
        raise RuntimeError(f"{arch} is not registered")
    return create_model(arch, num_classes=1000, in_channels=3, neuron={"kind": "lif"}).eval().to(work.device)


def spikeformer(work: Workload) -> torch.nn.Module:
    if "spikeformer_imagenet" not in list_models():
        raise RuntimeError("spikeformer_imagenet is not registered")
    return create_model("spikeformer_imagenet", num_classes=1000, in_channels=3).eval().to(work.device)


def sew_resnet(work: Workload, *, compile: bool):
    def make() -> Callable[[torch.Tensor], object]:
        from spikingjelly.activation_based import functional, neuron
        from spikingjelly.activation_based.model import sew_resnet as sew

        build = getattr(sew, f"sew_resnet{work.resnet_depth}")
        net = build(cnf="ADD", spiking_neuron=neuron.LIFNode, detach_reset=True)
        functional.set_step_mode(net, "m")
        net = net.eval().to(work.device)
        run = torch.compile(net) if compile else net

        def forward(x: torch.Tensor) -> object:
            functional.reset_net(net)
            with work.autocast():
                return run(x).mean(0)  # [T, B, classes] -> [B, classes]

        return forward

    return make


class Bench:
    def __init__(self, work: Workload, warmup: int, repeats: int, budget_s: float) -> None:
        self.work, self.warmup, self.repeats = work, warmup, repeats
        self.deadline = time.time() + budget_s
        self.rows: list[Row] = []
        self.x = work.input()

    def run(self, network: str, path: str, make: Callable[[], Callable[[torch.Tensor], object]]) -> None:
        if time.time() > self.deadline:
            self.rows.append(Row(network, path, float("nan"), float("nan"), "skipped: over the time budget"))
        else:
            try:
                fn = make()
                x = self.x
                ms = time_ms(lambda: fn(x), self.work.device, self.warmup, self.repeats)
                self.rows.append(Row(network, path, ms, self.work.batch / (ms * 1e-3)))
            except Exception as exc:  # report why a path cannot run; keep going
                self.rows.append(
                    Row(network, path, float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:160])
                )
        print(row_line(self.rows[-1], self.rows), flush=True)
        gc.collect()
        if self.work.device == "cuda":
            torch.cuda.empty_cache()


def eager(work: Workload, build: Callable[[Workload], torch.nn.Module], backend: str = "torch"):
    def make() -> Callable[[torch.Tensor], object]:
        model = build(work)
        set_backend(model, backend)

        def forward(x: torch.Tensor) -> object:
            with work.autocast():
                out = model(x)
            reset_state(model)
            return out

        return forward

    return make


def compiled(work: Workload, build: Callable[[Workload], torch.nn.Module]):
    def make() -> Callable[[torch.Tensor], object]:
        model = build(work)
        set_backend(model, "torch")
        fn = torch.compile(model)

        def forward(x: torch.Tensor) -> object:
            with work.autocast():
                return fn(x)

        return forward

    return make


def ours(work: Workload, build: Callable[[Workload], torch.nn.Module], *, compile: bool | None, record: bool):
    def make() -> Callable[[torch.Tensor], object]:
        backend = "triton" if work.device == "cuda" else "inductor"
        model = build(work)
        example = work.input()
        optimized = optimize_for_inference(
            model, work.device, example_input=example, dtype=work.dtype, backend=backend, compile=compile
        )
        print(f"  optimize: {optimized.report}", flush=True)

        def forward(x: torch.Tensor) -> object:
            if not record:
                return optimized(x)
            with telemetry.record(optimized.model) as recorder:
                out = optimized(x)
            recorder.report()  # the host transfer a server pays per batch
            return out

        return forward

    return make


def ann_resnet(work: Workload):
    def make() -> Callable[[torch.Tensor], object]:
        import torchvision

        model = getattr(torchvision.models, f"resnet{work.resnet_depth}")().eval().to(work.device)
        model = model.to(memory_format=torch.channels_last)

        def forward(x: torch.Tensor) -> object:
            with work.autocast():
                return model(x[0])  # one pass over one frame: an ANN has no time steps

        return forward

    return make


BASELINES = ("sew_resnet{d} torch.compile", "{net} eager")


def row_line(row: Row, rows: list[Row]) -> str:
    ratios = []
    for template in BASELINES:
        depth = row.network.removeprefix("danet_resnet").removeprefix("sew_resnet").removeprefix("resnet")
        base_network, _, base_path = template.format(d=depth, net=row.network).rpartition(" ")
        ref = next((r for r in rows if r.network == base_network and r.path == base_path), None)
        ok = ref is not None and ref.ms == ref.ms and row.ms == row.ms
        ratios.append(f"{row.images_per_s / ref.images_per_s:.2f}" if ok else "-")
    cells = [row.network, row.path, f"{row.ms:.1f}", f"{row.images_per_s:.0f}", *ratios, row.note]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--time-steps", type=int)
    parser.add_argument(
        "--depth", type=int, help="ResNet depth for DANet, SEW and the ANN (50 on a GPU, 18 on a CPU)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=1e9)
    parser.add_argument("--no-compile", action="store_true", help="skip every torch.compile path")
    parser.add_argument("--out", type=Path, help="also write the table (.md) and rows (.json) here")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    work = Workload(
        device=args.device,
        time_steps=args.time_steps or (4 if gpu else 2),
        batch=args.batch or (64 if gpu else 2),
        size=args.size or (224 if gpu else 64),
        dtype=torch.bfloat16 if gpu else torch.float32,
        resnet_depth=args.depth or (50 if gpu else 18),
    )
    card = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    title = (
        f"Networks on {card}; torch {torch.__version__}; T={work.time_steps}, batch {work.batch}, "
        f"{work.size} px, {str(work.dtype).removeprefix('torch.')}; {time.strftime('%Y-%m-%d')}"
    )
    print(title, "", sep="\n")
    header = "| network | path | ms | images/s | x vs SEW compiled | x vs same net eager | note |"
    print(header, "| --- | --- | --- | --- | --- | --- | --- |", sep="\n", flush=True)
    bench = Bench(work, warmup=3, repeats=args.repeats, budget_s=args.budget_s)
    d = work.resnet_depth
    plan: list[tuple[str, str, Callable]] = [
        (f"danet_resnet{d}", "eager", eager(work, danet)),
        (f"danet_resnet{d}", "ours", ours(work, danet, compile=False, record=False)),
        (f"danet_resnet{d}", "ours+telemetry", ours(work, danet, compile=False, record=True)),
        (f"sew_resnet{d}", "eager", sew_resnet(work, compile=False)),
        (f"sew_resnet{d}", "torch.compile", sew_resnet(work, compile=True)),
        (f"resnet{d}", "eager", ann_resnet(work)),
        ("spikeformer_imagenet", "eager", eager(work, spikeformer)),
        ("spikeformer_imagenet", "ours", ours(work, spikeformer, compile=False, record=False)),
        (f"danet_resnet{d}", "torch.compile", compiled(work, danet)),
        (f"danet_resnet{d}", "ours+compile", ours(work, danet, compile=None if gpu else True, record=False)),
    ]
    table = ""
    for network, path, make in plan:
        if args.no_compile and "compile" in path:
            continue
        bench.run(network, path, make)
        table = "\n".join([title, "", header, "| --- | --- | --- | --- | --- | --- | --- |"])
        table += "\n" + "\n".join(row_line(r, bench.rows) for r in bench.rows)
        if args.out:  # after every row, so that a run cut short still leaves its table
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"models_{args.device}.md").write_text(table + "\n")
            rows = [asdict(r) for r in bench.rows]
            (args.out / f"models_{args.device}.json").write_text(json.dumps(rows, indent=1))
    print("\nFinal table (ratios use every row of the run):\n\n" + table, flush=True)


if __name__ == "__main__":
    main()
