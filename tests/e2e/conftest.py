"""End-to-end fixtures: a real ``spikeserve serve`` process (uvicorn) on a free port.

``server``: the tiny random-weight registry (built in a temporary folder), an admin token, a small
body limit (so the 413 test needs no big upload) and a batching delay long enough that concurrent
requests meet in one batch on this shared 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import E2E_ADMIN_TOKEN, E2E_MAX_BODY_BYTES, ServerProcess
from tiny_zoo import build_tiny_registry


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = Path(tmp_path_factory.mktemp("e2e-registry"))
    build_tiny_registry(root)
    env = {
        "SPIKESERVE_ADMIN_TOKEN": E2E_ADMIN_TOKEN,
        "SPIKESERVE_MAX_BODY_BYTES": str(E2E_MAX_BODY_BYTES),
        "SPIKESERVE_MAX_DELAY_MS": "20",
        "SPIKESERVE_TORCH_THREADS": "1",
        "SPIKESERVE_NEURON_BACKEND": "torch",  # "auto" times torch.compile at start-up: minutes here
    }
    with ServerProcess(root, env=env) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
