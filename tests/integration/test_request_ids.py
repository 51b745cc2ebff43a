"""Two requests that share an ``X-Request-ID`` still get their own answers, in both ways to run.

A retrying proxy sends the same ``X-Request-ID`` twice; the gateway must not correlate answers on
a value the client chose. 20 pairs of concurrent requests, each pair sharing one header value and
carrying two different images, go to a real embedded server and to a real Redis gateway with a real
worker; every answer is compared with what the network gives that answer's own image.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_support import (
    REDIS_URL,
    assert_answers_match,
    start_gateway,
    start_worker,
    wait_for_workers,
)
from server_process import ServerProcess
from tiny_zoo import IMAGE_MODEL

pytestmark = pytest.mark.slow

PAIRS = 20
# a batching delay long enough that the two requests of a pair meet in one batch on a shared machine
SLOW_BATCHES = {
    "SPIKESERVE_MAX_DELAY_MS": "60",
    "SPIKESERVE_TORCH_THREADS": "1",
    "SPIKESERVE_NEURON_BACKEND": "torch",
    "SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5",
}


@contextlib.contextmanager
def embedded_server(registry: Path, _prefix: str, _log_dir: Path) -> Iterator[str]:
    with ServerProcess(registry, env=SLOW_BATCHES) as server:
        yield server.url


@contextlib.contextmanager
def redis_gateway(registry: Path, prefix: str, log_dir: Path) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(registry, REDIS_URL, prefix, log_dir, SLOW_BATCHES)
        stack.callback(gateway.stop)
        worker = start_worker(registry, REDIS_URL, prefix, log_dir, "w1", [IMAGE_MODEL], env=SLOW_BATCHES)
        stack.callback(worker.stop)
        wait_for_workers(base, {"w1"}, [worker])
        yield base


async def classify_pairs(base: str, bodies: list[bytes]) -> list[tuple[int, dict[str, Any], str]]:
    """Request ``2i`` and ``2i+1`` share ``X-Request-ID: retry-i``; every request runs at once."""
    url = f"{base}/v1/models/{IMAGE_MODEL}/classify?top_k=10&telemetry=none"

    async def one(http: httpx.AsyncClient, index: int) -> tuple[int, dict[str, Any], str]:
        headers = {"Content-Type": "application/x-npy", "X-Request-ID": f"retry-{index // 2}"}
        answer = await http.post(url, content=bodies[index], headers=headers)
        return answer.status_code, answer.json(), answer.headers.get("x-request-id", "")

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2 * PAIRS)) as http:
        return list(await asyncio.gather(*(one(http, i) for i in range(len(bodies)))))


@pytest.mark.parametrize("mode", [embedded_server, redis_gateway], ids=["embedded", "redis"])
def test_requests_sharing_an_x_request_id_each_get_their_own_answer(
    mode: Any, redis_registry: Path, redis_inputs: Any, redis_prefix: str, tmp_path: Path
) -> None:
    inputs, expected = redis_inputs
    # pair i: image i and image i+1, so the two requests of a pair always differ
    order = [(i // 2 + i % 2) % len(inputs) for i in range(2 * PAIRS)]
    with mode(redis_registry, redis_prefix, tmp_path) as base:
        results = asyncio.run(classify_pairs(base, [inputs[i] for i in order]))

    assert_answers_match([(status, body) for status, body, _ in results], order, expected)
    # the server correlates on ids it minted: 40 distinct ones; the client's value comes back as a label
    assert len({body["request_id"] for _, body, _ in results}) == 2 * PAIRS
    for index, (_, body, echoed) in enumerate(results):
        assert body["client_request_id"] == f"retry-{index // 2}"
        assert echoed == f"retry-{index // 2}"
