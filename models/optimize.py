"""Prepare a spiking network for inference on a device, keeping its telemetry.

``optimize_for_inference(model, device, ...)`` applies, in this order, and reports each choice:
1. BN folding: a BatchNorm in eval mode whose only input is a Conv2d's output (or a SeqLinear's,
   into a SeqBatchNorm1d), that output used nowhere else, is folded into the conv's weight and
   bias and replaced by Identity. The dataflow is read from a torch.fx trace in which neurons
   and the Seq* layers are leaves; a module fx cannot trace is searched one level down.
2. dtype (bf16/fp16 on a GPU): the network is cast; the neurons' own parameters stay float32
   (PLIF's w), and the neurons compute in float32 whatever their input.
3. The fused neuron backend: ``auto`` is measured per device (models.kernels.lif).
4. channels_last: on a CPU, on for every network with a convolution (oneDNN's kernels read NHWC
   directly: the zoo's networks ran 1.0-1.16x faster on the inputs they serve; the neurons keep
   the layout, see ``models.neurons``); on a GPU kept where it pays, measured on ``example_input``.
   Then, on a CPU with the native library built, the convs fed by spikes (``analog_input=False``)
   become spike-driven (``models.kernels.conv.spike_driven``): they add only their events'
   weights (1.7-2.3x on the DANets, docs/PERFORMANCE.md).
5. torch.compile: kept where it pays, measured on ``example_input`` (on a CPU not tried unless
   asked: compiling a network on a few cores takes minutes).
6. CUDA graphs, captured lazily per (batch-size bucket, input shape, telemetry on/off). A batch
   is padded to its bucket; telemetry survives replay because the capture records each layer's
   report into a tape of device tensors, which the replay hands to the caller's recorder.

Telemetry (``models.telemetry.record(result.model)``) names layers exactly as in the original
network: ``result.model`` is the same module, changed in place; compiled code is kept beside it.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from models import telemetry
from models.base import reset_state, set_backend, spiking_layers
from models.kernels.conv import spike_driven as spike_driven_conv
from models.kernels.lif import COMPILING_BACKENDS, eager_neurons, resolve_backend
from models.layers import SeqBatchNorm1d, SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqToANN
from models.neurons import MultiStepNeuron
from models.synaptic_ops import SynapticOps

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_LEAVES = (MultiStepNeuron, SeqConv2d, SeqLinear, SeqBatchNorm2d, SeqBatchNorm1d, SeqToANN)
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class OptimizeReport:
    """What ``optimize_for_inference`` did, and the timings (ms, median) its choices rest on."""

    device: str
    dtype: str
    neuron_backend: str
    folded_batchnorms: list[str] = field(default_factory=list)
    channels_last: bool = False
    spike_driven_convs: list[str] = field(default_factory=list)
    compiled: bool = False
    cuda_graphs: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, _LEAVES) or super().is_leaf_module(module, qualname)


def _can_fold(producer: nn.Module, norm: nn.Module) -> bool:
    if isinstance(producer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
        width = producer.out_channels
    elif isinstance(producer, SeqLinear) and isinstance(norm, SeqBatchNorm1d):
        width = producer.out_features  # SeqBatchNorm1d normalises the last axis, which SeqLinear writes
    else:
        return False
    return not norm.training and norm.running_mean is not None and norm.num_features == width


def foldable_pairs(root: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """(producer, batchnorm) qualified names whose folding leaves ``root``'s function unchanged."""
    if isinstance(root, _LEAVES):
        return []
    try:
        graph = _LeafTracer().trace(root)
    except Exception:  # data-dependent Python in forward: look inside the children instead
        return [
            pair
            for name, child in root.named_children()
            for pair in foldable_pairs(child, f"{prefix}{name}.")
        ]
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        if calls[node.target] != 1 or calls[source.target] != 1:  # a shared module: fold nothing
            continue
        if _can_fold(root.get_submodule(source.target), root.get_submodule(node.target)):
            pairs.append((f"{prefix}{source.target}", f"{prefix}{node.target}"))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every foldable BatchNorm into its producer, in place; returns the folded BNs' names."""
    folded = []
    for producer_name, norm_name in foldable_pairs(model):
        producer, norm = model.get_submodule(producer_name), model.get_submodule(norm_name)
        weight = producer.weight.double()
        scale = norm.running_var.double().add(norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        bias = producer.bias.double() if producer.bias is not None else torch.zeros_like(shift)
        producer.weight.copy_(weight * scale.reshape(-1, *([1] * (weight.dim() - 1))))
        producer.bias = nn.Parameter((bias * scale + shift).to(producer.weight.dtype), requires_grad=False)
        parent_name, _, child = norm_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, nn.Identity())
        folded.append(norm_name)
    return folded


def _time_ms(forward: Forward, x: torch.Tensor, repeats: int = 10) -> float:
    """Median milliseconds of ``forward(x)`` after two warm-up runs (compilation, autotuning)."""
    cuda = x.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(2):
            forward(x)
        samples = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward(x)
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                forward(x)
                samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


@dataclass
class _Capture:
    graph: torch.cuda.CUDAGraph
    static_x: torch.Tensor  # [T, bucket, ...]
    static_out: torch.Tensor  # [bucket, classes]
    tape: list[tuple[str, nn.Module, tuple[Any, ...]]]


class _Tape(telemetry.TelemetryRecorder):
    """Records the layers' telemetry calls during a capture; their tensors are the graph's outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls: list[tuple[str, nn.Module, tuple[Any, ...]]] = []

    def record_spikes(
        self, module: nn.Module, spikes_per_sample: torch.Tensor, neurons: int, time_steps: int
    ) -> None:
        self.calls.append(("spikes", module, (spikes_per_sample, neurons, time_steps)))

    def record_synapse(
        self, module: nn.Module, macs_per_step: int, time_steps: int, synaptic_ops: SynapticOps | None
    ) -> None:
        self.calls.append(("synapse", module, (macs_per_step, time_steps, synaptic_ops)))


def _replay_tape(tape: list[tuple[str, nn.Module, tuple[Any, ...]]], recorder: Any, batch: int) -> None:
    for kind, module, args in tape:
        if kind == "spikes":
            spikes, neurons, time_steps = args
            recorder.record_spikes(module, spikes[:batch].clone(), neurons, time_steps)
        else:
            macs, time_steps, synaptic_ops = args
            recorder.record_synapse(
                module, macs, time_steps, None if synaptic_ops is None else synaptic_ops.first(batch)
            )


class InferenceModel:
    """The optimized network: ``model(x: [T, B, C, H, W]) -> logits [B, classes]``, graphs replayed.

    ``model`` is the (changed in place) network: reset it, or give it to ``telemetry.record``.
    Calls are serialised: captured graphs share static buffers.
    """

    def __init__(
        self, model: nn.Module, report: OptimizeReport, compiled: Forward | None, buckets: Sequence[int]
    ):
        self.model = model
        self.report = report
        self._compiled = compiled
        self._buckets = tuple(sorted(buckets))
        self._captures: dict[tuple[Any, ...], _Capture] = {}
        self._pool = torch.cuda.graph_pool_handle() if report.cuda_graphs else None
        self._lock = threading.Lock()
        self._device = torch.device(report.device)
        self._dtype = getattr(torch, report.dtype)

    def reset_state(self) -> None:
        reset_state(self.model)

    def _forward(self, x: torch.Tensor, recording: bool) -> torch.Tensor:
        # Compiled code is traced with telemetry off; with a recorder the eager network runs.
        return self._compiled(x) if self._compiled is not None and not recording else self.model(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self._device, dtype=self._dtype, non_blocking=True)
        recorder = telemetry.current_recorder()
        bucket = next((b for b in self._buckets if b >= x.shape[1]), None)
        if not self.report.cuda_graphs or bucket is None:
            # Nothing shared between calls here (the neurons start each forward from rest and the
            # recorder is the caller's): batches in several threads run side by side.
            with torch.inference_mode():
                return self._forward(x, recorder is not None)
        with self._lock, torch.inference_mode():
            key = (x.shape[0], bucket, tuple(x.shape[2:]), recorder is not None)
            capture = self._captures.get(key) or self._capture(key, x, recorder is not None)
            batch = x.shape[1]
            capture.static_x[:, :batch].copy_(x)
            capture.static_x[:, batch:].zero_()  # padding rows: deterministic, and never NaN
            capture.graph.replay()
            if recorder is not None:
                _replay_tape(capture.tape, recorder, batch)
            return capture.static_out[:batch].clone()

    def _capture(self, key: tuple[Any, ...], x: torch.Tensor, recording: bool) -> _Capture:
        steps, bucket = key[0], key[1]
        static_x = torch.zeros((steps, bucket, *x.shape[2:]), dtype=x.dtype, device=x.device)
        static_x[:, : x.shape[1]].copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                with telemetry.activate(_Tape(self.model)) if recording else contextlib.nullcontext():
                    self._forward(static_x, recording)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph, tape = torch.cuda.CUDAGraph(), _Tape(self.model)
        taping = telemetry.activate(tape) if recording else contextlib.nullcontext()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"), taping:
            static_out = self._forward(static_x, recording)
        capture = self._captures[key] = _Capture(graph, static_x, static_out, tape.calls)
        return capture

    def run_eager(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [T, B, C, H, W] -> logits [B, classes]`` with no compiled code, no graph and the neurons
        on the torch backend: nothing to build at a new T, so it never waits for a compilation.

        Takes no lock: in inference the network holds no state between calls (neurons start each
        forward from rest), so it may run beside a replay, or beside ``prepare`` compiling another T.
        """
        x = x.to(device=self._device, dtype=self._dtype, non_blocking=True)
        with torch.inference_mode(), eager_neurons():
            return self.model(x)

    def needs_preparation(self) -> bool:
        """Whether the first call at a new T compiles or captures something (and so takes long)."""
        compiles_neurons = self.report.neuron_backend in COMPILING_BACKENDS
        return self._compiled is not None or self.report.cuda_graphs or compiles_neurons

    def prepare(self, time_steps: int, sample_shape: Sequence[int]) -> None:
        """Compile, then capture, everything a call at ``time_steps`` will use (any thread).

        Compilation runs outside the call lock, so this model keeps answering the T values it is
        prepared for meanwhile; only each graph capture (compiled code already built) takes it.
        """
        for batch in self._buckets:
            x = torch.zeros((time_steps, batch, *sample_shape), dtype=self._dtype, device=self._device)
            with torch.inference_mode():
                self._forward(x, False)
                with telemetry.record(self.model):
                    self._forward(x, True)
            reset_state(self.model)
            if not self.report.cuda_graphs:
                break  # without graphs, shapes other than T share the compiled code
        if self.report.cuda_graphs:
            self.warm_up(time_steps, sample_shape)

    def warm_up(
        self, time_steps: int, sample_shape: Sequence[int], batch_sizes: Sequence[int] | None = None
    ) -> None:
        """Capture (or compile) ahead of traffic for each batch size, with and without telemetry."""
        for batch in batch_sizes or self._buckets:
            x = torch.zeros((time_steps, batch, *sample_shape), dtype=self._dtype, device=self._device)
            self(x)
            with telemetry.record(self.model):
                self(x)


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def optimize_for_inference(
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    example_input: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    fold_bn: bool = True,
    channels_last: bool | None = None,
    spike_driven: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    batch_buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> InferenceModel:
    """Prepare ``model`` (changed in place, put in eval mode) for inference on ``device``.

    example_input: [T, B, C, H, W], needed to measure channels_last and compile (``None`` = measure
    on a GPU when an example is given, else off; channels_last ``None`` on a CPU = on where the
    network has a convolution); spike_driven: None = on a CPU where the native library builds
    (it runs in channels_last networks); dtype: None = bf16 on a GPU (fp16 without bf16),
    float32 on a CPU; cuda_graphs: None = on for CUDA unless a neuron is streaming.
    """
    device = torch.device(device)
    dtype = dtype or _default_dtype(device)
    model.eval()
    folded = fold_batchnorm(model) if fold_bn else []
    model.to(device=device, dtype=dtype)
    for neuron in spiking_layers(model):
        neuron.float()  # PLIF's w keeps its precision; the neurons compute in float32 anyway
    neuron_backend = resolve_backend(backend, device)
    set_backend(model, neuron_backend)
    report = OptimizeReport(str(device), str(dtype).removeprefix("torch."), neuron_backend, folded)
    x = None if example_input is None else example_input.to(device=device, dtype=dtype)
    measure = x is not None and device.type == "cuda"
    if channels_last is None and device.type == "cpu":
        channels_last = any(isinstance(module, nn.Conv2d) for module in model.modules())

    if channels_last or (channels_last is None and measure):
        if channels_last is None and x is not None:
            report.timings_ms["contiguous"] = _time_ms(model, x)
            model.to(memory_format=torch.channels_last)
            report.timings_ms["channels_last"] = _time_ms(model, x)
            channels_last = report.timings_ms["channels_last"] < report.timings_ms["contiguous"]
            if not channels_last:
                model.to(memory_format=torch.contiguous_format)
        else:
            model.to(memory_format=torch.channels_last)
        report.channels_last = bool(channels_last)
    if spike_driven is None:
        spike_driven = device.type == "cpu" and dtype == torch.float32 and spike_driven_conv.available()
    for name, module in model.named_modules():
        if isinstance(module, SeqConv2d):
            module.spike_driven = bool(spike_driven) and module.analog_input is False
            if module.spike_driven:
                report.spike_driven_convs.append(name)

    compiled = None
    if compile or (compile is None and measure):
        compiled = torch.compile(model)
        if compile is None and x is not None:
            report.timings_ms["eager"] = _time_ms(model, x)
            report.timings_ms["compiled"] = _time_ms(compiled, x)
            if report.timings_ms["compiled"] >= report.timings_ms["eager"]:
                compiled = None
        reset_state(model)
    report.compiled = compiled is not None

    streaming = any(neuron.streaming for neuron in spiking_layers(model))
    report.cuda_graphs = device.type == "cuda" and not streaming and cuda_graphs is not False
    if cuda_graphs and not report.cuda_graphs:
        raise ValueError("CUDA graphs need a CUDA device and no streaming neuron")
    return InferenceModel(model, report, compiled, batch_buckets)
