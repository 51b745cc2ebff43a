"""The engine: loads checkpoints from the registry and runs batches of requests through them.

One ``Engine`` per worker process. ``run_batch`` is synchronous (callers run it in a thread): it
encodes each request (images are normalised then direct-encoded to ``[T, B, C, H, W]``; event
recordings are binned to ``[T, B, 2, H, W]``), runs one forward under ``models.telemetry.record``
when any request asks for telemetry, and answers softmax probabilities, top-k and per-request
telemetry. Requests that ask for early exit run step by step instead (``workers.early_exit``).
Every neuron is reset after every batch, so no request ever sees another's state.
A request that cannot be encoded, or that makes the network fail, gets an ``error`` in its own
result; the others in the batch are answered normally.

This module imports torch; ``workers.embedded`` imports it only when the pool starts.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from models import encoding, telemetry
from models.base import reset_state, set_backend, set_streaming
from models.kernels.lif import COMPILING_BACKENDS, eager_neurons, resolve_backend
from models.optimize import InferenceModel, optimize_for_inference
from registry.errors import LoadError, LockTimeoutError, ModelNotFoundError
from registry.loading import sample_shape
from registry.manifest import Manifest
from workers import early_exit, metrics
from workers.error_codec import encode_error
from workers.errors import InferenceFailedError, InvalidInputError
from workers.preparing import YieldToServing, build_in_this_thread
from workers.protocol import InferenceRequest, InferenceResult, Prediction

log = logging.getLogger("spikeserve.engine")


Forward = Callable[[torch.Tensor], torch.Tensor]
PREPARING_SWITCH_INTERVAL_S = 0.0002


@dataclass
class LoadedModel:
    """A network ready to run. ``sample_shape`` is one sample's step input: (C, H, W).

    ``module`` is the network (reset it, record its telemetry); ``forward`` runs it, through
    ``models.optimize.InferenceModel`` (BN folded; on a CPU channels_last and spike-driven convs; on
    a GPU bf16 and CUDA graphs) when optimised.
    ``run_eager`` runs it with nothing compiled or captured: the way to answer a T at once while
    ``forward`` is still being prepared for it (``needs_preparation``: a first call at a new T
    compiles a fused neuron backend or captures CUDA graphs). ``prepared_steps``: the T values
    ``forward`` is ready for.
    """

    manifest: Manifest
    module: nn.Module
    forward: Forward
    sample_shape: tuple[int, int, int]
    kind: str  # "image" | "events"
    optimized: str = ""  # what optimize_for_inference did, for the log and /v1/workers
    run_eager: Forward | None = None
    needs_preparation: bool = False
    prepared_steps: set[int] = field(default_factory=set)
    unpreparable_steps: set[int] = field(default_factory=set)  # preparing failed: these stay eager
    early_exit_ready: bool = False  # the one-step calls of early exit are compiled (workers.early_exit)
    layer_names: dict[int, str] = field(default_factory=dict)  # telemetry's names, worked out once

    def __post_init__(self) -> None:
        if not self.layer_names:  # walking the modules at every batch cost about 0.2 ms
            self.layer_names = telemetry.layer_names(self.module)

    def forward_for(self, steps: int) -> Forward | None:
        """The forward to use at ``steps`` now, or None when it must be prepared first."""
        if not self.needs_preparation or steps in self.prepared_steps or self.run_eager is None:
            return self.forward
        return self.run_eager if steps in self.unpreparable_steps else None


def _failed(
    request: InferenceRequest, exc: BaseException, worker_id: str, unexpected: str = InferenceFailedError.code
) -> InferenceResult:
    return InferenceResult(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        time_steps=request.time_steps,
        error=encode_error(exc, unexpected),
        worker_id=worker_id,
    )


def _eager_runner(module: nn.Module) -> Forward:
    def run_eager(x: torch.Tensor) -> torch.Tensor:
        """x: [T, B, C, H, W] -> logits [B, classes], the neurons on the torch backend."""
        with torch.inference_mode(), eager_neurons():
            return module(x)

    return run_eager


class CheckpointSource(Protocol):
    """Where the engine gets networks: a ``registry.Registry``, or the one version a TorchServe
    archive holds (``workers.torchserve.handler.MarRegistry``)."""

    def load(self, ref: str, device: str = "cpu") -> tuple[Manifest, nn.Module]:
        """The manifest ``ref`` names and its network, weights checked and loaded strictly."""
        ...


class Engine:
    """Runs batches of ``InferenceRequest`` on the networks of one registry.

    ``registry``: a ``registry.Registry`` (or any ``CheckpointSource``). ``device``: "cpu", "cuda"
    or "cuda:N". ``backend``: the neuron backend (torch, triton, inductor, native or auto). Up to
    ``max_models`` versions stay loaded; the least recently used one is dropped beyond that.
    ``optimize``: prepare each network with ``models.optimize.optimize_for_inference`` (BN folding
    everywhere; on a GPU also bf16 and CUDA graphs per batch-size bucket, captured at load time); a
    network it cannot prepare is served as loaded, with a warning.
    """

    def __init__(
        self,
        registry: CheckpointSource,
        device: str = "cpu",
        backend: str = "auto",
        worker_id: str = "embedded",
        *,
        max_models: int = 16,
        optimize: bool = True,
        retry_failed_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.backend = backend
        self.worker_id = worker_id
        self.max_models = max_models
        self.optimize = optimize
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._failures: dict[tuple[str, int], tuple[float, str]] = {}  # monotonic time, message
        self.retry_failed_s = retry_failed_s
        self._lock = threading.Lock()  # guards _models; loads happen outside it
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        # Compiling for a new T (or capturing its CUDA graphs) takes seconds to minutes: it runs
        # here, beside the batch thread, which answers that T eagerly until it is done.
        self._preparer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spikeserve-prepare", initializer=build_in_this_thread
        )
        self._preparing: set[tuple[str, int, int]] = set()
        self._yield_to_serving = YieldToServing()  # the preparing thread pauses while a batch runs

    # -- loading -----------------------------------------------------------------------------

    def ensure_loaded(self, name: str, version: int) -> LoadedModel:
        """Load, prepare and warm up ``name:version`` unless it is loaded already."""
        key = (name, int(version))
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one thread loads a given version; the others wait for it
            try:
                with self._lock:
                    loaded = self._models.get(key)
                if loaded is None:
                    loaded = self._load_or_remember_failure(*key)
                    with self._lock:
                        self._models[key] = loaded
                        while len(self._models) > self.max_models:
                            dropped, _ = self._models.popitem(last=False)
                            log.info("unloaded %s:%d (more than %d models loaded)", *dropped, self.max_models)
                        metrics.set_models_loaded(len(self._models))
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return loaded

    def _load_or_remember_failure(self, name: str, version: int) -> LoadedModel:
        """``_load``, or LoadError (503 ``load_failed``) for a version whose checkpoint cannot be
        built, loaded or run. The failure is remembered for ``retry_failed_s`` (``failed()`` lists
        it), so that requests for a broken version do not each load it again."""
        key = (name, version)
        with self._lock:
            failure = self._failures.get(key)
        if failure is not None and time.monotonic() - failure[0] < self.retry_failed_s:
            raise LoadError(failure[1])
        try:
            loaded = self._load(name, version)
        except (ModelNotFoundError, LockTimeoutError):
            raise  # nothing wrong with the version itself
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            message = f"{name}:{version} cannot be loaded, so it is not served (other models are): {reason}"
            log.error("%s", message)
            with self._lock:
                self._failures[key] = (time.monotonic(), message)
            raise LoadError(message) from exc
        with self._lock:
            self._failures.pop(key, None)
        return loaded

    def failed(self) -> dict[str, str]:
        """``name:version`` -> why it cannot be loaded, for versions that failed their last load."""
        with self._lock:
            return {f"{name}:{version}": message for (name, version), (_, message) in self._failures.items()}

    def _load(self, name: str, version: int) -> LoadedModel:
        started = time.perf_counter()
        ref = f"{name}:{version}"
        manifest, module = self.registry.load(ref, device=str(self.device))
        loaded = None
        if self.optimize:
            try:
                loaded = self._optimized(manifest, module)
            except Exception as exc:  # a network optimize cannot handle still serves, as loaded
                log.warning("optimize_for_inference failed for %s (%s); serving it unoptimised", ref, exc)
                manifest, module = self.registry.load(ref, device=str(self.device))  # a clean copy
        if loaded is None:
            module.eval()
            set_streaming(module, False)
            set_backend(module, self.backend)
            loaded = LoadedModel(
                manifest,
                module,
                module,
                sample_shape(manifest),
                manifest.input.kind,
                run_eager=_eager_runner(module),
                needs_preparation=resolve_backend(self.backend, self.device) in COMPILING_BACKENDS,
            )
            self._warm_up(loaded, manifest.time_steps.default)
        log.info(
            "loaded %s on %s in %.2f s%s",
            ref,
            self.device,
            time.perf_counter() - started,
            f" ({loaded.optimized})" if loaded.optimized else "",
        )
        return loaded

    def _optimized(self, manifest: Manifest, module: nn.Module) -> LoadedModel:
        set_streaming(module, False)  # each forward starts from rest (and CUDA graphs need it)
        runner = optimize_for_inference(module, self.device, backend=self.backend)
        report = runner.report
        summary = (
            f"{report.dtype}, neuron backend {report.neuron_backend}, "
            f"{len(report.folded_batchnorms)} BN folded, "
            f"channels_last {'on' if report.channels_last else 'off'}, "
            f"{len(report.spike_driven_convs)} spike-driven convs, "
            f"CUDA graphs {'on' if report.cuda_graphs else 'off'}"
        )
        loaded = LoadedModel(
            manifest,
            runner.model,
            runner,
            sample_shape(manifest),
            manifest.input.kind,
            optimized=summary,
            run_eager=runner.run_eager,
            needs_preparation=runner.needs_preparation(),
        )
        self._warm_up(loaded, manifest.time_steps.default)
        return loaded

    def _warm_up(self, loaded: LoadedModel, steps: int) -> None:
        """Run the network at ``steps`` before a request pays for it: one forward with and one
        without telemetry; on a GPU, every batch-size bucket (CUDA graphs are captured here)."""
        try:
            if isinstance(loaded.forward, InferenceModel):
                loaded.forward.prepare(steps, loaded.sample_shape)
            else:
                x = torch.zeros((steps, 1, *loaded.sample_shape), device=self.device)
                with torch.inference_mode():
                    loaded.forward(x)
                    with telemetry.record(loaded.module) as recorder:
                        loaded.forward(x)
                    recorder.report()
        finally:
            reset_state(loaded.module)
        loaded.prepared_steps.add(steps)

    def _prepare_later(self, loaded: LoadedModel, steps: int) -> None:
        """Prepare ``loaded`` for ``steps`` in the preparing thread (once, however often asked)."""
        key = (loaded.manifest.name, int(loaded.manifest.version), steps)
        with self._lock:
            if key in self._preparing or steps in loaded.prepared_steps:
                return
            self._preparing.add(key)
        self._preparer.submit(self._prepare, loaded, steps, key)

    def _prepare(self, loaded: LoadedModel, steps: int, key: tuple[str, int, int]) -> None:
        started = time.perf_counter()
        # Compiling is mostly Python holding the GIL; the batch thread gives it up at every torch
        # op and, at the default 5 ms switch interval, waits up to that long to get it back: over
        # a few hundred ops a request would take seconds. A short interval bounds that wait, and
        # the preparing thread steps aside while a batch runs (workers/preparing.py).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, PREPARING_SWITCH_INTERVAL_S))
        try:
            with self._yield_to_serving.preparing():
                if steps == early_exit.PREPARATION:
                    early_exit.warm_up(loaded)
                else:
                    self._warm_up(loaded, steps)
            if steps == early_exit.PREPARATION:
                log.info("prepared %s:%d for early exit in %.2f s", *key[:2], time.perf_counter() - started)
            else:
                log.info("prepared %s:%d for T=%d in %.2f s", *key, time.perf_counter() - started)
        except Exception:
            loaded.unpreparable_steps.add(steps)
            log.exception("preparing %s:%d for T=%d failed; that T is served eagerly", *key)
        finally:
            sys.setswitchinterval(switch_interval)
            with self._lock:
                self._preparing.discard(key)

    def close(self) -> None:
        """Stop preparing: a preparation under way is abandoned with the process."""
        self._preparer.shutdown(wait=False, cancel_futures=True)

    def unload(self, name: str, version: int) -> bool:
        """Forget ``name:version`` (after it was deleted from the registry). True if it was loaded."""
        with self._lock:
            dropped = self._models.pop((name, int(version)), None)
            metrics.set_models_loaded(len(self._models))
        return dropped is not None

    def is_loaded(self, name: str, version: int) -> bool:
        return (name, int(version)) in self._models

    def optimizations(self) -> dict[str, str]:
        """``name:version`` -> what optimize_for_inference did to it ("" when served as loaded)."""
        with self._lock:
            return {f"{name}:{version}": loaded.optimized for (name, version), loaded in self._models.items()}

    def loaded(self) -> list[tuple[str, int]]:
        """The (name, version) pairs loaded now, least recently used first."""
        with self._lock:
            return list(self._models)

    # -- running -----------------------------------------------------------------------------

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        """Answer every request, in order (result ``i`` answers request ``i``).

        The requests share one ``batch_key`` (network, T, input kind): the batcher forms batches,
        this runs them. Never raises for one bad request: its result carries ``error``.
        """
        with self._yield_to_serving.serving():
            return self._run_batch(requests)

    def _run_batch(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        if not requests:
            return []
        first = requests[0]
        if any(request.batch_key != first.batch_key for request in requests):
            raise ValueError("a batch must share one batch_key; group requests with workers.batcher")
        try:
            loaded = self.ensure_loaded(first.model_name, first.model_version)
        except Exception as exc:  # unknown version, weights that do not fit: every request says so
            log.warning("cannot load %s:%d: %s", first.model_name, first.model_version, exc)
            return [_failed(request, exc, self.worker_id) for request in requests]
        results: list[InferenceResult | None] = [None] * len(requests)
        ready: list[tuple[int, InferenceRequest, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                ready.append((index, request, self._encode(loaded, request)))
            except Exception as exc:  # a recording the binning rejects, a wrong shape: this request only
                results[index] = _failed(request, exc, self.worker_id, InvalidInputError.code)
        if ready:
            items = [(request, array) for _, request, array in ready]
            try:
                answered = self._forward(loaded, items)
            except Exception as exc:
                if len(items) == 1:
                    log.exception("inference failed for %s", items[0][0].request_id)
                    answered = [_failed(items[0][0], exc, self.worker_id)]
                else:
                    # Run them one by one so the request that breaks the network is the only one to fail.
                    answered = [self._run_alone(loaded, item) for item in items]
            for (index, _, _), result in zip(ready, answered, strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def _run_alone(self, loaded: LoadedModel, item: tuple[InferenceRequest, np.ndarray]) -> InferenceResult:
        try:
            return self._forward(loaded, [item])[0]
        except Exception as exc:
            log.exception("inference failed for %s", item[0].request_id)
            return _failed(item[0], exc, self.worker_id)

    def _encode(self, loaded: LoadedModel, request: InferenceRequest) -> np.ndarray:
        """One request's network input: images [C, H, W] normalised; events [T, 2, H, W] counts.

        Options (T, kind, top-k) were checked by ``workers.options.check_options`` at the gateway."""
        manifest = loaded.manifest
        early_exit.check(loaded, request)
        spec = manifest.input
        if spec.kind == "image":
            image = np.asarray(request.array, dtype=np.float32)
            if image.shape != loaded.sample_shape:
                raise InvalidInputError(
                    f"image shape {tuple(image.shape)} does not match {manifest.name}'s input "
                    f"{loaded.sample_shape} (C, H, W)"
                )
            if not np.isfinite(image).all():  # the gateway checks too; distributed workers get bytes
                raise InvalidInputError("the image holds NaN or infinite values")
            return np.asarray(encoding.normalize(image, spec.mean, spec.std), dtype=np.float32)
        frames = encoding.events_to_frames(
            request.array,
            sensor_size=(spec.sensor_width, spec.sensor_height),
            time_steps=request.time_steps,
            binning=spec.binning,
            time_window_us=spec.time_window_us,
            event_count=spec.event_count,
        )
        return np.asarray(frames, dtype=np.float32)

    def _forward(
        self, loaded: LoadedModel, items: list[tuple[InferenceRequest, np.ndarray]]
    ) -> list[InferenceResult]:
        """Run encoded items as one batch. Raises if the network fails (the caller isolates it)."""
        started_wall = time.time()
        started = time.perf_counter()
        requests = [request for request, _ in items]
        steps = requests[0].time_steps
        x = self._batch_input(loaded, [array for _, array in items], steps)
        want_telemetry = any(request.telemetry != "none" for request in requests)
        model = loaded.module
        exit_eagerly = requests[0].early_exit and loaded.needs_preparation and not loaded.early_exit_ready
        if exit_eagerly and early_exit.PREPARATION not in loaded.unpreparable_steps:
            self._prepare_later(loaded, early_exit.PREPARATION)  # compiles its one-step calls meanwhile
        forward = loaded.forward if requests[0].early_exit else loaded.forward_for(steps)
        if forward is None:  # never compile in this thread: every other model's batches wait on it
            self._prepare_later(loaded, steps)
            forward = loaded.run_eager
        assert forward is not None
        samples: list[dict[str, Any]] = []
        steps_used: list[int] | None = None
        try:
            with torch.inference_mode():
                if requests[0].early_exit:
                    logits, steps_used, samples = early_exit.run(
                        loaded, x, requests, want_telemetry, exit_eagerly
                    )
                elif want_telemetry:
                    with telemetry.record(model, loaded.layer_names) as recorder:
                        logits = forward(x)
                    per_layer_work = any(request.telemetry == "layers" for request in requests)
                    report = recorder.report(synaptic_layers=per_layer_work)
                    samples = [sample.as_dict(with_layers=True) for sample in report]
                else:
                    logits = forward(x)
                probabilities = torch.softmax(logits.float(), dim=-1)
                top_k = min(max(request.top_k for request in requests), probabilities.shape[-1])
                top_p, top_i = torch.topk(probabilities, k=max(top_k, 1), dim=-1)
                probs_host, top_p_host, top_i_host = (t.cpu().numpy() for t in (probabilities, top_p, top_i))
        finally:
            reset_state(model)  # state never outlives the batch, whatever happened in it
        compute_s = time.perf_counter() - started
        name = loaded.manifest.name
        metrics.observe_batch(
            name, self.worker_id, len(requests), compute_s, (started_wall - r.enqueued_at for r in requests)
        )
        if samples:
            metrics.observe_telemetry(
                name, [samples[i] for i, r in enumerate(requests) if r.telemetry != "none"]
            )
        if steps_used is not None:
            metrics.observe_exit_steps(name, steps_used)
        if self.device.type == "cuda":
            metrics.set_gpu_memory(str(self.device), torch.cuda.memory_allocated(self.device))
        labels = loaded.manifest.labels
        results = []
        for i, request in enumerate(requests):
            k = max(min(request.top_k, len(top_i_host[i])), 1)
            predictions = tuple(
                Prediction(
                    label=labels[int(idx)] if int(idx) < len(labels) else str(int(idx)),
                    index=int(idx),
                    probability=float(p),
                )
                for idx, p in zip(top_i_host[i][:k], top_p_host[i][:k], strict=True)
            )
            results.append(
                InferenceResult(
                    request_id=request.request_id,
                    model_name=request.model_name,
                    model_version=request.model_version,
                    time_steps=steps,
                    predictions=predictions,
                    probabilities=tuple(probs_host[i].tolist()),
                    telemetry=self._telemetry_for(request, samples[i] if samples else None),
                    queue_ms=max(started_wall - request.enqueued_at, 0.0) * 1000.0,
                    compute_ms=compute_s * 1000.0,
                    batch_size=len(requests),
                    worker_id=self.worker_id,
                    time_steps_used=None if steps_used is None else steps_used[i],
                )
            )
        return results

    def _batch_input(self, loaded: LoadedModel, arrays: list[np.ndarray], steps: int) -> torch.Tensor:
        """images: B x [C, H, W] -> [T, B, C, H, W]; event frames: B x [T, 2, H, W] -> [T, B, 2, H, W]."""
        if loaded.kind == "image":
            images = torch.from_numpy(np.stack(arrays)).to(self.device)
            return encoding.direct_encode(images, steps)
        return torch.from_numpy(np.stack(arrays, axis=1)).to(self.device)

    @staticmethod
    def _telemetry_for(request: InferenceRequest, sample: dict[str, Any] | None) -> dict[str, Any] | None:
        if sample is None or request.telemetry == "none":
            return None
        if request.telemetry == "summary":
            return {key: value for key, value in sample.items() if key not in telemetry.PER_LAYER_KEYS}
        return sample
