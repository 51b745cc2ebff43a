"""The Open Inference Protocol's binary tensor data extension (``binary_tensor_data``), over REST.

Triton's and KServe's HTTP clients send tensors this way by default: the body is a JSON header of
``Inference-Header-Content-Length`` bytes, then the raw tensors, one after the other in the order
of the inputs whose ``parameters`` say ``binary_data_size`` (bytes, little-endian, row-major);
such an input has no ``data``. The answer is binary the same way when the request asks for it:
``parameters.binary_data_output: true`` for every output, or ``binary_data: true`` in one
requested output's ``parameters``; then the output carries ``parameters.binary_data_size`` and
the raw FP32 values follow the JSON.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from service.errors import BadRequestError
from service.schemas import V2InferRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"
FP32 = np.dtype("<f4")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) of a request body; without the header, all of it is JSON."""
    if header_length is None:
        return body, memoryview(b"")
    value = header_length.strip()
    if not value.isascii() or not value.isdigit() or int(value) > len(body):
        raise BadRequestError(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes, at most the body's "
            f"{len(body):,}; got {header_length!r}"
        )
    size = int(value)
    return body[:size], memoryview(body)[size:]


def binary_inputs(payload: V2InferRequest, binary: memoryview) -> dict[str, memoryview]:
    """Input name -> its raw bytes, cut from ``binary`` in the inputs' order; every byte accounted for."""
    chunks: dict[str, memoryview] = {}
    offset = 0
    for tensor in payload.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise BadRequestError(f"input '{tensor.name}' has neither data nor a binary_data_size")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequestError(
                f"input '{tensor.name}': binary_data_size must be a byte count, got {size!r}"
            )
        if tensor.data is not None:
            raise BadRequestError(f"input '{tensor.name}' has both data and a binary_data_size; send one")
        if offset + size > len(binary):
            raise BadRequestError(
                f"input '{tensor.name}' states {size:,} binary bytes but the body holds "
                f"{len(binary) - offset:,} more after the JSON header"
            )
        chunks[tensor.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise BadRequestError(
            f"the body holds {len(binary) - offset:,} bytes after the tensors its inputs' "
            f"binary_data_size account for (is {HEADER_LENGTH} right?)"
        )
    return chunks


def fp32_values(raw: memoryview, name: str) -> np.ndarray:
    """Little-endian FP32 bytes -> [N] float32 (native order)."""
    if len(raw) % FP32.itemsize:
        raise BadRequestError(f"input '{name}' holds {len(raw):,} bytes, not a whole number of FP32 values")
    return np.frombuffer(raw, dtype=FP32).astype(np.float32)


def wants_binary_output(payload: V2InferRequest, output_name: str) -> bool:
    """Whether ``output_name`` is to be answered in binary (see the module docstring)."""
    for output in payload.outputs or ():
        if output.name == output_name and "binary_data" in (output.parameters or {}):
            return bool((output.parameters or {})["binary_data"])
    return bool((payload.parameters or {}).get("binary_data_output", False))


def answer_response(answer: dict[str, Any], binary_output_names: set[str]) -> Response:
    """The infer answer; the outputs named in ``binary_output_names`` go as raw FP32 after the JSON."""
    if not binary_output_names:
        return JSONResponse(answer)
    tail: list[bytes] = []
    for output in answer["outputs"]:
        if output["name"] in binary_output_names:
            raw = np.asarray(output.pop("data"), dtype=FP32).tobytes()
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
            tail.append(raw)
    header = json.dumps(answer, separators=(",", ":")).encode()
    return Response(
        header + b"".join(tail),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
