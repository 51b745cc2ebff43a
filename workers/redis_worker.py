"""The worker side of Redis Streams: read through a consumer group, batch, run, reply, acknowledge.

A ``RedisWorker`` reads the streams of the models it serves with ``XREADGROUP`` (one consumer
group per stream, shared by every worker), hands each request to ``submit`` (the Batcher's, so
requests are batched exactly as in embedded mode), and writes each answer to the asking gateway's
reply stream. The reply, ``XACK`` and ``XDEL`` happen in one Lua script, reply first, and only if
the entry is still pending: a request finished by two workers is answered once.

Entries left pending by a dead worker are taken over with ``XAUTOCLAIM`` once idle for
``claim_idle_ms``; a live worker renews the entries it holds at every heartbeat so that slow
batches are not claimed from under it. Requests already past their deadline are answered with
a 504 instead of being run. Heartbeats say the worker's models, device and batches; a message on
the registry channel makes the worker reload what it serves (alias moves) without a restart.

Every loop survives Redis going away and coming back (even without its data: consumer groups
are recreated), so a worker never needs a restart for that either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from registry.errors import RegistryError
from workers.error_codec import encode_error
from workers.errors import DeadlineExceededError, InferenceFailedError, SpikeserveError
from workers.heartbeat import remove_heartbeat, write_heartbeat
from workers.protocol import InferenceRequest, InferenceResult
from workers.redis_replies import Reply, ReplyWriter
from workers.redis_streams import GROUP, StreamKeys, connect, ensure_group, field

log = logging.getLogger(__name__)

Submit = Callable[[InferenceRequest], Awaitable[InferenceResult]]


def error_result(request: InferenceRequest, code: str, message: str, worker_id: str) -> InferenceResult:
    return InferenceResult(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        time_steps=request.time_steps,
        error=(code, message),
        worker_id=worker_id,
    )


class RedisWorker:
    """Serves the request streams of ``models()`` until ``stop()``.

    submit: answers one request (``Batcher.submit``); may raise the typed errors of workers.errors.
    models: the model names to serve, asked again after each registry change.
    describe: extra heartbeat fields (device, loaded versions, batches run).
    on_registry_change: awaited when the registry changed (reload the versions aliases point to).
    max_in_flight: requests held at once (read but not answered); bounds what a worker takes from
    the stream, so that other workers get their share and claims stay rare.
    """

    def __init__(
        self,
        redis_url: str,
        submit: Submit,
        *,
        models: Callable[[], Collection[str]],
        worker_id: str | None = None,
        prefix: str = "spikeserve",
        claim_idle_ms: int = 5_000,
        heartbeat_interval_s: float = 2.0,
        max_in_flight: int = 64,
        max_deliveries: int = 5,
        block_ms: int = 1_000,
        describe: Callable[[], dict[str, Any]] | None = None,
        on_registry_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.submit = submit
        self.models = models
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.keys = StreamKeys(prefix)
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_in_flight = max_in_flight
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self.describe = describe or dict
        self.on_registry_change = on_registry_change
        self.started_at = time.time()
        self._streams: list[str] = []
        self._grouped: set[str] = set()
        self._in_flight: dict[tuple[str, bytes], InferenceRequest] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._replies: ReplyWriter | None = None
        self._stopping = asyncio.Event()
        self._client: aioredis.Redis | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``stop()``; then finish in-flight requests (bounded) and leave."""
        self._client = connect(self.redis_url)
        reader = connect(self.redis_url, socket_timeout=self.block_ms / 1000 + 5.0)
        self._streams = [self.keys.requests(m) for m in sorted(self.models())]
        self._replies = ReplyWriter(self._client, on_done=self._release)
        writer = asyncio.create_task(self._replies.run(), name="worker-replies")
        loops = [
            asyncio.create_task(self._read(reader), name="worker-read"),
            asyncio.create_task(self._claim(), name="worker-claim"),
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self._listen_registry(), name="worker-registry"),
        ]
        log.info(
            "worker %s serving %s", self.worker_id, ", ".join(self.keys.model_of(s) for s in self._streams)
        )
        try:
            await self._stopping.wait()
        finally:
            # the loops also check _stopping: redis-py can swallow a cancellation that lands in a
            # blocking read, so cancel() alone might not end them
            for task in loops:
                task.cancel()
            await asyncio.wait(loops, timeout=self.block_ms / 1000 + 2.0)
            await self._drain(timeout_s=10.0)
            writer.cancel()
            await asyncio.wait([writer], timeout=2.0)
            with contextlib.suppress(RedisError, OSError):
                await remove_heartbeat(self._client, self.keys, self.worker_id)
            await reader.aclose()
            await self._client.aclose()

    def stop(self) -> None:
        """Stop taking work; ``run()`` returns once in-flight requests are answered (or left to claims)."""
        self._stopping.set()

    async def _drain(self, timeout_s: float) -> None:
        """Wait for in-flight requests; what is left stays pending and another worker claims it."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), deadline - time.monotonic())

    # -- taking work --------------------------------------------------------------------------

    async def _read(self, reader: aioredis.Redis) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            room = await self._wait_for_room()
            if not self._streams:
                await asyncio.sleep(self.block_ms / 1000)  # nothing to serve until the registry has a model
                continue
            try:
                await self._ensure_groups()
                response: Any = await reader.xreadgroup(
                    GROUP, self.worker_id, dict.fromkeys(self._streams, ">"), count=room, block=self.block_ms
                )
                backoff = 0.1
            except ResponseError as exc:
                # NOGROUP / "UNBLOCKED the stream key no longer exists": Redis lost the stream (a restart
                # without persistence, a deleted key); recreate the groups and read on
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    log.warning("reading requests failed: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                self._grouped.clear()
                continue
            except (RedisError, OSError) as exc:
                log.warning("cannot read requests (%s); retrying in %.1f s", exc, backoff)
                self._grouped.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for stream, entries in response or ():
                for entry_id, fields in entries:
                    self._dispatch(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)

    async def _wait_for_room(self) -> int:
        while len(self._in_flight) >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        return self.max_in_flight - len(self._in_flight)

    async def _ensure_groups(self) -> None:
        assert self._client is not None
        for stream in self._streams:
            if stream not in self._grouped:
                await ensure_group(self._client, stream)
                self._grouped.add(stream)

    def _dispatch(self, stream: str, entry_id: bytes, fields: dict[Any, Any]) -> None:
        """Start answering one stream entry (read or claimed)."""
        key = (stream, entry_id)
        if key in self._in_flight:
            return  # claimed back while still running here: one answer is enough
        payload, reply_to = field(fields, "req"), field(fields, "reply")
        try:
            assert payload is not None and reply_to is not None
            request = InferenceRequest.from_bytes(payload)
        except Exception:
            # nobody can be answered for an entry that does not decode; drop it rather than loop on it
            log.exception("dropping undecodable entry %s on %s", entry_id, stream)
            self._put_reply(Reply(stream, entry_id, "", b"", time.time()))
            return
        self._in_flight[key] = request
        if request.deadline <= time.time():
            late = DeadlineExceededError(
                f"request {request.request_id} reached its deadline before a worker took it"
            )
            self._queue_reply(stream, entry_id, reply_to.decode(), request, error=encode_error(late))
            return
        task = asyncio.create_task(self._answer(stream, entry_id, reply_to.decode(), request))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream: str, entry_id: bytes, reply_to: str, request: InferenceRequest) -> None:
        try:
            result = await self.submit(request)
        except Exception as exc:  # typed errors keep their code; anything else is owed an answer too
            if not isinstance(exc, SpikeserveError | RegistryError):
                log.exception("request %s failed", request.request_id)
            self._queue_reply(stream, entry_id, reply_to, request, error=encode_error(exc))
            return
        self._queue_reply(stream, entry_id, reply_to, request, result=result)

    def _queue_reply(
        self,
        stream: str,
        entry_id: bytes,
        reply_to: str,
        request: InferenceRequest,
        *,
        result: InferenceResult | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        if result is None:
            code, message = error or encode_error(InferenceFailedError("no result"))
            result = error_result(request, code, message, self.worker_id)
        payload = result.to_bytes()
        # keep retrying a write across a Redis blip while the gateway may still wait for it
        give_up_at = max(request.deadline, time.time()) + 5.0
        self._put_reply(Reply(stream, entry_id, reply_to, payload, give_up_at))

    # -- answering ----------------------------------------------------------------------------

    @property
    def answered(self) -> int:
        """Replies this worker wrote."""
        return self._replies.answered if self._replies is not None else 0

    def _put_reply(self, reply: Reply) -> None:
        assert self._replies is not None
        self._replies.put(reply)

    def _release(self, replies: list[Reply]) -> None:
        for reply in replies:
            self._in_flight.pop((reply.stream, reply.entry_id), None)
        if replies:
            self._room.set()

    # -- dead workers' entries ----------------------------------------------------------------

    async def _claim(self) -> None:
        """Take over entries idle for claim_idle_ms (their worker died) and answer them."""
        interval = max(self.claim_idle_ms / 4000, 0.05)
        ticks = 0
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            ticks += 1
            try:
                for stream in list(self._streams):
                    room = self.max_in_flight - len(self._in_flight)
                    if room > 0:
                        await self._claim_stream(stream, room)
                if ticks % 600 == 0:
                    await self._forget_dead_consumers()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("claim failed: %s", exc)
            except (RedisError, OSError) as exc:
                log.debug("claim skipped, Redis unreachable: %s", exc)

    async def _claim_stream(self, stream: str, room: int) -> None:
        assert self._client is not None
        response = await self._client.xautoclaim(
            stream, GROUP, self.worker_id, min_idle_time=self.claim_idle_ms, start_id="0-0", count=room
        )
        entries = response[1] if len(response) > 1 else []
        for entry_id, fields in entries:
            if fields is None:
                continue
            delivered: Any = await self._client.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            times = int(delivered[0]["times_delivered"]) if delivered else 0
            if times > self.max_deliveries:
                self._give_up(stream, entry_id, fields, times)
                continue
            log.info("claimed %s on %s (delivery %d)", entry_id, stream, times)
            self._dispatch(stream, entry_id, fields)

    def _give_up(self, stream: str, entry_id: bytes, fields: dict[Any, Any], times: int) -> None:
        """An entry every worker that took it died on: answer an error instead of killing the next one."""
        payload, reply_to = field(fields, "req"), field(fields, "reply")
        try:
            assert payload is not None and reply_to is not None
            request = InferenceRequest.from_bytes(payload)
        except Exception:
            self._put_reply(Reply(stream, entry_id, "", b"", time.time()))
            return
        self._in_flight[(stream, entry_id)] = request
        lost = InferenceFailedError(
            f"request {request.request_id} was taken by {times} workers and none answered it; giving up"
        )
        self._queue_reply(stream, entry_id, reply_to.decode(), request, error=encode_error(lost))

    async def _forget_dead_consumers(self) -> None:
        """Delete group consumers (dead workers) idle for an hour with nothing pending."""
        assert self._client is not None
        for stream in self._streams:
            for consumer in await self._client.xinfo_consumers(stream, GROUP):
                if consumer["pending"] == 0 and consumer["idle"] > 3_600_000:
                    await self._client.xgroup_delconsumer(stream, GROUP, consumer["name"])

    # -- liveness and registry changes --------------------------------------------------------

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat skipped, Redis unreachable: %s", exc)
            await asyncio.sleep(self.heartbeat_interval_s)

    def heartbeat(self) -> dict[str, Any]:
        """What ``GET /v1/workers`` shows for this worker."""
        return {
            "id": self.worker_id,
            "mode": "redis",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": sorted(self.keys.model_of(s) for s in self._streams),
            "in_flight": len(self._in_flight),
            "answered": self.answered,
            "started_at": self.started_at,
            "last_heartbeat": time.time(),
            **self.describe(),
        }

    async def _beat(self) -> None:
        assert self._client is not None
        await write_heartbeat(
            self._client, self.keys, self.heartbeat(), self.heartbeat_interval_s, list(self._in_flight)
        )

    async def _listen_registry(self) -> None:
        """Reload on registry-change messages; re-subscribe after Redis comes back."""
        backoff = 0.1
        while not self._stopping.is_set():
            assert self._client is not None
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.registry_channel)
                backoff = 0.1
                while not self._stopping.is_set():
                    message = await pubsub.get_message(timeout=self.block_ms / 1000)
                    if message is not None:
                        await self._registry_changed()
            except (RedisError, OSError) as exc:
                log.debug("registry channel lost (%s); re-subscribing", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _registry_changed(self) -> None:
        if self.on_registry_change is not None:
            try:
                await self.on_registry_change()
            except Exception:  # a broken registry write must not stop the worker serving what it has
                log.exception("reloading after a registry change failed")
        try:
            streams = [self.keys.requests(m) for m in sorted(self.models())]
        except Exception:
            log.exception("listing the models to serve failed; serving the same ones")
            return
        if streams != self._streams:
            log.info("now serving %s", ", ".join(self.keys.model_of(s) for s in streams))
            self._streams = streams  # the next XREADGROUP creates new groups and reads the new streams
        await self._beat()
