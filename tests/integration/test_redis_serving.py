"""Distributed mode end to end: a real gateway and two real worker processes on Redis (127.0.0.1:6379).

Every answer is checked against the network run in this process on the same input, so a reply
delivered to the wrong request, lost, or written twice fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import numpy as np
import pytest
import redis
from redis_support import (
    ADMIN_TOKEN,
    REDIS_URL,
    assert_answers_match,
    classify_all,
    live_workers,
    npy_bytes,
    replies_written,
    start_gateway,
    start_worker,
    wait_for_workers,
    wait_until,
)
from tiny_zoo import IMAGE_MODEL, build_tiny_registry, register_danet

pytestmark = pytest.mark.slow

FAST_BEATS = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5", "SPIKESERVE_CLAIM_IDLE_MS": "1000"}


def test_two_workers_answer_200_requests_from_16_clients(
    redis_registry, redis_inputs, redis_prefix, tmp_path
):
    bodies, expected = redis_inputs
    # the gateway runs where torch cannot be imported, as in the slim gateway image
    no_torch = tmp_path / "no-torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text(
        "raise ImportError('torch is not installed in the gateway image')\n"
    )
    gateway_env = {**FAST_BEATS, "PYTHONPATH": str(no_torch.parent)}
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(redis_registry, REDIS_URL, redis_prefix, tmp_path, gateway_env)
        stack.callback(gateway.stop)
        workers = []
        for worker_id in ("w1", "w2"):
            worker = start_worker(
                redis_registry, REDIS_URL, redis_prefix, tmp_path, worker_id, [IMAGE_MODEL], env=FAST_BEATS
            )
            stack.callback(worker.stop)
            workers.append(worker)
        wait_for_workers(base, {"w1", "w2"}, workers)

        order = [i % len(bodies) for i in range(200)]
        results = asyncio.run(classify_all(base, IMAGE_MODEL, [bodies[i] for i in order], concurrency=16))

        assert_answers_match(results, order, expected)
        assert len({answer["request_id"] for _status, answer in results}) == 200
        assert replies_written(REDIS_URL, redis_prefix) == 200  # none answered twice

        # the gateway lists both workers, and both did part of the work (as of their next heartbeat)
        def all_counted() -> dict[str, dict]:
            listed = {w["id"]: w for w in live_workers(base)}
            return listed if sum(w["answered"] for w in listed.values()) == 200 else {}

        listed = wait_until(all_counted, 10, "heartbeats counting 200 answers")
        assert set(listed) == {"w1", "w2"}
        for worker in listed.values():
            assert worker["models"] == [IMAGE_MODEL]
            assert worker["loaded"] == [f"{IMAGE_MODEL}:1"]
            assert worker["device"] == "cpu"
            assert worker["last_heartbeat"] > 0
            assert worker["batches"] > 0 and worker["answered"] > 0, listed
        # every request stream entry was acknowledged and deleted: nothing left behind
        client = redis.Redis.from_url(REDIS_URL)
        assert client.xlen(f"{redis_prefix}:requests:{IMAGE_MODEL}") == 0
        client.close()


def test_worker_refuses_to_start_with_a_model_the_registry_lacks(redis_registry, redis_prefix, tmp_path):
    worker = start_worker(redis_registry, REDIS_URL, redis_prefix, tmp_path, "w-bad", ["no-such-model"])
    try:
        code = worker.process.wait(60)
    finally:
        worker.stop()
    output = worker.output()
    assert code == 1
    assert "cannot serve 'no-such-model'" in output
    assert IMAGE_MODEL in output  # says what the registry has
    assert "Traceback" not in output


def test_alias_move_reaches_the_worker_through_pubsub(redis_prefix, tmp_path):
    redis_registry = tmp_path / "registry"  # its own: this test adds a version
    registry = build_tiny_registry(redis_registry)
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(redis_registry, REDIS_URL, redis_prefix, tmp_path, FAST_BEATS)
        stack.callback(gateway.stop)
        worker = start_worker(
            redis_registry, REDIS_URL, redis_prefix, tmp_path, "w1", [IMAGE_MODEL], env=FAST_BEATS
        )
        stack.callback(worker.stop)
        wait_for_workers(base, {"w1"}, [worker])
        (before,) = live_workers(base)
        assert before["loaded"] == [f"{IMAGE_MODEL}:1"]

        new = register_danet(registry, seed=1)  # version 2, nobody asked for it yet
        answer = httpx.put(
            f"{base}/v1/models/{IMAGE_MODEL}/aliases/production",
            json={"version": new.version},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert answer.status_code == 200, answer.text

        def reloaded() -> bool:
            (listed,) = live_workers(base)
            return f"{IMAGE_MODEL}:{new.version}" in listed["loaded"]

        # loaded before any request for it: the registry change went gateway -> pub/sub -> worker
        wait_until(reloaded, 30, "the worker loading the version the alias moved to")
        body = npy_bytes(np.zeros((1, 28, 28), dtype=np.float32))
        result = httpx.post(
            f"{base}/v1/models/{IMAGE_MODEL}@production/classify",
            content=body,
            headers={"Content-Type": "application/x-npy"},
            timeout=30,
        )
        assert result.status_code == 200, result.text
        assert result.json()["model"] == {"name": IMAGE_MODEL, "version": new.version}
        assert worker.process.poll() is None
        assert "Traceback" not in worker.output()
