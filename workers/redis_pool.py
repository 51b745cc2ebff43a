"""The distributed worker pool: the gateway side of Redis Streams.

``submit`` puts a request on its model's stream (an atomic backlog check and ``XADD``), then
awaits a future. ONE background task reads this gateway's reply stream with a blocking ``XREAD``
and resolves the futures, so a waiting request costs no CPU; a reply that arrives twice finds
its future gone and is dropped. A second task refreshes the list of live workers from their
heartbeats (``GET /v1/workers``, the ``spikeserve_workers`` gauge, readiness), keeps the reply
stream alive, and tells workers through pub/sub when the registry changed.

Failures map to the typed errors of ``workers.errors``: backlog over the limit -> QueueFullError
(503 + Retry-After), deadline -> DeadlineExceededError (504), Redis unreachable or no live worker
serving the model -> WorkerUnavailableError (503). Nothing needs restarting after Redis comes
back: the next command reconnects and the reader resumes where it stopped.

Live streams go through a ``StreamRelay`` (``workers.redis_stream_relay``): a session is pinned to
one worker and moved, with fresh state, when that worker dies; its answers arrive on the same
reply stream (field ``win`` rather than ``res``) and the same reader hands them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.exceptions import RedisError

from workers import errors
from workers.error_codec import raise_for_error
from workers.heartbeat import read_live_workers
from workers.protocol import InferenceRequest, InferenceResult
from workers.redis_stream_relay import StreamRelay
from workers.redis_streams import ENQUEUE_LUA, REPLY_TTL_MS, StreamKeys, connect, field
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

LIVE_WORKERS = Gauge("spikeserve_workers", "Live workers seen by this gateway (heartbeat within 3 intervals)")


class RedisPool:
    """Sends requests to ``spikeserve worker`` processes through Redis Streams.

    registry_generation: a cheap callable returning the registry's generation counter
    (``Registry.generation``); when it moves, workers are told to reload over pub/sub.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "spikeserve",
        max_backlog: int = 10_000,
        heartbeat_interval_s: float = 2.0,
        gateway_id: str | None = None,
        registry_generation: Callable[[], int] | None = None,
        block_ms: int = 1_000,
        stream_window_timeout_s: float = 30.0,
    ) -> None:
        self.redis_url = redis_url
        self.keys = StreamKeys(prefix)
        self.max_backlog = max_backlog
        self.heartbeat_interval_s = heartbeat_interval_s
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self.reply_stream = self.keys.replies(self.gateway_id)
        self._registry_generation = registry_generation
        self._block_ms = block_ms
        self._client: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._enqueue: Any = None
        self._pending: dict[str, asyncio.Future[InferenceResult]] = {}
        self._pending_models: dict[str, str] = {}  # request id -> model, for the queue-depth gauge
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[dict[str, Any]] = []
        self._workers_known = False  # False until one refresh succeeded: do not refuse on an empty cache
        self._refreshed_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._redis_ok = False
        self._last_reply_id = b"0-0"
        self._published_generation: int | None = None
        self._closing = False
        self.duplicate_replies = 0
        self.streams = StreamRelay(
            self.keys,
            self.reply_stream,
            lambda: self._client,
            lambda: self._workers,
            window_timeout_s=stream_window_timeout_s,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, registry_generation: Callable[[], int] | None = None
    ) -> RedisPool:
        """Build from the service's settings (a type only: workers import nothing of service at run time)."""
        if not settings.redis_url:
            raise ValueError("the Redis pool needs settings.redis_url")
        return cls(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_backlog=settings.redis_max_backlog,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            registry_generation=registry_generation,
            # a window is a request: a worker that does not answer one within it is taken for dead
            stream_window_timeout_s=settings.request_timeout_s,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start the reply reader and the worker watcher.

        Returns without waiting for workers: a gateway may start before them, and Redis may be down
        at start-up; ``is_ready()`` says when requests can be served.
        """
        self._client = connect(self.redis_url)
        # the blocking reader gets its own connection, with a timeout longer than its BLOCK
        self._reader = connect(self.redis_url, socket_timeout=self._block_ms / 1000 + 5.0)
        self._enqueue = self._client.register_script(ENQUEUE_LUA)
        with contextlib.suppress(RedisError, OSError):
            # start reading after what is already there: replies to an earlier gateway with this id are stale
            info = await self._client.xinfo_stream(self.reply_stream)
            self._last_reply_id = info["last-generated-id"]
        self._closing = False
        await self._refresh()
        self._tasks = [
            asyncio.create_task(self._read_replies(), name="redis-pool-replies"),
            asyncio.create_task(self._watch(), name="redis-pool-watch"),
        ]

    async def stop(self) -> None:
        # the flag as well as cancel(): redis-py can swallow a cancellation that lands in a blocking
        # read, and a loop that checks the flag still ends after one BLOCK
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._block_ms / 1000 + 2.0)
        self._tasks = []
        self._fail_pending(errors.WorkerUnavailableError("the gateway is shutting down"))
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self.reply_stream)
            await self._client.aclose()
        if self._reader is not None:
            await self._reader.aclose()
        self._client = self._reader = None
        LIVE_WORKERS.set(0)

    # -- requests -----------------------------------------------------------------------------

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        if self._client is None:
            raise errors.WorkerUnavailableError("the Redis worker pool is not started")
        await self._check_served(request.model_name)
        timeout = request.deadline - time.time()
        if timeout <= 0:
            raise errors.DeadlineExceededError(
                f"request {request.request_id} reached its deadline before queueing"
            )
        if request.request_id in self._pending:  # the gateway mints ids; a repeat is a bug, not a retry
            raise errors.InferenceFailedError(f"request id {request.request_id} is already waiting")
        # registered before the XADD: a fast worker can answer before XADD's reply reaches us
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        self._pending_models[request.request_id] = request.model_name
        try:
            try:
                entry_id = await self._enqueue(
                    keys=[self.keys.requests(request.model_name)],
                    args=[self.max_backlog, 2 * self.max_backlog, request.to_bytes(), self.reply_stream],
                )
            except (RedisError, OSError) as exc:
                self._redis_ok = False
                raise errors.WorkerUnavailableError(
                    f"Redis at {self._safe_url()} is unreachable: {exc}"
                ) from exc
            if entry_id is None:
                raise errors.QueueFullError(
                    f"model {request.model_name!r} has {self.max_backlog} or more requests waiting; "
                    "retry shortly",
                    retry_after_s=1.0,
                )
            try:
                result = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                await self._withdraw(request.model_name, entry_id)
                raise errors.DeadlineExceededError(
                    f"no worker answered request {request.request_id} within {timeout:.1f} s"
                ) from None
            except asyncio.CancelledError:  # its client left, or a sibling image of it was refused
                await self._withdraw(request.model_name, entry_id)
                raise
        finally:  # answered, refused, timed out or cancelled: a late reply now finds nobody waiting
            self._pending.pop(request.request_id, None)
            self._pending_models.pop(request.request_id, None)
        return raise_for_error(result)

    async def _withdraw(self, model: str, entry_id: Any) -> None:
        """Take a request nobody waits for off its stream, so no worker that has not read it yet
        computes it (one that already has answers into the void: its reply finds no waiter)."""
        if self._client is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._client.xdel(self.keys.requests(model), entry_id)

    async def _check_served(self, model: str) -> None:
        """Refuse at once, rather than after the deadline, when no live worker reads the model's stream."""
        if not self._workers_known or self._served(model):
            return
        async with self._refresh_lock:  # one look at a time, however many requests ask
            if time.monotonic() - self._refreshed_at > 0.25:  # a worker may have started since the last look
                await self._refresh()
        if self._workers_known and not self._served(model):
            live = len(self._workers)
            raise errors.WorkerUnavailableError(
                f"no live worker serves model {model!r} ({live} worker(s) alive); "
                f"start one with `spikeserve worker --redis URL --models {model}`"
            )

    def _served(self, model: str) -> bool:
        return any(model in worker.get("models", ()) for worker in self._workers)

    async def _read_replies(self) -> None:
        """The one reader of this gateway's reply stream: blocks in XREAD, resolves futures."""
        backoff = 0.1
        while not self._closing:
            assert self._reader is not None
            try:
                response: Any = await self._reader.xread(
                    {self.reply_stream: self._last_reply_id}, count=512, block=self._block_ms
                )
                backoff = 0.1
            except (RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning("reply stream unreadable (%s); failing in-flight requests, retrying", exc)
                self._redis_ok = False
                # Redis restarted without its data, or is gone: the replies of in-flight requests may never
                # come, so answer them now (503) rather than let each wait for its deadline
                self._fail_pending(errors.WorkerUnavailableError(f"lost the connection to Redis: {exc}"))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._redis_ok = True
            for _stream, entries in response:
                for entry_id, fields in entries:
                    self._last_reply_id = entry_id
                    window = field(fields, "win")
                    if window is not None:
                        self._deliver_window(window)
                    else:
                        self._deliver(field(fields, "res"))

    def _deliver(self, payload: bytes | None) -> None:
        if payload is None:
            return
        try:
            result = InferenceResult.from_bytes(payload)
        except Exception:  # a malformed reply must not stop the reader that every request depends on
            log.exception("dropping an undecodable reply")
            return
        future = self._pending.get(result.request_id)
        if future is None or future.done():
            # answered already (a claimed entry finished twice) or given up on (deadline): deliver once
            self.duplicate_replies += 1
            return
        future.set_result(result)

    def _deliver_window(self, payload: bytes) -> None:
        try:
            answer = StreamAnswer.from_bytes(payload)
        except Exception:
            log.exception("dropping an undecodable stream answer")
            return
        self.streams.deliver(answer)

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self.streams.fail_all(error)

    # -- workers, liveness, registry changes --------------------------------------------------

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self._refresh()

    async def _refresh(self) -> None:
        """Read live workers' heartbeats; keep the reply stream alive; publish registry changes."""
        assert self._client is not None
        try:
            workers = await read_live_workers(self._client, self.keys, self.heartbeat_interval_s)
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.pexpire(self.reply_stream, REPLY_TTL_MS)
                pipe.xtrim(self.reply_stream, minid=self._last_reply_id)  # replies read already
                await pipe.execute()
            await self._publish_registry_change()
        except (RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning("Redis unreachable while refreshing workers: %s", exc)
            self._redis_ok = False
            return
        self._workers = workers
        self.streams.workers_changed(workers)  # windows held by a worker that died move on
        self._workers_known = True
        self._refreshed_at = time.monotonic()
        self._redis_ok = True
        LIVE_WORKERS.set(len(workers))

    async def _publish_registry_change(self) -> None:
        if self._registry_generation is None or self._client is None:
            return
        generation = self._registry_generation()
        if self._published_generation is not None and generation != self._published_generation:
            await self.notify_registry_changed(generation)
        self._published_generation = generation

    async def notify_registry_changed(self, generation: int | None = None) -> int:
        """Tell every worker that the registry changed (an alias moved, a version came or went).

        Management routes may call this right after a write; the watcher also calls it when the
        registry's generation moves. Returns the number of workers that heard it.
        """
        if self._client is None:
            return 0
        message = json.dumps({"generation": generation, "gateway": self.gateway_id})
        return int(await self._client.publish(self.keys.registry_channel, message))

    def is_ready(self) -> bool:
        """Redis reachable and at least one live worker."""
        return self._redis_ok and bool(self._workers)

    def queue_depth(self) -> int:
        """Requests this gateway has sent and not yet seen answered."""
        return len(self._pending)

    def queue_depth_by_model(self) -> dict[str, int]:
        """``queue_depth`` per model, for the ``spikeserve_queue_depth{model}`` gauge."""
        depths: dict[str, int] = {}
        for model in self._pending_models.values():
            depths[model] = depths.get(model, 0) + 1
        return depths

    def loaded_models(self) -> list[tuple[str, int]]:
        """The (name, version) pairs that live workers have loaded, as their heartbeats say."""
        loaded: set[tuple[str, int]] = set()
        for worker in self._workers:
            for ref in worker.get("loaded", ()):
                name, _, version = str(ref).rpartition(":")
                if name and version.isdigit():
                    loaded.add((name, int(version)))
        return sorted(loaded)

    def describe_workers(self) -> list[dict[str, Any]]:
        """Live workers as of the last heartbeat refresh: id, models, device, batches, last beat."""
        return [dict(worker) for worker in self._workers]

    def failed_models(self) -> dict[str, str]:
        """What live workers could not load, as their heartbeats say."""
        failed: dict[str, str] = {}
        for worker in self._workers:
            reported = worker.get("failed")
            if isinstance(reported, dict):
                failed.update({str(ref): str(reason) for ref, reason in reported.items()})
        return failed

    def unload_model(self, name: str, version: int) -> None:
        """Nothing to do here: workers drop deleted versions when they hear of the change."""

    async def open_stream(self, session_id: str, name: str, version: int) -> tuple[StreamMode, int]:
        if self._client is None:
            raise errors.WorkerUnavailableError("the Redis worker pool is not started")
        if not self._workers_known or not self._workers:
            async with self._refresh_lock:
                await self._refresh()
        return await self.streams.open(session_id, name, version)

    async def run_stream_window(self, window: StreamWindow) -> StreamAnswer:
        return await self.streams.run(window)

    async def close_stream(self, session_id: str) -> None:
        await self.streams.close(session_id)

    def _safe_url(self) -> str:
        """The Redis URL without its password, for messages."""
        scheme, sep, rest = self.redis_url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else self.redis_url
