"""A worker's reply writer: answers to gateways' reply streams, in pipelines, exactly once per entry.

Each reply goes through ``REPLY_LUA`` (write the reply, then ``XACK`` and ``XDEL`` the request
entry, only if it is still pending), so a request that two workers finished (one of them after
claiming it) is answered once. Whatever replies are ready when the writer wakes up (a batch's
worth, typically) go to Redis in one pipeline: one round trip per batch, not per request.
While Redis is unreachable the writer keeps the replies and retries, until the gateway can no
longer be waiting for them; the script makes a second attempt harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from workers.redis_streams import GROUP, REPLY_LUA, REPLY_TTL_MS

log = logging.getLogger(__name__)

REPLY_MAXLEN = 10_000  # approximate cap of a reply stream (its gateway trims what it has read)


@dataclass(frozen=True)
class Reply:
    """One answer owed. ``reply_to`` empty: the entry did not decode; acknowledge and drop it."""

    stream: str
    entry_id: bytes
    reply_to: str
    payload: bytes
    give_up_at: float  # unix seconds: stop retrying a write the gateway no longer waits for


class ReplyWriter:
    """Writes ``Reply``s until cancelled. ``on_done`` gets each batch once written, dropped or given up."""

    def __init__(self, client: aioredis.Redis, on_done: Callable[[list[Reply]], None]) -> None:
        self._client = client
        self._on_done = on_done
        self._queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._sha: str | None = None
        self.answered = 0  # replies this writer wrote
        self.duplicates_suppressed = 0  # replies not written because another worker answered first

    def put(self, reply: Reply) -> None:
        self._queue.put_nowait(reply)

    async def run(self) -> None:
        backoff = 0.1
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while batch:
                try:
                    await self._write(batch)
                    batch = []
                    backoff = 0.1
                except NoScriptError:
                    self._sha = None  # Redis restarted and forgot the script: load it, write the batch again
                    await asyncio.sleep(0.01)
                except (RedisError, OSError) as exc:
                    now = time.time()
                    expired = [reply for reply in batch if reply.give_up_at <= now]
                    batch = [reply for reply in batch if reply.give_up_at > now]
                    self._on_done(expired)
                    log.warning("cannot write %d replies (%s); retrying in %.1f s", len(batch), exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    async def _write(self, batch: list[Reply]) -> None:
        if self._sha is None:
            self._sha = await self._client.script_load(REPLY_LUA)
        positions = []  # index of each reply's outcome among the pipeline's answers
        async with self._client.pipeline(transaction=False) as pipe:
            for reply in batch:
                positions.append(len(pipe))
                if reply.reply_to:
                    args: list[Any] = [GROUP, reply.entry_id, reply.payload, REPLY_MAXLEN, REPLY_TTL_MS]
                    pipe.evalsha(self._sha, 2, reply.stream, reply.reply_to, *args)
                else:
                    pipe.xack(reply.stream, GROUP, reply.entry_id)
                    pipe.xdel(reply.stream, reply.entry_id)
            outcomes = await pipe.execute(raise_on_error=False)
        for reply, position in zip(batch, positions, strict=True):
            outcome = outcomes[position]
            if isinstance(outcome, NoScriptError):
                raise outcome
            if isinstance(outcome, ResponseError):
                # NOGROUP: Redis lost the stream (restart without persistence); its gateway was told 503
                log.warning("reply to %s dropped: %s", reply.reply_to, outcome)
            elif isinstance(outcome, Exception):
                raise outcome  # the connection broke mid-pipeline: write the whole batch again
            elif reply.reply_to and outcome == 1:
                self.answered += 1
            elif reply.reply_to:
                self.duplicates_suppressed += 1
        self._on_done(batch)
