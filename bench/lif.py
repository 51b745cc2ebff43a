"""Multi-step LIF forward, every path on the same workload in one run: eager, torch.compile,
SpikingJelly 2.0 (when installed), ours; with the ratios against the baselines of the same run.

    .venv/bin/python bench/lif.py                      # CPU: T=4, N=1M float32
    python3 bench/lif.py --device cuda                 # GPU: three workloads + copy bandwidth
    python3 bench/lif.py --device cuda --sweep         # also ours over block sizes and warps

Paths: ``eager`` is the reference loop (models/kernels/lif/reference.py) as PyTorch runs it;
``torch.compile`` is that loop under torch.compile (what a user would try first); ``spikingjelly``
is ``LIFNode(step_mode="m")`` (its CPU path on a CPU, its own CUDA/Triton kernels on a GPU);
``ours`` is our dispatcher: the inductor and native backends on a CPU, the Triton kernel on a
GPU, with the per-sample spike count (telemetry) on or off, and on a CPU the per-position count
an exact synaptic-operation count reads. GB/s counts the input read plus the output
written, in their dtypes. Times: GPU, median of triton's do_bench (CUDA events, L2 flushed);
CPU, median of torch.utils.benchmark's blocked_autorange.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.kernels.lif import multistep_lif
from models.kernels.lif.reference import multistep_lif as reference


@dataclass
class Row:
    workload: str
    path: str
    ms: float
    gbps: float
    note: str = ""


def time_ms(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median"))
    import torch.utils.benchmark as benchmark

    for _ in range(3):
        fn()
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0).median * 1e3


def copy_bandwidth_gbps(device: str) -> float:
    """Device-to-device copy of 2 GiB (1 GiB read + 1 GiB written), or 256 MiB on a CPU."""
    numel = (1 << 28) if device == "cuda" else (1 << 26)
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def spikingjelly_node(tau: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from spikingjelly.activation_based import neuron
    except ImportError:
        return None
    node = neuron.LIFNode(tau=tau, step_mode="m", detach_reset=True)

    def run(x: torch.Tensor) -> torch.Tensor:
        node.reset()
        return node(x)

    return run


def bench_workload(
    label: str, steps: int, numel: int, dtype: torch.dtype, device: str, variant: str
) -> list[Row]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn((steps, 1, numel), generator=generator) * 1.5 + 0.4).to(device=device, dtype=dtype)
    plif = variant == "plif"
    inv_tau = torch.sigmoid(torch.tensor(0.0, device=device)) if plif else 0.5  # tau = 2 either way
    out_bytes = x.numel() * x.element_size()
    rows: list[Row] = []

    def add(path: str, fn: Callable[[], object], out_bytes: int = out_bytes, note: str = "") -> None:
        try:
            ms = time_ms(fn, device)
        except Exception as exc:  # a path that cannot run here is reported, not fatal
            rows.append(
                Row(label, path, float("nan"), float("nan"), f"failed: {type(exc).__name__}: {exc}"[:120])
            )
            return
        gbps = (x.numel() * x.element_size() + out_bytes) / (ms * 1e-3) / 1e9
        rows.append(Row(label, path, ms, gbps, note))

    with torch.inference_mode():
        add("eager", lambda: reference(x, inv_tau=inv_tau).out)
        compiled = torch.compile(lambda inputs: reference(inputs, inv_tau=inv_tau).out)
        add("torch.compile", lambda: compiled(x))
        sj = None if plif else spikingjelly_node(2.0)
        if sj is not None:
            add("spikingjelly", lambda: sj(x))
        for ours in ("triton",) if device == "cuda" else ("inductor", "native"):
            add(f"ours ({ours})", lambda ours=ours: multistep_lif(x, backend=ours, inv_tau=inv_tau).out)
            add(
                f"ours ({ours}) + spike count",
                lambda ours=ours: multistep_lif(x, backend=ours, inv_tau=inv_tau, count_spikes=True),
            )
            if device == "cpu":  # what telemetry asks of a layer that feeds a conv (1,024 positions)
                add(
                    f"ours ({ours}) + count per position",
                    lambda ours=ours: multistep_lif(x, backend=ours, inv_tau=inv_tau, count_positions=1024),
                )
        if device == "cuda":
            add(
                "ours (triton), uint8 spikes",
                lambda: multistep_lif(x, backend="triton", inv_tau=inv_tau, spike_dtype=torch.uint8),
                out_bytes=x.numel(),
            )
    return rows


def sweep(device: str) -> list[Row]:
    """Ours over block sizes and warps on the bf16 T=4 N=12.8M layer: the numbers to tune on."""
    from models.kernels.lif import ops
    from models.kernels.lif.triton import LaunchConfig, lif_forward

    x = torch.randn((4, 1, 12_800_000), device=device).to(torch.bfloat16)
    tau = ops._inv_tau_tensor(0.5, x)
    rows = []
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8):
            config = LaunchConfig(block, warps)
            ms = time_ms(lambda config=config: lif_forward(x, tau, config=config), device)
            rows.append(
                Row("bf16 T=4 N=12.8M", f"ours block={block} warps={warps}", ms, 4 * x.numel() / (ms * 1e6))
            )
    return rows


def table(rows: list[Row], baselines: tuple[str, ...]) -> str:
    header = "| workload | path | ms | GB/s | " + " | ".join(f"x vs {b}" for b in baselines) + " | note |"
    lines = [header, "|" + " --- |" * (5 + len(baselines))]
    for row in rows:
        ratios = []
        for base in baselines:
            ref = next((r for r in rows if r.workload == row.workload and r.path == base), None)
            ratios.append(f"{ref.ms / row.ms:.2f}" if ref and row.ms == row.ms and ref.ms == ref.ms else "-")
        lines.append(
            f"| {row.workload} | {row.path} | {row.ms:.3f} | {row.gbps:.0f} | "
            + " | ".join(ratios)
            + f" | {row.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sweep", action="store_true", help="GPU: also time ours over launch configs")
    parser.add_argument("--out", type=Path, help="also write the table (.md) and the rows (.json) here")
    args = parser.parse_args()
    device = args.device
    if device == "cuda":
        workloads = [
            ("bf16 T=4 N=12.8M", 4, 12_800_000, torch.bfloat16, "lif"),
            ("bf16 T=4 N=12.8M PLIF", 4, 12_800_000, torch.bfloat16, "plif"),
            ("fp32 T=4 N=12.8M", 4, 12_800_000, torch.float32, "lif"),
            ("bf16 T=16 N=3.2M", 16, 3_200_000, torch.bfloat16, "lif"),
        ]
        card = torch.cuda.get_device_name()
    else:
        workloads = [("fp32 T=4 N=1M", 4, 1 << 20, torch.float32, "lif")]
        # a shared CPU: say how loaded it was, since every figure moves with it
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        card = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, load average {load}"
    started = time.time()
    copy = copy_bandwidth_gbps(device)
    baselines = ("eager", "torch.compile", "spikingjelly")
    rows: list[Row] = []
    stages = [lambda spec=spec: bench_workload(*spec[:4], device, spec[4]) for spec in workloads]
    if args.sweep and device == "cuda":
        stages.append(lambda: sweep(device))
    for stage in stages:
        rows += stage()
        text = (
            f"LIF forward on {card}; torch {torch.__version__}; copy bandwidth {copy:.0f} GB/s "
            f"(read + write); {time.strftime('%Y-%m-%d')}; {time.time() - started:.0f} s\n\n"
            + table(rows, baselines)
        )
        if device == "cuda":  # on a CPU the layer sits in cache: a share of DRAM copy speed means nothing
            shares = [
                f"{r.path}, {r.workload}: {100 * r.gbps / copy:.0f}%"
                for r in rows
                if r.path.startswith("ours")
            ]
            text += "\n\nShare of copy bandwidth: " + "; ".join(shares)
        if args.out:  # after every stage, so that a run cut short still leaves its table
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"lif_{device}.md").write_text(text + "\n")
            payload = {"card": card, "copy_gbps": copy, "rows": [asdict(r) for r in rows]}
            (args.out / f"lif_{device}.json").write_text(json.dumps(payload, indent=1))
    print(text, flush=True)


if __name__ == "__main__":
    main()
