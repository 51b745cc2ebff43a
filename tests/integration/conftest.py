"""Fixtures of the distributed-mode tests: a tiny registry, inputs and their answers, a key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis_support import REDIS_URL, npy_bytes, reference_probabilities
from tiny_zoo import IMAGE_MODEL, build_tiny_registry


@pytest.fixture(scope="session")
def redis_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder with tiny-danet and tiny-spikeformer (random weights, fixed seeds)."""
    root = tmp_path_factory.mktemp("redis-registry")
    build_tiny_registry(root)
    return root


@pytest.fixture(scope="session")
def redis_inputs(redis_registry: Path) -> tuple[list[bytes], list[dict[str, float]]]:
    """20 distinct 1x28x28 inputs as .npy bodies, and the probabilities the network gives each here."""
    rng = np.random.default_rng(7)
    arrays = [rng.random((1, 28, 28)).astype(np.float32) for _ in range(20)]
    return [npy_bytes(a) for a in arrays], reference_probabilities(redis_registry, IMAGE_MODEL, arrays)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis at 127.0.0.1:6379, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the distributed-mode tests need Redis on 127.0.0.1:6379 (apt-get install redis-server)")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()
