"""workers/redis_stream_relay.py through ``RedisPool`` against real Redis (127.0.0.1:6379).

Workers are played by hand: a heartbeat written directly, and answers written to the gateway's
reply stream, so that a worker can die, come back late or stay silent exactly when a test wants.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from redis_support import REDIS_URL, own_key_prefix

from registry.errors import ModelNotFoundError
from workers import errors
from workers.redis_pool import RedisPool
from workers.redis_streams import StreamKeys, connect, field
from workers.stream_protocol import StreamAnswer, StreamOpen, StreamWindow

FAST = {"heartbeat_interval_s": 0.2, "block_ms": 100}


@pytest.fixture
def prefix():
    with own_key_prefix("relay") as prefix:
        yield prefix


async def beat(client: Any, prefix: str, worker_id: str, streams: bool = True) -> None:
    keys = StreamKeys(prefix)
    heartbeat = {"id": worker_id, "models": ["m"], "streams": streams, "last_heartbeat": time.time()}
    await client.set(keys.worker(worker_id), json.dumps(heartbeat), px=60_000)
    await client.zadd(keys.workers, {worker_id: time.time()})


async def die(client: Any, prefix: str, worker_id: str) -> None:
    keys = StreamKeys(prefix)
    await client.delete(keys.worker(worker_id))
    await client.zrem(keys.workers, worker_id)


async def take(client: Any, prefix: str, worker_id: str, timeout_s: float = 5.0) -> tuple[str, Any, bytes]:
    """The next message in ``worker_id``'s window stream: (op, decoded message, reply stream)."""
    key = StreamKeys(prefix).windows(worker_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = await client.xrange(key, count=1)
        if entries:
            entry_id, fields = entries[0]
            await client.xdel(key, entry_id)
            op = field(fields, "op").decode()
            payload = field(fields, "msg")
            message = StreamWindow.from_bytes(payload) if op == "window" else StreamOpen.from_bytes(payload)
            return op, message, field(fields, "reply")
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing reached {worker_id}")


async def answer(client: Any, reply_to: bytes, message: Any, worker_id: str, **extra: Any) -> None:
    seq = getattr(message, "seq", 0)
    index = getattr(message, "index", -1)
    reply = StreamAnswer(message.session_id, index, "stateful", seq=seq, worker_id=worker_id, **extra)
    await client.xadd(reply_to, {"win": reply.to_bytes()})


def window(seq: int, session_id: str = "s1") -> StreamWindow:
    frames = np.zeros((1, 2, 2, 2), dtype=np.float32)
    return StreamWindow(session_id, "m", 1, index=seq - 1, frames=frames, seq=seq)


def test_a_session_moves_when_its_worker_dies_and_a_late_answer_is_dropped(prefix):
    async def scenario():
        client = connect(REDIS_URL)
        await beat(client, prefix, "w1")
        await beat(client, prefix, "w2")
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            opening = asyncio.create_task(pool.open_stream("s1", "m", 1))
            op, message, reply_to = await take(client, prefix, "w1")  # the first by id, both idle
            assert op == "open" and message == StreamOpen("s1", "m", 1)
            await answer(client, reply_to, message, "w1", context_steps=0)
            assert await opening == ("stateful", 0)

            first = asyncio.create_task(pool.run_stream_window(window(1)))
            _, message, reply_to = await take(client, prefix, "w1")
            await answer(client, reply_to, message, "w1", state_steps=1)
            answered_first = await first

            second = asyncio.create_task(pool.run_stream_window(window(2)))
            _, held, reply_to = await take(client, prefix, "w1")
            await die(client, prefix, "w1")  # with window 2 in flight
            op, moved, reply_to = await take(client, prefix, "w2")
            closing = await take(client, prefix, "w1")  # the old worker is told to forget the session
            await answer(client, reply_to, held, "w1", state_steps=2)  # late: dropped
            await answer(client, reply_to, moved, "w2", state_steps=1)
            answered_second = await second
            await asyncio.sleep(0.2)
            await pool.close_stream("s1")
            closed = await take(client, prefix, "w2")
            return answered_first, op, moved, closing, answered_second, closed, pool.streams.duplicate_answers
        finally:
            await pool.stop()
            await client.aclose()

    first, op, moved, closing, second, closed, duplicates = asyncio.run(scenario())
    assert first.worker_id == "w1" and not first.state_reset
    assert op == "window" and moved.seq == 2  # the same window, sent again to the next worker
    assert closing[0] == "close" and closing[1].session_id == "s1"
    assert second.worker_id == "w2" and second.seq == 2
    assert second.state_reset and second.state_steps == 1  # fresh state on w2, said once
    assert duplicates == 1  # w1's late answer to window 2
    assert closed[0] == "close" and closed[1].close


def test_a_window_unanswered_within_the_timeout_moves_on(prefix):
    async def scenario():
        client = connect(REDIS_URL)
        await beat(client, prefix, "w1")
        await beat(client, prefix, "w2")
        pool = RedisPool(REDIS_URL, prefix=prefix, stream_window_timeout_s=0.5, **FAST)
        await pool.start()
        try:
            opening = asyncio.create_task(pool.open_stream("s1", "m", 1))
            _, message, reply_to = await take(client, prefix, "w1")
            await answer(client, reply_to, message, "w1")
            await opening
            running = asyncio.create_task(pool.run_stream_window(window(1)))
            await take(client, prefix, "w1")  # ...and w1, beating still, never answers
            _, message, reply_to = await take(client, prefix, "w2")
            await answer(client, reply_to, message, "w2")
            return await running
        finally:
            await pool.stop()
            await client.aclose()

    answered = asyncio.run(scenario())
    assert answered.worker_id == "w2" and answered.state_reset


def test_streams_need_a_worker_that_reads_its_window_stream(prefix):
    async def scenario():
        client = connect(REDIS_URL)
        await beat(client, prefix, "old", streams=False)  # a worker of an earlier version
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            with pytest.raises(errors.WorkerUnavailableError, match="live streams of model 'm'"):
                await pool.open_stream("s1", "m", 1)
        finally:
            await pool.stop()
            await client.aclose()

    asyncio.run(scenario())


def test_an_error_answer_raises_its_typed_error(prefix):
    async def scenario():
        client = connect(REDIS_URL)
        await beat(client, prefix, "w1")
        pool = RedisPool(REDIS_URL, prefix=prefix, **FAST)
        await pool.start()
        try:
            opening = asyncio.create_task(pool.open_stream("s1", "m", 1))
            _, message, reply_to = await take(client, prefix, "w1")
            error = (ModelNotFoundError.code, "no model 'm' version 1")
            await answer(client, reply_to, message, "w1", error=error)
            with pytest.raises(ModelNotFoundError, match="no model 'm' version 1"):
                await opening  # the class an embedded pool raises for the same problem (404)
        finally:
            await pool.stop()
            await client.aclose()

    asyncio.run(scenario())
