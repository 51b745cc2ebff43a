"""The gateway side of live streams in distributed mode: pin each session to a worker, move it when
that worker dies, answer each window once.

A session's membranes live on the worker that runs it, so the relay pins the session (the
gateway minted its id) to one live worker that serves the model and reads its own window
stream (``"streams": true`` in its heartbeat), the one holding the fewest sessions. Every message
of the session goes to that worker's ``{prefix}:windows:{worker_id}``; answers come back on the
gateway's reply stream (read by ``RedisPool``, handed to ``deliver``).

A worker is lost when its heartbeat stops (the pool's watcher calls ``workers_changed``) or when a
window gets no answer within ``window_timeout_s``. The window it held is then sent again, with
the same sequence number, to another live worker, which starts the session from rest: that
answer says ``state_reset``, and the session stays on the new worker. An answer is accepted only
for a window still waiting (session id, seq) and only from the worker it was last sent to, so a
window is answered once even when its first worker was only slow and answers late.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers import errors
from workers.error_codec import raise_for_error
from workers.redis_streams import REPLY_TTL_MS, StreamKeys
from workers.stream_protocol import StreamAnswer, StreamMode, StreamOpen, StreamWindow

log = logging.getLogger(__name__)

MAX_MOVES = 3  # workers one window may be sent to before the session is given up (503)
WINDOWS_MAXLEN = 10_000  # safety cap of a worker's window stream (its worker deletes what it reads)


class WorkerLost(Exception):
    """The worker a session was pinned to stopped beating or did not answer in time."""

    def __init__(self, worker_id: str, why: str) -> None:
        super().__init__(f"worker {worker_id} {why}")
        self.worker_id = worker_id


@dataclass
class _Pin:
    worker_id: str
    model_name: str
    model_version: int
    moved: bool = False  # the session moved since its last answer: the next one says state_reset


@dataclass
class _PendingWindow:
    worker_id: str
    future: asyncio.Future[StreamAnswer]


class StreamRelay:
    """Pins sessions to workers and relays their windows; ``RedisPool`` owns one.

    client: returns the pool's Redis client (None while stopped). live_workers: the heartbeats of
    the workers alive as of the pool's last look. reply_stream: where workers answer.
    """

    def __init__(
        self,
        keys: StreamKeys,
        reply_stream: str,
        client: Callable[[], aioredis.Redis | None],
        live_workers: Callable[[], list[dict[str, Any]]],
        *,
        window_timeout_s: float = 30.0,
    ) -> None:
        self.keys = keys
        self.reply_stream = reply_stream
        self._client = client
        self._live_workers = live_workers
        self.window_timeout_s = window_timeout_s
        self._pins: dict[str, _Pin] = {}
        self._waiting: dict[tuple[str, int], _PendingWindow] = {}
        self.duplicate_answers = 0  # answers dropped: late, from a worker the session had left
        self._forgetting: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.moves = 0

    # -- sessions -------------------------------------------------------------------------------

    async def open(self, session_id: str, name: str, version: int) -> tuple[StreamMode, int]:
        """Pin ``session_id`` to a worker and learn the network's stream mode from it."""
        if session_id in self._pins:  # the gateway mints ids; a repeat is a bug, not a retry
            raise errors.InferenceFailedError(f"stream session {session_id} is already open")
        tried: set[str] = set()
        while True:
            worker_id = self._choose(name, tried)
            request = StreamOpen(session_id, name, version)
            try:
                answer = await self._ask(worker_id, "open", request.to_bytes(), session_id, 0)
            except WorkerLost as lost:
                log.warning("stream %s not opened on %s; trying another worker", session_id, lost)
                tried.add(worker_id)
                if len(tried) >= MAX_MOVES:
                    raise errors.WorkerUnavailableError(f"no worker opened the stream: {lost}") from None
                continue
            self._pins[session_id] = _Pin(worker_id, name, version)
            return answer.mode, answer.context_steps

    async def run(self, window: StreamWindow) -> StreamAnswer:
        """Answer ``window`` once, on the session's worker or, after that one is lost, another."""
        pin = self._pins.get(window.session_id)
        if pin is None:
            raise errors.InferenceFailedError(f"stream session {window.session_id} is not open")
        payload = window.to_bytes()
        for _ in range(MAX_MOVES):
            try:
                answer = await self._ask(pin.worker_id, "window", payload, window.session_id, window.seq)
                break
            except WorkerLost as lost:
                self._move(window.session_id, pin, lost)
        else:
            raise errors.WorkerUnavailableError(
                f"stream session {window.session_id} lost {MAX_MOVES} workers in a row; giving up"
            )
        if pin.moved:
            pin.moved = False
            if not window.reset:  # a reset the client asked for is no surprise
                answer = dataclasses.replace(answer, state_reset=True)
        return answer

    async def close(self, session_id: str) -> None:
        """Unpin; tell its worker to forget the state (best effort: a dead worker holds nothing)."""
        pin = self._pins.pop(session_id, None)
        if pin is not None:
            await self._forget_on(pin.worker_id, session_id, pin)

    def sessions_on(self, worker_id: str) -> int:
        return sum(1 for pin in self._pins.values() if pin.worker_id == worker_id)

    def _move(self, session_id: str, pin: _Pin, lost: WorkerLost) -> None:
        """Re-pin the session to another live worker (503 when none serves its model)."""
        old = pin.worker_id
        pin.worker_id = self._choose(pin.model_name, {old})
        pin.moved = True
        self.moves += 1
        log.warning("stream %s: %s; moved to %s with fresh state", session_id, lost, pin.worker_id)
        # the old worker may only be slow: have it drop the state it would otherwise keep for nobody
        task = asyncio.create_task(self._forget_on(old, session_id, pin))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget_on(self, worker_id: str, session_id: str, pin: _Pin) -> None:
        request = StreamOpen(session_id, pin.model_name, pin.model_version, close=True)
        with contextlib.suppress(RedisError, OSError, errors.WorkerUnavailableError):
            await self._send(worker_id, "close", request.to_bytes())

    def _choose(self, name: str, exclude: set[str]) -> str:
        """The live worker that serves ``name``, reads its window stream and holds the fewest sessions."""
        candidates = [
            worker
            for worker in self._live_workers()
            if worker.get("streams") and name in worker.get("models", ()) and worker.get("id") not in exclude
        ]
        if not candidates:
            raise errors.WorkerUnavailableError(
                f"no live worker serves live streams of model {name!r}"
                + (f" besides {', '.join(sorted(exclude))}" if exclude else "")
                + f"; start one with `spikeserve worker --redis URL --models {name}`"
            )
        best = min(
            candidates,
            key=lambda w: (self.sessions_on(str(w["id"])), int(w.get("stream_sessions", 0)), str(w["id"])),
        )
        return str(best["id"])

    # -- the wire -------------------------------------------------------------------------------

    async def _ask(self, worker_id: str, op: str, payload: bytes, session_id: str, seq: int) -> StreamAnswer:
        """Send one message to ``worker_id`` and await its answer; ``WorkerLost`` when none comes."""
        if worker_id not in {str(w.get("id")) for w in self._live_workers()}:
            raise WorkerLost(worker_id, "stopped beating")
        key = (session_id, seq)
        future: asyncio.Future[StreamAnswer] = asyncio.get_running_loop().create_future()
        # registered before the XADD: a fast worker can answer before XADD's reply reaches us
        self._waiting[key] = _PendingWindow(worker_id, future)
        try:
            await self._send(worker_id, op, payload)
            try:
                answer = await asyncio.wait_for(future, self.window_timeout_s)
            except TimeoutError:
                raise WorkerLost(worker_id, f"did not answer within {self.window_timeout_s:g} s") from None
        finally:
            self._waiting.pop(key, None)
        return raise_for_error(answer)

    async def _send(self, worker_id: str, op: str, payload: bytes) -> None:
        client = self._client()
        if client is None:
            raise errors.WorkerUnavailableError("the Redis worker pool is not started")
        inbox = self.keys.windows(worker_id)
        try:
            async with client.pipeline(transaction=False) as pipe:
                fields: Any = {"op": op, "msg": payload, "reply": self.reply_stream}
                pipe.xadd(inbox, fields, maxlen=WINDOWS_MAXLEN, approximate=True)
                pipe.pexpire(inbox, REPLY_TTL_MS)  # gone a while after its worker died
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise errors.WorkerUnavailableError(f"Redis is unreachable: {exc}") from exc

    def deliver(self, answer: StreamAnswer) -> None:
        """An answer from a worker's reply: to its waiting window, once, from the worker it was sent to."""
        waiting = self._waiting.get((answer.session_id, answer.seq))
        if waiting is None or waiting.future.done() or waiting.worker_id != answer.worker_id:
            self.duplicate_answers += 1
            return
        waiting.future.set_result(answer)

    def workers_changed(self, live: list[dict[str, Any]]) -> None:
        """Fail over every window waiting on a worker that is no longer alive."""
        alive = {str(worker.get("id")) for worker in live}
        for waiting in self._waiting.values():
            if waiting.worker_id not in alive and not waiting.future.done():
                waiting.future.set_exception(WorkerLost(waiting.worker_id, "stopped beating"))

    def fail_all(self, error: Exception) -> None:
        """Redis is gone: every waiting window fails with ``error`` (the sessions close with it)."""
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(error)
