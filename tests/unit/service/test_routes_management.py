"""service/routes/management.py on a real registry and embedded worker: list, show, upload,
alias moves picked up live, deletion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors
from service_support import ADMIN, make_client, npy_bytes, wait_ready
from tiny_zoo import (
    DANET_CONFIG,
    IMAGE_INPUT,
    IMAGE_MODEL,
    LABELS,
    TIME_STEPS,
    build_tiny_registry,
    random_state_dict,
)

from service.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN}"}
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = Path(tmp_path_factory.mktemp("managed-registry"))
    build_tiny_registry(root)
    with make_client(
        Settings(registry=root, admin_token=ADMIN, default_models=[IMAGE_MODEL], neuron_backend="torch")
    ) as test_client:
        wait_ready(test_client)
        yield test_client


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields = {
        "name": IMAGE_MODEL,
        "architecture": "danet_resnet18",
        "config": DANET_CONFIG,
        "time_steps": TIME_STEPS,
        "input": IMAGE_INPUT,
        "labels": LABELS,
        "description": "uploaded over HTTP",
    }
    return {**fields, **overrides}


def upload(client: TestClient, weights: bytes, fields: dict[str, Any]) -> Any:
    return client.post(
        "/v1/models",
        headers=AUTH,
        files={"weights": ("w.safetensors", weights, "application/octet-stream")},
        data={"manifest": json.dumps(fields)},
    )


def classify(client: TestClient, ref: str) -> Any:
    image = npy_bytes(np.random.default_rng(0).random((1, 28, 28), dtype=np.float32))
    return client.post(f"/v1/models/{ref}/classify", content=image, headers=NPY)


def test_list_and_show(client: TestClient) -> None:
    models = client.get("/v1/models", headers=AUTH).json()["models"]
    assert {m["name"] for m in models} == {"tiny-danet", "tiny-spikeformer"}
    shown = client.get(f"/v1/models/{IMAGE_MODEL}", headers=AUTH).json()
    assert shown["aliases"] == {"production": 1}
    assert [v["version"] for v in shown["versions"]] == [1]
    assert shown["versions"][0]["weights"]["sha256"]
    assert shown["loaded_versions"] == [1]
    missing = client.get("/v1/models/nothing-here", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_upload_then_move_the_alias_live_then_delete(client: TestClient) -> None:
    weights = save_safetensors(random_state_dict("danet_resnet18", DANET_CONFIG, seed=7))
    created = upload(client, weights, manifest_fields(aliases=["staging"]))
    assert created.status_code == 201, created.text
    version = created.json()["version"]
    assert version == 2
    assert classify(client, f"{IMAGE_MODEL}@staging").json()["model"]["version"] == 2
    assert classify(client, IMAGE_MODEL).json()["model"]["version"] == 1  # production still at 1

    moved = client.put(f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=AUTH, json={"version": 2})
    assert moved.status_code == 200 and moved.json()["aliases"]["production"] == 2
    assert classify(client, IMAGE_MODEL).json()["model"]["version"] == 2  # no restart needed

    in_use = client.delete(f"/v1/models/{IMAGE_MODEL}/versions/2", headers=AUTH)
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "version_in_use"
    assert client.put(
        f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=AUTH, json={"version": 1}
    ).is_success
    assert client.delete(f"/v1/models/{IMAGE_MODEL}/aliases/staging", headers=AUTH).json()["aliases"] == {
        "production": 1
    }
    deleted = client.delete(f"/v1/models/{IMAGE_MODEL}/versions/2", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": {"name": IMAGE_MODEL, "version": 2}}
    assert classify(client, f"{IMAGE_MODEL}:2").status_code == 404


def test_weights_that_do_not_fit_are_refused_and_not_kept(client: TestClient) -> None:
    def versions() -> list[int]:
        return [
            v["version"] for v in client.get(f"/v1/models/{IMAGE_MODEL}", headers=AUTH).json()["versions"]
        ]

    before = versions()
    wrong = save_safetensors(random_state_dict("danet_resnet18", {**DANET_CONFIG, "base_width": 4}, seed=0))
    refused = upload(client, wrong, manifest_fields())
    assert refused.status_code == 422, refused.text
    assert "does not load" in refused.json()["error"]["message"]
    assert versions() == before


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({}, {"manifest": "{}"}, 400, "bad_request"),
        ({"weights": ("w", b"xx")}, {}, 400, "bad_request"),
        ({"weights": ("w", b"xx")}, {"manifest": "not json"}, 422, "invalid_input"),
        ({"weights": ("w", b"xx")}, {"manifest": json.dumps({"name": "x"})}, 422, "invalid_input"),
        (
            {"weights": ("w", b"not safetensors")},
            {"manifest": json.dumps(manifest_fields())},
            422,
            "invalid_weights",
        ),
        (
            {"weights": ("w", b"xx")},
            {"manifest": json.dumps(manifest_fields(name="../escape"))},
            422,
            "invalid_name",
        ),
    ],
)
def test_bad_uploads(
    client: TestClient, files: dict[str, Any], data: dict[str, str], status: int, code: str
) -> None:
    response = client.post("/v1/models", headers=AUTH, files=files or {"other": ("x", b"")}, data=data)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_alias_body_is_validated(client: TestClient) -> None:
    response = client.put(f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=AUTH, json={"version": 0})
    assert response.status_code == 422
    missing = client.put(f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=AUTH, json={"version": 99})
    assert missing.status_code == 404
    bad_alias = client.put(f"/v1/models/{IMAGE_MODEL}/aliases/Bad Alias", headers=AUTH, json={"version": 1})
    assert bad_alias.status_code == 422 and bad_alias.json()["error"]["code"] == "invalid_name"
