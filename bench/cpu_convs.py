"""The bundled networks on a CPU through each conv path, in one run: contiguous (NCHW) dense,
channels_last dense, and channels_last with spike-driven convs (the CPU default).

    .venv/bin/python bench/cpu_convs.py              # every zoo/ network, batch 16, T = its default
    .venv/bin/python bench/cpu_convs.py --batch 32 --rounds 60 --threads 2

Each network is loaded once per path and prepared by ``optimize_for_inference`` as the engine
prepares it (BN folded, the neuron backend ``auto`` picks); the forwards alternate, round after
round, with telemetry recorded and reported as a served answer does, and without. Inputs: the
first held-out MNIST-5k digits for image networks; for event networks, their emulated N-MNIST
recordings (``spikeserve emulate``'s) binned as the manifest says. Prints the median time per
sample of each path, and the contiguous time over each other path's per round (median and
range). Every path must give the contiguous output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from models import telemetry  # noqa: E402
from models.optimize import InferenceModel, optimize_for_inference  # noqa: E402
from registry import Registry  # noqa: E402
from registry.loading import sample_shape  # noqa: E402
from registry.manifest import Manifest  # noqa: E402


def example(manifest: Manifest, batch: int) -> torch.Tensor:
    """[T, B, C, H, W]: what the engine feeds the network for ``batch`` requests of held-out digits
    or their emulated recordings (``training.datasets.held_out_inputs``); random values for an
    input they do not fit."""
    from training.datasets import held_out_inputs

    try:
        return torch.from_numpy(held_out_inputs(manifest, batch))
    except ValueError:
        generator = torch.Generator().manual_seed(0)
        shape = (manifest.time_steps.default, batch, *sample_shape(manifest))
        return torch.rand(shape, generator=generator)


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


VARIANTS = {  # name: optimize_for_inference's keywords; the last is the CPU default
    "contiguous": {"channels_last": False, "spike_driven": False},
    "channels_last": {"spike_driven": False},
    "spike-driven": {},
}


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
          f"{args.rounds} alternating rounds; ms per sample, and contiguous / variant per round")  # fmt: skip
    print("| network | telemetry | " + " | ".join(VARIANTS) + " | channels_last | spike-driven |")
    print("| --- | --- |" + " ---: |" * len(VARIANTS) + " --- | --- |")
    for name in names:
        prepared = {}
        for variant, keywords in VARIANTS.items():
            manifest, network = registry.load(name)
            prepared[variant] = optimize_for_inference(network, "cpu", backend=args.backend, **keywords)
        default = prepared["spike-driven"].report
        if not (default.channels_last and default.spike_driven_convs):
            print(f"# {name}: the CPU default is not channels_last with spike-driven convs here: {default}")
        x = example(manifest, args.batch)
        with torch.inference_mode():
            outputs = {variant: p(x) for variant, p in prepared.items()}
        for variant, output in outputs.items():
            if not torch.allclose(output, outputs["contiguous"], rtol=1e-4, atol=1e-4):
                raise SystemExit(f"{name}: {variant} disagrees with the contiguous network")
        for with_telemetry in (True, False):
            calls = {variant: forward(p, x, with_telemetry) for variant, p in prepared.items()}
            for call in calls.values():  # warm-up: oneDNN picks and caches its kernels
                for _ in range(3):
                    call()
            seconds: dict[str, list[float]] = {variant: [] for variant in calls}
            for _ in range(args.rounds):
                for variant, call in calls.items():
                    seconds[variant].append(timed(call))
            per_sample = [statistics.median(v) * 1000 / args.batch for v in seconds.values()]
            cells = [f"{value:.3f}" for value in per_sample]
            for variant in ("channels_last", "spike-driven"):
                ratios = [a / b for a, b in zip(seconds["contiguous"], seconds[variant], strict=True)]
                cells.append(f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
            print(f"| {name} | {'on' if with_telemetry else 'off'} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
