"""Dynamic batching: group queued requests by ``batch_key`` and hand them to ``run_batch`` together.

A batch for one key leaves the queue when it holds ``max_batch_size_for(model)`` requests or when
its oldest request has waited ``max_delay_ms_for(model)``. Up to ``concurrent_batches`` batches run
at once, each in a worker thread of its own (``run_batch`` is synchronous); while they all compute,
the next one fills up: under load batches grow by themselves, idle the extra wait is at most
``max_delay_ms``. How many at once suits which device: ``workers.concurrency``.

The queue is bounded: past ``max_queue_size`` waiting requests ``submit`` raises ``QueueFullError``
(HTTP 503 with Retry-After). A request still waiting at its deadline gets ``DeadlineExceededError``
(HTTP 504) and is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from workers.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    QueueFullError,
    WorkerUnavailableError,
)
from workers.protocol import InferenceRequest, InferenceResult

log = logging.getLogger("spikeserve.batcher")

# requests sharing one batch_key in, one result per request out, in the same order
RunBatch = Callable[[Sequence[InferenceRequest]], list[InferenceResult]]


def group_by_batch_key(requests: Sequence[InferenceRequest]) -> list[list[int]]:
    """Indices of ``requests`` in groups that may share one ``run_batch`` (same ``batch_key``),
    in order of first appearance: for a caller that gets its batches ready-made (TorchServe)."""
    groups: dict[Hashable, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.batch_key, []).append(index)
    return list(groups.values())


@dataclass
class _Waiting:
    request: InferenceRequest
    future: asyncio.Future[InferenceResult]
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Per-key queues in front of a synchronous ``run_batch``. Use from one event loop."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size_for: Callable[[str], int],
        max_delay_ms_for: Callable[[str], float],
        max_queue_size: int,
        concurrent_batches: int = 1,
    ) -> None:
        if concurrent_batches < 1:
            raise ValueError("concurrent_batches must be at least 1")
        self._run_batch = run_batch
        self._concurrent_batches = concurrent_batches
        self._max_batch_size_for = max_batch_size_for
        self._max_delay_ms_for = max_delay_ms_for
        self._max_queue_size = max_queue_size
        self._queues: dict[Hashable, deque[_Waiting]] = {}
        self._waiting = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._batch_seconds = 0.0  # moving average of batch durations, for Retry-After
        self.batches_run = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()  # bound to the running loop
        self._slots = asyncio.Semaphore(self._concurrent_batches)
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrent_batches, thread_name_prefix="spikeserve-batch"
        )
        self._task = asyncio.create_task(self._loop(), name="spikeserve-batcher")

    async def stop(self) -> None:
        """Stop taking batches; requests still queued fail with ``WorkerUnavailableError``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running)  # each task leaves the set when it finishes
        for batch_task in running:
            batch_task.cancel()
        for batch_task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await batch_task
        for queue in self._queues.values():
            while queue:
                waiting = queue.popleft()
                if not waiting.future.done():
                    waiting.future.set_exception(WorkerUnavailableError("the server is shutting down"))
        self._queues.clear()
        self._waiting = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the client side ---------------------------------------------------------------------

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        """Queue ``request`` and wait for its result (which may carry an ``error``)."""
        if self._task is None:
            raise WorkerUnavailableError("the worker is not running; retry shortly")
        if self._waiting >= self._max_queue_size:
            retry_after = self.retry_after_s()
            raise QueueFullError(
                f"the queue is full ({self._waiting} requests waiting); retry after {retry_after:.0f} s",
                retry_after_s=retry_after,
            )
        remaining = request.deadline - time.time()
        if remaining <= 0:
            raise DeadlineExceededError("the request's deadline passed before it was queued")
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(request.batch_key, deque()).append(_Waiting(request, future))
        self._waiting += 1
        self._wakeup.set()
        try:
            # wait_for cancels the future on timeout (or when the client goes away), so the loop
            # skips this request instead of computing an answer nobody reads.
            return await asyncio.wait_for(future, timeout=remaining)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no answer within the request's deadline ({remaining:.1f} s); the server is overloaded "
                "or the batch took too long"
            ) from None

    def depth(self) -> int:
        """Requests waiting for a batch (not counting the batch running now)."""
        return self._waiting

    def depth_by_model(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        for queue in self._queues.values():
            if queue:
                model = queue[0].request.model_name
                depths[model] = depths.get(model, 0) + len(queue)
        return depths

    def retry_after_s(self) -> float:
        """Seconds until the queue has likely drained by one full batch or more (at least 1)."""
        batches_ahead = self._waiting / max(self._max_batch_size_for(""), 1) / self._concurrent_batches
        return float(max(1, math.ceil(batches_ahead * self._batch_seconds)))

    # -- the worker side ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every future batch
                log.exception("batcher loop error")
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        """Start the batch that is due, or sleep until one is due or a request arrives.

        A batch is taken only once a runner is free: while every runner computes, requests keep
        joining the queue, so the next batch leaves as large as the load makes it."""
        await self._slots.acquire()
        started = False
        try:
            key, wait_s = self._next_ready(time.monotonic())
            if key is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait_s)
                return
            batch = self._take(key)
            if batch:
                task = asyncio.create_task(self._run_then_free_slot(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                started = True
        finally:
            if not started:
                self._slots.release()

    async def _run_then_free_slot(self, batch: list[_Waiting]) -> None:
        try:
            await self._run(batch)
        finally:
            self._slots.release()

    def _next_ready(self, now: float) -> tuple[Hashable | None, float | None]:
        """The key whose batch should run now (oldest first), else how long until one is due."""
        ready_key: Hashable | None = None
        ready_since = math.inf
        wait_s: float | None = None
        for key, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            model = head.request.model_name
            due = head.queued_at + self._max_delay_ms_for(model) / 1000.0
            if len(queue) >= self._max_batch_size_for(model) or due <= now:
                if head.queued_at < ready_since:
                    ready_key, ready_since = key, head.queued_at
            else:
                wait_s = due - now if wait_s is None else min(wait_s, due - now)
        return ready_key, wait_s

    def _take(self, key: Hashable) -> list[_Waiting]:
        queue = self._queues[key]
        limit = max(self._max_batch_size_for(queue[0].request.model_name), 1)
        batch: list[_Waiting] = []
        now = time.time()
        while queue and len(batch) < limit:
            waiting = queue.popleft()
            self._waiting -= 1
            if waiting.future.done():  # timed out or abandoned by its client
                continue
            if waiting.request.deadline <= now:
                waiting.future.set_exception(
                    DeadlineExceededError("the request's deadline passed in the queue")
                )
                continue
            batch.append(waiting)
        if not queue:
            del self._queues[key]
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        requests = [waiting.request for waiting in batch]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, requests)
        except asyncio.CancelledError:  # stop() while this batch ran: nobody will set these results
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(WorkerUnavailableError("the server is shutting down"))
            raise
        except Exception as exc:  # run_batch should not raise; if it does, fail this batch only
            log.exception("run_batch raised for a batch of %d", len(batch))
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(InferenceFailedError(f"the batch failed: {exc}"))
            return
        finally:
            elapsed = time.perf_counter() - started
            self._batch_seconds = (
                elapsed if not self.batches_run else 0.8 * self._batch_seconds + 0.2 * elapsed
            )
            self.batches_run += 1
        if len(results) != len(batch):
            log.error("run_batch answered %d results for a batch of %d", len(results), len(batch))
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(
                        InferenceFailedError("the worker returned no result for the request")
                    )
            return
        # by position, never by id: result i answers request i
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)
