"""workers/redis_streams.py against real Redis (127.0.0.1:6379), each test under its own key prefix."""

from __future__ import annotations

import asyncio

import pytest
from redis_support import REDIS_URL, own_key_prefix

from workers.redis_streams import ENQUEUE_LUA, GROUP, REPLY_LUA, StreamKeys, connect, ensure_group, field


@pytest.fixture
def keys():
    with own_key_prefix("streams") as prefix:
        yield StreamKeys(prefix)


def test_key_names_round_trip(keys):
    stream = keys.requests("danet-mnist")
    assert stream == f"{keys.prefix}:requests:danet-mnist"
    assert keys.model_of(stream) == "danet-mnist"
    assert keys.model_of(stream.encode()) == "danet-mnist"
    assert keys.replies("gw1") != keys.worker("gw1")


def test_enqueue_refuses_past_the_backlog_and_never_trims_queued_requests(keys):
    async def scenario():
        client = connect(REDIS_URL)
        enqueue = client.register_script(ENQUEUE_LUA)
        stream = keys.requests("m")
        ids = [await enqueue(keys=[stream], args=[3, 6, b"payload", "reply-key"]) for _ in range(5)]
        length = await client.xlen(stream)
        await client.aclose()
        return ids, length

    ids, length = asyncio.run(scenario())
    assert all(i is not None for i in ids[:3])
    assert ids[3:] == [None, None]
    assert length == 3


def test_reply_is_written_once_and_the_entry_acknowledged_and_deleted(keys):
    async def scenario():
        client = connect(REDIS_URL)
        stream, replies = keys.requests("m"), keys.replies("gw")
        await ensure_group(client, stream)
        await ensure_group(client, stream)  # idempotent
        entry_id = await client.xadd(stream, {"req": b"r", "reply": replies})
        await client.xreadgroup(GROUP, "worker-a", {stream: ">"})
        reply = client.register_script(REPLY_LUA)
        args = [GROUP, entry_id, b"result", 100, 60_000]
        first = await reply(keys=[stream, replies], args=args)
        second = await reply(keys=[stream, replies], args=args)  # a second worker finishing the same entry
        state = (
            await client.xlen(replies),
            await client.xlen(stream),
            (await client.xpending(stream, GROUP))["pending"],
            await client.pttl(replies),
        )
        await client.aclose()
        return first, second, state

    first, second, (reply_count, backlog, pending, ttl) = asyncio.run(scenario())
    assert (first, second) == (1, 0)
    assert reply_count == 1
    assert backlog == 0 and pending == 0
    assert 0 < ttl <= 60_000


def test_field_reads_bytes_or_str_keys():
    assert field({b"req": b"x"}, "req") == b"x"
    assert field({"req": "x"}, "req") == b"x"
    assert field({}, "req") is None
