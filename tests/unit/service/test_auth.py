"""service/auth.py: the admin token guards management; API keys, when set, guard inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service_support import ADMIN, StaticPool, make_client, npy_bytes

from service.auth import make_credentials
from service.settings import Settings

IMAGE = npy_bytes(np.zeros((1, 28, 28), np.float32))
NPY = {"content-type": "application/x-npy"}


def test_management_needs_the_admin_token(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    missing = client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the admin token is not valid"
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.put("/v1/models/tiny-danet/aliases/x", json={"version": 1}).status_code == 401
    assert client.delete("/v1/models/tiny-danet/versions/1").status_code == 401
    assert client.post("/v1/models").status_code == 401


def test_a_generated_token_is_printed_once_and_works(
    tiny_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with make_client(Settings(registry=tiny_root, admin_token=None), pool=StaticPool()) as client:
        printed = capfd.readouterr().err
        assert printed.count("management API token") == 1
        token = printed.split("management API token for this run:\n", 1)[1].split()[0]
        assert len(token) >= 32
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert "management API token" not in capfd.readouterr().err


def test_a_configured_token_is_not_printed(tiny_root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with make_client(Settings(registry=tiny_root, admin_token=ADMIN), pool=StaticPool()):
        assert ADMIN not in capfd.readouterr().err


def test_generated_tokens_differ() -> None:
    assert make_credentials(None, []).admin_token != make_credentials(None, []).admin_token


def test_inference_is_open_without_api_keys(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    assert client.post("/v1/models/tiny-danet/classify", content=IMAGE, headers=NPY).status_code == 200


def test_api_keys_guard_inference_only(tiny_root: Path) -> None:
    settings = Settings(registry=tiny_root, admin_token=ADMIN, api_keys=["key-one", "key-two"])
    with make_client(settings, pool=StaticPool()) as client:
        url = "/v1/models/tiny-danet/classify"
        refused = client.post(url, content=IMAGE, headers=NPY)
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["error"]["message"]
        assert client.post(url, content=IMAGE, headers={**NPY, "X-API-Key": "wrong"}).status_code == 401
        assert client.post(url, content=IMAGE, headers={**NPY, "X-API-Key": "key-two"}).status_code == 200
        assert (
            client.post(url, content=IMAGE, headers={**NPY, "Authorization": "Bearer key-one"}).status_code
            == 200
        )
        assert (
            client.post(url, content=IMAGE, headers={**NPY, "Authorization": f"Bearer {ADMIN}"}).status_code
            == 200
        )
        v2 = {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
        assert client.post("/v2/models/tiny-danet/infer", json=v2).status_code == 401
        assert (
            client.post("/v2/models/tiny-danet/infer", json=v2, headers={"X-API-Key": "key-one"}).status_code
            == 200
        )
        # probes, metrics and the server's own metadata stay open
        for path in ("/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path


MODEL_METADATA = (
    "/v2/models/tiny-danet",
    "/v2/models/tiny-danet/versions/1",
    "/v2/models/tiny-danet/ready",
    "/v2/models/tiny-danet/versions/1/ready",
    "/v2/models/no-such-model",  # a 401, not a 404: whether a model exists is not told either
)


@pytest.mark.parametrize("path", MODEL_METADATA)
def test_api_keys_guard_model_metadata(tiny_root: Path, path: str) -> None:
    settings = Settings(registry=tiny_root, admin_token=ADMIN, api_keys=["key-one"])
    with make_client(settings, pool=StaticPool()) as client:
        refused = client.get(path)
        assert refused.status_code == 401 and "tiny-danet" not in refused.text
        allowed = client.get(path, headers={"X-API-Key": "key-one"})
        assert allowed.status_code == (404 if "no-such" in path else 200)


def test_error_messages_do_not_show_the_registry_folder(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    root = str(client.app.state.spikeserve.settings.registry)
    assert root.startswith("/")
    answers = [
        client.get("/v2/models/no-such-model"),
        client.post("/v1/models/no-such-model/classify", content=IMAGE, headers=NPY),
        client.get("/v1/models/no-such-model", headers={"Authorization": f"Bearer {ADMIN}"}),
    ]
    for answer in answers:
        assert answer.status_code == 404 and "no-such-model" in answer.text
        assert root not in answer.text and "tiny-registry" not in answer.text, answer.text


def test_a_message_naming_a_registry_file_shows_it_relative_to_the_registry(tiny_root: Path) -> None:
    from registry.errors import IntegrityError

    broken = StaticPool(error=IntegrityError(f"manifest {tiny_root / 'tiny-danet' / '1.json'} is not valid"))
    with make_client(Settings(registry=tiny_root, admin_token=ADMIN), pool=broken) as client:
        answer = client.post("/v1/models/tiny-danet/classify", content=IMAGE, headers=NPY)
    assert answer.status_code == 500
    assert (
        str(tiny_root) not in answer.text
        and "<registry>/tiny-danet/1.json" in answer.json()["error"]["message"]
    )
