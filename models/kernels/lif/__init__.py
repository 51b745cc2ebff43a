"""Multi-step LIF/PLIF/LIAF: one entry point, several backends.

- ``torch``: the eager reference (``reference.py``), always available, differentiable.
- ``triton``: the fused kernel (``triton.py`` through the custom ops of ``ops.py``): CUDA tensors,
  or CPU tensors when triton was imported with TRITON_INTERPRET=1 (the tests' way).
- ``inductor``: the reference loop compiled by ``torch.compile`` (``inductor.py``).
- ``native``: the loop in plain C, built once per machine with the system compiler (``native.py``):
  one pass that also counts the spikes it fires; inference on float32 CPU tensors.
- ``auto``: the backend measured fastest on the tensor's device, among those that run there.
  The measurement (a fixed LIF layer, each backend warmed up and compiled, then timed in
  interleaved rounds) runs on the first ``auto`` call for a device and is cached for the
  process; ``auto_timings`` shows it, ``set_auto_choice`` pins it.

An explicit backend that cannot run raises ``BackendUnavailableError``; it never falls back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from models.kernels.lif.reference import LIFResult
from models.kernels.lif.reference import multistep_lif as reference_multistep_lif

BACKENDS = ("torch", "triton", "inductor", "native", "auto")
CONCRETE_BACKENDS = ("torch", "triton", "inductor", "native")
# compile for each neuron configuration and time-step count: a first call there takes long
COMPILING_BACKENDS = ("triton", "inductor")

log = logging.getLogger(__name__)

_AUTO_CHOICE: dict[str, str] = {}
_AUTO_TIMINGS: dict[str, dict[str, float]] = {}
_AUTO_LOCK = threading.Lock()
_RUNNABLE: set[tuple[str, str]] = set()  # (backend, device) pairs already checked


class BackendUnavailableError(RuntimeError):
    """The requested neuron backend cannot run on this device or installation."""


def _device_key(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _triton_unavailable_reason(device: torch.device) -> str | None:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return "the triton backend needs a CUDA device (or TRITON_INTERPRET=1 to test it on the CPU)"
        kernels = sys.modules.get("models.kernels.lif.triton")
        if kernels is None and "triton" in sys.modules and not _triton_imported_interpreted():
            return "TRITON_INTERPRET=1 was set after triton was imported; set it before the first import"
        if kernels is not None and not kernels.interpreting():
            return "the kernels were built before TRITON_INTERPRET=1 was set; set it before the first import"
        return None
    return f"the triton backend does not run on {device.type} tensors"


def _triton_imported_interpreted() -> bool:
    import triton.language as tl

    # triton.jit picks compiled or interpreted when it decorates, so triton's own jit helpers
    # (tl.zeros among them) say which mode it was imported in; the env var may have changed since.
    return type(tl.zeros).__name__ == "InterpretedFunction"


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot run on ``device`` here, or None when it can."""
    device = torch.device(device)
    if backend == "torch":
        return None
    if backend == "triton":
        return _triton_unavailable_reason(device)
    if backend == "inductor":
        from models.kernels.lif.inductor import unavailable_reason as inductor_reason

        return inductor_reason(device)
    if backend == "native":
        from models.kernels.lif.native import unavailable_reason as native_reason

        return native_reason(device)
    raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def available_backends(device: torch.device | str) -> list[str]:
    """The concrete backends that run on ``device`` in this process."""
    return [b for b in CONCRETE_BACKENDS if unavailable_reason(b, device) is None]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into the backend measured fastest on ``device``; check that an explicit one runs there.

    Called by every neuron forward, so after the first call per (backend, device) it is two dict
    look-ups that torch.compile traces without a graph break. The checks and the measurement
    themselves run eagerly: a network that is compiled must have run (or resolved) once before.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    key = _device_key(device)
    if backend == "auto":
        chosen = _AUTO_CHOICE.get(key)
        if chosen is None:
            if torch.compiler.is_compiling():
                raise RuntimeError(f"resolve the 'auto' neuron backend on {key} before compiling the network")
            chosen = _measure_auto(torch.device(key))
        return chosen
    if backend != "torch" and (backend, key) not in _RUNNABLE and not torch.compiler.is_compiling():
        reason = unavailable_reason(backend, device)
        if reason is not None:
            raise BackendUnavailableError(f"neuron backend {backend!r} cannot run on {device}: {reason}")
        _RUNNABLE.add((backend, key))
    return backend


def _run_backend(backend: str, x: torch.Tensor, params: dict[str, Any]) -> LIFResult:
    if backend == "torch":
        return reference_multistep_lif(x, **params)
    if backend == "triton":
        from models.kernels.lif.ops import multistep_lif_triton

        return multistep_lif_triton(x, **params)
    if backend == "native":
        from models.kernels.lif.native import multistep_lif_native

        return multistep_lif_native(x, **params)
    from models.kernels.lif.inductor import multistep_lif_inductor

    return multistep_lif_inductor(x, **params)


_EAGER = threading.local()  # per thread: one thread may run eagerly while another compiles


@contextlib.contextmanager
def eager_neurons() -> Iterator[None]:
    """Run every neuron on the ``torch`` backend in this thread, whatever backend it names.

    A server answers a T it has not compiled for (or captured) yet this way, at once, while
    another thread prepares the fused backend for that T.
    """
    before = getattr(_EAGER, "active", False)
    _EAGER.active = True
    try:
        yield
    finally:
        _EAGER.active = before


def multistep_lif(
    x: torch.Tensor,
    *,
    backend: str = "torch",
    count_positions: int = 0,
    channels_inner: bool = False,
    **params: Any,
) -> LIFResult:
    """Dispatch x: [T, B, F] to the chosen backend. See ``reference.multistep_lif`` for params;
    the triton backend also takes ``spike_dtype`` (``torch.uint8`` for byte spikes).

    ``count_positions`` P > 0 (a spiking layer whose F is channels x P positions, a conv's output)
    fills ``spikes_per_position``, what an exact synaptic-operation count of the next conv reads.
    F is [C, P] (channels outer), or [P, C] with ``channels_inner`` (a channels_last network's order).
    The native loop counts them as it fires; the inductor loop adds each neuron's spikes up over the
    steps as it runs, so the channel sum reads a T-th of the output; the others sum the output over
    channels afterwards.
    """
    if not torch.compiler.is_compiling() and getattr(_EAGER, "active", False):
        params.pop("spike_dtype", None)
        result = reference_multistep_lif(x, **params)
    else:
        chosen = resolve_backend(backend, x.device)
        if count_positions and chosen == "inductor":
            params["count_per_neuron"] = True
        elif count_positions and chosen == "native":
            params["count_positions"] = count_positions  # counted in the loop itself
            params["channels_inner"] = channels_inner
        result = _run_backend(chosen, x, params)
    if count_positions and result.spikes_per_position is None and not params.get("analog_output", False):
        result.spikes_per_position = _spikes_per_position(result, count_positions, channels_inner)
    return result


def _spikes_per_position(result: LIFResult, positions: int, channels_inner: bool = False) -> torch.Tensor:
    """[S*B, P] float32 (S = 1 from per-neuron totals, else T): a vectorised add of the channels."""
    source = result.spikes_per_neuron
    if source is None:
        source = result.out.detach() if result.out.requires_grad else result.out
    channels = source.shape[-1] // positions
    if channels_inner:
        return source.reshape(-1, positions, channels).sum(dim=2, dtype=torch.float32)
    return source.reshape(-1, channels, positions).sum(dim=1, dtype=torch.float32)


def _auto_workload(device: torch.device) -> tuple[torch.Tensor, int]:
    """A mid-sized LIF layer, [T=4, B, F], in the dtype the device serves in; and timed repeats."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    if device.type == "cuda":
        x = torch.randn((4, 16, 1 << 18), generator=generator).to(device=device, dtype=torch.bfloat16)
        return x, 20
    return torch.randn((4, 4, 1 << 16), generator=generator).to(device), 20


_AUTO_PARAMS = {"inv_tau": 0.5, "count_spikes": True}  # a default LIF layer with telemetry on


def _warm_up(backend: str, x: torch.Tensor) -> None:
    for _ in range(3):  # compile (and recompile for inference mode), warm caches
        _run_backend(backend, x, _AUTO_PARAMS)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def _time_once(backend: str, x: torch.Tensor) -> float:
    start = time.perf_counter()
    _run_backend(backend, x, _AUTO_PARAMS)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def _time_backends(backends: list[str], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs per backend, in seconds; a backend that fails is left out.

    Rounds interleave the backends, so that a burst of load from other processes lands on all of
    them alike; the minimum is the run such load disturbed least. (On an oversubscribed CPU an
    OpenMP kernel can run 100x slower than alone: comparing at different moments would mislead.)
    """
    ready = []
    for backend in backends:
        try:
            _warm_up(backend, x)
            ready.append(backend)
        except Exception as exc:  # a compiler missing or failing: auto skips it, loudly
            log.warning("auto neuron backend: %s failed on %s and is skipped: %s", backend, x.device, exc)
    best = dict.fromkeys(ready, float("inf"))
    for _ in range(repeats):
        for backend in ready:
            best[backend] = min(best[backend], _time_once(backend, x))
    return best


def _measure_auto(device: torch.device) -> str:
    key = str(device)
    with _AUTO_LOCK:
        if key in _AUTO_CHOICE:
            return _AUTO_CHOICE[key]
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("resolve the 'auto' neuron backend before capturing a CUDA graph")
        candidates = available_backends(device)
        if device.type == "cpu" and "triton" in candidates:
            candidates.remove("triton")  # the interpreter is a correctness tool, never a fast path
        x, repeats = _auto_workload(device)
        with torch.inference_mode():
            timings = _time_backends(candidates, x, repeats)
        chosen = min(timings, key=timings.__getitem__) if timings else "torch"
        _AUTO_TIMINGS[key] = timings
        _AUTO_CHOICE[key] = chosen
        log.info("auto neuron backend on %s: %s (fastest run, seconds: %s)", key, chosen, timings)
        return chosen


def auto_timings(device: torch.device | str) -> dict[str, float]:
    """Seconds per backend measured by ``auto`` on ``device`` (empty before its first ``auto`` call)."""
    return dict(_AUTO_TIMINGS.get(_device_key(device), {}))


def set_auto_choice(device: torch.device | str, backend: str | None) -> None:
    """Pin what ``auto`` means on ``device`` (tests, or a choice measured elsewhere); None forgets it."""
    key = _device_key(device)
    if backend is None:
        _AUTO_CHOICE.pop(key, None)
        _AUTO_TIMINGS.pop(key, None)
        return
    resolve_backend(backend, torch.device(key))  # raises for a backend that cannot run there
    if backend == "auto":
        raise ValueError("pin 'auto' to a concrete backend")
    _AUTO_CHOICE[key] = backend


__all__ = [
    "BACKENDS",
    "CONCRETE_BACKENDS",
    "BackendUnavailableError",
    "LIFResult",
    "auto_timings",
    "available_backends",
    "eager_neurons",
    "multistep_lif",
    "resolve_backend",
    "set_auto_choice",
    "unavailable_reason",
]
