"""``WS /v1/models/{ref}/stream``: live event streams, one JSON answer per window.

Query: ``window_ms`` (or ``window_us``; default 50 ms) or ``window_events`` (windows of that many
events), ``time_steps`` per window (default 1),
``fit`` (crop | scale), ``telemetry`` (none | summary | layers), ``top_k``, ``format`` (aedat4 |
nmnist | npy; default: the first bytes say), ``sensor_width``/``sensor_height`` (a format that
states no sensor), ``api_key`` (or the ``X-API-Key`` / ``Authorization: Bearer`` headers).
The socket is accepted first so that every refusal is a close code with a reason: 4000 + the HTTP
status the same problem gets on the inference routes (4401, 4404, 4422, 4429, 4503...).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from typing import Any

from fastapi import APIRouter, WebSocket

from registry.errors import RegistryError
from service.errors import status_for
from service.state import ServiceState
from service.streams.session import StreamLimits, StreamParams, StreamSession, run_session
from workers.errors import SpikeserveError
from workers.options import check_options

router = APIRouter(tags=["streams"])

DEFAULT_WINDOW_US = 50_000
MAX_WINDOW_US = 60_000_000
FITS = ("crop", "scale")


class _Refused(Exception):
    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code or 4000 + status_for(code)


@router.websocket("/v1/models/{ref}/stream", name="stream")
async def stream(websocket: WebSocket, ref: str) -> None:
    """A live stream of event chunks (binary) and controls (JSON) in; one JSON message per window out."""
    await websocket.accept()
    state: ServiceState = websocket.app.state.spikeserve
    try:
        api_key = _check_api_key(state, websocket)
        try:
            manifest = state.resolver.resolve(ref)
            query = websocket.query_params
            steps = _int(query.get("time_steps"), "time_steps", 1)
            top_k = _int(query.get("top_k"), "top_k", 5)
            telemetry = query.get("telemetry", "summary")
            hint = f"POST /v1/models/{ref}/classify"
            options = check_options(manifest, "events", steps, top_k, telemetry, hint)
        except (SpikeserveError, RegistryError) as exc:
            raise _Refused(exc.code, getattr(exc, "message", None) or str(exc)) from None
        params = _params(query, options.time_steps, options.telemetry, options.top_k)
        key = state.streams.key_of(api_key, websocket.client.host if websocket.client else None)
        refusal = state.streams.refusal(key)
        if refusal is not None:
            close_code, code, message = refusal
            raise _Refused(code, message, close_code)
    except _Refused as refused:
        await _refuse(websocket, refused)
        return
    settings = state.settings
    limits = StreamLimits(
        max_message_events=settings.stream_max_message_events,
        max_pending_windows=settings.stream_max_pending_windows,
        idle_timeout_s=settings.stream_idle_timeout_s,
    )
    session = StreamSession(websocket, state.pool, manifest, params, limits)
    state.streams.add(session, key)
    try:
        await run_session(session)
    finally:
        state.streams.remove(session)


def _check_api_key(state: ServiceState, websocket: WebSocket) -> str | None:
    """The API key used (None when the server needs none); 4401 when one is needed and missing or wrong."""
    credentials = state.credentials
    header = websocket.headers.get("authorization", "")
    scheme, _, bearer = header.partition(" ")
    given = (
        websocket.headers.get("x-api-key")
        or (bearer.strip() if scheme.lower() == "bearer" else None)
        or websocket.query_params.get("api_key")
    )
    if not credentials.api_keys:
        return given
    if not given:
        raise _Refused(
            "unauthorized", "streams need an API key: X-API-Key, Authorization: Bearer, or api_key="
        )
    accepted = (*credentials.api_keys, credentials.admin_token)
    if not any([hmac.compare_digest(given.encode(), key.encode()) for key in accepted]):
        raise _Refused("unauthorized", "the API key is not valid")
    return given


def _int(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise _Refused("invalid_request", f"{name} must be an integer, got {text!r}") from None


def _params(query: Any, steps: int, telemetry: str, top_k: int) -> StreamParams:
    if query.get("window_us"):
        window_us = _int(query.get("window_us"), "window_us", DEFAULT_WINDOW_US)
    elif query.get("window_ms"):
        try:
            window_us = round(float(query["window_ms"]) * 1000)
        except ValueError:
            raise _Refused(
                "invalid_request", f"window_ms must be a number, got {query['window_ms']!r}"
            ) from None
    else:
        window_us = DEFAULT_WINDOW_US
    if not steps <= window_us <= MAX_WINDOW_US:
        raise _Refused(
            "invalid_request",
            f"a window must last {steps} us (one per step) to {MAX_WINDOW_US // 1_000_000} s, "
            f"got {window_us} us",
        )
    window_events = None
    if query.get("window_events"):
        window_events = _int(query.get("window_events"), "window_events", 0)
        if not steps <= window_events <= 10_000_000:
            raise _Refused("invalid_request", f"window_events must be {steps} (one per step) to 10,000,000")
    fit = query.get("fit") or None
    if fit is not None and fit not in FITS:
        raise _Refused("invalid_request", f"fit must be crop or scale, got {fit!r}")
    fmt = query.get("format") or None
    if fmt is not None and fmt not in ("aedat4", "nmnist", "bin", "npy"):
        raise _Refused("unsupported_media_type", f"streams carry aedat4, nmnist or npy, not {fmt!r}")
    width, height = query.get("sensor_width"), query.get("sensor_height")
    sensor = None
    if width or height:
        sensor = (_int(width, "sensor_width", 0), _int(height, "sensor_height", 0))
        if min(sensor) < 1 or max(sensor) > 65535:
            raise _Refused("invalid_request", "sensor_width and sensor_height must both be 1..65535")
    return StreamParams(window_us, steps, fit, telemetry, top_k, fmt, sensor, window_events)


async def _refuse(websocket: WebSocket, refused: _Refused) -> None:
    """The project's error shape as the one message, then the close code."""
    with contextlib.suppress(Exception):
        await websocket.send_text(
            json.dumps({"type": "error", "error": {"code": refused.code, "message": refused.message}})
        )
        await websocket.close(refused.close_code, refused.code)
