"""The bundled networks on a CPU, laid out contiguously (NCHW) and channels_last, in one run.

    .venv/bin/python bench/layout.py                 # every zoo/ network, batch 16, T = its default
    .venv/bin/python bench/layout.py --batch 32 --rounds 60 --threads 2

Each network is loaded twice and prepared by ``optimize_for_inference`` as the engine prepares it
(BN folded, the neuron backend ``auto`` picks), once with ``channels_last=False`` and once with
the CPU default (channels_last where the network has a convolution); the two forwards alternate,
round after round, with telemetry recorded and reported as a served answer does, and without.
Inputs: the first held-out MNIST-5k digits for image networks, frames with 10% of their pixels
firing for event networks. Prints the median time per batch and per sample, and the contiguous
time over the channels_last time per round (median and range). Both must give the same output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models import telemetry  # noqa: E402
from models.optimize import InferenceModel, optimize_for_inference  # noqa: E402
from registry import Registry  # noqa: E402
from registry.loading import sample_shape  # noqa: E402
from registry.manifest import Manifest  # noqa: E402


def digits(count: int) -> np.ndarray:
    """[count, 1, 28, 28] float32 in [0, 1]: the first held-out MNIST-5k digits."""
    from training.datasets import mnist5k

    images, _, _ = mnist5k("test")
    return (np.asarray(images[:count], dtype=np.float32) / 255.0).reshape(count, 1, 28, 28)


def example(manifest: Manifest, steps: int, batch: int) -> torch.Tensor:
    """[T, B, C, H, W]: what the engine feeds the network for ``batch`` requests."""
    shape = sample_shape(manifest)
    if manifest.input.kind == "image" and shape == (1, 28, 28):
        mean, std = manifest.input.mean[0], manifest.input.std[0]
        images = torch.from_numpy((digits(batch) - mean) / std)
        return images.unsqueeze(0).repeat(steps, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    if manifest.input.kind == "image":
        return torch.randn((1, batch, *shape), generator=generator).repeat(steps, 1, 1, 1, 1)
    return (torch.rand((steps, batch, *shape), generator=generator) < 0.1).float()


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def forward(prepared: InferenceModel, x: torch.Tensor, with_telemetry: bool) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            if not with_telemetry:
                return prepared(x)
            with telemetry.record(prepared.model) as recorder:
                prepared(x)
                return recorder.report()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    parser.add_argument("--models", nargs="*", help="default: every network in the registry")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as served)")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = Registry(args.registry)
    names = args.models or [entry.name for entry in registry.list()]
    print(f"# {args.batch} samples a batch, {args.threads} torch thread(s), neuron backend {args.backend}, "
          f"{args.rounds} alternating rounds")  # fmt: skip
    print(
        "| network | telemetry | contiguous ms/sample | channels_last ms/sample "
        "| contiguous / channels_last, per round |"
    )
    print("| --- | --- | ---: | ---: | --- |")
    for name in names:
        prepared = {}
        for laid_out in (False, True):
            manifest, network = registry.load(name)
            prepared[laid_out] = optimize_for_inference(
                network, "cpu", backend=args.backend, channels_last=None if laid_out else False
            )
        assert prepared[True].report.channels_last, f"{name}: the CPU default did not pick channels_last"
        x = example(manifest, manifest.time_steps.default, args.batch)
        with torch.inference_mode():
            same = torch.allclose(prepared[True](x), prepared[False](x), rtol=1e-4, atol=1e-5)
        if not same:
            raise SystemExit(f"{name}: the two layouts disagree")
        for with_telemetry in (True, False):
            calls = {laid_out: forward(p, x, with_telemetry) for laid_out, p in prepared.items()}
            for call in calls.values():  # warm-up: oneDNN picks and caches its kernels
                for _ in range(3):
                    call()
            seconds: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for laid_out, call in calls.items():
                    seconds[laid_out].append(timed(call))
            ratios = [a / b for a, b in zip(seconds[False], seconds[True], strict=True)]
            per_sample = {k: statistics.median(v) * 1000 / args.batch for k, v in seconds.items()}
            print(
                f"| {name} | {'on' if with_telemetry else 'off'} | {per_sample[False]:.3f} | "
                f"{per_sample[True]:.3f} | {statistics.median(ratios):.2f} "
                f"[{min(ratios):.2f}-{max(ratios):.2f}] |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
