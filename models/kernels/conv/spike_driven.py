"""A conv whose work follows its input's events: ``spike_driven.c``, for spike-fed convs on a CPU.

Where a served network's conv is fed by spikes (``analog_input=False``: the output of a neuron),
most of its input is zero, and the dense product multiplies those zeros like any other value.
``conv2d`` adds only the weight rows of the non-zero inputs, so its cost follows the synaptic
operations the telemetry counts: on the zoo's networks 2.3x (danet-mnist) to 6.6x (danet-nmnist)
less time in their spike-fed convs than oneDNN's dense kernels (docs/PERFORMANCE.md). The result
equals the dense conv's within float32 rounding (the same sums in another order). An input denser
than ``break_even_density`` (a network that fires much more than the zoo's) gets the dense conv.

It runs where it can run for free: float32 CPU tensors without autograd, laid out channels_last
(the CPU default of ``models.optimize``: the NHWC view it reads is then no copy), a plain conv
(zero padding, no dilation, no groups), and the native library built (``models.kernels.lif.native``).
``runs(conv, x)`` says whether it applies; ``conv2d`` is the product.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.kernels.lif.native import library, unavailable_reason

# the weights reordered [KH, KW, C_in, C_out] (a row of C_out per input channel and offset), kept on
# the conv with the version of the weight they were made from
_PACKED_ATTRIBUTE = "_spike_conv_weights"


def available() -> bool:
    """Whether the native library (and so this conv) can run here."""
    return unavailable_reason(torch.device("cpu")) is None


def runs(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv2d(conv, x)`` applies to x: [N, C_in, H, W]."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and conv.weight.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        and not torch.compiler.is_compiling()
    )


def _packed(conv: nn.Conv2d) -> torch.Tensor:
    weight = conv.weight
    key = (weight.data_ptr(), weight._version)
    kept = conv.__dict__.get(_PACKED_ATTRIBUTE)
    if kept is None or kept[0] != key:
        kept = (key, weight.detach().permute(2, 3, 1, 0).contiguous())
        conv.__dict__[_PACKED_ATTRIBUTE] = kept
    return kept[1]


def break_even_density(conv: nn.Conv2d) -> float:
    """The input density past which the dense product is the quicker (measured on this kind of CPU,
    docs/PERFORMANCE.md): about a sixth for up to 32 outputs, whose weight rows are one or two
    vectors, a quarter for wider ones. Below it the event-driven sum wins by 1.0-4.6x."""
    return 0.15 if conv.out_channels <= 32 else 0.25


def conv2d(conv: nn.Conv2d, x: torch.Tensor, max_density: float | None = None) -> torch.Tensor:
    """conv(x) for x: [N, C_in, H, W] channels_last (see ``runs``) -> [N, C_out, HO, WO] channels_last:
    event-driven while x is at most ``max_density`` non-zero (default ``break_even_density``),
    else torch's dense conv."""
    n, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    if out_h <= 0 or out_w <= 0:  # a map smaller than the kernel: torch's own conv says so
        return _dense(conv, x)
    weights = _packed(conv)
    bias = None if conv.bias is None else conv.bias.detach().contiguous()
    y = torch.empty((n, out_h, out_w, conv.out_channels), dtype=torch.float32)
    density = break_even_density(conv) if max_density is None else max_density
    masks = torch.empty(n * height * width * ((channels + 63) // 64), dtype=torch.int64)
    if y.numel():
        too_dense = library().spikeserve_spike_conv2d_f32(
            x.permute(0, 2, 3, 1).data_ptr(),  # the NHWC memory of a channels_last map
            weights.data_ptr(),
            None if bias is None else bias.data_ptr(),
            y.data_ptr(),
            n,
            height,
            width,
            channels,
            conv.out_channels,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            out_h,
            out_w,
            masks.data_ptr(),
            int(density * x.numel()),
        )
        if too_dense:
            return _dense(conv, x)
    return y.permute(0, 3, 1, 2)


def _dense(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's own dense product (nn.Conv2d's, whatever subclass ``conv`` is)."""
    return nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)
