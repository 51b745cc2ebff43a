"""Fixtures for the gateway's tests.

- ``tiny_root``: a registry folder with tiny-danet and tiny-spikeformer (random weights), built once.
- ``serving``: a TestClient on ``create_app`` with the real embedded pool over ``tiny_root``.
- ``static_app``: a TestClient whose pool is ``service_support.StaticPool`` (no torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import ADMIN, StaticPool, TestClient, make_client, wait_ready
from tiny_zoo import build_tiny_registry

from service.settings import Settings


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("tiny-registry"))
    build_tiny_registry(root)
    return root


@pytest.fixture(scope="module")
def serving(tiny_root: Path) -> Iterator[TestClient]:
    """The real gateway and embedded worker on the tiny registry (read-only: do not write to it)."""
    settings = Settings(registry=tiny_root, admin_token=ADMIN, max_delay_ms=2.0, neuron_backend="torch")
    with make_client(settings) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def static_app(tiny_root: Path) -> Iterator[tuple[TestClient, StaticPool]]:
    pool = StaticPool()
    with make_client(Settings(registry=tiny_root, admin_token=ADMIN), pool=pool) as client:
        yield client, pool
