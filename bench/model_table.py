"""The model table: every registered architecture, its parameters and its compute at its default input.

Compute is counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward of a batch of
one at the architecture's ``default_input`` (all T steps, divided by T: per sample per time step).
It counts the matrix products (convolutions, linear layers, attention's Q K^T and A V); batch
norm, pooling and the neurons' element-wise updates are not counted, as in the papers' tables.
MACs = FLOPs / 2. The model is built on the meta device, so nothing is allocated or computed and
even the ImageNet networks are counted in seconds. On meta, scaled_dot_product_attention
decomposes into the bmm's the counter sees; on the CPU it runs a fused kernel that torch 2.13's
counter does not count, so a model that cannot run on meta is counted on the CPU and the table
says so (its attention is then missing from the figure).

    .venv/bin/python bench/model_table.py            # Markdown table on stdout
    .venv/bin/python bench/model_table.py danet_resnet50 spikeformer_imagenet
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Run as a file, this script has bench/ first on sys.path, where bench/models.py would shadow the
# models package: put the repository root first, as the other benchmarks do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model, default_input, list_models


@dataclass(frozen=True)
class Row:
    arch: str
    parameters: int
    time_steps: int
    shape: tuple[int, int, int]
    flops_per_step: float
    counted_on: str
    seconds: float


def count(arch: str, device: str) -> tuple[int, float]:
    """(parameters, FLOPs per sample per step) of ``arch`` at its default input, on ``device``."""
    spec = default_input(arch)
    steps, shape = spec["time_steps"], tuple(spec["shape"])
    with torch.device(device):
        model = create_model(arch).eval()
        x = torch.zeros((steps, 1, *shape))
    parameters = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return parameters, counter.get_total_flops() / steps


def measure(arch: str) -> Row:
    spec = default_input(arch)
    start = time.perf_counter()
    try:
        parameters, flops = count(arch, "meta")
        counted_on = "meta"
    except (NotImplementedError, RuntimeError):  # a data-dependent op needs real values
        parameters, flops = count(arch, "cpu")
        counted_on = "cpu"
    return Row(
        arch,
        parameters,
        spec["time_steps"],
        tuple(spec["shape"]),
        flops,
        counted_on,
        time.perf_counter() - start,
    )


def markdown(rows: list[Row]) -> str:
    lines = [
        "| architecture | parameters | default input (T x C x H x W) | GMACs / sample / step "
        "| GFLOPs / sample / step | counted on |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        c, h, w = row.shape
        lines.append(
            f"| `{row.arch}` | {row.parameters / 1e6:.2f} M | {row.time_steps} x {c} x {h} x {w} "
            f"| {row.flops_per_step / 2e9:.3f} | {row.flops_per_step / 1e9:.3f} | {row.counted_on} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("archs", nargs="*", help="architectures to count (default: every registered one)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [measure(arch) for arch in (args.archs or list_models())]
    print(markdown(rows))
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} architectures counted in {elapsed:.1f} s with torch {torch.__version__}")


if __name__ == "__main__":
    main()
