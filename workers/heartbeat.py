"""Worker heartbeats in Redis: written by each ``spikeserve worker``, read by every gateway.

A beat is a JSON object under ``{prefix}:worker:{id}`` that expires after ``BEATS_TO_DEATH``
intervals, plus the worker's id in the sorted set ``{prefix}:workers`` scored by the beat's time,
so a gateway lists live workers with one range query and one MGET instead of a key scan.
Fields (what ``GET /v1/workers`` shows): id, mode, host, pid, device, models (names served),
loaded (``name:version`` loaded), batches, in_flight, answered, started_at, last_heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from workers.redis_streams import GROUP, StreamKeys

BEATS_TO_DEATH = 3  # a worker silent for this many intervals is dead
FORGET_AFTER_S = 3600  # ids of workers dead this long leave the sorted set


async def write_heartbeat(
    client: aioredis.Redis,
    keys: StreamKeys,
    beat: dict[str, Any],
    interval_s: float,
    held: Iterable[tuple[str, bytes]] = (),
) -> None:
    """Publish ``beat`` and renew the stream entries the worker holds (``held``: (stream, entry id)).

    Renewing (``XCLAIM`` to itself with JUSTID, which leaves the delivery count alone) resets the
    entries' idle time, so a batch that runs longer than the claim timeout is not taken over by
    another worker while this one is alive and still working on it.
    """
    by_stream: dict[str, list[Any]] = {}
    for stream, entry_id in held:
        by_stream.setdefault(stream, []).append(entry_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker(beat["id"]), json.dumps(beat), px=int(BEATS_TO_DEATH * interval_s * 1000))
        pipe.zadd(keys.workers, {beat["id"]: beat["last_heartbeat"]})
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, GROUP, beat["id"], 0, ids, justid=True)
        await pipe.execute(raise_on_error=False)


async def remove_heartbeat(client: aioredis.Redis, keys: StreamKeys, worker_id: str) -> None:
    """A worker leaving cleanly disappears from the list at once rather than after its beats expire."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.workers, worker_id)
        await pipe.execute()


async def read_live_workers(
    client: aioredis.Redis, keys: StreamKeys, interval_s: float
) -> list[dict[str, Any]]:
    """Beats of the workers heard from within ``BEATS_TO_DEATH`` intervals, sorted by id."""
    now = time.time()
    ids: Any = await client.zrangebyscore(keys.workers, now - BEATS_TO_DEATH * interval_s, "+inf")
    beats = await client.mget([keys.worker(i.decode()) for i in ids]) if ids else []
    await client.zremrangebyscore(keys.workers, "-inf", now - FORGET_AFTER_S)
    workers = []
    for beat in beats:
        if beat is not None:
            with contextlib.suppress(ValueError):
                workers.append(json.loads(beat))
    return sorted(workers, key=lambda worker: str(worker.get("id", "")))
