"""Stream sessions on a worker: one state slot per session, one window at a time.

Two ways to carry time across windows, chosen by the architecture (``supports_streaming``):
- ``stateful`` (DANet, any net of LIF/PLIF layers, causal in time): the neurons run in their
  streaming mode and every session keeps its own membranes between windows; the answer's logits
  are the mean of every step's output since the last reset, so a recording streamed window by
  window ends with the logits of one forward over all its steps (same bins, same T);
- ``sliding`` (Spikeformer: attention across time): the last ``context_steps`` frames are kept
  and each window runs them from rest; the window's own steps are the stride.

The stream copy of a network is loaded apart from the engine's batch copy: its neurons keep state
between forwards, which the batch path must never see. Sessions are bounded (least recently used
dropped first: its next window starts from rest and says ``state_reset``). Synchronous: callers
run ``run_window`` in a thread; one lock per network serialises the swap of states in and out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import telemetry
from models.base import reset_state, set_backend, set_streaming, spiking_layers
from models.optimize import optimize_for_inference
from registry.manifest import Manifest
from workers.engine import CheckpointSource
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow

log = logging.getLogger("spikeserve.streams")


@dataclass
class _StreamModel:
    manifest: Manifest
    module: nn.Module
    forward: Any
    mode: StreamMode
    context_steps: int  # sliding: frames kept; stateful: the manifest's default T (unused)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Session:
    key: tuple[str, int]
    membranes: list[torch.Tensor | None] | None = None  # stateful: one per neuron layer
    logit_sum: torch.Tensor | None = None  # stateful: [classes] sum of per-step outputs
    steps: int = 0
    frames: deque[np.ndarray] = field(default_factory=deque)  # sliding: [2, H, W] each


def stream_mode(module: nn.Module) -> StreamMode:
    """``stateful`` when stepping the network equals one forward over all steps, else ``sliding``."""
    return "stateful" if getattr(module, "supports_streaming", False) else "sliding"


class StreamRunner:
    """Runs ``StreamWindow``s of up to ``max_sessions`` sessions on the networks of ``registry``."""

    def __init__(
        self,
        registry: CheckpointSource,
        device: str = "cpu",
        backend: str = "auto",
        worker_id: str = "embedded",
        *,
        max_sessions: int = 256,
    ) -> None:
        self.registry = registry
        self.device = torch.device(device)
        self.backend = backend
        self.worker_id = worker_id
        self.max_sessions = max_sessions
        self._models: dict[tuple[str, int], _StreamModel] = {}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()  # guards _models and _sessions

    def describe(self, name: str, version: int) -> tuple[StreamMode, int]:
        """(mode, context_steps) of ``name:version``, loading its stream copy if needed."""
        model = self._model(name, version)
        return model.mode, model.context_steps

    def _model(self, name: str, version: int) -> _StreamModel:
        key = (name, int(version))
        with self._lock:
            model = self._models.get(key)
        if model is not None:
            return model
        manifest, module = self.registry.load(f"{name}:{version}", device=str(self.device))
        mode = stream_mode(module)
        try:
            forward: Any = optimize_for_inference(
                module, self.device, backend=self.backend, cuda_graphs=False
            )
            module = forward.model
        except Exception as exc:  # served as loaded, like the engine does
            log.warning("optimize_for_inference failed for the stream copy of %s:%d (%s)", name, version, exc)
            module.eval()
            set_backend(module, self.backend)
            forward = module
        set_streaming(module, mode == "stateful")
        model = _StreamModel(manifest, module, forward, mode, manifest.time_steps.default)
        with self._lock:
            return self._models.setdefault(key, model)

    def close(self, session_id: str) -> bool:
        """Forget a session's state. True if it was held."""
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def run_window(self, window: StreamWindow) -> StreamAnswer:
        """Answer one window; a session this runner does not hold starts from rest (``state_reset``)."""
        started = time.perf_counter()
        model = self._model(window.model_name, window.model_version)
        key = (window.model_name, int(window.model_version))
        with self._lock:
            session = self._sessions.get(window.session_id)
            fresh = session is None or session.key != key
            if fresh or window.reset:
                session = _Session(key)
                self._sessions[window.session_id] = session
            assert session is not None
            self._sessions.move_to_end(window.session_id)
            while len(self._sessions) > self.max_sessions:
                dropped, _ = self._sessions.popitem(last=False)
                log.info("stream session %s dropped: more than %d sessions", dropped, self.max_sessions)
        frames = np.asarray(window.frames, dtype=np.float32)
        with model.lock:
            if model.mode == "stateful":
                logits, sample = self._step_stateful(model, session, frames, window.telemetry != "none")
            else:
                logits, sample = self._step_sliding(model, session, frames, window.telemetry != "none")
        probabilities = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(window.top_k, probabilities.numel()))
        top_p, top_i = torch.topk(probabilities, k)
        labels = model.manifest.labels
        predictions = tuple(
            {"label": labels[i] if i < len(labels) else str(i), "index": i, "probability": float(p)}
            for i, p in zip(top_i.tolist(), top_p.tolist(), strict=True)
        )
        summary = None
        if sample is not None:
            summary = sample.as_dict(with_layers=window.telemetry == "layers")
        return StreamAnswer(
            session_id=window.session_id,
            index=window.index,
            mode=model.mode,
            predictions=predictions,
            logits=tuple(logits.float().tolist()),
            telemetry=summary,
            state_steps=session.steps,
            state_reset=fresh and window.index > 0 and not window.reset,
            compute_ms=(time.perf_counter() - started) * 1000.0,
            worker_id=self.worker_id,
        )

    def _run(self, model: _StreamModel, x: torch.Tensor, with_telemetry: bool) -> tuple[torch.Tensor, Any]:
        """x: [T, 1, 2, H, W] -> (logits [classes] averaged over T, telemetry of the forward or None)."""
        with torch.inference_mode():
            if not with_telemetry:
                return model.forward(x)[0], None
            with telemetry.record(model.module) as recorder:
                logits = model.forward(x)[0]
            return logits, recorder.report()[0]

    def _step_stateful(
        self, model: _StreamModel, session: _Session, frames: np.ndarray, with_telemetry: bool
    ) -> tuple[torch.Tensor, Any]:
        neurons = spiking_layers(model.module)
        try:
            if session.membranes is not None:
                for neuron, membrane in zip(neurons, session.membranes, strict=True):
                    neuron.v = membrane
            x = torch.from_numpy(frames).to(self.device).unsqueeze(1)
            window_logits, sample = self._run(model, x, with_telemetry)
            session.membranes = [neuron.v for neuron in neurons]
        finally:
            reset_state(model.module)  # the next session's states are swapped in before its window
        steps = len(frames)
        total = window_logits.float() * steps  # the window's mean -> the sum of its steps' outputs
        session.logit_sum = total if session.logit_sum is None else session.logit_sum + total
        session.steps += steps
        return session.logit_sum / session.steps, sample

    def _step_sliding(
        self, model: _StreamModel, session: _Session, frames: np.ndarray, with_telemetry: bool
    ) -> tuple[torch.Tensor, Any]:
        session.frames.extend(frames)
        while len(session.frames) > model.context_steps:
            session.frames.popleft()
        session.steps = len(session.frames)
        x = torch.from_numpy(np.stack(session.frames)).to(self.device).unsqueeze(1)
        try:
            return self._run(model, x, with_telemetry)
        finally:
            reset_state(model.module)
