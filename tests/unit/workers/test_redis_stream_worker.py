"""workers/redis_stream_worker.py: a worker's own window stream, served with a real StreamRunner
on a tiny random-weight network, against real Redis (127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from redis_support import REDIS_URL, own_key_prefix
from tiny_zoo import EVENT_DANET_MODEL, register_event_danet

from registry import Registry
from workers.redis_stream_worker import StreamInbox
from workers.redis_streams import StreamKeys, connect, field
from workers.stream_protocol import StreamAnswer, StreamOpen, StreamWindow
from workers.stream_runner import StreamRunner


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    registry = Registry(tmp_path_factory.mktemp("inbox-registry"))
    register_event_danet(registry)
    return registry


@pytest.fixture
def prefix():
    with own_key_prefix("inbox") as prefix:
        yield prefix


def window(seq: int, session_id: str = "s1") -> StreamWindow:
    rng = np.random.default_rng(seq)
    frames = (rng.random((2, 2, 34, 34)) < 0.3).astype(np.float32)
    return StreamWindow(session_id, EVENT_DANET_MODEL, 1, index=seq - 1, frames=frames, seq=seq)


async def answers_on(client: Any, reply_to: str, count: int, timeout_s: float = 30.0) -> list[StreamAnswer]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = await client.xrange(reply_to)
        if len(entries) >= count:
            return [StreamAnswer.from_bytes(field(fields, "win")) for _, fields in entries]
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} answers on {reply_to}")


def test_opens_runs_closes_in_order_and_deletes_what_it_read(prefix, registry):
    keys = StreamKeys(prefix)
    inbox_key, reply_to = keys.windows("w1"), keys.replies("g1")

    async def scenario():
        client = connect(REDIS_URL)
        runner = StreamRunner(registry, backend="torch", worker_id="w1")
        inbox = StreamInbox(REDIS_URL, runner, "w1", prefix=prefix, block_ms=100)
        messages = [
            ("open", StreamOpen("s1", EVENT_DANET_MODEL, 1).to_bytes()),
            ("window", window(1).to_bytes()),
            ("window", window(2).to_bytes()),
            ("close", StreamOpen("s1", EVENT_DANET_MODEL, 1, close=True).to_bytes()),
            ("window", b"not msgpack"),  # dropped, and the next one still served
            ("window", window(3).to_bytes()),  # after the close: from rest
            ("open", StreamOpen("s2", "no-such-model", 1).to_bytes()),
        ]
        for op, payload in messages:  # all waiting before the worker starts: one read takes them
            await client.xadd(inbox_key, {"op": op, "msg": payload, "reply": reply_to})
        task = asyncio.create_task(inbox.run())
        try:
            answers = await answers_on(client, reply_to, 5)
            left = await client.xlen(inbox_key)
        finally:
            inbox.stop()
            await task
            await client.aclose()
        return answers, left, runner.sessions()

    answers, left, sessions = asyncio.run(scenario())
    opened, first, second, again, refused = answers
    assert (opened.mode, opened.seq, opened.error, opened.worker_id) == ("stateful", 0, None, "w1")
    assert [first.seq, second.seq, again.seq] == [1, 2, 3]
    assert [first.state_steps, second.state_steps, again.state_steps] == [2, 4, 2]
    assert not first.state_reset and not second.state_reset
    assert again.state_reset  # the session was closed: window 3 started from rest, and says so
    assert refused.session_id == "s2" and refused.error is not None
    assert refused.error[0] == "model_not_found"
    assert left == 0 and sessions == 1
