"""workers/redis_worker.py against real Redis (127.0.0.1:6379), each test under its own key prefix.

The worker runs in-process with a plain ``submit`` function (no network): what is under test is
the Redis side (groups, claims, replies, heartbeats), not a model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from redis_support import REDIS_URL, own_key_prefix

from workers.errors import InvalidInputError
from workers.protocol import InferenceRequest, InferenceResult, Prediction
from workers.redis_streams import GROUP, StreamKeys, connect, ensure_group
from workers.redis_worker import RedisWorker

FAST = {"claim_idle_ms": 300, "heartbeat_interval_s": 0.2, "block_ms": 100}


@pytest.fixture
def keys():
    with own_key_prefix("worker") as prefix:
        yield StreamKeys(prefix)


def make_request(index: int, model: str = "m", deadline_s: float = 10.0) -> InferenceRequest:
    """An input whose right answer is index % 10 (the fake network predicts the sum of the array)."""
    array = np.zeros((1, 2, 2), dtype=np.float32)
    array[0, 0, 0] = index % 10
    return InferenceRequest(
        request_id=f"req-{index}",
        model_name=model,
        model_version=1,
        kind="image",
        array=array,
        time_steps=4,
        deadline=time.time() + deadline_s,
    )


def answer(request: InferenceRequest) -> InferenceResult:
    label = int(request.array.sum())
    return InferenceResult(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        time_steps=request.time_steps,
        predictions=(Prediction(str(label), label, 1.0),),
    )


class Recorder:
    """A fake Batcher.submit that answers from the input and remembers what it was asked."""

    def __init__(self, gate: asyncio.Event | None = None, fail: Exception | None = None) -> None:
        self.seen: list[str] = []
        self.gate = gate
        self.fail = fail

    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        self.seen.append(request.request_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return answer(request)


async def with_worker(worker: RedisWorker, body: Callable[[], Awaitable[object]]) -> object:
    task = asyncio.create_task(worker.run())
    try:
        return await body()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)


async def send(client, keys: StreamKeys, request: InferenceRequest, reply_to: str = "gw") -> bytes:
    return await client.xadd(
        keys.requests(request.model_name), {"req": request.to_bytes(), "reply": keys.replies(reply_to)}
    )


async def replies(client, keys: StreamKeys, count: int, reply_to: str = "gw", timeout_s: float = 5.0):
    """Wait until ``count`` replies are on the reply stream; return them decoded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = await client.xrange(keys.replies(reply_to))
        if len(entries) >= count:
            return [InferenceResult.from_bytes(fields[b"res"]) for _id, fields in entries]
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} replies, got {len(await client.xrange(keys.replies(reply_to)))}")


def test_reads_answers_and_deletes_each_request(keys):
    async def scenario():
        client = connect(REDIS_URL)
        submit = Recorder()
        worker = RedisWorker(REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, **FAST)

        async def body():
            for i in range(20):
                await send(client, keys, make_request(i))
            results = await replies(client, keys, 20)
            await asyncio.sleep(0.1)
            return (
                results,
                await client.xlen(keys.requests("m")),
                (await client.xpending(keys.requests("m"), GROUP)),
            )

        results, backlog, pending = await with_worker(worker, body)
        await client.aclose()
        return results, backlog, pending, worker

    results, backlog, pending, worker = asyncio.run(scenario())
    assert sorted(r.request_id for r in results) == sorted(f"req-{i}" for i in range(20))
    for result in results:
        assert result.error is None
        assert result.predictions[0].index == int(result.request_id.split("-")[1]) % 10
    assert backlog == 0 and pending["pending"] == 0
    assert worker.answered == 20


def test_claims_what_a_dead_worker_left_pending_and_answers_once(keys):
    async def scenario():
        client = connect(REDIS_URL)
        stream = keys.requests("m")
        await ensure_group(client, stream)
        for i in range(3):
            await send(client, keys, make_request(i))
        # a worker that read these and died before answering
        taken = await client.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=10)
        assert len(taken[0][1]) == 3
        submit = Recorder()
        worker = RedisWorker(REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, **FAST)

        async def body():
            results = await replies(client, keys, 3)
            await asyncio.sleep(0.5)  # room for a wrong second answer to show up
            return results, await client.xlen(keys.replies("gw")), await client.xlen(stream)

        results, reply_count, backlog = await with_worker(worker, body)
        await client.aclose()
        return results, reply_count, backlog, submit

    results, reply_count, backlog, submit = asyncio.run(scenario())
    assert sorted(r.request_id for r in results) == ["req-0", "req-1", "req-2"]
    assert reply_count == 3 and backlog == 0
    assert sorted(submit.seen) == ["req-0", "req-1", "req-2"]


def test_request_past_its_deadline_is_answered_504_without_running(keys):
    async def scenario():
        client = connect(REDIS_URL)
        submit = Recorder()
        worker = RedisWorker(REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, **FAST)
        await send(client, keys, make_request(1, deadline_s=-1.0))
        results = await with_worker(worker, lambda: replies(client, keys, 1))
        await client.aclose()
        return results, submit

    results, submit = asyncio.run(scenario())
    assert results[0].error is not None and results[0].error[0] == "deadline_exceeded"
    assert submit.seen == []


def test_a_typed_error_from_the_batcher_becomes_an_error_reply(keys):
    async def scenario():
        client = connect(REDIS_URL)
        submit = Recorder(fail=InvalidInputError("sensor 640x480 is larger than 34x34"))
        worker = RedisWorker(REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, **FAST)
        await send(client, keys, make_request(1))
        results = await with_worker(worker, lambda: replies(client, keys, 1))
        await client.aclose()
        return results

    (result,) = asyncio.run(scenario())
    assert result.error == ("invalid_input", "sensor 640x480 is larger than 34x34")


def test_takes_no_more_than_max_in_flight(keys):
    async def scenario():
        client = connect(REDIS_URL)
        gate = asyncio.Event()
        submit = Recorder(gate=gate)
        worker = RedisWorker(
            REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, max_in_flight=3, **FAST
        )

        async def body():
            for i in range(10):
                await send(client, keys, make_request(i))
            await asyncio.sleep(0.5)
            held = len(submit.seen)
            gate.set()
            results = await replies(client, keys, 10)
            return held, results

        held, results = await with_worker(worker, body)
        await client.aclose()
        return held, results

    held, results = asyncio.run(scenario())
    assert held == 3
    assert len({r.request_id for r in results}) == 10


def test_gives_up_on_an_entry_that_every_worker_died_on(keys):
    async def scenario():
        client = connect(REDIS_URL)
        stream = keys.requests("m")
        await ensure_group(client, stream)
        entry_id = await send(client, keys, make_request(7))
        await client.xreadgroup(GROUP, "dead-worker", {stream: ">"})
        # as if five workers had taken it and died
        await client.xclaim(stream, GROUP, "dead-worker", 0, [entry_id], retrycount=9)
        submit = Recorder()
        worker = RedisWorker(REDIS_URL, submit, models=lambda: ["m"], prefix=keys.prefix, **FAST)
        results = await with_worker(worker, lambda: replies(client, keys, 1))
        await client.aclose()
        return results, submit

    (result,), submit = asyncio.run(scenario())
    assert result.error is not None and result.error[0] == "inference_failed"
    assert "giving up" in result.error[1]
    assert submit.seen == []


def test_heartbeat_lists_models_and_extras_and_is_removed_on_stop(keys):
    async def scenario():
        client = connect(REDIS_URL)
        worker = RedisWorker(
            REDIS_URL,
            Recorder(),
            models=lambda: ["b", "a"],
            prefix=keys.prefix,
            worker_id="w1",
            describe=lambda: {"device": "cpu", "batches": 7},
            **FAST,
        )

        async def body():
            await asyncio.sleep(0.4)
            return await client.get(keys.worker("w1")), await client.zscore(keys.workers, "w1")

        beat, score = await with_worker(worker, body)
        after = await client.get(keys.worker("w1")), await client.zscore(keys.workers, "w1")
        await client.aclose()
        return beat, score, after

    beat, score, after = asyncio.run(scenario())
    fields = json.loads(beat)
    assert fields["id"] == "w1" and fields["models"] == ["a", "b"]
    assert fields["device"] == "cpu" and fields["batches"] == 7
    assert abs(score - time.time()) < 5
    assert after == (None, None)


def test_registry_message_reloads_and_serves_new_models(keys):
    async def scenario():
        client = connect(REDIS_URL)
        served = ["m"]
        reloads: list[float] = []

        async def reload() -> None:
            reloads.append(time.time())
            served.append("n")

        worker = RedisWorker(
            REDIS_URL,
            Recorder(),
            models=lambda: list(served),
            prefix=keys.prefix,
            on_registry_change=reload,
            **FAST,
        )

        async def body():
            await asyncio.sleep(0.3)  # subscribed
            await client.publish(keys.registry_channel, json.dumps({"generation": 2}))
            await asyncio.sleep(0.3)
            await send(client, keys, make_request(4, model="n"))
            return await replies(client, keys, 1)

        results = await with_worker(worker, body)
        await client.aclose()
        return results, reloads

    (result,), reloads = asyncio.run(scenario())
    assert len(reloads) == 1
    assert result.model_name == "n" and result.predictions[0].index == 4


def test_recreates_its_consumer_group_when_redis_lost_the_stream(keys):
    async def scenario():
        client = connect(REDIS_URL)
        worker = RedisWorker(REDIS_URL, Recorder(), models=lambda: ["m"], prefix=keys.prefix, **FAST)

        async def body():
            await send(client, keys, make_request(1))
            await replies(client, keys, 1)
            await client.delete(keys.requests("m"))  # the group goes with the stream, as after a restart
            await asyncio.sleep(0.3)
            await send(client, keys, make_request(2))
            return await replies(client, keys, 2)

        results = await with_worker(worker, body)
        await client.aclose()
        return results

    results = asyncio.run(scenario())
    assert [r.request_id for r in results] == ["req-1", "req-2"]


def test_an_undecodable_entry_is_dropped_and_the_next_one_served(keys):
    async def scenario():
        client = connect(REDIS_URL)
        worker = RedisWorker(REDIS_URL, Recorder(), models=lambda: ["m"], prefix=keys.prefix, **FAST)

        async def body():
            await client.xadd(keys.requests("m"), {"req": b"\x00not msgpack", "reply": keys.replies("gw")})
            await send(client, keys, make_request(5))
            results = await replies(client, keys, 1)
            await asyncio.sleep(0.2)
            return (
                results,
                await client.xlen(keys.requests("m")),
                await client.xpending(keys.requests("m"), GROUP),
            )

        results, backlog, pending = await with_worker(worker, body)
        await client.aclose()
        return results, backlog, pending

    (result,), backlog, pending = asyncio.run(scenario())
    assert result.request_id == "req-5"
    assert backlog == 0 and pending["pending"] == 0
