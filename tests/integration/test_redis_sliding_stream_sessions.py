"""Sliding-window streams in distributed mode: a Spikeformer's context kept on its worker, refilled
on another when that worker dies.

A network that attends across time (Spikeformer) cannot carry membranes from one window to the
next; its worker keeps the session's last T frames and reruns them from rest each window. Real
processes throughout (a gateway, two workers, the shared Redis); the events are the real N-MNIST
recording from ../shared/data in 1 ms chunks. The tests share one gateway and its workers; the
last one kills a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis_support import REDIS_URL, Service, gateway_and_workers, wait_until
from service_support import ADMIN, make_client, wait_ready
from stream_support import chunks_before, nmnist_in_1ms_chunks, receive, receive_until_closed
from tiny_zoo import register_spikeformer
from websockets.sync.client import connect

from registry import Registry
from service.settings import Settings

pytestmark = pytest.mark.slow

SLIDING = "sliding-spikeformer"  # a random-weight Spikeformer: attention across time, so it slides
# with its default threshold the random network hardly fires on these sparse 10 ms frames, and every
# window would get the same logits; a lower one makes the answers follow the events
SLIDING_NEURON = {"kind": "lif", "v_threshold": 0.2}
CONTEXT_STEPS = 4  # the manifest's default T: the frames each window reruns
STEPS_PER_WINDOW = 2  # the stride
QUERY = f"window_us=20000&time_steps={STEPS_PER_WINDOW}&top_k=10"
FAST_BEATS = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5", "SPIKESERVE_CLAIM_IDLE_MS": "1000"}
# windows queue while a session moves: room for all of them, so none merges and every one is checked
ROOMY = {"SPIKESERVE_STREAM_MAX_PENDING_WINDOWS": "64"}
# what must agree between the two modes, window for window (latency, worker and session differ)
SAME_FIELDS = ("window", "seq", "start_us", "end_us", "events", "merged_windows", "mode", "state_steps")


@pytest.fixture(scope="module")
def sliding_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("redis-sliding-registry"))
    register_spikeformer(Registry(root), name=SLIDING, neuron=SLIDING_NEURON)
    return root


@pytest.fixture(scope="module")
def chunks(shared_data: Path) -> list[bytes]:
    return nmnist_in_1ms_chunks((shared_data / "nmnist_sample.bin").read_bytes())


@pytest.fixture(scope="module")
def embedded(sliding_registry: Path, chunks: list[bytes]) -> list[dict[str, Any]]:
    """Every server message of the recording streamed in embedded mode: the reference."""
    settings = Settings(
        registry=sliding_registry, admin_token=ADMIN, neuron_backend="torch", stream_max_pending_windows=64
    )
    with make_client(settings) as client:
        wait_ready(client)
        with client.websocket_connect(f"/v1/models/{SLIDING}/stream?{QUERY}") as ws:
            messages = [ws.receive_json()]
            for chunk in chunks:
                ws.send_bytes(chunk)
            ws.send_text(json.dumps({"close": True}))
            while messages[-1]["type"] != "closed":
                messages.append(ws.receive_json())
    return messages


@pytest.fixture(scope="module")
def cluster(
    sliding_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, dict[str, Service]]]:
    """(gateway URL, key prefix, workers by id): a gateway in Redis mode and workers w1, w2."""
    logs = Path(tmp_path_factory.mktemp("redis-sliding-logs"))
    env = {**FAST_BEATS, **ROOMY}
    with gateway_and_workers(sliding_registry, "sliding", logs, [SLIDING], env, FAST_BEATS) as cluster:
        yield cluster


def stream_url(base: str) -> str:
    return f"{base.replace('http://', 'ws://')}/v1/models/{SLIDING}/stream?{QUERY}"


def windows_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "window"]


def test_a_sliding_stream_over_redis_answers_every_window_as_the_embedded_stream(
    cluster: tuple[str, str, dict[str, Service]], chunks: list[bytes], embedded: list[dict[str, Any]]
) -> None:
    base, _, _ = cluster
    with connect(stream_url(base), max_size=None) as ws:
        (ready,) = receive(ws, 1)
        for chunk in chunks:
            ws.send(chunk)
        ws.send(json.dumps({"close": True}))
        distributed = [ready, *receive_until_closed(ws)]

    # the first message says the sliding mode and its context, as the embedded server does
    assert ready["type"] == "ready" and ready["mode"] == "sliding"
    assert ready["context_steps"] == CONTEXT_STEPS and ready["steps_per_window"] == STEPS_PER_WINDOW
    assert {k: v for k, v in ready.items() if k != "session_id"} == {
        k: v for k, v in embedded[0].items() if k != "session_id"
    }
    windows, local = windows_of(distributed), windows_of(embedded)
    assert len(windows) == len(local) > CONTEXT_STEPS // STEPS_PER_WINDOW + 2
    assert [w.keys() for w in windows] == [w.keys() for w in local]  # the same answers, field for field
    for field in SAME_FIELDS:
        assert [w[field] for w in windows] == [w[field] for w in local], field
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
    assert len({w["worker"] for w in windows}) == 1  # pinned: the context lives on one worker
    assert not any(w["state_reset"] for w in windows)
    # the context fills up to T frames, then slides by the window's steps
    assert [w["state_steps"] for w in windows[:3]] == [2, 4, 4]
    spread = np.ptp([w["logits"] for w in local], axis=0)
    assert spread.max() > 1e-3, spread  # the answers follow the events: equal logits would prove nothing
    for remote, reference in zip(windows, local, strict=True):
        assert np.allclose(remote["logits"], reference["logits"], atol=1e-5), remote["window"]
        assert remote["predictions"][0]["index"] == reference["predictions"][0]["index"]
    assert distributed[-1]["dropped_windows"] == 0
    assert distributed[-1]["events"] == embedded[-1]["events"]


def test_a_sliding_session_refills_its_context_on_another_worker_when_its_worker_dies(
    cluster: tuple[str, str, dict[str, Service]],
    shared_data: Path,
    chunks: list[bytes],
    embedded: list[dict[str, Any]],
) -> None:
    base, prefix, workers = cluster
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    first = chunks_before(data, chunks, 100_000)  # events of 0..100 ms complete windows 0..3
    second = chunks_before(data, chunks, 140_000)  # ..and of 100..140 ms, windows 4 and 5
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.closing(client), connect(stream_url(base), max_size=None) as ws:
        (ready,) = receive(ws, 1)
        assert ready["mode"] == "sliding"
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
    windows = before + windows_of(after)
    local = windows_of(embedded)
    assert [w["window"] for w in windows] == [w["window"] for w in local]  # every window, in order
    seqs = [w["seq"] for w in windows]
    assert seqs == sorted(set(seqs)) == list(range(1, len(windows) + 1))  # strictly increasing, none twice
    # the new worker never saw the frames before window 4: it says so, and its context refills
    moved = windows[4]
    assert moved["state_reset"] is True and moved["worker"] == other
    assert moved["state_steps"] == STEPS_PER_WINDOW  # this window's frames only
    assert all(w["worker"] == other and not w["state_reset"] for w in windows[5:])
    assert all(w["state_steps"] == CONTEXT_STEPS for w in windows[5:])
    # before the move and once the context is full again, each answer is the embedded one; the
    # moved window saw fewer frames than the embedded window 4 did
    refilled = 4 + CONTEXT_STEPS // STEPS_PER_WINDOW - 1  # the first window whose T frames are all new
    for remote, reference in [
        *zip(windows[:4], local[:4], strict=True),
        *zip(windows[refilled:], local[refilled:], strict=True),
    ]:
        assert np.allclose(remote["logits"], reference["logits"], atol=1e-5), remote["window"]
    assert not np.allclose(moved["logits"], local[4]["logits"], atol=1e-5)
    assert after[-1]["type"] == "closed" and after[-1]["dropped_windows"] == 0
