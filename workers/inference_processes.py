"""Inference processes: the embedded pool's batches computed in child processes, one batch each.

Why processes and not threads: the eager neurons are many small torch ops, each a trip through
Python, so two batch threads of one process wait for each other's GIL (on danet-mnist, 16% more CPU
per answer than one thread; two processes cost what one thread does: docs/PERFORMANCE.md). The price
is memory: every process holds its own torch and its own copy of each network.

Each child is a fresh interpreter (multiprocessing's "spawn": nothing of the gateway's threads, event
loop or sockets is forked) that runs ``prepare_inference_process`` and an ``Engine`` of its own on
the same registry, loads the models it is told at start, then answers one message at a time. What
crosses the pipe is the protocol's msgpack (``InferenceRequest.to_bytes``, ``InferenceResult.to_bytes``),
never pickle, as between a gateway and its Redis workers. With every reply the child sends what it
has loaded or failed to load and the metric observations its engine made (``workers.metrics`` keeps
them in a child), which the gateway replays, so ``/metrics``, ``/readyz`` and ``/v1/workers`` read as
if the batches had run in the gateway.

A child that dies fails the batch it was computing (``InferenceFailedError``: HTTP 500) and is
replaced by a new one that loads what the pool holds. A child whose gateway dies reads the end of
its pipe and exits. ``close()`` ends every child.

torch-free: the children import torch, this module does not.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack

from workers import metrics
from workers.error_codec import encode_error
from workers.errors import InferenceFailedError, WorkerUnavailableError
from workers.protocol import InferenceRequest, InferenceResult

log = logging.getLogger("spikeserve.processes")

START_TIMEOUT_S = 600.0  # a child loading many models on a slow machine; a hung one must not hang start
STOP_TIMEOUT_S = 5.0  # for a child to finish its batch and exit before it is terminated
RESTART_BACKOFF_S = (1.0, 5.0, 30.0)  # between attempts to replace a child that will not start

ModelKey = tuple[str, int]


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to build its engine (plain values: it crosses to a fresh interpreter)."""

    registry: str
    device: str
    neuron_backend: str
    torch_threads: int | None
    keep_freed_memory: bool
    log_level: int = logging.INFO


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any]:
    return dict(msgpack.unpackb(data, raw=False))


def _failed(requests: Sequence[InferenceRequest], exc: Exception) -> list[InferenceResult]:
    """Every request of a batch answered with ``exc``, through the error codec like the engine's."""
    error = encode_error(exc)
    return [
        InferenceResult(
            request_id=request.request_id,
            model_name=request.model_name,
            model_version=request.model_version,
            time_steps=request.time_steps,
            error=error,
        )
        for request in requests
    ]


# -- the child -------------------------------------------------------------------------------------


def _child_main(conn: Connection, config: ChildConfig, worker_id: str, preload: list[ModelKey]) -> None:
    """A child's life: build the engine, load ``preload``, then answer until the pipe ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the gateway stops us
    logging.basicConfig(
        level=config.log_level, format=f"%(asctime)s %(levelname)s {worker_id} %(name)s: %(message)s"
    )
    from registry import Registry
    from registry.errors import LoadError
    from workers.engine import Engine  # torch arrives here
    from workers.runtime import prepare_inference_process

    metrics.record_observations(True)
    prepare_inference_process(config.torch_threads, config.keep_freed_memory)
    engine = Engine(
        Registry(config.registry), device=config.device, backend=config.neuron_backend, worker_id=worker_id
    )

    def state() -> dict[str, Any]:
        return {
            "loaded": engine.loaded(),
            "failed": engine.failed(),
            "optimizations": engine.optimizations(),
            "observations": metrics.take_observations(),
        }

    for name, version in preload:
        with contextlib.suppress(LoadError):  # the engine logged it and lists it in failed()
            engine.ensure_loaded(name, version)
    conn.send_bytes(_pack({"op": "ready", **state()}))
    while True:
        try:
            message = _unpack(conn.recv_bytes())
        except (EOFError, OSError):  # the gateway closed the pipe, or died
            break
        if message["op"] == "stop":
            break
        for name, version in message.get("unload", ()):
            engine.unload(name, version)
        reply: dict[str, Any]
        try:
            requests = [InferenceRequest.from_bytes(data) for data in message["requests"]]
            reply = {"results": [result.to_bytes() for result in engine.run_batch(requests)]}
        except Exception as exc:  # run_batch answers a bad request in its result; this is a bug
            log.exception("a batch of %d failed", len(message["requests"]))
            reply = {"error": encode_error(exc)}
        try:
            conn.send_bytes(_pack({**reply, **state()}))
        except (EOFError, OSError):
            break
    engine.close()


# -- the gateway's side ----------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    worker_id: str
    process: BaseProcess
    conn: Connection
    started_at: float = field(default_factory=time.time)
    loaded: list[ModelKey] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    optimizations: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    # unloads not yet sent; and versions reported as loaded by a reply that predates their unload
    pending_unloads: list[ModelKey] = field(default_factory=list)
    hidden: set[ModelKey] = field(default_factory=set)

    def apply(self, reply: dict[str, Any], unloaded: Iterable[ModelKey] = ()) -> None:
        """Take the state a reply reports; ``unloaded``: the unloads the child applied before it."""
        self.hidden.difference_update(unloaded)
        self.loaded = [(str(name), int(version)) for name, version in reply["loaded"]]
        self.failed = dict(reply["failed"])
        self.optimizations = dict(reply["optimizations"])
        metrics.replay(reply["observations"])

    def holds(self) -> list[ModelKey]:
        return [key for key in self.loaded if key not in self.hidden]


class InferenceProcesses:
    """``count`` child processes that run batches: ``run_batch`` is ``Engine.run_batch``'s contract,
    safe to call from up to ``count`` threads at once (each call takes an idle child)."""

    def __init__(self, config: ChildConfig, count: int, worker_id: str = "embedded") -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self.config = config
        self.count = count
        self.worker_id = worker_id
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()  # guards _children and every child's unload lists
        self._closing = threading.Event()
        self._replacing: list[threading.Thread] = []
        # Process.start() reaps every finished child of this process (multiprocessing's _cleanup); a
        # second waitpid at the same moment in another thread fails and reads a dead child as running.
        # So liveness is read from each process's sentinel, and exit codes and starts under this lock.
        self._reap_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, preload: Sequence[ModelKey]) -> None:
        """Start every child and wait until each has loaded ``preload`` (they load side by side).
        Raises ``WorkerUnavailableError`` when a child exits or hangs while starting."""
        started = time.perf_counter()
        spawned = [self._spawn(index, list(preload)) for index in range(self.count)]
        try:
            for child in spawned:
                self._wait_ready(child)
            with self._lock:
                if self._closing.is_set():
                    raise WorkerUnavailableError("the inference processes were closed while starting")
                for child in spawned:
                    self._children[child.index] = child
                    self._idle.put(child)
        except BaseException:
            for child in spawned:
                self._end(child, patience_s=0.0)
            raise
        metrics.set_models_loaded(len(self.loaded()))
        log.info("%d inference processes ready in %.2f s", self.count, time.perf_counter() - started)

    def close(self) -> None:
        """End every child (call once no ``run_batch`` is running): each finishes what it computes,
        then is terminated if it does not exit."""
        with self._lock:
            self._closing.set()
            children = list(self._children.values())
            self._children.clear()
        for child in children:
            self._end(child)
        for thread in self._replacing:
            thread.join(timeout=STOP_TIMEOUT_S)

    def _spawn(self, index: int, preload: list[ModelKey]) -> _Child:
        ours, theirs = self._context.Pipe(duplex=True)
        worker_id = f"{self.worker_id}-{index}"
        process = self._context.Process(
            target=_child_main,
            args=(theirs, self.config, worker_id, preload),
            name=f"spikeserve-inference-{index}",
            daemon=True,  # multiprocessing's exit handler ends it with the gateway, if close() did not
        )
        with self._reap_lock:
            process.start()
        theirs.close()  # only the child holds its end now: its death reads as the pipe's end here
        return _Child(index, worker_id, process, ours)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not child.conn.poll(0.2):
                if self._closing.is_set():
                    raise WorkerUnavailableError("the inference processes are closing")
                if time.monotonic() > deadline:
                    raise WorkerUnavailableError(f"inference process {child.worker_id} did not start in time")
            reply = _unpack(child.conn.recv_bytes())
        except (EOFError, OSError):
            raise WorkerUnavailableError(
                f"inference process {child.worker_id} exited while starting (exit code "
                f"{self._exit_code(child, STOP_TIMEOUT_S)}); its log above says why"
            ) from None
        child.apply(reply)

    def _end(self, child: _Child, patience_s: float = STOP_TIMEOUT_S) -> None:
        """Ask ``child`` to stop; terminate it when it has not after ``patience_s`` (0: a child
        still starting is terminated at once)."""
        with contextlib.suppress(EOFError, OSError):  # it may be gone already
            child.conn.send_bytes(_pack({"op": "stop"}))
        if self._exit_code(child, patience_s) is None:
            log.warning("inference process %s did not stop; terminating it", child.worker_id)
            child.process.terminate()
            if self._exit_code(child, STOP_TIMEOUT_S) is None:
                child.process.kill()
                self._exit_code(child, STOP_TIMEOUT_S)
        child.conn.close()

    def _exit_code(self, child: _Child, timeout_s: float) -> int | None:
        """Wait at most ``timeout_s`` for ``child`` to end; its exit code, None while it runs."""
        if not multiprocessing.connection.wait([child.process.sentinel], timeout_s):
            return None
        with self._reap_lock:  # the sentinel is ready once its fds close, a moment before it can be reaped
            child.process.join(STOP_TIMEOUT_S)
            return child.process.exitcode

    # -- running -----------------------------------------------------------------------------------

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        """Answer ``requests`` (one ``batch_key``) in an idle child, in order; a child that dies
        while computing fails this batch only and is replaced."""
        if not requests:
            return []
        try:
            child = self._take_idle(min(request.deadline for request in requests))
        except WorkerUnavailableError as exc:
            return _failed(requests, exc)
        with self._lock:
            unloads, child.pending_unloads = child.pending_unloads, []
        message = {"op": "run", "requests": [request.to_bytes() for request in requests], "unload": unloads}
        try:
            child.conn.send_bytes(_pack(message))
            reply = _unpack(child.conn.recv_bytes())
        except (EOFError, OSError):
            exitcode = self._replace(child)
            return _failed(
                requests,
                InferenceFailedError(
                    f"the inference process {child.worker_id} stopped (exit code {exitcode}) while "
                    "computing this batch; a new one is starting"
                ),
            )
        child.batches += 1
        child.apply(reply, unloads)
        self._idle.put(child)
        metrics.set_models_loaded(len(self.loaded()))
        if "error" in reply:
            return _failed(requests, InferenceFailedError(reply["error"][1]))
        return [InferenceResult.from_bytes(data) for data in reply["results"]]

    def _take_idle(self, deadline: float) -> _Child:
        """An idle, living child; waits while one is being replaced, at most until ``deadline``."""
        while True:
            remaining = deadline - time.time()
            try:
                child = self._idle.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise WorkerUnavailableError("no inference process was free before the deadline") from None
            if not multiprocessing.connection.wait([child.process.sentinel], 0):
                return child
            self._replace(child)  # died while idle: nothing of a request was lost

    def _replace(self, child: _Child) -> int | None:
        """Forget a dead ``child`` and start its replacement in the background; its exit code."""
        exitcode = self._exit_code(child, STOP_TIMEOUT_S)
        child.conn.close()
        with self._lock:
            if self._closing.is_set() or self._children.get(child.index) is not child:
                return exitcode
            del self._children[child.index]
            held = {key for other in self._children.values() for key in other.holds()}
            preload = sorted(held | set(child.holds()))
        log.error("inference process %s exited (exit code %s); starting another", child.worker_id, exitcode)
        thread = threading.Thread(
            target=self._start_replacement,
            args=(child.index, preload),
            name=f"spikeserve-replace-{child.index}",
            daemon=True,
        )
        self._replacing = [t for t in self._replacing if t.is_alive()] + [thread]
        thread.start()
        return exitcode

    def _start_replacement(self, index: int, preload: list[ModelKey]) -> None:
        attempt = 0
        while not self._closing.is_set():
            new = self._spawn(index, preload)  # close() joins this thread: it ends a child it starts
            try:
                self._wait_ready(new)
            except WorkerUnavailableError:
                self._end(new, patience_s=0.0)
                if self._closing.is_set():
                    return
                log.exception("the replacement of inference process %d did not start", index)
                self._closing.wait(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
                attempt += 1
                continue
            with self._lock:
                if not self._closing.is_set():
                    self._children[index] = new
                    self._idle.put(new)
                    log.info("inference process %s replaced", new.worker_id)
                    return
            self._end(new)  # close() ran while it started
            return

    # -- models ------------------------------------------------------------------------------------

    def unload(self, name: str, version: int) -> None:
        """Forget ``name:version`` in every child (each drops it before its next batch); it is no
        longer listed as loaded from now on."""
        key = (name, int(version))
        with self._lock:
            for child in self._children.values():
                child.pending_unloads.append(key)
                child.hidden.add(key)
        metrics.set_models_loaded(len(self.loaded()))

    def loaded(self) -> list[ModelKey]:
        """What any child holds, in the order first seen."""
        with self._lock:
            children = list(self._children.values())
        return list(dict.fromkeys(key for child in children for key in child.holds()))

    def is_loaded(self, name: str, version: int) -> bool:
        return (name, int(version)) in self.loaded()

    def failed(self) -> dict[str, str]:
        with self._lock:
            children = list(self._children.values())
        return {ref: message for child in children for ref, message in child.failed.items()}

    def describe(self) -> list[dict[str, Any]]:
        """One entry per living child: id, pid, models, optimisations, batches, start time."""
        with self._lock:
            children = sorted(self._children.values(), key=lambda child: child.index)
        return [
            {
                "id": child.worker_id,
                "pid": child.process.pid,
                "models": [f"{name}:{version}" for name, version in child.holds()],
                "optimizations": child.optimizations,
                "batches": child.batches,
                "started_at": child.started_at,
            }
            for child in children
        ]

    def pids(self) -> list[int]:
        with self._lock:
            return [child.process.pid for child in self._children.values() if child.process.pid]
