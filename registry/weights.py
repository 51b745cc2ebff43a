"""Weights coming in: safetensors files (checked, never executed), state dicts, and .pt files.

The registry stores weights only as safetensors. A ``.pt`` file is read with
``torch.load(weights_only=True)``, which refuses any pickled object that is not plain tensors and
containers (so no ``__reduce__`` runs), and is converted. torch is imported inside functions only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from registry.errors import InvalidWeightsError
from registry.store import RegistryLayout, StagedBlob, discard, stage_blob

if TYPE_CHECKING:
    import torch

# bytes per element of the safetensors dtypes (sub-byte float types are not checked for size)
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
PT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(handle: IO[bytes], file_size: int, source: str = "weights") -> list[TensorInfo]:
    """Parse and check a safetensors header without loading tensors; leaves ``handle`` at offset 0.

    Checks: header length within the file, JSON object, known dtypes, offsets inside the data
    buffer, each tensor's byte length equal to its shape times its dtype size, and the tensors
    tiling the buffer exactly. Anything else is InvalidWeightsError naming ``source``.
    """

    def bad(why: str) -> InvalidWeightsError:
        return InvalidWeightsError(f"{source} is not a valid safetensors file: {why}")

    handle.seek(0)
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise bad("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise bad(f"header length {header_len} does not fit a {file_size}-byte file")
    try:
        header = json.loads(handle.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON ({exc})") from None
    handle.seek(0)
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    buffer_len = file_size - 8 - header_len
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - entry.keys():
            raise bad(f"tensor {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"tensor {name!r} has dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer_len
        ):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r} outside the {buffer_len}-byte buffer")
        if dtype in _DTYPE_BYTES:
            numel = 1
            for dim in shape:
                numel *= dim
            if offsets[1] - offsets[0] != numel * _DTYPE_BYTES[dtype]:
                raise bad(f"tensor {name!r} ({dtype} {shape}) does not match its byte length")
        tensors.append(TensorInfo(name, dtype, tuple(shape)))
        spans.append((offsets[0], offsets[1]))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise bad("tensors overlap or leave gaps in the data buffer")
        position = end
    if position != buffer_len:
        raise bad(f"data buffer is {buffer_len} bytes but tensors cover {position}")
    return tensors


def read_safetensors_header_file(path: Path) -> list[TensorInfo]:
    with path.open("rb") as handle:
        return read_safetensors_header(handle, path.stat().st_size, source=str(path))


def state_dict_from_pt(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a PyTorch ``.pt`` file, read with ``torch.load(weights_only=True)`` only.

    Accepts a mapping of names to tensors, or one wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}`` (the trainers' usual checkpoints). A pickle that would build any other
    object, or run code, is refused before it runs: InvalidWeightsError.
    """
    import pickle

    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidWeightsError(
            f"{path} was refused: torch.load(weights_only=True) accepts plain tensors only ({first_line})"
        ) from None
    if isinstance(loaded, Mapping) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise InvalidWeightsError(f"{path} holds {type(loaded).__name__}, not a mapping of names to tensors")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidWeightsError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    return dict(loaded)


def state_dict_to_safetensors(state_dict: Mapping[str, Any]) -> bytes:
    """Serialise ``state_dict`` (names to tensors) as safetensors bytes, on the CPU."""
    import torch
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidWeightsError(f"state dict entry {key!r} is not a named tensor")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        # safetensors refuses tensors that share memory (tied weights, views of one buffer):
        # give each its own copy
        if storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    if not tensors:
        raise InvalidWeightsError("the state dict is empty")
    return save(tensors)


def stage_weights(layout: RegistryLayout, weights: str | Path | Mapping[str, Any] | IO[bytes]) -> StagedBlob:
    """Check ``weights`` and stage them as a safetensors blob (not yet committed).

    weights: a ``.safetensors`` path or an open, seekable binary file of one (checked, copied as
    is), a ``.pt``/``.pth`` path (tensors only, converted), or a state dict of tensors (saved with
    safetensors).
    """
    if isinstance(weights, Mapping):
        return stage_blob(layout, state_dict_to_safetensors(weights))
    if not isinstance(weights, str | Path):
        return _stage_safetensors(layout, weights, "the uploaded weights")
    path = Path(weights)
    if not path.is_file():
        raise InvalidWeightsError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in PT_SUFFIXES:
        return stage_blob(layout, state_dict_to_safetensors(state_dict_from_pt(path)))
    if suffix != ".safetensors":
        raise InvalidWeightsError(
            f"weights file {path}: use a .safetensors file (or a .pt/.pth state dict, read with "
            "weights_only=True); other formats may execute code when loaded"
        )
    with path.open("rb") as handle:
        return _stage_safetensors(layout, handle, f"weights file {path}")


def _stage_safetensors(layout: RegistryLayout, handle: IO[bytes], source: str) -> StagedBlob:
    size = handle.seek(0, 2)
    read_safetensors_header(handle, size, source=source)  # leaves the handle at 0
    # bounded by the size we checked: a file that grows while we copy would not match it
    staged = stage_blob(layout, handle, max_bytes=size)
    if staged.size != size:
        discard(staged)
        raise InvalidWeightsError(f"{source} changed while it was copied")
    return staged
