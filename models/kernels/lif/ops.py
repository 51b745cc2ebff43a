"""The Triton LIF kernels as ``torch.library`` custom ops: ``spikeserve::lif_forward`` and
``spikeserve::lif_backward``.

As custom ops with fake (meta) implementations they are single opaque nodes to ``torch.compile``
(no graph break, no retracing of the launcher) and plain kernel launches to CUDA-graph capture
(no host sync: 1/tau stays a device scalar, outputs are allocated by the op). Autograd is
registered on the forward op, so training through the fused kernels needs nothing else.

``multistep_lif_triton`` is the entry point the dispatcher (``__init__.py``) calls; it takes the
same keywords as ``reference.multistep_lif`` plus ``spike_dtype``.

No ``from __future__ import annotations`` here, and ``Optional`` rather than ``X | None``:
``torch.library`` reads the annotations to infer each op's schema, and older torch releases (the
GPU machines run 2.11) know only the ``typing`` spellings.
"""

# ruff: noqa: UP045

from typing import Any, Optional

import torch

from models.kernels.lif.reference import LIFResult

_EMPTY = (0,)
# Device scalars for the fixed 1/tau of LIF, so that a layer's forward allocates nothing for it.
_INV_TAU_CACHE: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _kernels() -> Any:
    # Imported on first use: importing triton decides, once per process, whether its kernels are
    # compiled or interpreted (TRITON_INTERPRET), and that must not happen as a side effect of
    # importing the neurons.
    from models.kernels.lif import triton as kernels

    return kernels


def _empty(like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    return like.new_empty(_EMPTY, dtype=dtype or like.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("spikeserve::lif_forward", mutates_args=())
def lif_forward(
    x: torch.Tensor,
    inv_tau: torch.Tensor,
    v_init: Optional[torch.Tensor],
    v_threshold: float,
    v_reset: Optional[float],
    decay_input: bool,
    detach_reset: bool,
    surrogate_alpha: float,
    analog_output: bool,
    return_v: bool,
    count_spikes: bool,
    save_h: bool,
    spike_uint8: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [T, B, F] -> (out [T, B, F], v [B, F] or empty, count [B] int64 or empty, h [T, B, F] or empty).

    ``detach_reset`` and ``surrogate_alpha`` only matter to the backward pass; they are arguments
    here so that autograd finds them among the op's inputs.
    """
    out, v_last, h, count = _kernels().lif_forward(
        x,
        inv_tau,
        v_threshold=v_threshold,
        v_reset=v_reset,
        decay_input=decay_input,
        analog_output=analog_output,
        v_init=v_init,
        return_v=return_v,
        save_h=save_h,
        count_spikes=count_spikes,
        spike_dtype=torch.uint8 if spike_uint8 else None,
    )
    compute = _compute_dtype(x.dtype)
    return (
        out,
        v_last if v_last is not None else _empty(x, compute),
        count if count is not None else _empty(x, torch.int64),
        h if h is not None else _empty(x, compute),
    )


@lif_forward.register_fake
def _lif_forward_fake(
    x, inv_tau, v_init, v_threshold, v_reset, decay_input, detach_reset, surrogate_alpha, analog_output,
    return_v, count_spikes, save_h, spike_uint8,
):  # fmt: skip
    steps, batch, features = x.shape
    compute = _compute_dtype(x.dtype)
    out_dtype = torch.uint8 if spike_uint8 and not analog_output else x.dtype
    return (
        x.new_empty((steps, batch, features), dtype=out_dtype),
        x.new_empty((batch, features) if return_v else _EMPTY, dtype=compute),
        x.new_empty((batch,) if count_spikes else _EMPTY, dtype=torch.int64),
        x.new_empty((steps, batch, features) if save_h else _EMPTY, dtype=compute),
    )


@torch.library.custom_op("spikeserve::lif_backward", mutates_args=())
def lif_backward(
    grad_out: torch.Tensor,
    grad_v: Optional[torch.Tensor],
    h: torch.Tensor,
    inv_tau: torch.Tensor,
    v_init: Optional[torch.Tensor],
    v_threshold: float,
    v_reset: Optional[float],
    decay_input: bool,
    detach_reset: bool,
    surrogate_alpha: float,
    analog_output: bool,
    need_grad_v_init: bool,
    need_grad_inv_tau: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (grad_x [T, B, F] in grad_out's dtype, grad_v_init [B, F] or empty, grad_inv_tau 0-d or empty)."""
    grad_x, grad_v0, grad_tau = _kernels().lif_backward(
        grad_out,
        grad_v,
        h,
        inv_tau,
        v_threshold=v_threshold,
        v_reset=v_reset,
        decay_input=decay_input,
        analog_output=analog_output,
        detach_reset=detach_reset,
        surrogate_alpha=surrogate_alpha,
        v_init=v_init,
        need_grad_v_init=need_grad_v_init,
        need_grad_inv_tau=need_grad_inv_tau,
    )
    return (
        grad_x,
        grad_v0 if grad_v0 is not None else _empty(h),
        grad_tau if grad_tau is not None else _empty(h),
    )


@lif_backward.register_fake
def _lif_backward_fake(
    grad_out, grad_v, h, inv_tau, v_init, v_threshold, v_reset, decay_input, detach_reset, surrogate_alpha,
    analog_output, need_grad_v_init, need_grad_inv_tau,
):  # fmt: skip
    steps, batch, features = h.shape
    return (
        grad_out.new_empty((steps, batch, features)),
        h.new_empty((batch, features) if need_grad_v_init else _EMPTY),
        h.new_empty(() if need_grad_inv_tau else _EMPTY),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    (x, inv_tau, v_init, v_threshold, v_reset, decay_input, detach_reset, alpha, analog, _return_v, _count,
     save_h, _uint8) = inputs  # fmt: skip
    _out, _v_last, count, h = output
    ctx.mark_non_differentiable(count, h)
    ctx.save_for_backward(h, inv_tau, v_init)
    ctx.params = (v_threshold, v_reset, decay_input, detach_reset, alpha, analog)
    ctx.saved_h = save_h
    ctx.x_dtype = x.dtype


def _backward(ctx: Any, grad_out, grad_v, _grad_count, _grad_h):  # type: ignore[no-untyped-def]
    if not ctx.saved_h:
        raise RuntimeError(
            "the LIF kernel ran without saving H (grad was off or no input required grad); "
            "run the forward with grad enabled to differentiate it"
        )
    h, inv_tau, v_init = ctx.saved_tensors
    v_threshold, v_reset, decay_input, detach_reset, alpha, analog = ctx.params
    need_x, need_tau, need_v0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if grad_out is None:
        grad_out = torch.zeros(h.shape, dtype=ctx.x_dtype, device=h.device)
    if grad_v is not None and grad_v.numel() == 0:
        grad_v = None
    grad_x, grad_v0, grad_tau = lif_backward(
        grad_out.to(ctx.x_dtype),
        grad_v,
        h,
        inv_tau,
        v_init,
        v_threshold,
        v_reset,
        decay_input,
        detach_reset,
        alpha,
        analog,
        need_v0,
        need_tau,
    )
    return (
        grad_x if need_x else None,
        grad_tau.to(inv_tau.dtype).reshape(inv_tau.shape) if need_tau else None,
        grad_v0.to(v_init.dtype) if need_v0 else None,
        *([None] * 10),
    )


torch.library.register_autograd("spikeserve::lif_forward", _backward, setup_context=_setup_context)


def _inv_tau_tensor(inv_tau: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(inv_tau, torch.Tensor):
        return inv_tau if inv_tau.device == x.device else inv_tau.to(x.device)
    dtype = _compute_dtype(x.dtype)
    if torch.compiler.is_compiling():  # a traced graph makes its own constant; the cache stays real
        return torch.full((), float(inv_tau), dtype=dtype, device=x.device)
    key = (float(inv_tau), dtype, x.device)
    cached = _INV_TAU_CACHE.get(key)
    if cached is None:
        cached = _INV_TAU_CACHE[key] = torch.full((), float(inv_tau), dtype=dtype, device=x.device)
    return cached


def multistep_lif_triton(
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
    spike_dtype: torch.dtype | None = None,
) -> LIFResult:
    """``reference.multistep_lif`` on the fused kernel. x: [T, B, F] -> LIFResult.

    spike_dtype: ``torch.uint8`` writes spikes as bytes (inference only: not differentiable);
    None writes them in x's dtype.
    """
    if spike_dtype not in (None, x.dtype, torch.uint8):
        raise ValueError(f"spike_dtype must be None, x's dtype or torch.uint8, not {spike_dtype}")
    tau_tensor = _inv_tau_tensor(inv_tau, x)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or tau_tensor.requires_grad or (v_init is not None and v_init.requires_grad)
    )
    out, v_last, count, _h = torch.ops.spikeserve.lif_forward(
        x,
        tau_tensor,
        v_init,
        float(v_threshold),
        None if v_reset is None else float(v_reset),
        decay_input,
        detach_reset,
        float(surrogate_alpha),
        analog_output,
        return_v,
        count_spikes,
        needs_grad,
        spike_dtype == torch.uint8,
    )
    return LIFResult(out=out, v=v_last if return_v else None, spike_count=count if count_spikes else None)
