"""The ``native`` backend: the LIF loop in plain C (``native.c``), built once per machine, for inference.

The same library holds the spike-driven convolution (``models/kernels/conv/spike_driven.c``, called by
``models.kernels.conv.spike_driven``): one build, one cache entry, one availability for both.

Why next to inductor: the compiled loop cannot count spikes as it fires (inductor turns a count
into reduction loops of their own that recompute the steps), so with telemetry on every spiking
layer paid a second pass over its output; here the count, per sample and per position, comes out
of the loop's one pass. And building it takes about a second with the system C compiler, where
inductor compiles each neuron configuration for seconds to tens of seconds at load.

It runs float32 CPU tensors without autograd (a served network); for anything else (training,
float64 gradient checks, other dtypes) it runs the reference loop, whose values it equals bit for
bit anyway. The shared library is cached under ``SPIKESERVE_KERNEL_CACHE`` (default
``~/.cache/spikeserve/kernels``, else the temporary directory), keyed by the source, the compiler
and this CPU's instruction sets (it is built with ``-march=native``), and written atomically, so
processes that start together build it at most once each and never load half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from models.kernels.lif.reference import LIFResult
from models.kernels.lif.reference import multistep_lif as reference_multistep_lif

SOURCE = Path(__file__).with_name("native.c")
# built into the same library: the spike-driven convolution (models.kernels.conv.spike_driven)
SOURCES = (SOURCE, Path(__file__).parents[1] / "conv" / "spike_driven.c")
COMPILERS = ("cc", "gcc", "clang")
# -ffp-contract=off: no fused multiply-add, so each operation rounds as torch's does
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=c11")

_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_FAILURE: str | None = None


def compiler() -> str | None:
    """The first C compiler on PATH, or None."""
    return next((found for cc in COMPILERS if (found := shutil.which(cc))), None)


def unavailable_reason(device: torch.device) -> str | None:
    """Why the native loop cannot run on ``device`` here, or None when it can."""
    if device.type != "cpu":
        return f"the native LIF loop runs on the CPU, not on {device.type}"
    if compiler() is None:
        return "the native LIF loop needs a C compiler (cc, gcc or clang)"
    try:  # built here (once, about a second), so that a compiler that fails says so before a forward
        library()
    except OSError as exc:
        return str(exc)
    return None


def _cache_dir() -> Path:
    configured = os.environ.get("SPIKESERVE_KERNEL_CACHE")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path.home() / ".cache" / "spikeserve" / "kernels")
    candidates.append(Path(tempfile.gettempdir()) / "spikeserve-kernels")
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError(f"no writable directory for the native LIF loop among {', '.join(map(str, candidates))}")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(cc: str) -> Path:
    sources = [path.read_bytes() for path in SOURCES]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        b"\0".join([*sources, cc.encode(), version.encode(), " ".join(FLAGS).encode(), _cpu_flags().encode()])
    ).hexdigest()[:20]
    directory = _cache_dir()
    library = directory / f"lif_native_{key}.so"
    if library.exists():
        return library
    fd, partial = tempfile.mkstemp(prefix=library.stem, suffix=".so.partial", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run(
            [cc, *FLAGS, "-o", partial, *map(str, SOURCES)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            names = " and ".join(path.name for path in SOURCES)
            raise OSError(f"{cc} could not build {names}: {result.stderr.strip()[-500:]}")
        os.replace(partial, library)  # atomic: a process starting meanwhile sees all of it or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def library() -> ctypes.CDLL:
    """The loaded loop, built on first use (about a second); raises OSError if it cannot be."""
    global _LIBRARY, _FAILURE
    if _LIBRARY is not None:
        return _LIBRARY
    with _LOCK:
        if _LIBRARY is None:
            if _FAILURE is not None:  # a build that failed once is not retried at every call
                raise OSError(_FAILURE)
            cc = compiler()
            if cc is None:
                raise OSError("the native LIF loop needs a C compiler (cc, gcc or clang)")
            try:
                loaded = ctypes.CDLL(str(_build(cc)))
            except OSError as exc:
                _FAILURE = str(exc)
                raise
            function = loaded.spikeserve_lif_forward_f32
            function.restype = ctypes.c_int
            pointer, size, real, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
            function.argtypes = [pointer] * 6 + [size] * 4 + [real] * 4 + [flag] * 4
            conv = loaded.spikeserve_spike_conv2d_f32
            conv.restype = ctypes.c_int
            conv.argtypes = [pointer] * 4 + [size] * 13 + [pointer, size]
            _LIBRARY = loaded
    return _LIBRARY


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def multistep_lif_native(
    x: torch.Tensor,
    *,
    inv_tau: float | torch.Tensor,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = True,
    surrogate_alpha: float = 4.0,
    analog_output: bool = False,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    count_spikes: bool = False,
    count_positions: int = 0,
    channels_inner: bool = False,
) -> LIFResult:
    """``reference.multistep_lif`` in one pass. x: [T, B, F] -> LIFResult (same fields, same values);
    ``count_positions`` P > 0 also fills ``spikes_per_position`` [B, P] (summed over the steps) and,
    from those same counts, ``spike_count``; F is read as [C, P], or as [P, C] with ``channels_inner``."""
    tensor_tau = isinstance(inv_tau, torch.Tensor)
    needs_graph = torch.is_grad_enabled() and (
        x.requires_grad
        or (tensor_tau and inv_tau.requires_grad)
        or (v_init is not None and v_init.requires_grad)
    )
    unsupported = x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3
    # torch.compile cannot trace a foreign call: inside a compiled network the loop joins the graph
    if needs_graph or unsupported or torch.compiler.is_compiling():
        return reference_multistep_lif(
            x,
            inv_tau=inv_tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=decay_input,
            detach_reset=detach_reset,
            surrogate_alpha=surrogate_alpha,
            analog_output=analog_output,
            v_init=v_init,
            return_v=return_v,
            count_spikes=count_spikes,
        )
    steps, batch, features = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    v = torch.empty((batch, features), dtype=torch.float32)
    start = None if v_init is None else v_init.to(torch.float32).contiguous()
    by_position = count_positions > 0 and not analog_output
    count = torch.empty(batch, dtype=torch.int64) if count_spikes or by_position else None
    positions = count_positions if by_position else max(features, 1)
    per_position = torch.empty((batch, positions), dtype=torch.float32) if by_position else None
    rest = 0.0 if v_reset is None else float(v_reset)
    if steps and batch and features:
        status = library().spikeserve_lif_forward_f32(
            _pointer(x),
            _pointer(out),
            _pointer(start),
            _pointer(v),
            _pointer(count),
            _pointer(per_position),
            steps,
            batch,
            features,
            positions,
            float(inv_tau),
            float(v_threshold),
            rest,
            rest,
            int(v_reset is not None),
            int(decay_input),
            int(analog_output),
            int(channels_inner),
        )
        if status != 0:
            raise ValueError(f"the native LIF loop cannot split {features} features into {positions}")
    else:  # nothing to run: what the reference returns for an empty input
        if start is not None:
            v.copy_(start)
        else:
            v.fill_(rest)
        if count is not None:
            count.zero_()
        if per_position is not None:
            per_position.zero_()
    return LIFResult(
        out=out,
        v=v if return_v else None,
        spike_count=count,
        spikes_per_position=per_position,
    )
