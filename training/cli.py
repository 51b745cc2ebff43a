"""``spikeserve train``, ``spikeserve eval`` and ``spikeserve emulate``.

- ``train --recipe NAME [--registry PATH] [--epochs N] [--max-batches N] [--seed N] [--loss L]``: run
  a named recipe (training/recipes.py), register the result in the registry and point
  ``production`` at it;
- ``eval REF [--registry PATH] --dataset mnist5k|nmnist5k [--split test] [--json]``: top-1 accuracy
  of a registered checkpoint on a split (``--json``: one object with ``accuracy`` and ``n``);
  ``--exit-threshold X [X ...]``: early exit at each confidence X after the plain T-step forward
  (accuracy, mean and histogram of steps used, mean energy, time per sample);
- ``emulate --split test --position 0 -o digit.bin``: an N-MNIST-style recording of one MNIST-5k
  digit, as ``.bin`` (N-MNIST) or ``.aedat4``, to send to a served event model.

The registry folder is ``--registry``, else ``$SPIKESERVE_REGISTRY``, else ``./zoo``. torch is imported
only when a command runs, so ``spikeserve --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from registry.cli import DEFAULT_REGISTRY, ENV_REGISTRY, registry_root

if TYPE_CHECKING:
    import numpy as np

SPLIT_CHOICES = ("train", "val", "test")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval`` and ``emulate`` to the ``spikeserve`` parser."""
    registry_help = f"registry folder (default: ${ENV_REGISTRY}, else ./{DEFAULT_REGISTRY})"

    train = subparsers.add_parser(
        "train",
        help="train a named recipe and register the checkpoint",
        description="Train a named recipe (BPTT, surrogate gradient) and register the result.",
    )
    train.add_argument("--recipe", required=True, help="recipe name, e.g. danet-mnist or spikeformer-nmnist")
    train.add_argument("--registry", type=Path, metavar="PATH", help=registry_help)
    train.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    train.add_argument(
        "--max-batches", type=_positive_int, metavar="N", help="stop each epoch after N batches"
    )
    train.add_argument("--seed", type=int, help="override the recipe's seed")
    train.add_argument(
        "--loss",
        choices=("mean", "per_step"),
        help="override the recipe's loss: cross-entropy on the mean over T, or on every step's output",
    )
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (mixed precision on CUDA)")
    train.add_argument(
        "--threads", type=_positive_int, metavar="N", help="CPU threads for torch (default: torch's choice)"
    )
    train.add_argument(
        "--no-alias", action="store_true", help="do not point the 'production' alias at the result"
    )
    train.add_argument("--cache-dir", type=Path, metavar="PATH", help="emulated-events cache (nmnist5k)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs stay)")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="top-1 accuracy of a registered checkpoint on a data set split",
        description="Top-1 accuracy of a registered checkpoint on an MNIST-5k or emulated N-MNIST-5k split.",
    )
    evaluate.add_argument("ref", help="name, name:N or name@alias")
    evaluate.add_argument("--registry", type=Path, metavar="PATH", help=registry_help)
    evaluate.add_argument("--dataset", required=True, choices=("mnist5k", "nmnist5k"))
    evaluate.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    evaluate.add_argument("--time-steps", type=_positive_int, metavar="T", help="T (default: the manifest's)")
    evaluate.add_argument(
        "--telemetry", action="store_true", help="also report mean spike rate, SOPs, energy"
    )
    evaluate.add_argument(
        "--exit-threshold",
        type=_probability,
        nargs="+",
        metavar="X",
        help="early exit at these confidences (0, 1]: accuracy, steps used, energy and time per "
        "sample for each, after the plain T-step forward",
    )
    evaluate.add_argument(
        "--min-steps", type=_positive_int, default=1, metavar="N", help="early exit never stops before step N"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=100)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--cache-dir", type=Path, metavar="PATH", help="emulated-events cache (nmnist5k)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_eval)

    emulate = subparsers.add_parser(
        "emulate",
        help="write an N-MNIST-style recording of an MNIST-5k digit (or the digit as a PNG)",
        description="Emulate an event camera's three saccades over one MNIST-5k digit (.bin or .aedat4); "
        "with a .png output, write the digit itself, the input of an image model.",
    )
    emulate.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    emulate.add_argument("--position", type=int, default=0, help="which digit of the split (0-based)")
    emulate.add_argument("--seed", type=int, help="emulation seed (default: the data set's)")
    emulate.add_argument(
        "-o", "--output", type=Path, required=True, help="FILE.bin (N-MNIST), FILE.aedat4 or FILE.png"
    )
    emulate.set_defaults(handler=_emulate)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _fail(command: str, exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"spikeserve {command}: error: {message}", file=sys.stderr)
    return 1


def _train(args: argparse.Namespace) -> int:
    import torch

    from training.recipes import get_recipe
    from training.run import run_recipe

    if args.threads is not None:
        # on a CPU shared with other jobs, one thread wastes less time waiting for the others
        torch.set_num_threads(args.threads)

    try:
        recipe = get_recipe(args.recipe).with_overrides(
            epochs=args.epochs, max_batches=args.max_batches, seed=args.seed, loss=args.loss
        )
    except (KeyError, ValueError) as exc:
        return _fail("train", exc)
    try:
        outcome = run_recipe(
            recipe,
            registry_root(args),
            device=args.device,
            set_production=not args.no_alias,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as exc:
        return _fail("train", exc)
    print(
        f"registered {outcome.manifest.ref}: test accuracy {outcome.test_accuracy:.4f} "
        f"(val {outcome.result.best_val_accuracy:.4f}, epoch {outcome.result.best_epoch}, "
        f"{outcome.seconds:.0f} s)"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from registry.errors import RegistryError
    from training.evaluate import DatasetMismatchError, evaluate_ref

    if args.exit_threshold:
        return _eval_exit(args)
    try:
        report = evaluate_ref(
            args.ref,
            registry_root(args),
            args.dataset,
            args.split,
            time_steps=args.time_steps,
            batch_size=args.batch_size,
            device=args.device,
            with_telemetry=args.telemetry,
            cache_dir=args.cache_dir,
        )
    except (RegistryError, DatasetMismatchError, OSError, ValueError) as exc:
        return _fail("eval", exc)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"{report.ref} on {report.dataset}/{report.split} (T={report.time_steps}): "
          f"top-1 {report.accuracy:.4f} ({report.correct}/{report.n})")  # fmt: skip
    if report.telemetry is not None:
        t = report.telemetry
        print(
            f"per sample: spike rate {t.spike_rate:.4f}, {t.synaptic_ops:.3e} SOPs "
            f"({t.synaptic_ops_nominal:.3e} nominal), {t.macs:.3e} MACs, {t.energy_uj:.3f} uJ"
        )
    return 0


def _eval_exit(args: argparse.Namespace) -> int:
    from registry.errors import RegistryError
    from training.early_exit import evaluate_exit_ref
    from training.evaluate import DatasetMismatchError

    try:
        reports = evaluate_exit_ref(
            args.ref,
            registry_root(args),
            args.dataset,
            args.exit_threshold,
            args.split,
            min_steps=args.min_steps,
            time_steps=args.time_steps,
            batch_size=args.batch_size,
            device=args.device,
            cache_dir=args.cache_dir,
        )
    except (RegistryError, DatasetMismatchError, OSError, ValueError) as exc:
        return _fail("eval", exc)
    if args.json:
        print(json.dumps({"ref": args.ref, "dataset": args.dataset, "split": args.split,
                          "reports": [report.as_dict() for report in reports]}))  # fmt: skip
        return 0
    full = reports[0]
    print(f"{args.ref} on {args.dataset}/{args.split}, T={full.time_steps}, {full.n} samples, "
          f"batch {args.batch_size}, early exit from step {args.min_steps}")  # fmt: skip
    print(
        f"{'threshold':>9}  {'top-1':>7}  {'mean steps':>10}  {'energy uJ':>9}  {'ms/sample':>9}  steps 1..T"
    )
    for report in reports:
        label = "off" if report.threshold is None else f"{report.threshold:g}"
        print(
            f"{label:>9}  {report.accuracy:7.2%}  {report.mean_steps:10.3f}  {report.energy_uj or 0.0:9.3f}  "
            f"{report.ms_per_sample:9.3f}  {' '.join(map(str, report.steps_histogram))}"
        )
    return 0


def _emulate(args: argparse.Namespace) -> int:
    from training.datasets import EMULATION_SEED, mnist5k
    from training.emulator import emulate_batch, write_recording

    images, labels, index = mnist5k(args.split)
    if not 0 <= args.position < len(index):
        return _fail(
            "emulate", ValueError(f"--position must be in 0..{len(index) - 1} for split {args.split}")
        )
    if args.output.suffix.lower() == ".png":
        return _write_digit_png(images[args.position], int(labels[args.position]), args.output)
    seed = EMULATION_SEED if args.seed is None else args.seed
    chosen = slice(args.position, args.position + 1)
    events = emulate_batch(images[chosen], seed=seed, indices=index[chosen])[0]
    try:
        write_recording(events, args.output)
    except (OSError, ValueError) as exc:
        return _fail("emulate", exc)
    duration_ms = events["t"][-1] / 1e3 if len(events) else 0.0
    print(
        f"wrote {args.output}: digit {labels[args.position]}, {len(events)} events over {duration_ms:.0f} ms"
    )
    return 0


def _write_digit_png(image: np.ndarray, label: int, output: Path) -> int:
    """image: [28, 28] uint8, written as an 8-bit greyscale PNG (what the image route decodes)."""
    from PIL import Image

    try:
        Image.fromarray(image, mode="L").save(output, format="PNG")
    except OSError as exc:
        return _fail("emulate", exc)
    print(f"wrote {output}: digit {label}, 28x28 greyscale")
    return 0
