"""Fused multi-step LIF/PLIF/LIAF in Triton: one launch covers all T steps of a layer.

Forward (``lif_forward``): reads x [T, B, F] (fp32, fp16, bf16 or fp64, any strides) once, keeps
the membrane in registers (float32; float64 for float64 input, so that gradients can be checked in
float64), and writes in the same pass:
- out [T, B, F]: spikes in x's dtype (or uint8 on request), or ReLU(H) for LIAF;
- v [B, F]: the final membrane, only when asked (streaming);
- h [T, B, F]: the charged membrane H, only when a backward pass will need it;
- count [B] int64: each sample's spikes, one atomic add per program (telemetry at no extra pass).
1/tau is read from a device scalar, so PLIF (1/tau = sigmoid(w)) never syncs with the host.

Backward (``lif_backward``): walks t = T-1 .. 0 over the saved H with the sigmoid surrogate and
returns dL/dx, dL/dV_init and dL/d(1/tau) (per-program partial sums, reduced by the caller).

The semantics are those of ``reference.py``, operation for operation, so float32 spikes, final V
and counts match it exactly; floating-point contraction is switched off (an FMA would round
H differently from PyTorch and move spikes sitting exactly at the threshold).

These functions launch kernels and know nothing of autograd: ``ops.py`` wraps them as
``torch.library`` custom ops. Under ``TRITON_INTERPRET=1`` (set before triton is imported) they
run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Programs of the interpreter run one after another in Python: fewer, wider tiles keep it fast.
_INTERPRET_TILE = 1 << 14
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class LaunchConfig:
    """A program's tile, ``rows`` samples x ``block`` features, and its warps.

    ``for_shape`` picks them; benches override. Wide layers get one sample a program and ``block``
    features; narrow ones (F of 1 to 64, a classifier or a small head) stack several samples in one
    tile, so a program still moves about a thousand elements instead of a handful. The grid is
    flat (programs = row tiles x feature tiles), so any batch size runs in one launch.
    """

    block: int
    num_warps: int
    rows: int = 1

    @staticmethod
    def for_shape(batch: int, features: int, element_size: int) -> LaunchConfig:
        # 8 elements a thread on a GPU: 16-byte loads for 16-bit inputs, two for float32.
        tile = _INTERPRET_TILE if interpreting() else (2048 if element_size <= 2 else 1024)
        block = min(triton.next_power_of_2(max(features, 1)), tile)
        rows = min(max(1, tile // block), triton.next_power_of_2(max(batch, 1)))
        if interpreting():
            return LaunchConfig(block, 1, rows)
        return LaunchConfig(block, max(1, min(8, rows * block // 256)), rows)

    def programs(self, batch: int, features: int) -> tuple[int, int]:
        """(row tiles, feature tiles) of a [B, F] problem."""
        return triton.cdiv(batch, self.rows), triton.cdiv(features, self.block)


def _compute_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _compute_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _lif_fwd_kernel(
    p_x,
    p_out,
    p_v0,
    p_v_last,
    p_h,
    p_count,
    p_inv_tau,
    v_threshold,
    v_rest,
    n_batch,
    n_feat,
    stride_xt,
    stride_xb,
    stride_xf,
    stride_vb,
    stride_vf,
    T: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    COMPUTE: tl.constexpr,
    SOFT_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    ANALOG: tl.constexpr,
    HAS_V0: tl.constexpr,
    STORE_V: tl.constexpr,
    STORE_H: tl.constexpr,
    COUNT: tl.constexpr,
):
    # One program: a tile of ROWS samples x BLOCK features, all T steps. The grid is flat.
    i_p = tl.program_id(0)
    n_f_tiles = tl.cdiv(n_feat, BLOCK)
    i_b, i_f = i_p // n_f_tiles, i_p % n_f_tiles
    o_b = (i_b * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    o_f = (i_f * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m_b = o_b < n_batch
    m = m_b[:, None] & (o_f < n_feat)[None, :]
    # [] scalar 1/tau
    b_k = tl.load(p_inv_tau).to(COMPUTE)
    if HAS_V0:
        # [ROWS, BLOCK] initial membrane of these samples
        p_v0_tile = p_v0 + o_b[:, None] * stride_vb + o_f[None, :] * stride_vf
        b_v = tl.load(p_v0_tile, mask=m, other=0.0).to(COMPUTE)
    else:
        b_v = tl.zeros([ROWS, BLOCK], dtype=COMPUTE) + v_rest
    b_count = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    p_x_tile = p_x + o_b[:, None] * stride_xb + o_f[None, :] * stride_xf
    o_tile = o_b[:, None] * n_feat + o_f[None, :]  # [ROWS, BLOCK] offsets in a [B, F] plane
    for t in tl.static_range(T):
        # [ROWS, BLOCK] input of step t
        b_x = tl.load(p_x_tile + t * stride_xt, mask=m, other=0.0).to(COMPUTE)
        # H[t], in the reference's order of operations (bit-exact in float32)
        if DECAY_INPUT:  # one branch is compiled; a ternary would read worse
            b_h = b_v + (b_x - (b_v - v_rest)) * b_k
        else:
            b_h = b_v - (b_v - v_rest) * b_k + b_x
        b_fire = b_h >= v_threshold
        o_out = t * n_batch * n_feat + o_tile
        b_out = tl.maximum(b_h, 0.0) if ANALOG else b_fire.to(COMPUTE)
        tl.store(p_out + o_out, b_out.to(p_out.dtype.element_ty), mask=m)
        if STORE_H:
            tl.store(p_h + o_out, b_h, mask=m)
        if COUNT:
            b_count += (b_fire & m).to(tl.int32)
        b_v = b_h - v_threshold * b_fire.to(COMPUTE) if SOFT_RESET else tl.where(b_fire, v_rest, b_h)
    if STORE_V:
        tl.store(p_v_last + o_tile, b_v, mask=m)
    if COUNT:
        # one atomic add per sample of the tile
        tl.atomic_add(p_count + o_b, tl.sum(b_count, axis=1).to(tl.int64), mask=m_b)


@triton.jit
def _lif_bwd_kernel(
    p_grad_out,
    p_grad_v_last,
    p_h,
    p_v0,
    p_inv_tau,
    p_grad_x,
    p_grad_v0,
    p_grad_tau,
    v_threshold,
    v_rest,
    alpha,
    n_batch,
    n_feat,
    stride_gt,
    stride_gb,
    stride_gf,
    stride_lb,
    stride_lf,
    stride_vb,
    stride_vf,
    T: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    COMPUTE: tl.constexpr,
    SOFT_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    ANALOG: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_V0: tl.constexpr,
    HAS_GRAD_V: tl.constexpr,
    STORE_GRAD_V0: tl.constexpr,
    GRAD_TAU: tl.constexpr,
):
    # The forward's tiling: ROWS samples x BLOCK features a program, on a flat grid.
    i_p = tl.program_id(0)
    n_f_tiles = tl.cdiv(n_feat, BLOCK)
    i_b, i_f = i_p // n_f_tiles, i_p % n_f_tiles
    o_b = (i_b * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    o_f = (i_f * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = (o_b < n_batch)[:, None] & (o_f < n_feat)[None, :]
    o_tile = o_b[:, None] * n_feat + o_f[None, :]  # [ROWS, BLOCK] offsets in a [B, F] plane
    plane = n_batch * n_feat
    b_k = tl.load(p_inv_tau).to(COMPUTE)
    if HAS_V0:
        p_v0_tile = p_v0 + o_b[:, None] * stride_vb + o_f[None, :] * stride_vf
        b_v0 = tl.load(p_v0_tile, mask=m, other=0.0).to(COMPUTE)
    else:
        b_v0 = tl.zeros([ROWS, BLOCK], dtype=COMPUTE) + v_rest
    # dL/dV[t] flowing back from step t+1 (from the final-V gradient at t = T-1)
    if HAS_GRAD_V:
        p_last_tile = p_grad_v_last + o_b[:, None] * stride_lb + o_f[None, :] * stride_lf
        b_carry = tl.load(p_last_tile, mask=m, other=0.0).to(COMPUTE)
    else:
        b_carry = tl.zeros([ROWS, BLOCK], dtype=COMPUTE)
    b_grad_k = tl.zeros([ROWS, BLOCK], dtype=COMPUTE)
    # [ROWS, BLOCK] H[T-1]; each step loads H[t-1] once and hands it on as the next step's H[t]
    b_h = tl.load(p_h + (T - 1) * plane + o_tile, mask=m, other=0.0)
    # Both names live outside the branches below, so that the kernel compiles whether the
    # compiler treats `t > 0` as a constant (unrolled loop) or as a run-time branch.
    b_h_prev = b_h
    b_v_prev = b_v0
    p_grad_out_tile = p_grad_out + o_b[:, None] * stride_gb + o_f[None, :] * stride_gf
    for i in tl.static_range(T):
        t = T - 1 - i
        b_v_prev = b_v0
        if t > 0:
            b_h_prev = tl.load(p_h + (t - 1) * plane + o_tile, mask=m, other=0.0)
            if SOFT_RESET:
                b_v_prev = b_h_prev - v_threshold * (b_h_prev >= v_threshold).to(COMPUTE)
            else:
                b_v_prev = tl.where(b_h_prev >= v_threshold, v_rest, b_h_prev)
        b_sig = tl.sigmoid(alpha * (b_h - v_threshold))
        b_surrogate = alpha * b_sig * (1.0 - b_sig)
        # dV[t]/dH[t] through the reset
        if SOFT_RESET:
            if DETACH_RESET:
                b_dv_dh = tl.zeros([ROWS, BLOCK], dtype=COMPUTE) + 1.0
            else:
                b_dv_dh = 1.0 - v_threshold * b_surrogate
        else:
            b_dv_dh = tl.where(b_h >= v_threshold, 0.0, 1.0).to(COMPUTE)
            if not DETACH_RESET:
                b_dv_dh += (v_rest - b_h) * b_surrogate
        # [ROWS, BLOCK] dL/dout[t]
        b_grad_out = tl.load(p_grad_out_tile + t * stride_gt, mask=m, other=0.0).to(COMPUTE)
        b_grad_h = tl.where(b_h > 0.0, b_grad_out, 0.0) if ANALOG else b_grad_out * b_surrogate
        b_grad_h += b_carry * b_dv_dh
        if DECAY_INPUT:
            b_grad_x = b_grad_h * b_k
            if GRAD_TAU:
                # dH/dk = X - (V[t-1] - V_rest) = (H - V[t-1]) / k: no second read of x
                b_grad_k += b_grad_h * ((b_h - b_v_prev) / b_k)
        else:
            b_grad_x = b_grad_h
            if GRAD_TAU:
                b_grad_k -= b_grad_h * (b_v_prev - v_rest)
        tl.store(p_grad_x + t * plane + o_tile, b_grad_x.to(p_grad_x.dtype.element_ty), mask=m)
        b_carry = b_grad_h * (1.0 - b_k)
        if t > 0:
            b_h = b_h_prev
    if STORE_GRAD_V0:
        tl.store(p_grad_v0 + o_tile, b_carry, mask=m)
    if GRAD_TAU:
        # one partial sum per program, reduced by the caller
        tl.store(p_grad_tau + i_p, tl.sum(tl.sum(b_grad_k, axis=1), axis=0))


def interpreting() -> bool:
    """True when the kernels were built by triton's interpreter (TRITON_INTERPRET=1 before import):
    they then run on CPU tensors, and only on them."""
    return type(_lif_fwd_kernel).__name__ == "InterpretedFunction"


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"the LIF kernel takes x: [T, B, F], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the LIF kernel takes float32, float16, bfloat16 or float64 input, not {x.dtype}")
    if x.device.type == "cpu" and not interpreting():
        raise RuntimeError("the LIF kernel runs on CPU tensors only under TRITON_INTERPRET=1")


def _rest(v_reset: float | None) -> float:
    """V_rest of the charge equation: V_reset for a hard reset (which also resets to it), 0 for soft."""
    return 0.0 if v_reset is None else float(v_reset)


def lif_forward(
    x: torch.Tensor,
    inv_tau: torch.Tensor,
    *,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    analog_output: bool = False,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    save_h: bool = False,
    count_spikes: bool = False,
    spike_dtype: torch.dtype | None = None,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Run the forward kernel. x: [T, B, F]; inv_tau: 0-d tensor on x's device.

    v_init: [B, F] (any float dtype and strides). spike_dtype: dtype of the spikes (x's by default;
    ``torch.uint8`` halves the bytes written for 16-bit inputs); ignored for analog output.
    Returns (out [T, B, F] contiguous, v [B, F] or None, h [T, B, F] or None, count [B] int64 or None);
    v and h are float32 (float64 for float64 x).
    """
    _check_input(x)
    steps, batch, features = x.shape
    compute = _compute_torch_dtype(x.dtype)
    out_dtype = x.dtype if analog_output or spike_dtype is None else spike_dtype
    out = torch.empty((steps, batch, features), dtype=out_dtype, device=x.device)
    v_last = torch.empty((batch, features), dtype=compute, device=x.device) if return_v else None
    h = torch.empty((steps, batch, features), dtype=compute, device=x.device) if save_h else None
    count = torch.zeros(batch, dtype=torch.int64, device=x.device) if count_spikes else None
    if steps == 0 or batch == 0 or features == 0:
        if v_last is not None:
            v_last.copy_(v_init if v_init is not None else torch.full_like(v_last, _rest(v_reset)))
        return out, v_last, h, count
    if v_init is not None and tuple(v_init.shape) != (batch, features):
        raise ValueError(f"v_init must be [B, F] = {(batch, features)}, got {tuple(v_init.shape)}")
    cfg = config or LaunchConfig.for_shape(batch, features, x.element_size())
    row_tiles, feature_tiles = cfg.programs(batch, features)
    # Unused pointers still need a tensor argument; x stands in for them.
    _lif_fwd_kernel[(row_tiles * feature_tiles,)](
        x,
        out,
        v_init if v_init is not None else x,
        v_last if v_last is not None else x,
        h if h is not None else x,
        count if count is not None else x,
        inv_tau,
        float(v_threshold),
        _rest(v_reset),
        batch,
        features,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        v_init.stride(0) if v_init is not None else 0,
        v_init.stride(1) if v_init is not None else 0,
        T=steps,
        BLOCK=cfg.block,
        ROWS=cfg.rows,
        COMPUTE=_compute_dtype(x.dtype),
        SOFT_RESET=v_reset is None,
        DECAY_INPUT=decay_input,
        ANALOG=analog_output,
        HAS_V0=v_init is not None,
        STORE_V=return_v,
        STORE_H=save_h,
        COUNT=count_spikes,
        num_warps=cfg.num_warps,
        enable_fp_fusion=False,
    )
    return out, v_last, h, count


def lif_backward(
    grad_out: torch.Tensor,
    grad_v: torch.Tensor | None,
    h: torch.Tensor,
    inv_tau: torch.Tensor,
    *,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    analog_output: bool = False,
    detach_reset: bool = True,
    surrogate_alpha: float = 4.0,
    v_init: torch.Tensor | None = None,
    grad_dtype: torch.dtype | None = None,
    need_grad_v_init: bool = False,
    need_grad_inv_tau: bool = False,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run the backward kernel. grad_out: [T, B, F] (any strides); grad_v: [B, F] or None; h: [T, B, F]
    saved by ``lif_forward``. Returns (grad_x [T, B, F] in ``grad_dtype`` (grad_out's by default),
    grad_v_init [B, F] or None, grad_inv_tau 0-d or None), the last two in h's dtype.
    """
    steps, batch, features = h.shape
    if tuple(grad_out.shape) != (steps, batch, features):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} does not match h {tuple(h.shape)}")
    h = h.contiguous()
    compute = h.dtype
    grad_x = torch.empty((steps, batch, features), dtype=grad_dtype or grad_out.dtype, device=h.device)
    grad_v0 = torch.empty((batch, features), dtype=compute, device=h.device) if need_grad_v_init else None
    if steps == 0 or batch == 0 or features == 0:
        zero_tau = torch.zeros((), dtype=compute, device=h.device) if need_grad_inv_tau else None
        if grad_v0 is not None:
            grad_v0.copy_(grad_v if grad_v is not None else torch.zeros_like(grad_v0))
        return grad_x, grad_v0, zero_tau
    cfg = config or LaunchConfig.for_shape(batch, features, grad_out.element_size())
    row_tiles, feature_tiles = cfg.programs(batch, features)
    programs = row_tiles * feature_tiles
    grad_tau = torch.empty(programs, dtype=compute, device=h.device) if need_grad_inv_tau else None
    _lif_bwd_kernel[(programs,)](
        grad_out,
        grad_v if grad_v is not None else h,
        h,
        v_init if v_init is not None else h,
        inv_tau,
        grad_x,
        grad_v0 if grad_v0 is not None else h,
        grad_tau if grad_tau is not None else h,
        float(v_threshold),
        _rest(v_reset),
        float(surrogate_alpha),
        batch,
        features,
        grad_out.stride(0),
        grad_out.stride(1),
        grad_out.stride(2),
        grad_v.stride(0) if grad_v is not None else 0,
        grad_v.stride(1) if grad_v is not None else 0,
        v_init.stride(0) if v_init is not None else 0,
        v_init.stride(1) if v_init is not None else 0,
        T=steps,
        BLOCK=cfg.block,
        ROWS=cfg.rows,
        COMPUTE=_compute_dtype(compute),
        SOFT_RESET=v_reset is None,
        DECAY_INPUT=decay_input,
        ANALOG=analog_output,
        DETACH_RESET=detach_reset,
        HAS_V0=v_init is not None,
        HAS_GRAD_V=grad_v is not None,
        STORE_GRAD_V0=need_grad_v_init,
        GRAD_TAU=need_grad_inv_tau,
        num_warps=cfg.num_warps,
        enable_fp_fusion=False,
    )
    return grad_x, grad_v0, None if grad_tau is None else grad_tau.sum()
