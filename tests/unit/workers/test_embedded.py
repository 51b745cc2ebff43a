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


class _RecordingRunner:
    """Stands in for ``StreamRunner``: answers each window, records the batches it was given."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.batches: list[list[str]] = []

    def sessions(self) -> int:
        return self.held

    def run_windows(self, windows: list[Any]) -> list[Any]:
        self.batches.append([window.session_id for window in windows])
        return [window.session_id for window in windows]


def stream_window(session_id: str) -> Any:
    from workers.stream_protocol import StreamWindow

    frames = np.zeros((1, 2, 4, 4), dtype=np.float32)
    return StreamWindow(
        session_id=session_id, model_name="m", model_version=1, index=0, frames=frames,
        telemetry="none", top_k=1, reset=False,
    )  # fmt: skip


def test_a_stream_window_waits_for_the_other_held_sessions_then_runs_with_them(tmp_path: Any) -> None:
    pool = EmbeddedPool(Settings(registry=tmp_path, stream_max_delay_ms=60_000))
    runner = _RecordingRunner(held=3)
    pool._streams = runner  # type: ignore[assignment]

    async def body() -> list[Any]:
        first = asyncio.create_task(pool.run_stream_window(stream_window("a")))
        await asyncio.sleep(0.01)
        assert not first.done() and runner.batches == []  # b and c hold state but sent nothing yet
        rest = [asyncio.create_task(pool.run_stream_window(stream_window(s))) for s in ("b", "c")]
        return await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)

    assert asyncio.run(body()) == ["a", "b", "c"]
    assert runner.batches == [["a", "b", "c"]]  # one forward, as soon as every held session was in


def test_a_stream_window_does_not_wait_when_its_session_is_the_only_one(tmp_path: Any) -> None:
    pool = EmbeddedPool(Settings(registry=tmp_path, stream_max_delay_ms=60_000))
    runner = _RecordingRunner(held=1)
    pool._streams = runner  # type: ignore[assignment]
    answer = asyncio.run(asyncio.wait_for(pool.run_stream_window(stream_window("a")), timeout=30))
    assert answer == "a" and runner.batches == [["a"]]


def test_a_stream_window_waits_no_longer_than_the_delay(tmp_path: Any) -> None:
    pool = EmbeddedPool(Settings(registry=tmp_path, stream_max_delay_ms=1))
    runner = _RecordingRunner(held=4)  # three of them never send: the window goes alone
    pool._streams = runner  # type: ignore[assignment]
    answer = asyncio.run(asyncio.wait_for(pool.run_stream_window(stream_window("a")), timeout=30))
    assert answer == "a" and runner.batches == [["a"]]


def test_with_inference_processes_the_answers_are_those_of_the_engine_in_this_process(
    tiny_registry: Any,
) -> None:
    """Two inference processes against batches in this process: the same predictions, probabilities
    and telemetry; each process listed as a worker; no stream engine in the gateway until a stream."""

    def settings(processes: int) -> Settings:
        return Settings(
            registry=tiny_registry.root,
            default_models=[IMAGE_MODEL],
            max_delay_ms=50,
            neuron_backend="torch",
            torch_threads=1,
            inference_processes=processes,
        )

    async def answers(pool: EmbeddedPool) -> tuple[list[Any], list[Any], list[Any]]:
        await pool.start()
        try:
            assert pool.is_ready() and pool.loaded_models() == [(IMAGE_MODEL, 1)]
            results = await asyncio.gather(*(pool.submit(image_request(i)) for i in range(6)))
            return results, pool.describe_workers(), [pool._streams]
        finally:
            await pool.stop()

    there, workers, streams = asyncio.run(answers(EmbeddedPool(settings(2), registry=tiny_registry)))
    here, _, _ = asyncio.run(answers(EmbeddedPool(settings(0), registry=tiny_registry)))
    assert [r.request_id for r in there] == [r.request_id for r in here]
    for a, b in zip(there, here, strict=True):
        assert (a.predictions, a.telemetry) == (b.predictions, b.telemetry)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)  # batches may split otherwise
    assert [w["id"] for w in workers] == ["embedded-0", "embedded-1"]
    assert all(w["models"] == [f"{IMAGE_MODEL}:1"] and w["pid"] for w in workers)
    assert sum(w["batches"] for w in workers) >= 1
    assert streams == [None]
