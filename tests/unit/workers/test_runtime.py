"""The inference process's set-up: freed tensor memory stays in the process.

Each case runs in a fresh interpreter: the allocator setting is process-wide and one-way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Page faults per forward of a small conv + LIF network, after 5 warm-up forwards.
FAULTS_PER_FORWARD = """
import resource, sys, torch
from models.layers import SeqConv2d
from models.neurons import LIF
from workers.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
net = torch.nn.Sequential(SeqConv2d(16, 16, 3, padding=1), LIF(), SeqConv2d(16, 16, 3, padding=1), LIF())
x = torch.rand(4, 16, 16, 28, 28)  # 3.2 MB activations: far above glibc's starting mmap threshold
with torch.no_grad():
    for _ in range(5):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        net(x)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_forward(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_FORWARD, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_forwards_reuse_freed_memory_instead_of_faulting_it_back() -> None:
    default = faults_per_forward("default")
    kept = faults_per_forward("keep")
    # each forward frees and re-allocates several MB: with glibc's defaults every page of them
    # comes back through a fault; kept, the same pages serve every forward
    assert default > 500, default
    assert kept < default / 10, (kept, default)


def test_prepare_sets_torch_threads_in_a_fresh_process() -> None:
    code = (
        "import torch; from workers.runtime import prepare_inference_process; "
        "prepare_inference_process(1); print(torch.get_num_threads())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "1"
