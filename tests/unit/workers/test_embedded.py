"""workers/embedded.py: start loads the default models, concurrent submits are batched, other
versions load on first use, stop fails what is left."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from tiny_zoo import IMAGE_MODEL, register_danet

from registry import Registry
from service.settings import Settings
from workers.embedded import EmbeddedPool
from workers.errors import WorkerUnavailableError
from workers.protocol import InferenceRequest


def image_request(i: int, version: int = 1, model: str = IMAGE_MODEL) -> InferenceRequest:
    array = np.random.default_rng(i).random((1, 28, 28), dtype=np.float32)
    return InferenceRequest(
        request_id=f"e{i}", model_name=model, model_version=version, kind="image", array=array, time_steps=2
    )


def test_importing_the_pool_does_not_import_torch() -> None:
    code = "import sys, workers.embedded; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_start_loads_defaults_then_batches_concurrent_requests(tiny_registry: Any) -> None:
    settings = Settings(
        registry=tiny_registry.root,
        default_models=[IMAGE_MODEL],
        max_delay_ms=50,
        max_batch_size=8,
        neuron_backend="torch",  # "auto" would first time the backends (torch.compile: slow here)
    )
    pool = EmbeddedPool(settings, registry=tiny_registry)

    async def body() -> list[Any]:
        assert not pool.is_ready()
        with pytest.raises(WorkerUnavailableError):
            await pool.submit(image_request(0))
        await pool.start()
        try:
            assert pool.is_ready()
            assert pool.loaded_models() == [(IMAGE_MODEL, 1)]
            return await asyncio.gather(*(pool.submit(image_request(i)) for i in range(5)))
        finally:
            await pool.stop()

    results = asyncio.run(body())
    assert [r.request_id for r in results] == [f"e{i}" for i in range(5)]
    assert all(r.error is None for r in results)
    assert max(r.batch_size for r in results) > 1
    assert len({r.probabilities for r in results}) == 5  # five inputs, five different answers


def test_other_versions_load_on_first_request_and_describe_workers(tmp_path: Any) -> None:
    registry = Registry(tmp_path)
    register_danet(registry, seed=0)
    register_danet(registry, seed=1)
    pool = EmbeddedPool(
        Settings(registry=tmp_path, default_models=[f"{IMAGE_MODEL}:1"], neuron_backend="torch"),
        registry=registry,
    )

    async def body() -> Any:
        await pool.start()
        try:
            result = await pool.submit(image_request(0, version=2))
            described = pool.describe_workers()
            return result, described
        finally:
            await pool.stop()

    result, described = asyncio.run(body())
    assert result.error is None and result.model_version == 2
    assert described[0]["models"] == [f"{IMAGE_MODEL}:1", f"{IMAGE_MODEL}:2"]
    assert described[0]["batches"] >= 1


def test_empty_registry_is_ready_with_no_models(tmp_path: Any) -> None:
    pool = EmbeddedPool(Settings(registry=tmp_path))

    async def body() -> bool:
        await pool.start()
        ready = pool.is_ready()
        await pool.stop()
        return ready

    assert asyncio.run(body())
