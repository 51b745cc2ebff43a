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
dropped first: its next window starts from rest and says ``state_reset``). A session's membranes
live in its own ``models.stepping.StepState``; windows of several sessions that share a network
and a shape run as one batch, their membranes stacked on the batch axis. Synchronous: callers run
``run_windows`` in a thread.
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
from models.base import set_backend, set_streaming, spiking_layers
from models.neurons import MultiStepNeuron
from models.optimize import optimize_for_inference
from models.stepping import StepState, stepping
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
    names: dict[int, str]  # telemetry.layer_names(module), worked out once
    neurons: list[MultiStepNeuron]  # spiking_layers(module), worked out once
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Session:
    key: tuple[str, int]
    membranes: dict[int, torch.Tensor] | None = None  # stateful: [1, F] per neuron (models.stepping)
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
        set_streaming(module, False)  # a session's membranes live in its own StepState
        model = _StreamModel(
            manifest,
            module,
            forward,
            mode,
            manifest.time_steps.default,
            telemetry.layer_names(module),
            spiking_layers(module),
        )
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
        return self.run_windows([window])[0]

    def run_windows(self, windows: list[StreamWindow]) -> list[StreamAnswer]:
        """Answer windows of several sessions, in order; those that share a network and a shape run
        as one batch (their membranes stacked on the batch axis). One window per session per call
        runs at a time: a session's second window in ``windows`` waits for its first."""
        answers: list[StreamAnswer | None] = [None] * len(windows)
        todo = list(range(len(windows)))
        while todo:
            seen: set[str] = set()
            now: list[int] = []
            later: list[int] = []
            for i in todo:
                (later if windows[i].session_id in seen else now).append(i)
                seen.add(windows[i].session_id)
            for i, answer in zip(now, self._run_round([windows[i] for i in now]), strict=True):
                answers[i] = answer
            todo = later
        return [answer for answer in answers if answer is not None]

    def _session(self, window: StreamWindow) -> tuple[_Session, bool]:
        """(the window's session, started afresh without being asked)."""
        key = (window.model_name, int(window.model_version))
        with self._lock:
            session = self._sessions.get(window.session_id)
            fresh = session is None or session.key != key
            if fresh or window.reset or session is None:
                session = _Session(key)
                self._sessions[window.session_id] = session
            self._sessions.move_to_end(window.session_id)
            while len(self._sessions) > self.max_sessions:
                dropped, _ = self._sessions.popitem(last=False)
                log.info("stream session %s dropped: more than %d sessions", dropped, self.max_sessions)
        return session, fresh and window.index > 0 and not window.reset

    def _run_round(self, windows: list[StreamWindow]) -> list[StreamAnswer]:
        """Windows of distinct sessions: grouped by network and input shape, one forward a group."""
        started = time.perf_counter()
        items = []
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, window in enumerate(windows):
            model = self._model(window.model_name, window.model_version)
            session, lost = self._session(window)
            frames = np.asarray(window.frames, dtype=np.float32)
            if model.mode == "sliding":
                session.frames.extend(frames)
                while len(session.frames) > model.context_steps:
                    session.frames.popleft()
                session.steps = len(session.frames)
                frames = np.stack(session.frames)
            items.append((window, model, session, lost, frames))
            shape = (window.model_name, int(window.model_version), frames.shape, window.telemetry != "none")
            groups.setdefault(shape, []).append(i)
        results: dict[int, tuple[torch.Tensor, Any]] = {}
        for members in groups.values():
            model = items[members[0]][1]
            with_telemetry = items[members[0]][0].telemetry != "none"
            sessions = [items[i][2] for i in members]
            x = torch.from_numpy(np.stack([items[i][4] for i in members], axis=1)).to(self.device)
            with model.lock:
                if model.mode == "stateful":
                    outputs = self._batch_stateful(model, sessions, x, with_telemetry)
                else:
                    outputs = self._forward(model, x, with_telemetry)
            for i, output in zip(members, outputs, strict=True):
                results[i] = output
        compute_ms = (time.perf_counter() - started) * 1000.0
        return [self._answer(items[i], *results[i], compute_ms) for i in range(len(items))]

    def _answer(self, item: Any, logits: torch.Tensor, sample: Any, compute_ms: float) -> StreamAnswer:
        window, model, session, lost, _ = item
        probabilities = torch.softmax(logits.float(), dim=-1)
        k = max(1, min(window.top_k, probabilities.numel()))
        top_p, top_i = torch.topk(probabilities, k)
        labels = model.manifest.labels
        predictions = tuple(
            {"label": labels[i] if i < len(labels) else str(i), "index": i, "probability": float(p)}
            for i, p in zip(top_i.tolist(), top_p.tolist(), strict=True)
        )
        summary = None if sample is None else sample.as_dict(with_layers=window.telemetry == "layers")
        return StreamAnswer(
            session_id=window.session_id,
            index=window.index,
            seq=window.seq,
            mode=model.mode,
            predictions=predictions,
            logits=tuple(logits.float().tolist()),
            telemetry=summary,
            state_steps=session.steps,
            state_reset=lost,
            compute_ms=compute_ms,
            worker_id=self.worker_id,
        )

    def _forward(
        self, model: _StreamModel, x: torch.Tensor, with_telemetry: bool
    ) -> list[tuple[torch.Tensor, Any]]:
        """x: [T, B, 2, H, W] -> per sample (logits [classes], the mean over T; telemetry or None)."""
        try:
            with torch.inference_mode():
                if not with_telemetry:
                    return [(row, None) for row in model.forward(x)]
                with telemetry.record(model.module, model.names) as recorder:
                    logits = model.forward(x)
                return list(zip(logits, recorder.report(), strict=True))
        finally:
            for neuron in model.neurons:  # none keeps state (not streaming); a guard, cheap
                neuron.reset_state()

    def _batch_stateful(
        self, model: _StreamModel, sessions: list[_Session], x: torch.Tensor, with_telemetry: bool
    ) -> list[tuple[torch.Tensor, Any]]:
        """x: [k, B, 2, H, W], one column per session: its membranes in, its new membranes out."""
        state = StepState()
        keys = {key for session in sessions if session.membranes for key in session.membranes}
        for key in keys:
            rows = [session.membranes.get(key) if session.membranes else None for session in sessions]
            like = next(row for row in rows if row is not None)
            state.membranes[key] = torch.cat(
                [row if row is not None else torch.zeros_like(like) for row in rows]
            )
        with stepping(state):
            outputs = self._forward(model, x, with_telemetry)
        steps = x.shape[0]
        for b, session in enumerate(sessions):
            session.membranes = {key: m[b : b + 1].clone() for key, m in state.membranes.items()}
        answers = []
        for session, (window_logits, sample) in zip(sessions, outputs, strict=True):
            total = window_logits.float() * steps  # the window's mean -> the sum of its steps' outputs
            session.logit_sum = total if session.logit_sum is None else session.logit_sum + total
            session.steps += steps
            answers.append((session.logit_sum / session.steps, sample))
        return answers
