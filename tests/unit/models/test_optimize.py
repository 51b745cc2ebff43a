"""models/optimize.py: BN folding, the inference wrapper, and (gpu) graphs, SDPA and compilation.

The network under test is a small DANet-like net built from models/layers.py and the neurons:
an analog stem conv + BN, a residual stage whose branch is [LIF -> conv -> BN] twice, a strided
1x1 projection + BN on the real-valued sum, and a spiking head.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn

from models import telemetry
from models.base import SpikingModel
from models.layers import SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqToANN
from models.neurons import LIF, PLIF, neuron_factory
from models.optimize import fold_batchnorm, foldable_pairs, optimize_for_inference


class TinyDANet(SpikingModel):
    """x: [T, B, 2, 16, 16] -> logits [B, 10]."""

    def __init__(self, backend: str = "torch") -> None:
        super().__init__()
        self.stem = nn.Sequential(
            SeqConv2d(2, 8, 3, padding=1, bias=False, analog_input=True), SeqBatchNorm2d(8)
        )
        self.branch1 = nn.Sequential(
            LIF(backend=backend), SeqConv2d(8, 8, 3, padding=1, bias=False), SeqBatchNorm2d(8)
        )
        self.branch2 = nn.Sequential(PLIF(backend=backend), SeqConv2d(8, 8, 3, padding=1), SeqBatchNorm2d(8))
        self.project = SeqConv2d(8, 16, 1, stride=2, bias=False, analog_input=True)
        self.project_bn = SeqBatchNorm2d(16)
        self.head_neuron = LIF(backend=backend)
        self.pool = SeqToANN(nn.AdaptiveAvgPool2d(1))
        self.fc = SeqLinear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        s = s + self.branch1(s)
        s = s + self.branch2(s)
        s = self.project_bn(self.project(s))
        features = self.pool(self.head_neuron(s)).flatten(2)
        return self.fc(features).mean(0)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def net_and_input(backend: str = "torch", dtype: torch.dtype = torch.float32, batch: int = 3):
    torch.manual_seed(0)
    model = randomise_batchnorms(TinyDANet(backend)).to(dtype)
    x = (torch.rand(4, batch, 2, 16, 16, dtype=dtype) * 3.0).to(dtype)
    return model, x


def spikes_per_layer(model: nn.Module, forward, x: torch.Tensor) -> dict[str, list[int]]:
    with telemetry.record(model) as recorder:
        forward(x)
    samples = recorder.report()
    return {layer.name: [s.layers[i].spikes for s in samples] for i, layer in enumerate(samples[0].layers)}


def test_folding_finds_every_conv_bn_pair() -> None:
    model, _ = net_and_input()
    assert sorted(foldable_pairs(model)) == [
        ("branch1.1", "branch1.2"),
        ("branch2.1", "branch2.2"),
        ("project", "project_bn"),
        ("stem.0", "stem.1"),
    ]


def test_folding_keeps_outputs_and_telemetry() -> None:
    model, x = net_and_input(dtype=torch.float64)  # float64: no spike sits close enough to flip
    with torch.no_grad():
        before = model(x)
        spikes_before = spikes_per_layer(model, model, x)
        folded = fold_batchnorm(model)
        after = model(x)
    assert sorted(folded) == ["branch1.2", "branch2.2", "project_bn", "stem.1"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        assert spikes_per_layer(model, model, x) == spikes_before


class SharedOutput(nn.Module):
    """The conv's output feeds the BN and the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = SeqConv2d(2, 2, 1), SeqBatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class DataDependent(nn.Module):
    """fx cannot trace the branch on a value; the pair inside ``inner`` is still found."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(SeqConv2d(2, 2, 1), SeqBatchNorm2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if x.sum() > 0 else x


def test_folding_refuses_what_would_change_the_function() -> None:
    assert foldable_pairs(SharedOutput().eval()) == []
    assert foldable_pairs(SharedOutput().train()) == []
    neuron_between = nn.Sequential(SeqConv2d(2, 2, 1), LIF(), SeqBatchNorm2d(2)).eval()
    assert foldable_pairs(neuron_between) == []
    training = nn.Sequential(SeqConv2d(2, 2, 1), SeqBatchNorm2d(2)).train()
    assert foldable_pairs(training) == []
    assert foldable_pairs(DataDependent().eval()) == [("inner.0", "inner.1")]


def test_cpu_inference_model_matches_the_network_and_names_layers_alike() -> None:
    reference_model, x = net_and_input()
    model, _ = net_and_input()
    with torch.no_grad():
        expected = reference_model(x)
        expected_spikes = spikes_per_layer(reference_model, reference_model, x)
    optimized = optimize_for_inference(model, "cpu", backend="torch")
    assert optimized.report.neuron_backend == "torch" and optimized.report.dtype == "float32"
    assert len(optimized.report.folded_batchnorms) == 4
    assert not optimized.report.compiled and not optimized.report.cuda_graphs
    torch.testing.assert_close(optimized(x), expected, rtol=1e-4, atol=1e-4)
    spikes = spikes_per_layer(optimized.model, optimized, x)
    assert spikes.keys() == expected_spikes.keys()  # same layer names as the original network
    mismatched = sum(
        a != b for name in spikes for a, b in zip(spikes[name], expected_spikes[name], strict=True)
    )
    assert mismatched <= 1  # float32 folding may move a spike that sat on the threshold


def report_numbers(model: nn.Module, forward, x: torch.Tensor) -> list[tuple[object, ...]]:
    with torch.inference_mode(), telemetry.record(model) as recorder:
        forward(x)
    return [
        (sample.spikes, sample.synaptic_ops, sample.macs, sample.layers, sample.synaptic_layers)
        for sample in recorder.report()
    ]


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_a_cpu_network_runs_channels_last_with_the_same_answer_and_telemetry(backend: str) -> None:
    """On a CPU a network with convolutions runs channels_last by default (oneDNN's convolutions
    skip a reorder per call); its output and every layer's spikes and SOPs are the contiguous one's."""
    from models.kernels.lif import native

    if backend == "native" and native.unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler here")
    contiguous_model, x = net_and_input(backend, batch=4)
    laid_model, _ = net_and_input(backend, batch=4)
    contiguous = optimize_for_inference(
        contiguous_model, "cpu", backend=backend, channels_last=False, spike_driven=False
    )
    laid = optimize_for_inference(laid_model, "cpu", backend=backend, spike_driven=False)
    assert laid.report.channels_last and not contiguous.report.channels_last
    assert laid.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(laid(x), contiguous(x), rtol=1e-5, atol=1e-5)
    assert report_numbers(laid.model, laid, x) == report_numbers(contiguous.model, contiguous, x)


def test_the_spike_fed_convs_of_a_cpu_network_are_spike_driven_with_the_same_telemetry() -> None:
    """The convs fed by neurons add only their events' weights; the stem and the projection, fed
    by real values, stay dense; the answer and every layer's spikes and SOPs stay the same."""
    from models.kernels.conv import spike_driven

    if not spike_driven.available():
        pytest.skip("no C compiler here")
    dense_model, x = net_and_input("native", batch=4)
    driven_model, _ = net_and_input("native", batch=4)
    dense = optimize_for_inference(dense_model, "cpu", backend="native", spike_driven=False)
    driven = optimize_for_inference(driven_model, "cpu", backend="native")
    assert driven.report.spike_driven_convs == ["branch1.1", "branch2.1"]
    assert dense.report.spike_driven_convs == [] and not dense.model.branch1[1].spike_driven
    with torch.inference_mode():
        torch.testing.assert_close(driven(x), dense(x), rtol=1e-5, atol=1e-5)
    assert report_numbers(driven.model, driven, x) == report_numbers(dense.model, dense, x)


def test_a_network_without_convolutions_stays_as_it_is() -> None:
    mlp = nn.Sequential(SeqLinear(6, 4), LIF(), SeqLinear(4, 3))
    assert not optimize_for_inference(mlp, "cpu", backend="torch").report.channels_last


def test_cpu_inference_model_runs_batches_in_several_threads_at_once() -> None:
    model, _ = net_and_input()
    optimized = optimize_for_inference(model, "cpu", backend="torch")
    inputs = [net_and_input(batch=batch)[1] * (1 + index) for index, batch in enumerate((1, 3, 5, 2))]
    alone = [(optimized(x), spikes_per_layer(optimized.model, optimized, x)) for x in inputs]
    barrier = threading.Barrier(len(inputs))

    def run(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[int]]]:
        barrier.wait()  # every thread in the network at the same time
        return optimized(x), spikes_per_layer(optimized.model, optimized, x)

    with ThreadPoolExecutor(len(inputs)) as pool:
        together = list(pool.map(run, inputs))
    for (logits, spikes), (expected_logits, expected_spikes) in zip(together, alone, strict=True):
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
        assert spikes == expected_spikes  # each thread's recorder saw its own batch only


def test_a_telemetry_tape_replays_into_a_recorder_like_a_direct_record() -> None:
    """What a CUDA-graph capture records, replayed for the first samples of a padded batch."""
    from models.optimize import _replay_tape, _Tape

    model, x = net_and_input(batch=4)
    tape = _Tape(model)
    with torch.no_grad(), telemetry.activate(tape):
        model(x)
    with telemetry.record(model) as replayed:
        _replay_tape(tape.calls, replayed, batch=3)
    with torch.no_grad(), telemetry.record(model) as direct:
        model(x[:, :3])
    assert [s.as_dict() for s in replayed.report()] == [s.as_dict() for s in direct.report()]


def test_streaming_networks_get_no_cuda_graphs() -> None:
    model, _ = net_and_input()
    model.set_streaming(True)
    with pytest.raises(ValueError, match="CUDA graphs"):
        optimize_for_inference(model, "cpu", backend="torch", cuda_graphs=True)


def _sta_block(backend: str):
    blocks = pytest.importorskip("models.spikeformer_blocks")  # written in parallel by another team
    return blocks.STABlock(64, 4, 2.0, spiking_neuron=neuron_factory("lif", backend=backend)).eval()


def test_sta_block_traces_without_graph_breaks_on_the_cpu() -> None:
    block = _sta_block("torch")
    x = torch.randn(4, 2, 16, 64)
    with torch.no_grad():
        expected = block(x)
        # aot_eager: dynamo + AOT autograd, no code generation; fullgraph raises at any break
        got = torch.compile(block, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_compiled_cpu_network_matches_and_keeps_telemetry() -> None:
    model, x = net_and_input()
    optimized = optimize_for_inference(model, "cpu", backend="torch", compile=True)
    assert optimized.report.compiled
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(optimized(x), expected, rtol=1e-5, atol=1e-5)
    spikes = spikes_per_layer(optimized.model, optimized, x)  # runs the eager network
    assert spikes == spikes_per_layer(model, model, x)


# ---- on a CUDA device ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [3, 8])
def test_cuda_graph_capture_of_a_whole_network_keeps_outputs_and_telemetry(batch: int) -> None:
    """Replays against the same network run eagerly on the same padded batch (same shapes, so the
    same convolution algorithms): spikes exact, logits to bf16 rounding (cuBLAS may pick another
    algorithm inside a capture)."""
    model, x = net_and_input("triton", batch=batch)
    optimized = optimize_for_inference(
        model, "cuda", backend="triton", dtype=torch.bfloat16, batch_buckets=(4, 8)
    )
    assert optimized.report.cuda_graphs and optimized.report.neuron_backend == "triton"
    x = x.cuda()
    padded = torch.zeros((4, 4 if batch <= 4 else 8, *x.shape[2:]), device="cuda", dtype=torch.bfloat16)
    padded[:, :batch] = x
    with torch.inference_mode():
        expected = model(padded)[:batch]
        expected_spikes = {k: v[:batch] for k, v in spikes_per_layer(model, model, padded).items()}
    for _ in range(2):  # the second call replays the captured graphs
        torch.testing.assert_close(optimized(x), expected, rtol=2e-2, atol=2e-2)
        assert spikes_per_layer(optimized.model, optimized, x) == expected_spikes
    assert len(optimized._captures) == 2  # one graph without, one with telemetry


@pytest.mark.gpu
def test_registered_danet_captures_in_a_cuda_graph() -> None:
    from models import create_model, list_models

    if "danet_resnet18" not in list_models():
        pytest.skip("danet_resnet18 is not registered")
    model = create_model("danet_resnet18", num_classes=10, in_channels=3, neuron={"kind": "lif"})
    x = torch.rand(4, 2, 3, 64, 64, device="cuda")
    optimized = optimize_for_inference(model, "cuda", backend="triton", example_input=x, compile=False)
    with torch.inference_mode():
        first = optimized(x)
        second = optimized(x)
    assert torch.isfinite(first).all() and torch.equal(first, second)
    print(optimized.report)


@pytest.mark.gpu
@pytest.mark.parametrize("axis", ["time", "space"])
def test_attention_takes_a_fused_sdpa_kernel_in_bf16(axis: str) -> None:
    """Only flash or memory-efficient attention is allowed: SDPA raises if neither can run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    blocks = pytest.importorskip("models.spikeformer_blocks")
    attention = blocks.MultiHeadAttention(256, 4, axis=axis).cuda().bfloat16().eval()
    x = torch.randn(4, 8, 196, 256, device="cuda", dtype=torch.bfloat16)  # [T, B, N, d]
    with torch.inference_mode(), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        out = attention(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.gpu
def test_sta_block_compiles_without_graph_breaks_on_the_gpu() -> None:
    block = _sta_block("triton").cuda().bfloat16()
    x = torch.randn(4, 8, 196, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = block(x)
        got = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
