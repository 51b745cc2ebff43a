"""One worker error, one HTTP answer: the same status and code in embedded and in Redis mode.

A network registered here raises, inside the worker's forward, the typed error that its input
selects (input value ``i / 100`` raises the ``i``-th error class of workers.errors and registry.errors).
The same requests go through the real embedded pool and through a real Redis pool with a real
worker (engine, batcher, ``RedisWorker``; in-process, on the shared Redis under its own prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from redis_support import REDIS_URL, own_key_prefix
from service_support import ADMIN, TestClient, make_client, npy_bytes, wait_ready

import registry.errors as registry_errors
import workers.errors as worker_errors
from models._registry import list_models, register_model
from registry import Registry
from service.errors import STATUS_BY_CODE
from service.settings import Settings

pytestmark = pytest.mark.slow


def _classes(module: object, base: type) -> list[type]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, base)]


ERRORS: list[type[Exception]] = sorted(
    _classes(worker_errors, worker_errors.SpikeserveError)
    + _classes(registry_errors, registry_errors.RegistryError),
    key=lambda cls: cls.__name__,
)
MODEL = "raising"


class _RaisingNet(nn.Module):
    """x: [T, B, 1, 1, 1] -> [B, 2]; raises ``ERRORS[round(100 x) - 1]`` (the input picks the error)."""

    def __init__(self, num_classes: int = 2, neuron: Any = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = round(100 * float(x[0, 0, 0, 0, 0]))
        if 1 <= index <= len(ERRORS):
            cls = ERRORS[index - 1]
            raise cls(f"{cls.__name__} raised in the worker")
        return x.mean(dim=(0, 2, 3, 4)).unsqueeze(-1) * self.scale

    def reset_state(self) -> None:
        pass


if "raising_net" not in list_models():

    @register_model(default_input={"time_steps": 1, "shape": (1, 1, 1)})
    def raising_net(**config: Any) -> nn.Module:
        return _RaisingNet(**config)


@pytest.fixture(scope="module")
def raising_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("raising-registry"))
    Registry(root).register(
        MODEL,
        architecture="raising_net",
        config={},
        neuron=None,
        time_steps={"default": 1, "min": 1, "max": 2},
        input={"kind": "image", "channels": 1, "height": 1, "width": 1, "mean": [0.0], "std": [1.0]},
        labels=["a", "b"],
        weights=_RaisingNet().state_dict(),
    )
    return root


def _settings(root: Path, **extra: Any) -> Settings:
    return Settings(registry=root, admin_token=ADMIN, neuron_backend="torch", max_delay_ms=1.0, **extra)


@contextlib.contextmanager
def _embedded(root: Path) -> Iterator[TestClient]:
    with make_client(_settings(root)) as client:
        wait_ready(client)
        yield client


@contextlib.contextmanager
def _redis(root: Path) -> Iterator[TestClient]:
    """A Redis gateway, and a worker (engine + batcher + RedisWorker) on its own event loop thread."""
    from workers.batcher import Batcher
    from workers.engine import Engine
    from workers.redis_worker import RedisWorker

    with own_key_prefix("codes") as prefix:
        settings = _settings(root, redis_url=REDIS_URL, redis_prefix=prefix, heartbeat_interval_s=0.2)
        started = threading.Event()
        holder: dict[str, Any] = {}

        async def work() -> None:
            engine = Engine(Registry(root), backend="torch", worker_id="w-codes")
            batcher = Batcher(
                engine.run_batch,
                max_batch_size_for=settings.batch_size_for,
                max_delay_ms_for=settings.delay_ms_for,
                max_queue_size=settings.max_queue_size,
            )
            await batcher.start()
            worker = RedisWorker(
                REDIS_URL, batcher.submit, models=lambda: [MODEL], prefix=prefix, heartbeat_interval_s=0.2
            )
            holder["worker"], holder["loop"] = worker, asyncio.get_running_loop()
            started.set()
            try:
                await worker.run()
            finally:
                await batcher.stop()

        thread = threading.Thread(target=asyncio.run, args=(work(),), daemon=True)
        thread.start()
        assert started.wait(30)
        try:
            with make_client(settings) as client:
                wait_ready(client)
                yield client
        finally:
            holder["loop"].call_soon_threadsafe(holder["worker"].stop)
            thread.join(30)


def _answers(client: TestClient) -> dict[str, tuple[int, str]]:
    """Class name -> (HTTP status, error code) for every error class, raised by the worker."""
    url = f"/v1/models/{MODEL}/classify?telemetry=none"
    answers = {}
    for index, cls in enumerate(ERRORS, start=1):
        body = npy_bytes(np.full((1, 1, 1), index / 100, np.float32))
        response = client.post(url, content=body, headers={"content-type": "application/x-npy"})
        answers[cls.__name__] = (response.status_code, response.json()["error"]["code"])
    return answers


@pytest.fixture(scope="module")
def answers_by_mode(raising_registry: Path) -> dict[str, dict[str, tuple[int, str]]]:
    found = {}
    for mode, run in (("embedded", _embedded), ("redis", _redis)):
        with run(raising_registry) as client:
            found[mode] = _answers(client)
    return found


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_a_worker_error_gets_one_status_and_code_in_both_modes(
    cls: type[Exception], answers_by_mode: dict[str, dict[str, tuple[int, str]]]
) -> None:
    code = cls.code
    expected = (STATUS_BY_CODE[code], code)
    assert answers_by_mode["embedded"][cls.__name__] == expected
    assert answers_by_mode["redis"][cls.__name__] == expected
