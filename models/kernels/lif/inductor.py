"""The reference LIF loop compiled by ``torch.compile`` (inductor): the ``inductor`` backend.

Inductor fuses the T steps into one loop over the elements (C++/OpenMP on the CPU, a generated
Triton kernel on a GPU), so the eager loop's many passes over [B, F] become one.

The values that shape the graph (threshold, reset, flags, a fixed 1/tau) are baked into the
compiled function as constants, one compiled function per combination. Each combination gets a
code object of its own: dynamo keeps its compiled variants per code object and, past a small
limit (``torch._dynamo.config.recompile_limit``), silently runs the rest eagerly; one shared loop
function guarded on its closure would reach that limit in a network with a few neuron configs.
For inference, shapes are dynamic from the first call (T stays static: the loop unrolls over it),
so batch sizes and layer widths share one compilation.
"""

from __future__ import annotations

import builtins
import shutil
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.kernels.lif.reference import LIFResult
from models.kernels.lif.reference import multistep_lif as reference_multistep_lif

LoopFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], tuple]

_COMPILED: dict[StaticParams, LoopFn] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class StaticParams:
    """Everything that changes the compiled graph; ``inv_tau`` is None when it is a tensor (PLIF)."""

    inv_tau: float | None
    v_threshold: float
    v_reset: float | None
    decay_input: bool
    detach_reset: bool
    surrogate_alpha: float
    analog_output: bool
    return_v: bool
    count_spikes: bool
    has_v_init: bool
    count_per_neuron: bool = False
    differentiable: bool = False  # a graph with autograd (training) rather than inference


def unavailable_reason(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None when it can."""
    if device.type == "cpu":
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "inductor needs a C++ compiler (g++ or clang++) for CPU code"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor needs triton for GPU code"
        return None
    return f"inductor is not set up for {device.type} tensors here"


# Each compiled copy of ``_loop`` reads its own ``STATIC`` from a globals dict of its own.
STATIC: StaticParams | None = None


def _loop(x: torch.Tensor, inv_tau: torch.Tensor | None, v_init: torch.Tensor | None) -> tuple:
    """The loop that gets compiled; ``STATIC`` is a global of each compiled copy (see ``compiled_loop``)."""
    result = reference_multistep_lif(
        x,
        inv_tau=STATIC.inv_tau if inv_tau is None else inv_tau,
        v_threshold=STATIC.v_threshold,
        v_reset=STATIC.v_reset,
        decay_input=STATIC.decay_input,
        detach_reset=STATIC.detach_reset,
        surrogate_alpha=STATIC.surrogate_alpha,
        analog_output=STATIC.analog_output,
        v_init=v_init,
        return_v=STATIC.return_v,
        count_spikes=STATIC.count_spikes,
        count_per_neuron=STATIC.count_per_neuron,
    )
    return result.out, result.v, result.spike_count, result.spikes_per_neuron


def compiled_loop(params: StaticParams) -> LoopFn:
    """The compiled loop for ``params``, built once per process.

    Each combination is a copy of ``_loop`` with a code object and a globals dict of its own, its
    params in the global ``STATIC``: a fresh code object gets its own dynamo cache (module
    docstring), and params read from globals are constants to dynamo, where closure cells or
    default arguments are not (dynamo then fails to trace the surrogate's backward).
    """
    fn = _COMPILED.get(params)
    if fn is not None:
        return fn
    with _LOCK:
        fn = _COMPILED.get(params)
        if fn is None:
            name = f"lif_loop_{len(_COMPILED)}"
            code = _loop.__code__.replace(co_name=name)
            scope = {"__builtins__": builtins, "reference_multistep_lif": reference_multistep_lif}
            scope["STATIC"] = params
            copy = types.FunctionType(code, scope, name)
            # dynamic=True compiles once for every shape, but dynamo (2.13) cannot trace the
            # surrogate's autograd.Function with shapes symbolic from the start; graphs with
            # autograd start static and turn dynamic at the first new shape instead.
            dynamic = None if params.differentiable else True
            fn = _COMPILED[params] = torch.compile(copy, dynamic=dynamic, fullgraph=True)
    return fn


def multistep_lif_inductor(
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
    count_per_neuron: bool = False,
) -> LIFResult:
    """``reference.multistep_lif`` compiled. x: [T, B, F] -> LIFResult (same fields, same dtypes)."""
    if torch.compiler.is_compiling():
        # Inside a network that torch.compile is tracing: the loop joins the outer graph, which
        # inductor fuses as it would here.
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
            count_per_neuron=count_per_neuron,
        )
    tensor_tau = isinstance(inv_tau, torch.Tensor)
    # Spiking outputs are counted after the kernel, by one eager sum over its output: inductor
    # compiles a count into reduction loops of their own that recompute the steps (they doubled
    # the kernel's time), where a sum of the output costs a fifth of the kernel.
    count_after = count_spikes and not analog_output
    params = StaticParams(
        inv_tau=None if tensor_tau else float(inv_tau),
        v_threshold=float(v_threshold),
        v_reset=None if v_reset is None else float(v_reset),
        decay_input=bool(decay_input),
        detach_reset=bool(detach_reset),
        surrogate_alpha=float(surrogate_alpha),
        analog_output=bool(analog_output),
        return_v=bool(return_v),
        count_spikes=bool(count_spikes) and not count_after,
        has_v_init=v_init is not None,
        count_per_neuron=bool(count_per_neuron) and not analog_output,
        differentiable=torch.is_grad_enabled()
        and (
            x.requires_grad
            or (tensor_tau and inv_tau.requires_grad)
            or (v_init is not None and v_init.requires_grad)
        ),
    )
    out, v, count, per_neuron = compiled_loop(params)(x, inv_tau if tensor_tau else None, v_init)
    if count_after:
        counted = out.detach() if per_neuron is None else per_neuron.unsqueeze(0)  # a T-th of the data
        count = counted.sum(dim=(0, 2) if counted.dim() == 3 else 0).to(torch.int64)
    return LIFResult(out=out, v=v, spike_count=count, spikes_per_neuron=per_neuron)
