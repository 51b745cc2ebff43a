"""One live stream session at the gateway: bytes in, one JSON answer per window out.

Two tasks share a session: the receiver decodes each binary message (``eventio.stream``), fits
the events to the model's sensor, windows them (``Windower``) and queues the completed windows;
the runner sends queued windows to the pool one at a time, in order, and answers each. The
queue holds at most ``max_pending_windows``: when the producer runs ahead of the model the newest
two merge (their counts add up step by step) and ``dropped_windows`` counts each window that was
not answered on its own, so memory stays bounded and no event is lost.

Control messages (JSON text): ``{"reset": true}`` starts the state and the time grid afresh;
``{"flush": true}`` answers the current partial window now; ``{"close": true}`` flushes, answers
what is queued, sends ``{"type": "closed", ...}`` and closes with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from eventio import EventIOError, LimitExceededError, UnknownFormatError
from eventio.stream import StreamDecoder
from eventio.transforms import crop_events, scale_events
from registry.manifest import Manifest
from service.streams import metrics
from service.streams.windows import EventCountWindower, Window, Windower
from workers.pool import WorkerPool
from workers.stream_protocol import StreamAnswer, StreamMode, StreamWindow

log = logging.getLogger("spikeserve.streams")

NORMAL_CLOSE = 1000
GOING_AWAY = 1001  # server shutdown


class StreamClosed(Exception):
    """Ends a session with a WebSocket close ``code`` (4000 + the HTTP status of ``error_code``)."""

    def __init__(self, code: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class StreamParams:
    """What the client asked for, checked by the route."""

    window_us: int
    steps: int  # time steps per window
    fit: str | None
    telemetry: str
    top_k: int
    format: str | None
    sensor_size: tuple[int, int] | None  # the client's sensor, when its format states none
    window_events: int | None = None  # windows of this many events instead of window_us


@dataclass(frozen=True)
class StreamLimits:
    max_message_events: int
    max_pending_windows: int
    idle_timeout_s: float


@dataclass
class _Queued:
    window: Window
    reset: bool = False


@dataclass
class SessionCounters:
    windows: int = 0
    dropped_windows: int = 0
    events: int = 0
    late_events: int = 0
    state_resets: int = 0
    warnings: list[str] = field(default_factory=list)


class StreamSession:
    """Serves one accepted WebSocket until close, idle timeout, an error or server shutdown."""

    def __init__(
        self,
        websocket: WebSocket,
        pool: WorkerPool,
        manifest: Manifest,
        params: StreamParams,
        limits: StreamLimits,
    ) -> None:
        self.websocket = websocket
        self.pool = pool
        self.manifest = manifest
        self.params = params
        self.limits = limits
        self.session_id = uuid.uuid4().hex  # server-minted: the worker keys the state by it
        spec = manifest.input
        self.target = (int(getattr(spec, "sensor_width", 0)), int(getattr(spec, "sensor_height", 0)))
        self.decoder = StreamDecoder(params.format, max_packet_events=limits.max_message_events)
        self.windower: Windower | EventCountWindower = (
            EventCountWindower(params.window_events, params.steps, self.target)
            if params.window_events
            else Windower(params.window_us, params.steps, self.target)
        )
        self.counters = SessionCounters()
        self.mode: StreamMode = "stateful"
        self._pending: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._reset_next = False
        self._seq = 0  # windows sent to the pool: 1, 2, ... (an answer is matched to its window by it)
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._fit_said = False
        for counter in (metrics.WINDOWS, metrics.DROPPED, metrics.EVENTS, metrics.STATE_RESETS):
            counter.labels(manifest.name)  # a model's series read 0 from its first session on

    # -- lifecycle ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Open the stream on a worker, greet the client, then relay until the session ends."""
        mode, context_steps = await self.pool.open_stream(
            self.session_id, self.manifest.name, self.manifest.version
        )
        self.mode = mode
        await self._send(self._ready_message(context_steps))
        name = self.session_id[:8]
        tasks = {
            asyncio.create_task(self._receive(), name=f"stream-receive-{name}"),
            asyncio.create_task(self._run_windows(), name=f"stream-run-{name}"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure on either side ends the session with its close code
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.pool.close_stream(self.session_id)

    async def shutdown(self) -> None:
        """Server shutdown: a final message, then close 1001."""
        await self._finish(GOING_AWAY, "server shutting down")

    def _ready_message(self, context_steps: int) -> dict[str, Any]:
        return {
            "type": "ready",
            "session_id": self.session_id,
            "model": {"name": self.manifest.name, "version": self.manifest.version},
            "mode": self.mode,
            "window_us": None if self.params.window_events else self.params.window_us,
            "window_events": self.params.window_events,
            "steps_per_window": self.params.steps,
            "context_steps": context_steps if self.mode == "sliding" else None,
            "sensor": {"width": self.target[0], "height": self.target[1]},
            "limits": {
                "max_message_events": self.limits.max_message_events,
                "max_pending_windows": self.limits.max_pending_windows,
                "idle_timeout_s": self.limits.idle_timeout_s,
            },
        }

    async def _finish(self, code: int, reason: str) -> None:
        """Send the final ``closed`` message and close the socket (once)."""
        if self._closing:
            return
        self._closing = True
        message = {"type": "closed", "reason": reason, **self.summary()}
        with contextlib.suppress(Exception):
            await self._send(message)
        with contextlib.suppress(Exception):
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                await self.websocket.close(code, reason[:120])

    def summary(self) -> dict[str, Any]:
        return {
            "windows": self.counters.windows,
            "dropped_windows": self.counters.dropped_windows,
            "events": self.counters.events,
            "late_events": self.windower.late_events,
            "skipped_empty_windows": self.windower.skipped_windows,
            "warnings": self.counters.warnings + self.decoder.warnings,
        }

    # -- receiving --------------------------------------------------------------------------------

    async def _receive(self) -> None:
        while not self._closing:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), self.limits.idle_timeout_s)
            except TimeoutError:
                raise StreamClosed(
                    4408, "stream_idle", f"no message for {self.limits.idle_timeout_s:g} s: idle timeout"
                ) from None
            if message["type"] == "websocket.disconnect":
                self._closing = True
                return
            if message.get("bytes") is not None:
                await self._on_bytes(message["bytes"])
            elif message.get("text") is not None and await self._on_control(message["text"]):
                return

    async def _on_bytes(self, data: bytes) -> None:
        arrived = time.perf_counter()
        try:
            events = self.decoder.feed(data)
        except LimitExceededError as exc:
            raise StreamClosed(4413, "payload_too_large", str(exc)) from None
        except UnknownFormatError as exc:
            raise StreamClosed(4415, "unsupported_media_type", str(exc)) from None
        except EventIOError as exc:
            raise StreamClosed(4400, "undecodable_input", str(exc)) from None
        if len(events) > self.limits.max_message_events:
            raise StreamClosed(
                4413,
                "payload_too_large",
                f"one message decoded to {len(events):,} events, over the limit of "
                f"{self.limits.max_message_events:,}; send smaller chunks",
            )
        if len(events) == 0:
            return
        self.counters.events += len(events)
        events = self._fit(events)
        metrics.EVENTS.labels(self.manifest.name).inc(len(events))
        self._queue(self.windower.push(events), arrived)

    def _fit(self, events: np.ndarray) -> np.ndarray:
        """Events on the model's sensor (crop or scale as asked); 4422 when they do not fit."""
        source = self.decoder.sensor_size or self.params.sensor_size
        if source is None:
            source = self.target
        if source != self.target:
            if self.params.fit is None:
                raise StreamClosed(
                    4422,
                    "invalid_input",
                    f"the stream's sensor is {source[0]}x{source[1]} but the model takes "
                    f"{self.target[0]}x{self.target[1]}; connect with fit=crop or fit=scale",
                )
            if not self._fit_said:
                self._fit_said = True
                self.counters.warnings.append(
                    f"{'cropped' if self.params.fit == 'crop' else 'scaled'} the {source[0]}x{source[1]} "
                    f"stream to {self.target[0]}x{self.target[1]}"
                )
            if self.params.fit == "crop":
                return crop_events(events, source, self.target)
            try:
                return scale_events(events, source, self.target)
            except ValueError as exc:
                raise StreamClosed(4422, "invalid_input", str(exc)) from None
        outside = (events["x"] >= source[0]) | (events["y"] >= source[1])
        if outside.any():
            raise StreamClosed(
                4422,
                "invalid_input",
                f"{int(outside.sum()):,} events lie outside the {source[0]}x{source[1]} sensor",
            )
        return events

    async def _on_control(self, text: str) -> bool:
        """Handle a JSON control message; True when the session should end (close)."""
        try:
            control = json.loads(text)
            if not isinstance(control, dict):
                raise ValueError("not an object")
        except ValueError:
            await self._send_error(
                "bad_request", 'control messages are JSON objects: {"reset"|"flush"|"close": true}'
            )
            return False
        known = {"reset", "flush", "close"}
        unknown = sorted(set(control) - known)
        if unknown or not control:
            await self._send_error(
                "bad_request", f"unknown control {unknown or '{}'}; use reset, flush or close"
            )
            return False
        if control.get("reset"):
            stale = len(self._pending)
            self._pending.clear()
            self.counters.dropped_windows += stale
            metrics.DROPPED.labels(self.manifest.name).inc(stale)
            self.windower.restart()
            self._reset_next = True
        if control.get("flush") or control.get("close"):
            window = self.windower.flush()
            if window is not None:
                self._queue([window], time.perf_counter())
        if control.get("close"):
            await self._drained.wait()
            await self._finish(NORMAL_CLOSE, "closed by the client")
            return True
        return False

    def _queue(self, windows: list[Window], arrived: float) -> None:
        for window in windows:
            window.completed_at = arrived
            reset, self._reset_next = self._reset_next, False
            if len(self._pending) >= self.limits.max_pending_windows and not reset:
                self._pending[-1].window.merge(window)  # the model is behind: fold it into the newest
                self.counters.dropped_windows += 1
                metrics.DROPPED.labels(self.manifest.name).inc()
            else:
                self._pending.append(_Queued(window, reset))
        if self._pending:
            self._drained.clear()
            self._wake.set()

    # -- answering --------------------------------------------------------------------------------

    async def _run_windows(self) -> None:
        while True:
            if not self._pending:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            queued = self._pending.popleft()
            window = queued.window
            self._seq += 1
            answer = await self.pool.run_stream_window(
                StreamWindow(
                    session_id=self.session_id,
                    model_name=self.manifest.name,
                    model_version=self.manifest.version,
                    index=window.index,
                    frames=window.frames,
                    telemetry=self.params.telemetry,
                    top_k=self.params.top_k,
                    reset=queued.reset,
                    seq=self._seq,
                )
            )
            await self._answer(window, answer)

    async def _answer(self, window: Window, answer: StreamAnswer) -> None:
        self.counters.windows += 1
        if answer.state_reset:
            self.counters.state_resets += 1
            metrics.STATE_RESETS.labels(self.manifest.name).inc()
        latency_s = time.perf_counter() - window.completed_at
        name = self.manifest.name
        metrics.WINDOWS.labels(name).inc()
        metrics.WINDOW_LATENCY.labels(name).observe(latency_s)
        metrics.WINDOW_LATENCY_RATIO.labels(name).observe(latency_s * 1e6 / window.length_us)
        if answer.telemetry is not None:
            metrics.SPIKE_RATE.labels(name).observe(float(answer.telemetry.get("spike_rate", 0.0)))
        await self._send(
            {
                "type": "window",
                "window": window.index,
                "seq": answer.seq,
                "start_us": window.start_us,
                "end_us": window.end_us,
                "events": window.events,
                "merged_windows": window.merged,
                "predictions": list(answer.predictions),
                "logits": list(answer.logits),
                "telemetry": answer.telemetry,
                "mode": answer.mode,
                "state_steps": answer.state_steps,
                "state_reset": answer.state_reset,
                "compute_ms": round(answer.compute_ms, 3),
                "latency_ms": round(latency_s * 1000.0, 3),
                "dropped_windows": self.counters.dropped_windows,
                "worker": answer.worker_id,
            }
        )

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message))

    async def _send_error(self, code: str, message: str) -> None:
        await self._send({"type": "error", "error": {"code": code, "message": message}})


async def run_session(session: StreamSession) -> None:
    """Serve ``session``; any ending becomes a final message and a close code, never a traceback."""
    try:
        await session.serve()
    except StreamClosed as closed:
        with contextlib.suppress(Exception):
            await session._send_error(closed.error_code, closed.message)
        await session._finish(closed.code, closed.message)
    except WebSocketDisconnect:
        pass
    except Exception as exc:  # a worker error mid-stream: say it and close, the server lives on
        code = getattr(exc, "code", "inference_failed")
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        from service.errors import status_for

        status = status_for(code) if isinstance(code, str) else 500
        if status >= 500 and not isinstance(code, str):
            log.exception("stream %s failed", session.session_id)
        with contextlib.suppress(Exception):
            await session._send_error(code if isinstance(code, str) else "inference_failed", message)
        await session._finish(4000 + status, message)
