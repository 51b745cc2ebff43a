"""Turning a manifest and its blob into a network. torch and models/ are imported inside functions.

The bytes are hashed and loaded from the same read, so a file swapped between the check and the
load cannot slip through; weights come only from safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import IntegrityError, LoadError
from registry.manifest import Manifest

if TYPE_CHECKING:
    import torch.nn as nn


def read_verified(manifest: Manifest, blob: Path) -> bytes:
    """The weight bytes of ``manifest``, after checking their size and sha256 against it."""
    try:
        data = blob.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{manifest.ref}: weights blob {blob} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != manifest.weights.size or digest != manifest.weights.sha256:
        raise IntegrityError(
            f"{manifest.ref}: weights {blob} do not match the manifest (sha256 {digest[:12]}..., "
            f"{len(data)} bytes; expected {manifest.weights.sha256[:12]}..., {manifest.weights.size} "
            "bytes); refusing to load them"
        )
    return data


def build_model(manifest: Manifest, weights: bytes, device: str = "cpu") -> nn.Module:
    """``create_model(architecture, **config, neuron=neuron)``, strict weight load, eval mode.

    weights: safetensors bytes already checked by ``read_verified``.
    """
    from safetensors.torch import load as load_safetensors

    from models import create_model
    from models._registry import UnknownArchitectureError

    try:
        model = create_model(manifest.architecture, **manifest.config, neuron=manifest.neuron)
    except UnknownArchitectureError as exc:
        raise LoadError(f"{manifest.ref}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise LoadError(
            f"{manifest.ref}: architecture {manifest.architecture!r} refused its config: {exc}"
        ) from exc
    state_dict = load_safetensors(weights)
    missing, unexpected = _key_mismatch(set(model.state_dict()), set(state_dict))
    if missing or unexpected:
        raise LoadError(
            f"{manifest.ref}: weights do not fit {manifest.architecture!r} with this config "
            f"(missing: {_few(missing)}; unexpected: {_few(unexpected)})"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # shapes differ
        first_lines = " ".join(str(exc).split())[:400]
        raise LoadError(
            f"{manifest.ref}: weights do not fit {manifest.architecture!r}: {first_lines}"
        ) from None
    return model.to(device).eval()


def _key_mismatch(expected: set[str], given: set[str]) -> tuple[list[str], list[str]]:
    return sorted(expected - given), sorted(given - expected)


def _few(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def sample_shape(manifest: Manifest) -> tuple[int, int, int]:
    """One sample's step input: images (C, H, W); event frames (polarities, H, W)."""
    spec = manifest.input
    if spec.kind == "image":
        return (spec.channels, spec.height, spec.width)
    return (spec.polarities, spec.sensor_height, spec.sensor_width)


def check_runs(manifest: Manifest, weights: bytes) -> None:
    """Build ``manifest``'s network, load ``weights`` strictly, run one forward on the default input
    (zeros, [T_default, 1, *sample_shape]) on the CPU with the eager neurons, and check the answer
    is [1, len(labels)]. LoadError says what failed; nothing is kept."""
    try:
        import torch
    except ImportError:
        raise LoadError(
            f"{manifest.ref}: checking that weights load needs torch, which is not installed here; "
            "register from a machine with torch (a worker image, or `spikeserve registry register`)"
        ) from None
    from models.base import reset_state, set_backend, set_streaming

    model = build_model(manifest, weights, "cpu")
    set_streaming(model, False)
    set_backend(model, "torch")  # the reference neurons: no compilation for a check
    x = torch.zeros((manifest.time_steps.default, 1, *sample_shape(manifest)))
    try:
        with torch.inference_mode():
            logits = model(x)
    except Exception as exc:
        first_line = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise LoadError(
            f"{manifest.ref}: one forward on the default input {list(x.shape)} failed: {first_line}"
        ) from None
    finally:
        reset_state(model)
    if tuple(logits.shape) != (1, len(manifest.labels)):
        raise LoadError(
            f"{manifest.ref}: the network answers shape {list(logits.shape)} for one sample; "
            f"the manifest's {len(manifest.labels)} labels need [1, {len(manifest.labels)}]"
        )
