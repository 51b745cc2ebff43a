"""Live streams in distributed mode: a session pinned to one worker, moved when that worker dies.

Real processes throughout (a gateway, two workers, the shared Redis); the events are the real
N-MNIST recording from ../shared/data, sent in 1 ms chunks as a camera would. The tests share
one gateway and its workers; the last one kills a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from redis_support import REDIS_URL, Service, gateway_and_workers, wait_for_workers, wait_until
from service_support import ADMIN, make_client, wait_ready
from stream_support import chunks_before, nmnist_in_1ms_chunks, receive, receive_until_closed, softmax
from tiny_zoo import EVENTS_INPUT, register_event_danet
from websockets.sync.client import connect

from registry import Registry
from service.settings import Settings

pytestmark = pytest.mark.slow

WINDOWED = "windowed-danet"  # a causal LIF DANet binned in 5 ms bins from the first event: it keeps state
WINDOWED_INPUT = {**EVENTS_INPUT, "binning": "time_window", "time_window_us": 5_000}
QUERY = "window_us=20000&time_steps=4&top_k=10"
FAST_BEATS = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5", "SPIKESERVE_CLAIM_IDLE_MS": "1000"}
# windows queue while a session moves: room for all of them, so none merges and every one is checked
ROOMY = {"SPIKESERVE_STREAM_MAX_PENDING_WINDOWS": "64"}


@pytest.fixture(scope="module")
def stream_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("redis-stream-registry"))
    register_event_danet(Registry(root), name=WINDOWED, input=WINDOWED_INPUT)
    return root


@pytest.fixture(scope="module")
def cluster(
    stream_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, dict[str, Service]]]:
    """(gateway URL, key prefix, workers by id): a gateway in Redis mode and workers w1, w2."""
    logs = Path(tmp_path_factory.mktemp("redis-stream-logs"))
    env = {**FAST_BEATS, **ROOMY}
    with gateway_and_workers(stream_registry, "streams", logs, [WINDOWED], env, FAST_BEATS) as cluster:
        yield cluster


def stream_url(base: str) -> str:
    return f"{base.replace('http://', 'ws://')}/v1/models/{WINDOWED}/stream?{QUERY}"


def stream_metric(base: str, name: str) -> float:
    """The gateway's ``spikeserve_stream_<name>_total`` for the model (0 when absent)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    series = f'spikeserve_stream_{name}_total{{model="{WINDOWED}"}} '
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)]
    return values[0] if values else 0.0


def reply_entries(prefix: str) -> int:
    """Answers ever written to the gateway's reply stream (trimming leaves the count alone)."""
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.closing(client):
        (key,) = list(client.scan_iter(f"{prefix}:replies:*"))
        return int(client.xinfo_stream(key)["entries-added"])


def test_a_stream_over_redis_ends_with_the_logits_of_the_embedded_stream(
    cluster: tuple[str, str, dict[str, Service]], stream_registry: Path, shared_data: Path
) -> None:
    base, _, _ = cluster
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    chunks = nmnist_in_1ms_chunks(data)
    with connect(stream_url(base), max_size=None) as ws:
        (ready,) = receive(ws, 1)
        assert ready["type"] == "ready" and ready["mode"] == "stateful"
        for chunk in chunks:
            ws.send(chunk)
        ws.send(json.dumps({"close": True}))
        distributed = [ready, *receive_until_closed(ws)]

    settings = Settings(
        registry=stream_registry, admin_token=ADMIN, neuron_backend="torch", stream_max_pending_windows=64
    )
    with make_client(settings) as client:
        wait_ready(client)
        with client.websocket_connect(f"/v1/models/{WINDOWED}/stream?{QUERY}") as ws:
            embedded_ready = ws.receive_json()
            for chunk in chunks:
                ws.send_bytes(chunk)
            ws.send_text(json.dumps({"close": True}))
            embedded = [embedded_ready]
            while embedded[-1]["type"] != "closed":
                embedded.append(ws.receive_json())

    assert distributed[0].keys() == embedded[0].keys()  # the same greeting, the same state policy
    assert {k: v for k, v in distributed[0].items() if k != "session_id"} == {
        k: v for k, v in embedded[0].items() if k != "session_id"
    }
    windows = [m for m in distributed if m["type"] == "window"]
    local = [m for m in embedded if m["type"] == "window"]
    assert [w.keys() for w in windows] == [w.keys() for w in local]  # the same answers, field for field
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
    assert len({w["worker"] for w in windows}) == 1  # pinned: every window from the one worker
    assert [w["state_steps"] for w in windows] == [w["state_steps"] for w in local]
    assert not any(w["state_reset"] for w in windows)
    assert np.allclose(windows[-1]["logits"], local[-1]["logits"], atol=1e-5)
    assert np.allclose(softmax(windows[-1]["logits"]), softmax(local[-1]["logits"]), atol=1e-5)
    assert distributed[-1]["dropped_windows"] == 0 and distributed[-1]["events"] == len(data) // 5


def test_a_worker_that_was_only_slow_answers_late_and_is_not_heard(
    cluster: tuple[str, str, dict[str, Service]], shared_data: Path
) -> None:
    base, prefix, workers = cluster
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    chunks = nmnist_in_1ms_chunks(data)
    first = chunks_before(data, chunks, 100_000)
    second = chunks_before(data, chunks, 140_000)
    answers_before = reply_entries(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.closing(client), connect(stream_url(base), max_size=None) as ws:
        receive(ws, 1)
        for chunk in chunks[:first]:
            ws.send(chunk)
        before = receive(ws, 4)
        slow = before[0]["worker"]
        inbox = f"{prefix}:windows:{slow}"
        os.kill(workers[slow].pid, signal.SIGSTOP)  # past three heartbeats: the gateway takes it for dead
        try:
            for chunk in chunks[first:second]:
                ws.send(chunk)
            wait_until(lambda: client.xlen(inbox) > 0, 10, "a window waiting for the frozen worker")
            (moved,) = receive(ws, 1)
        finally:
            os.kill(workers[slow].pid, signal.SIGCONT)
        # it wakes up, runs the window it was sent (and forgets the session, as it was told)
        wait_until(lambda: client.xlen(inbox) == 0, 30, "the thawed worker reading its windows")
        for chunk in chunks[second:]:
            ws.send(chunk)
        ws.send(json.dumps({"close": True}))
        after = receive_until_closed(ws)
    windows = [*before, moved, *[m for m in after if m["type"] == "window"]]
    assert moved["window"] == 4 and moved["state_reset"] is True and moved["worker"] != slow
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))  # each once, in order
    assert [w["window"] for w in windows] == list(range(len(windows)))
    # the open, every window, and the slow worker's late answer to window 4, which nobody heard
    wait_until(
        lambda: reply_entries(prefix) - answers_before == 1 + len(windows) + 1,
        30,
        "the slow worker's late answer",
    )
    wait_for_workers(base, set(workers), list(workers.values()))  # alive again, for the next test


def test_a_session_moves_to_another_worker_when_its_worker_dies(
    cluster: tuple[str, str, dict[str, Service]], shared_data: Path
) -> None:
    base, prefix, workers = cluster
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    chunks = nmnist_in_1ms_chunks(data)
    first = chunks_before(data, chunks, 100_000)  # events of 0..100 ms complete windows 0..3
    second = chunks_before(data, chunks, 140_000)  # ..and of 100..140 ms, windows 4 and 5
    resets_before, windows_before = stream_metric(base, "state_resets"), stream_metric(base, "windows")
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.closing(client), connect(stream_url(base), max_size=None) as ws:
        (ready,) = receive(ws, 1)
        assert ready["mode"] == "stateful"
        for chunk in chunks[:first]:
            ws.send(chunk)
        before = receive(ws, 4)
        pinned = before[0]["worker"]
        assert {w["worker"] for w in before} == {pinned}
        other = next(worker_id for worker_id in workers if worker_id != pinned)

        # freeze the session's worker, so that the next window is surely in flight on it, then kill it
        os.kill(workers[pinned].pid, signal.SIGSTOP)
        for chunk in chunks[first:second]:
            ws.send(chunk)
        inbox = f"{prefix}:windows:{pinned}"
        wait_until(lambda: client.xlen(inbox) > 0, 10, "a window waiting for the frozen worker")
        workers[pinned].kill()

        for chunk in chunks[second:]:
            ws.send(chunk)
        ws.send(json.dumps({"close": True}))
        after = receive_until_closed(ws)
    windows = before + [m for m in after if m["type"] == "window"]
    assert [w["window"] for w in windows] == list(range(len(windows)))  # every window, in order
    seqs = [w["seq"] for w in windows]
    assert seqs == sorted(set(seqs)) == list(range(1, len(windows) + 1))  # strictly increasing, none twice
    moved = windows[4]
    assert moved["state_reset"] is True and moved["worker"] == other
    assert moved["state_steps"] == 4  # fresh state: this window's steps only
    assert all(w["worker"] == other and not w["state_reset"] for w in windows[5:])
    assert [w["state_steps"] for w in windows[4:]] == [4 * (i + 1) for i in range(len(windows) - 4)]
    assert after[-1]["type"] == "closed" and after[-1]["dropped_windows"] == 0
    assert stream_metric(base, "state_resets") - resets_before == 1
    assert stream_metric(base, "windows") - windows_before == len(windows)
