"""workers/inference_processes.py: batches in child processes answer as the engine in this process
does, their metrics count here, models load, fail and unload in every child, a child killed in a
batch fails only that batch and is replaced, and close() leaves no child behind.

One pool of two children serves most tests (each child imports torch: seconds to start)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from process_support import exited, wait_until
from prometheus_client import REGISTRY
from tiny_zoo import IMAGE_MODEL, build_tiny_registry, register_danet

from workers.inference_processes import ChildConfig, InferenceProcesses
from workers.protocol import InferenceRequest

BROKEN = (IMAGE_MODEL, 3)


def image_request(i: int, version: int = 1, telemetry: Any = "layers", steps: int = 2) -> InferenceRequest:
    array = np.random.default_rng(i).random((1, 28, 28), dtype=np.float32)
    return InferenceRequest(
        request_id=f"p{i}",
        model_name=IMAGE_MODEL,
        model_version=version,
        kind="image",
        array=array,
        time_steps=steps,
        telemetry=telemetry,
    )


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-danet:1 and :2 sound, :3 with a config its weights do not fit."""
    import json

    root = Path(tmp_path_factory.mktemp("process-registry"))
    registry = build_tiny_registry(root)
    register_danet(registry, seed=1)
    register_danet(registry, seed=2)
    manifest_path = registry.layout.manifest(*BROKEN)
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["base_width"] = 4
    manifest_path.write_text(json.dumps(manifest))
    return root


def config(root: Path) -> ChildConfig:
    return ChildConfig(
        registry=str(root), device="cpu", neuron_backend="torch", torch_threads=1, keep_freed_memory=True
    )


@pytest.fixture(scope="module")
def processes(registry_root: Path) -> Iterator[InferenceProcesses]:
    pool = InferenceProcesses(config(registry_root), count=2, worker_id="test")
    pool.start([(IMAGE_MODEL, 1), BROKEN])
    try:
        yield pool
    finally:
        pool.close()


def test_start_loads_the_defaults_in_every_child_and_reports_the_failure(
    processes: InferenceProcesses,
) -> None:
    assert processes.loaded() == [(IMAGE_MODEL, 1)]
    described = processes.describe()
    assert [entry["id"] for entry in described] == ["test-0", "test-1"]
    assert all(entry["models"] == [f"{IMAGE_MODEL}:1"] for entry in described)
    assert set(processes.failed()) == {f"{IMAGE_MODEL}:3"}
    assert "do not fit" in processes.failed()[f"{IMAGE_MODEL}:3"]


def test_answers_equal_the_engine_in_this_process(processes: InferenceProcesses, registry_root: Path) -> None:
    import torch

    from registry import Registry
    from workers.engine import Engine

    requests = [image_request(i) for i in range(6)]
    there = processes.run_batch(requests)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the children: the same order of sums
    try:
        here = Engine(Registry(registry_root), backend="torch", worker_id="here").run_batch(requests)
    finally:
        torch.set_num_threads(threads)
    assert [r.request_id for r in there] == [r.request_id for r in requests]
    for a, b in zip(there, here, strict=True):
        assert a.error is None and b.error is None
        assert a.predictions == b.predictions
        assert a.probabilities == b.probabilities
        assert a.telemetry == b.telemetry and a.telemetry is not None and a.telemetry["layers"]
        assert a.time_steps == b.time_steps and a.batch_size == b.batch_size == 6


def test_metrics_of_a_batch_in_a_child_count_in_this_process(processes: InferenceProcesses) -> None:
    before = {
        "batches": value("spikeserve_batch_size_count", model=IMAGE_MODEL),
        "queued": value("spikeserve_queue_duration_seconds_count", model=IMAGE_MODEL),
        "spikes": value("spikeserve_spikes_total", model=IMAGE_MODEL),
        "by_workers": sum(value("spikeserve_worker_batches_total", worker=f"test-{i}") for i in range(2)),
    }
    results = processes.run_batch([image_request(i, telemetry="summary") for i in range(3)])
    assert value("spikeserve_batch_size_count", model=IMAGE_MODEL) == before["batches"] + 1
    assert value("spikeserve_queue_duration_seconds_count", model=IMAGE_MODEL) == before["queued"] + 3
    spikes = sum(result.telemetry["spikes"] for result in results if result.telemetry)
    assert spikes > 0 and value("spikeserve_spikes_total", model=IMAGE_MODEL) == before["spikes"] + spikes
    by_workers = sum(value("spikeserve_worker_batches_total", worker=f"test-{i}") for i in range(2))
    assert by_workers == before["by_workers"] + 1
    assert value("spikeserve_models_loaded") == len(processes.loaded())


def test_other_versions_load_on_first_request_and_unload_reaches_every_child(
    processes: InferenceProcesses,
) -> None:
    first = processes.run_batch([image_request(0, version=2)])[0]
    assert first.error is None and first.model_version == 2
    assert (IMAGE_MODEL, 2) in processes.loaded()
    refused = processes.run_batch([image_request(0, version=3)])[0]
    assert refused.error is not None and refused.error[0] == "load_failed"

    processes.unload(IMAGE_MODEL, 2)
    assert (IMAGE_MODEL, 2) not in processes.loaded()  # at once, before any child has heard of it
    for i in range(4):  # every child gets a batch (they take turns), and with it the unload
        processes.run_batch([image_request(i)])
    assert processes.loaded() == [(IMAGE_MODEL, 1)]
    assert all(entry["models"] == [f"{IMAGE_MODEL}:1"] for entry in processes.describe())


def test_a_child_killed_in_its_batch_fails_that_batch_only_and_is_replaced(
    processes: InferenceProcesses,
) -> None:
    pids = processes.pids()
    big = [image_request(i, steps=8) for i in range(64)]  # long enough to be killed in
    answers: list[Any] = []
    running = threading.Thread(target=lambda: answers.extend(processes.run_batch(big)))
    running.start()
    time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    running.join(timeout=30)
    assert not running.is_alive(), "the batch hung after its process died"
    assert len(answers) == 64
    assert {answer.error[0] for answer in answers if answer.error} == {"inference_failed"}
    assert all(answer.error for answer in answers)
    assert "stopped" in answers[0].error[1]
    wait_until(lambda: all(exited(pid) for pid in pids))  # the idle one too: no batch reaches it then
    # the replacements load what the pool held, and serve
    after = processes.run_batch([image_request(7)])[0]
    assert after.error is None
    wait_until(lambda: len(processes.pids()) == 2)
    assert set(processes.pids()).isdisjoint(pids)
    assert processes.loaded() == [(IMAGE_MODEL, 1)]


def test_close_ends_every_child(registry_root: Path) -> None:
    pool = InferenceProcesses(config(registry_root), count=2, worker_id="closing")
    pool.start([])
    pids = pool.pids()
    assert len(pids) == 2 and not any(exited(pid) for pid in pids)
    pool.close()
    assert all(exited(pid) for pid in pids)


def test_close_while_starting_ends_the_children_that_were_starting(registry_root: Path) -> None:
    import multiprocessing

    pool = InferenceProcesses(config(registry_root), count=2, worker_id="aborted")
    failure: list[BaseException] = []

    def start() -> None:
        try:
            pool.start([(IMAGE_MODEL, 1)])
        except BaseException as exc:
            failure.append(exc)

    def starting_pids() -> set[int]:  # the processes of this pool, before they are its children
        return {child.pid for child in multiprocessing.active_children() if child.pid} - before

    before = {child.pid for child in multiprocessing.active_children() if child.pid}
    starting = threading.Thread(target=start)
    starting.start()
    wait_until(lambda: len(starting_pids()) >= 2)
    pids = starting_pids()
    pool.close()
    starting.join(timeout=30)
    assert not starting.is_alive()
    assert failure and ("closed" in str(failure[0]) or "closing" in str(failure[0]))
    assert all(exited(pid) for pid in pids)
    assert pool.pids() == []
