"""The one table from typed errors to HTTP answers.

Errors raised below the edge (``workers.errors``, ``registry.errors``, ``service.decoding.errors``,
the service's own auth and request errors) carry a stable ``code``; ``STATUS_BY_CODE`` maps each
code to one status, the same whichever pool ran the request (``workers.error_codec``). Every error
answer is JSON ``{"error": {"code", "message"}}``; a 503 carries ``Retry-After``. Routes under
``/v2/`` answer in the Open Inference Protocol's own shape, ``{"error": "<message>"}`` (plus
``"code"``), so KServe and Triton clients read the message where they expect it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import RegistryError
from workers.errors import QueueFullError, SpikeserveError

log = logging.getLogger("spikeserve.errors")

STATUS_BY_CODE: dict[str, int] = {
    # workers.errors
    "invalid_input": 422,
    "early_exit_unsupported": 422,
    "queue_full": 503,
    "deadline_exceeded": 504,
    "unavailable": 503,
    "inference_failed": 500,
    "internal": 500,
    # registry.errors
    "registry_error": 500,
    "model_not_found": 404,
    "invalid_name": 422,
    "invalid_manifest": 422,
    "invalid_weights": 422,
    "integrity_error": 500,
    "version_in_use": 409,
    "invalid_bundle": 422,
    "load_failed": 503,  # the server is fine; this model cannot be served until it is fixed
    "registry_locked": 503,
    "not_expressible": 422,
    # service.decoding.errors
    "undecodable_input": 400,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    # the service's own
    "invalid_request": 422,
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_many_connections": 503,
    # live streams (their WebSocket close code is 4000 + the status)
    "too_many_streams": 429,
    "stream_idle": 408,
}
_CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}
DEFAULT_RETRY_AFTER_S = 1


class BadRequestError(SpikeserveError):
    """A request the route cannot parse (malformed JSON, a missing multipart field): HTTP 400."""

    code = "bad_request"


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)


def error_response(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error answer for ``path`` (v1 shape, or the Open Inference Protocol's under /v2/)."""
    headers = dict(headers or {})
    if status == 503 and "Retry-After" not in headers:
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER_S)
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    body: dict[str, Any]
    if path == "/v2" or path.startswith("/v2/"):
        body = {"error": message, "code": code}
    else:
        body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def response_for(path: str, exc: SpikeserveError | RegistryError) -> JSONResponse:
    status = status_for(exc.code)
    headers = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if status >= 500 and status != 503:
        log.error("%s on %s: %s", exc.code, path, exc.message)
    return error_response(path, status, exc.code, exc.message, headers)


async def _typed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpikeserveError | RegistryError)
    response = response_for(request.url.path, exc)
    state = getattr(request.app.state, "spikeserve", None)
    return response if state is None else _without_registry_path(response, Path(state.settings.registry))


def _without_registry_path(response: JSONResponse, root: Path) -> JSONResponse:
    """The answer with the registry's folder written as ``<registry>``: messages raised below
    (a manifest or weights file that does not read) name files, and where the server keeps its
    files is nothing a client needs to know."""
    body = bytes(response.body)
    for form in sorted({str(root.absolute()), str(root.resolve())}, key=len, reverse=True):
        if len(form) > 1:
            body = body.replace(json.dumps(form)[1:-1].encode(), b"<registry>")
    if body == response.body:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return JSONResponse(json.loads(body), status_code=response.status_code, headers=headers)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_HTTP_STATUS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    return error_response(request.url.path, exc.status_code, code, message, dict(exc.headers or {}))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return error_response(request.url.path, 422, "invalid_request", "; ".join(parts) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        request.url.path, 500, "internal", "an internal error occurred; the server log has details"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the table on ``app``: every error becomes one JSON answer with one status."""
    app.add_exception_handler(SpikeserveError, _typed)
    app.add_exception_handler(RegistryError, _typed)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)
