"""workers/batcher.py: grouping, limits, delays, deadlines, back-pressure, failures, shutdown.

``run_batch`` here is a plain function that records what it was given; no torch involved.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from workers.batcher import Batcher
from workers.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    QueueFullError,
    WorkerUnavailableError,
)
from workers.protocol import InferenceRequest, InferenceResult


def make_request(i: int, model: str = "m", steps: int = 4, deadline_s: float = 10.0) -> InferenceRequest:
    return InferenceRequest(
        request_id=f"r{i}",
        model_name=model,
        model_version=1,
        kind="image",
        array=np.full((1, 2, 2), float(i), dtype=np.float32),
        time_steps=steps,
        deadline=time.time() + deadline_s,
    )


class Recorder:
    """A run_batch that answers each request with its own value and remembers every batch, and
    the most batches it ever ran at once."""

    def __init__(self, compute_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[InferenceRequest]] = []
        self.compute_s = compute_s
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def __call__(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        with self.lock:
            self.batches.append(list(requests))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.fail_on is not None and any(r.request_id == f"r{self.fail_on}" for r in requests):
                raise RuntimeError("boom")
            time.sleep(self.compute_s)
        finally:
            with self.lock:
                self.running -= 1
        return [
            InferenceResult(
                request_id=r.request_id,
                model_name=r.model_name,
                model_version=r.model_version,
                time_steps=r.time_steps,
                probabilities=(float(r.array.flat[0]),),
                batch_size=len(requests),
            )
            for r in requests
        ]


def make_batcher(
    run_batch: Recorder, size: int = 8, delay_ms: float = 20.0, queue: int = 100, at_once: int = 1
) -> Batcher:
    return Batcher(
        run_batch,
        max_batch_size_for=lambda _m: size,
        max_delay_ms_for=lambda _m: delay_ms,
        max_queue_size=queue,
        concurrent_batches=at_once,
    )


async def _with_batcher(batcher: Batcher, body):  # type: ignore[no-untyped-def]
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def test_concurrent_requests_share_a_batch_and_get_their_own_answers() -> None:
    run = Recorder()
    batcher = make_batcher(run, size=8, delay_ms=50)

    async def body() -> list[InferenceResult]:
        return await asyncio.gather(*(batcher.submit(make_request(i)) for i in range(6)))

    results = asyncio.run(_with_batcher(batcher, body))
    assert [r.request_id for r in results] == [f"r{i}" for i in range(6)]
    assert [r.probabilities[0] for r in results] == [float(i) for i in range(6)]
    assert [len(b) for b in run.batches] == [6]


def test_batches_never_exceed_max_batch_size() -> None:
    run = Recorder(compute_s=0.01)
    batcher = make_batcher(run, size=4, delay_ms=5)

    async def body() -> list[InferenceResult]:
        return await asyncio.gather(*(batcher.submit(make_request(i)) for i in range(10)))

    results = asyncio.run(_with_batcher(batcher, body))
    assert len(results) == 10
    assert max(len(b) for b in run.batches) == 4
    assert sum(len(b) for b in run.batches) == 10


@pytest.mark.parametrize("at_once", [1, 2])
def test_one_batch_at_a_time_unless_more_are_allowed(at_once: int) -> None:
    run = Recorder(compute_s=0.15)
    batcher = make_batcher(run, size=4, delay_ms=5, at_once=at_once)

    async def body() -> list[InferenceResult]:
        return await asyncio.gather(*(batcher.submit(make_request(i)) for i in range(8)))

    results = asyncio.run(_with_batcher(batcher, body))
    assert [r.request_id for r in results] == [f"r{i}" for i in range(8)]
    assert [len(b) for b in run.batches] == [4, 4]
    assert run.most_at_once == at_once


def test_while_every_runner_computes_the_next_batch_fills_up() -> None:
    run = Recorder(compute_s=0.15)
    batcher = make_batcher(run, size=8, delay_ms=1, at_once=2)

    async def body() -> list[InferenceResult]:
        first = [asyncio.create_task(batcher.submit(make_request(i))) for i in range(2)]
        await asyncio.sleep(0.03)  # the first batch runs; the second runner takes the next one alone
        second = [asyncio.create_task(batcher.submit(make_request(i))) for i in range(2, 3)]
        await asyncio.sleep(0.03)  # both runners busy: these wait together for a free one
        rest = [asyncio.create_task(batcher.submit(make_request(i))) for i in range(3, 8)]
        return await asyncio.gather(*first, *second, *rest)

    results = asyncio.run(_with_batcher(batcher, body))
    assert len(results) == 8
    assert [len(b) for b in run.batches] == [2, 1, 5]


def test_at_least_one_batch_at_a_time() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make_batcher(Recorder(), at_once=0)


def test_different_models_and_time_steps_never_share_a_batch() -> None:
    run = Recorder()
    batcher = make_batcher(run, size=16, delay_ms=30)

    async def body() -> list[InferenceResult]:
        requests = [
            make_request(0, "a"),
            make_request(1, "b"),
            make_request(2, "a", steps=8),
            make_request(3, "a"),
        ]
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    asyncio.run(_with_batcher(batcher, body))
    keys = [{r.batch_key for r in batch} for batch in run.batches]
    assert all(len(k) == 1 for k in keys)
    assert sorted(len(b) for b in run.batches) == [1, 1, 2]


def test_a_lone_request_waits_about_max_delay_then_runs() -> None:
    run = Recorder()
    batcher = make_batcher(run, size=8, delay_ms=80)

    async def body() -> float:
        started = time.perf_counter()
        await batcher.submit(make_request(0))
        return time.perf_counter() - started

    elapsed = asyncio.run(_with_batcher(batcher, body))
    assert 0.07 <= elapsed < 1.0


def test_a_full_batch_leaves_without_waiting_for_the_delay() -> None:
    run = Recorder()
    batcher = make_batcher(run, size=4, delay_ms=5_000)

    async def body() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(make_request(i)) for i in range(4)))
        return time.perf_counter() - started

    assert asyncio.run(_with_batcher(batcher, body)) < 2.0


def test_full_queue_answers_queue_full_with_retry_after() -> None:
    run = Recorder(compute_s=0.2)
    batcher = make_batcher(run, size=1, delay_ms=0, queue=3)

    async def body() -> tuple[list[object], QueueFullError]:
        tasks = [asyncio.create_task(batcher.submit(make_request(0)))]
        await asyncio.sleep(0.05)  # r0 is running
        tasks += [asyncio.create_task(batcher.submit(make_request(i))) for i in range(1, 4)]
        await asyncio.sleep(0)  # r1..r3 fill the queue
        with pytest.raises(QueueFullError) as caught:
            await batcher.submit(make_request(99))
        return await asyncio.gather(*tasks), caught.value

    results, error = asyncio.run(_with_batcher(batcher, body))
    assert len(results) == 4
    assert error.retry_after_s >= 1
    assert "queue is full" in error.message


def test_deadline_gives_deadline_exceeded_and_the_request_never_runs() -> None:
    run = Recorder(compute_s=0.3)
    batcher = make_batcher(run, size=1, delay_ms=0)

    async def body() -> None:
        first = asyncio.create_task(batcher.submit(make_request(0)))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(make_request(1, deadline_s=0.1))
        await first

    asyncio.run(_with_batcher(batcher, body))
    ran = [r.request_id for batch in run.batches for r in batch]
    assert ran == ["r0"]


def test_a_request_already_past_its_deadline_is_refused() -> None:
    batcher = make_batcher(Recorder())

    async def body() -> None:
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(make_request(0, deadline_s=-1))

    asyncio.run(_with_batcher(batcher, body))


def test_a_failing_batch_fails_only_its_requests() -> None:
    run = Recorder(fail_on=0)
    batcher = make_batcher(run, size=1, delay_ms=0)

    async def body() -> InferenceResult:
        with pytest.raises(InferenceFailedError, match="boom"):
            await batcher.submit(make_request(0))
        return await batcher.submit(make_request(1))

    assert asyncio.run(_with_batcher(batcher, body)).probabilities == (1.0,)


@pytest.mark.parametrize("at_once", [1, 2])
def test_stop_fails_queued_requests_and_submit_before_start_is_refused(at_once: int) -> None:
    run = Recorder(compute_s=0.2)
    batcher = make_batcher(run, size=1, delay_ms=0, at_once=at_once)

    async def body() -> list[object]:
        with pytest.raises(WorkerUnavailableError):
            await batcher.submit(make_request(0))
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(make_request(i))) for i in range(2 + at_once)]
        await asyncio.sleep(0.05)
        assert batcher.depth() == 2
        assert batcher.depth_by_model() == {"m": 2}
        await batcher.stop()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(body())
    assert all(isinstance(o, InferenceResult | WorkerUnavailableError) for o in outcomes[:at_once])
    assert all(isinstance(o, WorkerUnavailableError) for o in outcomes[at_once:])
