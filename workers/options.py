"""The one place where a request's options are checked against its model's manifest.

Every way into a worker (v1 routes, v2 infer, streams) calls ``check_options`` before it builds an
``InferenceRequest``; the engine then trusts ``time_steps``, ``kind`` and ``top_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from registry.manifest import Manifest
from workers.errors import InvalidInputError
from workers.protocol import TELEMETRY_LEVELS, InputKind, TelemetryLevel


@dataclass(frozen=True)
class RunOptions:
    """What a request asks of a model, checked: T in the manifest's range, ``top_k`` in 1..classes."""

    kind: InputKind
    time_steps: int
    top_k: int
    telemetry: TelemetryLevel


def check_options(
    manifest: Manifest,
    kind: str,
    time_steps: int | None,
    top_k: int,
    telemetry: str,
    route_hint: str = "",
) -> RunOptions:
    """``RunOptions`` for ``manifest``, or InvalidInputError (422) saying what fits.

    kind: "image" | "events", what the caller sent; ``route_hint`` names the route that takes the
    other kind. time_steps: None means the manifest's default. top_k is clamped to the label count.
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
    classes = len(manifest.labels)
    return RunOptions(
        kind=cast(InputKind, kind),
        time_steps=steps,
        top_k=min(top_k, classes) if classes else top_k,
        telemetry=cast(TelemetryLevel, telemetry),
    )
