"""Shared test set-up: the gpu marker skips without CUDA; paths to the real recordings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# tests/containers builds images and starts containers (root, podman, minutes): `make test-containers`
# runs it, on its own, with this variable set
collect_ignore = [] if os.environ.get("SPIKESERVE_CONTAINER_TESTS") == "1" else ["containers"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real event-camera recordings (``../shared/data`` beside the checkout)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA}")
    return SHARED_DATA
