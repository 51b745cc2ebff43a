"""service/errors.py: one table, every typed error mapped, one JSON shape (v2's under /v2)."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient

import registry.errors as registry_errors
import service.decoding.errors as decoding_errors
import workers.errors as worker_errors
from service.auth import AuthenticationError
from service.errors import STATUS_BY_CODE, BadRequestError, install_error_handlers


def _error_classes(module: object, base: type) -> list[type]:
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass) if issubclass(cls, base)]


WORKER_ERRORS = _error_classes(worker_errors, worker_errors.SpikeserveError) + [
    cls
    for cls in _error_classes(decoding_errors, worker_errors.SpikeserveError)
    if cls.__module__ == decoding_errors.__name__
]
REGISTRY_ERRORS = _error_classes(registry_errors, registry_errors.RegistryError)


def test_every_typed_error_has_a_status() -> None:
    codes = {cls.code for cls in [*WORKER_ERRORS, *REGISTRY_ERRORS, AuthenticationError, BadRequestError]}
    assert codes <= STATUS_BY_CODE.keys(), f"unmapped codes: {codes - STATUS_BY_CODE.keys()}"


def _app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/boom")
    @app.get("/v2/boom")
    async def boom() -> None:
        raise exc

    @app.get("/v1/typed")
    async def typed(count: int = Query(ge=1)) -> dict[str, int]:
        return {"count": count}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("cls", WORKER_ERRORS + REGISTRY_ERRORS, ids=lambda cls: cls.__name__)
def test_each_error_answers_its_status_and_json_shape(cls: type) -> None:
    client = _app_raising(cls("what went wrong, and what to do"))
    v1 = client.get("/v1/boom")
    assert v1.status_code == STATUS_BY_CODE[cls.code]
    assert v1.json() == {"error": {"code": cls.code, "message": "what went wrong, and what to do"}}
    v2 = client.get("/v2/boom")
    assert v2.status_code == v1.status_code
    assert v2.json() == {"error": "what went wrong, and what to do", "code": cls.code}
    if v1.status_code == 503:
        assert int(v1.headers["Retry-After"]) >= 1


def test_known_statuses() -> None:
    assert {
        code: STATUS_BY_CODE[code] for code in ("queue_full", "deadline_exceeded", "model_not_found")
    } == {
        "queue_full": 503,
        "deadline_exceeded": 504,
        "model_not_found": 404,
    }
    assert STATUS_BY_CODE["payload_too_large"] == 413 and STATUS_BY_CODE["unsupported_media_type"] == 415


def test_queue_full_says_when_to_retry() -> None:
    response = _app_raising(worker_errors.QueueFullError("full", retry_after_s=2.2)).get("/v1/boom")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"


def test_unauthorized_asks_for_a_bearer_token() -> None:
    response = _app_raising(AuthenticationError("no token")).get("/v1/boom")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_unexpected_exception_is_a_json_500_without_internals() -> None:
    response = _app_raising(RuntimeError("secret internals")).get("/v1/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert "secret" not in response.text


def test_validation_and_unknown_routes_use_the_same_shape() -> None:
    client = _app_raising(RuntimeError())
    invalid = client.get("/v1/typed?count=0")
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "invalid_request"
    assert "count" in invalid.json()["error"]["message"]
    missing = client.get("/v1/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_gateway_answers_unknown_routes_and_methods_in_json(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    assert client.get("/v1/nothing/here").json()["error"]["code"] == "not_found"
    wrong_method = client.get("/v1/models/tiny-danet/classify")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_the_docs_table_lists_every_code_with_its_status() -> None:
    from pathlib import Path

    table = (Path(__file__).resolve().parents[3] / "docs" / "ERRORS.md").read_text()
    rows = {
        cells[1].strip("` "): int(cells[2])
        for line in table.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 3
    }
    assert rows == STATUS_BY_CODE
