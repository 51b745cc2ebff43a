"""Redis mode: a v2 request refused part-way leaves none of its images on the stream for a worker.

A real worker serves the model, then is stopped (SIGSTOP) while its heartbeat is still fresh: it
reads nothing, as a worker busy with a long backlog would not. The gateway (in-process, on the
real Redis) queues 4 images of a 6-image request, is refused the 5th (backlog full) and answers
503; the 4 queued images must have left the stream.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import redis
from redis_support import REDIS_URL, start_worker, wait_until
from service_support import ADMIN, make_client
from tiny_zoo import IMAGE_MODEL

from service.settings import Settings

WORKER_ID = "worker-stopped"


def _request_streams(client: redis.Redis, prefix: str) -> dict[str, int]:
    keys = [key for key in client.scan_iter(f"{prefix}:*") if client.type(key) == b"stream"]
    return {key.decode(): client.xlen(key) for key in keys if b"request" in key}


def test_a_refused_v2_request_leaves_none_of_its_images_queued(
    redis_registry: Path, redis_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        registry=redis_registry,
        admin_token=ADMIN,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        redis_max_backlog=4,
        max_images_per_request=100,
    )
    images = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    tensor = {"name": "input", "shape": [6, 1, 28, 28], "datatype": "FP32", "data": images.ravel().tolist()}
    client = redis.Redis.from_url(REDIS_URL)
    worker = start_worker(redis_registry, REDIS_URL, redis_prefix, tmp_path, WORKER_ID, [IMAGE_MODEL])
    try:
        with make_client(settings) as gateway:

            def listed() -> bool:
                workers = gateway.get("/v1/workers", headers={"Authorization": f"Bearer {ADMIN}"}).json()
                return any(w["id"] == WORKER_ID for w in workers["workers"])

            wait_until(listed, 120, "the worker heartbeating")
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                refused = gateway.post(f"/v2/models/{IMAGE_MODEL}/infer", json={"inputs": [tensor]})
                assert refused.status_code == 503 and refused.json()["code"] == "queue_full", refused.text
                queued = _request_streams(client, redis_prefix)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
    finally:
        worker.stop()
        client.close()
    assert queued and set(queued.values()) == {0}, queued  # the 4 images queued before the 5th left
