"""Distributed mode under faults: a worker SIGKILLed with requests in flight, Redis restarted.

Real processes throughout (gateway, workers, redis-server); answers are checked against the
network run in this process on the same inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading

import pytest
import redis
from redis_support import (
    REDIS_URL,
    RedisServer,
    assert_answers_match,
    classify_all,
    replies_written,
    start_gateway,
    start_worker,
    wait_for_workers,
    wait_until,
)
from tiny_zoo import IMAGE_MODEL

from workers.redis_streams import GROUP

pytestmark = pytest.mark.slow

FAST_BEATS = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5", "SPIKESERVE_CLAIM_IDLE_MS": "1000"}


def pending_of(client: redis.Redis, stream: str, consumer: str) -> list[bytes]:
    entries = client.xpending_range(stream, GROUP, "-", "+", 1000, consumername=consumer)
    return [entry["message_id"] for entry in entries]


def test_sigkilled_worker_loses_no_request_and_none_is_answered_twice(
    redis_registry, redis_inputs, redis_prefix, tmp_path
):
    bodies, expected = redis_inputs
    stream = f"{redis_prefix}:requests:{IMAGE_MODEL}"
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        gateway, base = start_gateway(redis_registry, REDIS_URL, redis_prefix, tmp_path, FAST_BEATS)
        stack.callback(gateway.stop)
        workers = {}
        for worker_id in ("w1", "w2"):
            workers[worker_id] = start_worker(
                redis_registry, REDIS_URL, redis_prefix, tmp_path, worker_id, [IMAGE_MODEL], env=FAST_BEATS
            )
            stack.callback(workers[worker_id].stop)
        wait_for_workers(base, {"w1", "w2"}, list(workers.values()))

        held_at_kill: list[bytes] = []
        load_done = threading.Event()

        def kill_w2_while_it_holds_requests() -> None:
            victim = workers["w2"].pid
            while not held_at_kill and not load_done.is_set():  # a load that ended first fails below
                # freeze it first, so that what it holds cannot be answered between the look and the kill
                os.kill(victim, signal.SIGSTOP)
                held = pending_of(client, stream, "w2")
                if held:
                    held_at_kill.extend(held)
                    workers["w2"].kill()
                    return
                os.kill(victim, signal.SIGCONT)
                load_done.wait(0.02)

        order = [i % len(bodies) for i in range(400)]
        # it looks from the start: on a fast machine the whole load can be answered within half a second
        killer = threading.Thread(target=kill_w2_while_it_holds_requests)
        killer.start()
        try:
            results = asyncio.run(classify_all(base, IMAGE_MODEL, [bodies[i] for i in order], concurrency=16))
        finally:
            load_done.set()
            killer.join()

        assert held_at_kill, "w2 was never seen holding a request"
        assert_answers_match(results, order, expected)  # every request answered, each correctly
        assert replies_written(REDIS_URL, redis_prefix) == len(order)  # and none twice
        assert pending_of(client, stream, "w2") == []  # what w2 held was claimed and answered
        assert "claimed" in workers["w1"].output()


def test_redis_restart_under_the_gateway_503_then_recovers(redis_registry, redis_inputs, tmp_path):
    bodies, expected = redis_inputs
    server = RedisServer().start()
    prefix = "restart"
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        gateway, base = start_gateway(redis_registry, server.url, prefix, tmp_path, FAST_BEATS)
        stack.callback(gateway.stop)
        worker = start_worker(
            redis_registry, server.url, prefix, tmp_path, "w1", [IMAGE_MODEL], env=FAST_BEATS
        )
        stack.callback(worker.stop)
        wait_for_workers(base, {"w1"}, [worker])
        assert_answers_match(asyncio.run(classify_all(base, IMAGE_MODEL, bodies[:4], 2)), range(4), expected)

        server.stop()
        down = asyncio.run(classify_all(base, IMAGE_MODEL, bodies[:4], 2))
        assert [status for status, _ in down] == [503] * 4
        assert all(answer["error"]["code"] == "unavailable" for _, answer in down)
        assert all("Redis" in answer["error"]["message"] for _, answer in down)

        server.start()  # same port, empty: streams, consumer groups and scripts are gone

        def answering() -> list:
            results = asyncio.run(classify_all(base, IMAGE_MODEL, bodies[:4], 2))
            assert {status for status, _ in results} <= {200, 503}, results
            return results if all(status == 200 for status, _ in results) else []

        recovered = wait_until(answering, 15, "the gateway answering again after Redis came back", 0.25)
        assert_answers_match(recovered, range(4), expected)
        assert gateway.process.poll() is None and worker.process.poll() is None  # nobody was restarted
