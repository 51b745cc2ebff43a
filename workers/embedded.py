"""The embedded worker pool: the batcher inside the gateway process, the engine in it too or in
child processes.

``spikeserve serve`` uses it unless ``settings.redis_url`` is set. With ``inference_processes`` 0
the engine runs in threads of this process (``concurrent_batches`` of them); with N > 0 each batch
goes to one of N child processes (``workers.inference_processes``), each with an engine of its own.
Live streams run in this process either way. torch is imported only in ``start()`` (through
``workers.engine``), and with inference processes only at a stream's first window, so importing this
module keeps the gateway light.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from registry import Registry
from registry.errors import LoadError
from workers.batcher import Batcher, RunBatch
from workers.concurrency import plan
from workers.error_codec import raise_for_error
from workers.errors import WorkerUnavailableError
from workers.inference_processes import ChildConfig, InferenceProcesses
from workers.protocol import InferenceRequest, InferenceResult
from workers.runtime import prepare_inference_process
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow

if TYPE_CHECKING:
    from service.settings import Settings
    from workers.engine import Engine
    from workers.stream_runner import StreamRunner

log = logging.getLogger("spikeserve.embedded")


class EmbeddedPool:
    """Runs requests on this machine: ``Batcher`` in front of one ``Engine`` on ``settings.device``,
    or of ``settings.inference_processes`` child processes.

    ``registry``: by default ``Registry(settings.registry)``.
    """

    def __init__(
        self, settings: Settings, registry: Registry | None = None, worker_id: str = "embedded"
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._registry = registry
        self._engine: Engine | None = None
        self._processes: InferenceProcesses | None = None
        self._streams: StreamRunner | None = None
        self._stream_waiting: list[tuple[StreamWindow, asyncio.Future[StreamAnswer]]] = []
        self._stream_first_wait = 0.0  # loop time the oldest waiting window arrived
        self._stream_arrived: asyncio.Event | None = None  # set by each new window (made in the loop)
        self._stream_drain: asyncio.Task[None] | None = None
        self._batcher: Batcher | None = None
        self._ready = False
        self._started_at = 0.0

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.settings.registry)
        return self._registry

    async def start(self) -> None:
        """Start the batcher, then load and warm up the default models (all models when none named)."""
        settings = self.settings
        self._started_at = time.time()
        refs = list(settings.default_models) or [summary.name for summary in self.registry.list()]
        if settings.inference_processes:
            await self._start_processes(refs)
        else:
            await self._start_in_process(refs)
        if not refs:
            log.warning("the registry at %s holds no models; serving none", settings.registry)
        self._ready = True

    async def _start_processes(self, refs: list[str]) -> None:
        """Start the children, which load the default models side by side; then the batcher, one
        batch per child at a time. Streams get their engine in this process at their first window."""
        settings = self.settings
        count = settings.inference_processes
        if settings.concurrent_batches and settings.concurrent_batches > 1:
            log.warning("concurrent_batches is not used with inference_processes: each runs one batch")
        manifests = [await asyncio.to_thread(self.registry.resolve, ref) for ref in refs]
        threads = plan(settings.device, settings.torch_threads, count).torch_threads
        config = ChildConfig(
            registry=str(self.registry.root),
            device=settings.device,
            neuron_backend=settings.neuron_backend,
            torch_threads=threads,
            keep_freed_memory=settings.keep_freed_memory,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        processes = InferenceProcesses(config, count, self.worker_id)
        await asyncio.to_thread(processes.start, [(m.name, m.version) for m in manifests])
        self._processes = processes
        await self._start_batcher(processes.run_batch, count)

    async def _start_in_process(self, refs: list[str]) -> None:
        from workers.engine import Engine  # torch arrives here, not at import

        settings = self.settings
        concurrency = plan(settings.device, settings.torch_threads, settings.concurrent_batches)
        prepare_inference_process(concurrency.torch_threads, settings.keep_freed_memory)
        self._engine = Engine(
            self.registry,
            device=self.settings.device,
            backend=self.settings.neuron_backend,
            worker_id=self.worker_id,
        )
        self._streams = self._stream_runner()
        await self._start_batcher(self._engine.run_batch, concurrency.batches)
        for ref in refs:
            manifest = await asyncio.to_thread(self.registry.resolve, ref)
            try:
                await self.load_model(manifest.name, manifest.version)
            except LoadError:  # one broken version must not keep every other model from serving
                continue  # the engine logged it and lists it in failed_models()

    async def _start_batcher(self, run_batch: RunBatch, concurrent_batches: int) -> None:
        self._batcher = Batcher(
            run_batch,
            max_batch_size_for=self.settings.batch_size_for,
            max_delay_ms_for=self.settings.delay_ms_for,
            max_queue_size=self.settings.max_queue_size,
            concurrent_batches=concurrent_batches,
        )
        await self._batcher.start()

    def _stream_runner(self) -> StreamRunner:
        from workers.stream_runner import StreamRunner

        return StreamRunner(
            self.registry,
            device=self.settings.device,
            backend=self.settings.neuron_backend,
            worker_id=self.worker_id,
            max_sessions=self.settings.stream_max_sessions,
        )

    async def stop(self) -> None:
        self._ready = False
        if self._batcher is not None:
            await self._batcher.stop()  # no batch runs after this: the children can go
        if self._engine is not None:
            self._engine.close()
        if self._processes is not None:
            await asyncio.to_thread(self._processes.close)

    async def load_model(self, name: str, version: int) -> None:
        """Load and warm up ``name:version`` off the event loop (the engine loads each version once,
        however many callers ask at the same time)."""
        engine = self._require_engine()

        def load() -> None:
            engine.ensure_loaded(name, version)

        await asyncio.to_thread(load)

    def unload_model(self, name: str, version: int) -> None:
        """Drop a loaded version (after it was deleted from the registry)."""
        if self._engine is not None:
            self._engine.unload(name, version)
        if self._processes is not None:
            self._processes.unload(name, version)

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        """Run one request. Versions other than the default ones load on their first request (in an
        inference process, within the first batch that process computes for them)."""
        if self._processes is None:
            engine = self._require_engine()
            if not engine.is_loaded(request.model_name, request.model_version):
                await self.load_model(request.model_name, request.model_version)
        if self._batcher is None:
            raise WorkerUnavailableError("the worker is starting; retry shortly")
        return raise_for_error(await self._batcher.submit(request))

    def is_ready(self) -> bool:
        return self._ready

    def queue_depth(self) -> int:
        return self._batcher.depth() if self._batcher is not None else 0

    def queue_depth_by_model(self) -> dict[str, int]:
        return self._batcher.depth_by_model() if self._batcher is not None else {}

    def loaded_models(self) -> list[tuple[str, int]]:
        if self._processes is not None:
            return self._processes.loaded()
        return self._engine.loaded() if self._engine is not None else []

    def failed_models(self) -> dict[str, str]:
        if self._processes is not None:
            return self._processes.failed()
        return self._engine.failed() if self._engine is not None else {}

    def describe_workers(self) -> list[dict[str, Any]]:
        if self._processes is not None:
            now = time.time()
            return [
                {
                    **child,
                    "mode": "embedded process",
                    "device": self.settings.device,
                    "queue_depth": self.queue_depth(),  # one queue feeds them all
                    "last_heartbeat": now,
                }
                for child in self._processes.describe()
            ]
        if self._engine is None:
            return []
        return [
            {
                "id": self.worker_id,
                "mode": "embedded",
                "device": self.settings.device,
                "models": [f"{name}:{version}" for name, version in self._engine.loaded()],
                "optimizations": self._engine.optimizations(),
                "batches": self._batcher.batches_run if self._batcher is not None else 0,
                "queue_depth": self.queue_depth(),
                "started_at": self._started_at,
                "last_heartbeat": time.time(),
            }
        ]

    async def open_stream(self, session_id: str, name: str, version: int) -> tuple[StreamMode, int]:
        runner = self._require_streams()
        return await asyncio.to_thread(runner.describe, name, version)

    async def run_stream_window(self, window: StreamWindow) -> StreamAnswer:
        """Queue the window; windows of other sessions go with it in one forward
        (``StreamRunner.run_windows`` batches sessions that share a network): those that arrive while
        a forward runs, and those that arrive within ``stream_max_delay_ms`` of the oldest waiting
        one while some session the runner holds has none waiting (no wait once every one has)."""
        runner = self._require_streams()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StreamAnswer] = loop.create_future()
        if not self._stream_waiting:
            self._stream_first_wait = loop.time()
        self._stream_waiting.append((window, future))
        if self._stream_arrived is None:
            self._stream_arrived = asyncio.Event()
        self._stream_arrived.set()
        if self._stream_drain is None or self._stream_drain.done():
            self._stream_drain = asyncio.create_task(self._drain_stream_windows(runner))
        return await future

    async def _gather_stream_windows(self, runner: StreamRunner) -> None:
        """Wait (at most ``stream_max_delay_ms`` from the oldest waiting window) until every session
        the runner holds has a window waiting: one forward of B windows costs far less than B
        forwards of one (on a CPU, 4 windows of a small DANet cost about 2 of one)."""
        loop = asyncio.get_running_loop()
        deadline = self._stream_first_wait + self.settings.stream_max_delay_ms / 1000.0
        while (remaining := deadline - loop.time()) > 0:
            waiting = {window.session_id for window, _ in self._stream_waiting}
            if len(waiting) >= runner.sessions():
                return
            assert self._stream_arrived is not None
            self._stream_arrived.clear()
            try:
                await asyncio.wait_for(self._stream_arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _drain_stream_windows(self, runner: StreamRunner) -> None:
        while self._stream_waiting:
            await self._gather_stream_windows(runner)
            batch, self._stream_waiting = self._stream_waiting, []
            try:
                answers = await asyncio.to_thread(runner.run_windows, [window for window, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # a session that closed meanwhile no longer waits
                    future.set_result(answer)

    async def close_stream(self, session_id: str) -> None:
        if self._streams is not None:
            self._streams.close(session_id)

    def _require_streams(self) -> StreamRunner:
        if self._streams is None and self._processes is not None:
            # the gateway has no engine of its own: torch and the stream copies arrive with the first stream
            prepare_inference_process(self.settings.torch_threads, self.settings.keep_freed_memory)
            self._streams = self._stream_runner()
        if self._streams is None:
            raise WorkerUnavailableError("the worker is starting; retry shortly")
        return self._streams

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise WorkerUnavailableError("the worker is starting; retry shortly")
        return self._engine
