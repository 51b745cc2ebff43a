"""workers/redis_pool.py against real Redis (127.0.0.1:6379), each test under its own key prefix.

Workers run in-process (``RedisWorker`` with a plain submit function) or are played by hand
(a heartbeat written directly), so each failure mode can be produced on purpose.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis_support import REDIS_URL, own_key_prefix

from workers import errors
from workers.protocol import InferenceRequest, InferenceResult, Prediction
from workers.redis_pool import RedisPool
from workers.redis_streams import StreamKeys, connect
from workers.redis_worker import RedisWorker

FAST = {"heartbeat_interval_s": 0.2, "block_ms": 100}


@pytest.fixture
def prefix():
    with own_key_prefix("pool") as prefix:
        yield prefix


def make_request(index: int, model: str = "m", deadline_s: float = 10.0) -> InferenceRequest:
    array = np.full((1, 1, 1), index % 10, dtype=np.float32)
    return InferenceRequest(
        request_id=f"req-{index}-{uuid.uuid4().hex[:6]}",
        model_name=model,
        model_version=1,
        kind="image",
        array=array,
        time_steps=4,
        deadline=time.time() + deadline_s,
    )


async def fake_submit(request: InferenceRequest) -> InferenceResult:
    label = int(request.array.sum())
    await asyncio.sleep(0.001)
    return InferenceResult(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        time_steps=request.time_steps,
        predictions=(Prediction(str(label), label, 1.0),),
    )


async def fake_heartbeat(
    prefix: str,
    worker_id: str,
    models: list[str],
    loaded: list[str] | None = None,
    failed: dict[str, str] | None = None,
) -> None:
    """A worker that says it serves ``models`` but reads nothing."""
    keys = StreamKeys(prefix)
    client = connect(REDIS_URL)
    beat = {"id": worker_id, "models": models, "device": "cpu", "batches": 0, "last_heartbeat": time.time()}
    beat["loaded"] = loaded or []
    beat["failed"] = failed or {}
    await client.set(keys.worker(worker_id), json.dumps(beat), px=60_000)
    await client.zadd(keys.workers, {worker_id: time.time()})
    await client.aclose()


async def wait_ready(pool: RedisPool, timeout_s: float = 5.0) -> None:
    """Until a worker's first heartbeat is seen."""
    deadline = time.monotonic() + timeout_s
    while not pool.is_ready():
        assert time.monotonic() < deadline, "no worker became visible to the pool"
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_concurrent_requests_are_each_answered_correctly(prefix):
    async def scenario():
        worker = RedisWorker(
            REDIS_URL, fake_submit, models=lambda: ["m"], prefix=prefix, worker_id="w1", **FAST
        )
        worker_task = asyncio.create_task(worker.run())
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            await wait_ready(pool)
            requests = [make_request(i) for i in range(60)]
            results = await asyncio.gather(*(pool.submit(r) for r in requests))
            return (
                requests,
                results,
                pool.describe_workers(),
                pool.queue_depth(),
                REGISTRY.get_sample_value("spikeserve_workers"),
            )
        finally:
            await pool.stop()
            worker.stop()
            await worker_task

    requests, results, workers, depth, gauge = asyncio.run(scenario())
    for request, result in zip(requests, results, strict=True):
        assert result.request_id == request.request_id
        assert result.predictions[0].index == int(request.array.sum())
    assert [w["id"] for w in workers] == ["w1"] and workers[0]["models"] == ["m"]
    assert depth == 0
    assert gauge == 1


def test_a_reply_that_arrives_twice_is_delivered_once(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["m"])
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        client = connect(REDIS_URL)
        try:
            request = make_request(3)
            waiter = asyncio.create_task(pool.submit(request))
            await asyncio.sleep(0.1)
            result = await fake_submit(request)
            for _ in range(2):  # two workers answered the same (claimed) entry
                await client.xadd(pool.reply_stream, {"res": result.to_bytes()})
            answered = await waiter
            await asyncio.sleep(0.3)
            return answered, pool.duplicate_replies
        finally:
            await client.aclose()
            await pool.stop()

    answered, duplicates = asyncio.run(scenario())
    assert answered.predictions[0].index == 3
    assert duplicates == 1


def test_backlog_over_the_limit_is_refused_with_queue_full(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["m"])
        pool = RedisPool(REDIS_URL, prefix=prefix, max_backlog=2, **FAST)
        await pool.start()
        try:
            waiting = [asyncio.create_task(pool.submit(make_request(i))) for i in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(errors.QueueFullError) as refused:
                await pool.submit(make_request(9))
            for task in waiting:
                task.cancel()
            return refused.value
        finally:
            await pool.stop()

    error = asyncio.run(scenario())
    assert error.retry_after_s > 0
    assert "'m'" in error.message


def test_no_live_worker_for_the_model_is_refused_at_once(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["other"])
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            started = time.monotonic()
            with pytest.raises(errors.WorkerUnavailableError) as refused:
                await pool.submit(make_request(1, model="m"))
            return refused.value, time.monotonic() - started
        finally:
            await pool.stop()

    error, seconds = asyncio.run(scenario())
    assert "no live worker serves model 'm'" in error.message
    assert seconds < 0.5


def test_unanswered_request_times_out_at_its_deadline(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["m"])
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            started = time.monotonic()
            with pytest.raises(errors.DeadlineExceededError):
                await pool.submit(make_request(1, deadline_s=0.3))
            return time.monotonic() - started, pool.queue_depth()
        finally:
            await pool.stop()

    seconds, depth = asyncio.run(scenario())
    assert 0.25 < seconds < 1.5
    assert depth == 0


def test_error_reply_is_raised_as_its_typed_error(prefix):
    async def failing_submit(request: InferenceRequest) -> InferenceResult:
        raise errors.InvalidInputError("events outside the 34x34 sensor")

    async def scenario():
        worker = RedisWorker(REDIS_URL, failing_submit, models=lambda: ["m"], prefix=prefix, **FAST)
        worker_task = asyncio.create_task(worker.run())
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            await wait_ready(pool)
            with pytest.raises(errors.InvalidInputError) as raised:
                await pool.submit(make_request(1))
            return raised.value
        finally:
            await pool.stop()
            worker.stop()
            await worker_task

    error = asyncio.run(scenario())
    assert error.message == "events outside the 34x34 sensor"


def test_unreachable_redis_is_backend_unavailable_quickly():
    async def scenario():
        pool = RedisPool(f"redis://127.0.0.1:{free_port()}/0", **FAST)
        await pool.start()  # starts even with Redis down; it is just not ready
        try:
            ready = pool.is_ready()
            started = time.monotonic()
            with pytest.raises(errors.WorkerUnavailableError) as refused:
                await pool.submit(make_request(1))
            return ready, refused.value, time.monotonic() - started
        finally:
            await pool.stop()

    ready, error, seconds = asyncio.run(scenario())
    assert not ready
    assert "unreachable" in error.message
    assert seconds < 2.0


def test_registry_generation_change_is_published_to_workers(prefix):
    generation = [5]

    async def scenario():
        listener = connect(REDIS_URL)
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(StreamKeys(prefix).registry_channel)
        pool = RedisPool(REDIS_URL, prefix=prefix, registry_generation=lambda: generation[0], **FAST)
        await pool.start()
        try:
            await asyncio.sleep(0.3)
            quiet = await pubsub.get_message(timeout=0.1)
            generation[0] = 6  # an alias moved
            message = await pubsub.get_message(timeout=1.0)
            return quiet, message
        finally:
            await pool.stop()
            await pubsub.aclose()
            await listener.aclose()

    quiet, message = asyncio.run(scenario())
    assert quiet is None  # nothing is published while the generation stands still
    assert message is not None and json.loads(message["data"])["generation"] == 6


def test_queue_depth_per_model_and_loaded_versions_from_heartbeats(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["m", "n"], loaded=["m:1", "n:3", "m:2"])
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            waiting = [
                asyncio.create_task(pool.submit(make_request(i, model=model)))
                for i, model in enumerate("mmn")
            ]
            await asyncio.sleep(0.1)
            depths = pool.queue_depth_by_model()
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            return depths, pool.queue_depth(), pool.loaded_models()
        finally:
            await pool.stop()

    depths, depth_after, loaded = asyncio.run(scenario())
    assert depths == {"m": 2, "n": 1}
    assert depth_after == 0  # cancelled requests leave nothing behind
    assert loaded == [("m", 1), ("m", 2), ("n", 3)]


def test_versions_workers_could_not_load_come_from_heartbeats(prefix):
    async def scenario():
        await fake_heartbeat(prefix, "w1", ["m"], loaded=["m:1"], failed={"m:2": "m:2 cannot be loaded"})
        await fake_heartbeat(prefix, "w2", ["n"], failed={"n:4": "n:4 cannot be loaded"})
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            return pool.failed_models()
        finally:
            await pool.stop()

    assert asyncio.run(scenario()) == {"m:2": "m:2 cannot be loaded", "n:4": "n:4 cannot be loaded"}
