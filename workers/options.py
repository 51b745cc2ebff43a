"""The one place where a request's options are checked against its model's manifest.

Every way into a worker (v1 routes, v2 infer, streams) calls ``check_options`` before it builds an
``InferenceRequest``; the engine then trusts ``time_steps``, ``kind``, ``top_k`` and the early-exit
options (whether the network can exit early at all, the worker checks: it knows the architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from registry.manifest import DEFAULT_EXIT_THRESHOLD, Manifest
from workers.errors import EarlyExitUnsupportedError, InvalidInputError
from workers.protocol import TELEMETRY_LEVELS, InputKind, TelemetryLevel


@dataclass(frozen=True)
class RunOptions:
    """What a request asks of a model, checked: T in the manifest's range, ``top_k`` in 1..classes;
    ``exit_threshold`` None runs all T steps, else early exit at that confidence, from ``min_steps``."""

    kind: InputKind
    time_steps: int
    top_k: int
    telemetry: TelemetryLevel
    exit_threshold: float | None = None
    min_steps: int = 1


@dataclass(frozen=True)
class ExitQuery:
    """What the caller asked about early exit, unchecked: ``exit`` is None or "confidence"."""

    exit: str | None = None
    threshold: float | None = None
    min_steps: int | None = None


def check_options(
    manifest: Manifest,
    kind: str,
    time_steps: int | None,
    top_k: int,
    telemetry: str,
    route_hint: str = "",
    exit: ExitQuery | None = None,
) -> RunOptions:
    """``RunOptions`` for ``manifest``, or InvalidInputError (422) saying what fits.

    kind: "image" | "events", what the caller sent; ``route_hint`` names the route that takes the
    other kind. time_steps: None means the manifest's default. top_k is clamped to the label count.
    exit: early exit as asked (see ``check_exit``); None: off.
    """
    if manifest.input.kind != kind:
        hint = f"; use {route_hint}" if route_hint else ""
        raise InvalidInputError(f"{manifest.ref} takes {manifest.input.kind} input, not {kind}{hint}")
    limits = manifest.time_steps
    steps = limits.default if time_steps is None else time_steps
    if not limits.min <= steps <= limits.max:
        raise InvalidInputError(
            f"time_steps={steps} is outside the range of {manifest.ref}: "
            f"use {limits.min}..{limits.max} (default {limits.default})"
        )
    if top_k < 1:
        raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
    if telemetry not in TELEMETRY_LEVELS:
        levels = ", ".join(TELEMETRY_LEVELS)
        raise InvalidInputError(f"telemetry must be one of {levels}, got {telemetry!r}")
    threshold, min_steps = check_exit(manifest, exit or ExitQuery(), steps)
    classes = len(manifest.labels)
    return RunOptions(
        kind=cast(InputKind, kind),
        time_steps=steps,
        top_k=min(top_k, classes) if classes else top_k,
        telemetry=cast(TelemetryLevel, telemetry),
        exit_threshold=threshold,
        min_steps=min_steps,
    )


def check_exit(manifest: Manifest, query: ExitQuery, time_steps: int) -> tuple[float | None, int]:
    """(threshold or None, min_steps) of a request; defaults from the manifest's ``early_exit``
    entry, else DEFAULT_EXIT_THRESHOLD and 1.

    InvalidInputError (422) for an unknown ``exit``, a threshold outside (0, 1], min_steps outside
    1..T, or a threshold or min_steps without ``exit=confidence``; EarlyExitUnsupportedError (422)
    when the manifest says the network cannot exit early.
    """
    if query.exit is None:
        pairs = (("exit_threshold", query.threshold), ("min_steps", query.min_steps))
        given = [name for name, value in pairs if value is not None]
        if given:
            raise InvalidInputError(f"{' and '.join(given)} need exit=confidence")
        return None, 1
    if query.exit != "confidence":
        raise InvalidInputError(f"exit={query.exit!r} is not known; use exit=confidence (or leave it out)")
    spec = manifest.early_exit
    if spec is not None and not spec.supported:
        reason = spec.reason or "its manifest says so"
        raise EarlyExitUnsupportedError(f"{manifest.ref} cannot exit early: {reason}")
    threshold = query.threshold if query.threshold is not None else DEFAULT_EXIT_THRESHOLD
    if query.threshold is None and spec is not None:
        threshold = spec.threshold
    if not 0.0 < threshold <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"exit_threshold={threshold} must be in (0, 1]")
    min_steps = query.min_steps if query.min_steps is not None else (spec.min_steps if spec else 1)
    if not 1 <= min_steps <= time_steps:
        raise InvalidInputError(f"min_steps={min_steps} must be in 1..time_steps ({time_steps})")
    return float(threshold), int(min_steps)
