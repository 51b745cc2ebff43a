"""service/routes/v2.py: the Open Inference Protocol (KServe v2) REST shapes, through the real worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import ADMIN, StaticPool, make_client, npy_bytes, wait_ready

from service.settings import Settings

NPY = {"content-type": "application/x-npy"}


def tensor(shape: list[int], data: Any = None, name: str = "input", datatype: str = "FP32") -> dict[str, Any]:
    count = int(np.prod(shape))
    values = np.random.default_rng(0).random(count).tolist() if data is None else data
    return {"name": name, "shape": shape, "datatype": datatype, "data": values}


def test_server_metadata_and_health(serving: TestClient) -> None:
    meta = serving.get("/v2").json()
    assert (
        meta["name"] == "spikeserve"
        and isinstance(meta["version"], str)
        and meta["extensions"] == ["binary_tensor_data"]
    )
    assert serving.get("/v2/health/live").status_code == 200
    assert serving.get("/v2/health/ready").status_code == 200


def test_model_metadata_follows_the_protocol(serving: TestClient) -> None:
    meta = serving.get("/v2/models/tiny-danet").json()
    assert meta["name"] == "tiny-danet"
    assert meta["versions"] == ["1"]
    assert isinstance(meta["platform"], str)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert serving.get("/v2/models/tiny-danet/versions/1").json()["name"] == "tiny-danet"
    assert serving.get("/v2/models/tiny-danet/ready").status_code == 200
    assert serving.get("/v2/models/tiny-danet/versions/1/ready").json() == {"ready": True}
    missing = serving.get("/v2/models/tiny-danet/versions/5")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


@pytest.mark.parametrize("shape", [[1, 28, 28], [1, 1, 28, 28]])
def test_infer_one_image_matches_v1(serving: TestClient, shape: list[int]) -> None:
    image = np.random.default_rng(4).random((1, 28, 28), dtype=np.float32)
    body = {"id": "abc", "inputs": [tensor(shape, image.reshape(-1).tolist())]}
    answer = serving.post("/v2/models/tiny-danet/infer", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["model_name"] == "tiny-danet" and out["model_version"] == "1" and out["id"] == "abc"
    (output,) = out["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [1, 10])
    assert sum(output["data"]) == pytest.approx(1.0, abs=1e-5)
    v1 = serving.post("/v1/models/tiny-danet/classify?top_k=10", content=npy_bytes(image), headers=NPY).json()
    by_index = {p["index"]: p["probability"] for p in v1["predictions"]}
    assert output["data"] == pytest.approx([by_index[i] for i in range(10)], abs=1e-6)


def test_infer_a_batch_nested_data_and_parameters(serving: TestClient) -> None:
    images = np.random.default_rng(5).random((3, 1, 28, 28)).astype(np.float32)
    body = {
        "inputs": [tensor([3, 1, 28, 28], images.tolist())],
        "parameters": {"time_steps": 2, "telemetry": "summary"},
    }
    out = serving.post("/v2/models/tiny-danet/versions/1/infer", json=body).json()
    assert out["outputs"][0]["shape"] == [3, 10]
    assert len(out["outputs"][0]["data"]) == 30
    assert out["parameters"]["time_steps"] == 2
    assert len(out["parameters"]["telemetry"]) == 3 and "spike_rate" in out["parameters"]["telemetry"][0]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"inputs": [tensor([1, 28, 28], name="pixels")]}, 422, "named 'input'"),
        ({"inputs": [tensor([1, 28, 28], datatype="INT32")]}, 422, "FP32"),
        ({"inputs": [tensor([1, 27, 28])]}, 422, "shape"),
        ({"inputs": [tensor([1, 28, 28], data=[0.5] * 10)]}, 422, "784"),
        ({"inputs": [tensor([1, 28, 28], data=["a"] * 784)]}, 422, "numbers"),
        ({"inputs": [tensor([1, 28, 28])], "parameters": {"time_steps": 99}}, 422, "1..8"),
        ({"inputs": [tensor([1, 28, 28])], "parameters": {"telemetry": "all"}}, 422, "telemetry"),
        ({"inputs": "nope"}, 400, "inputs"),
    ],
)
def test_bad_infer_requests(serving: TestClient, body: dict[str, Any], status: int, needle: str) -> None:
    response = serving.post("/v2/models/tiny-danet/infer", json=body)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and needle in response.json()["error"]


def test_malformed_json_unknown_model_and_event_models(serving: TestClient) -> None:
    bad_json = serving.post(
        "/v2/models/tiny-danet/infer", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and isinstance(bad_json.json()["error"], str)
    unknown = serving.post("/v2/models/nope/infer", json={"inputs": [tensor([1, 28, 28])]})
    assert unknown.status_code == 404
    events = serving.post("/v2/models/tiny-spikeformer/infer", json={"inputs": [tensor([2, 34, 34])]})
    assert events.status_code == 422 and "/events" in events.json()["error"]


def test_a_number_past_the_float_range_is_a_4xx(static_app: tuple[TestClient, Any]) -> None:
    client, pool = static_app
    data = ["0.5"] * 783 + [str(10**400)]  # a JSON integer Python reads exactly, and float32 cannot hold
    tensor_json = (
        '{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", "data": [' + ",".join(data) + "]}"
    )
    body = '{"inputs": [' + tensor_json + "]}"
    response = client.post(
        "/v2/models/tiny-danet/infer", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert "too large" in response.json()["error"] and not pool.submitted


@pytest.mark.parametrize("version", ["¹", "²", "١", "１"])
def test_versions_are_ascii_digits_only(static_app: tuple[TestClient, Any], version: str) -> None:
    """Superscripts pass str.isdigit() but not int(); Arabic-Indic and full-width digits would read as 1."""
    client, pool = static_app
    for path in (
        f"/v2/models/tiny-danet/versions/{version}",
        f"/v2/models/tiny-danet/versions/{version}/ready",
    ):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "positive integers" in response.json()["error"]
    infer = client.post(
        f"/v2/models/tiny-danet/versions/{version}/infer", json={"inputs": [tensor([1, 28, 28])]}
    )
    assert infer.status_code == 404 and not pool.submitted
    assert client.get("/v2/models/tiny-danet/versions/1").status_code == 200


def test_images_past_the_cap_are_refused_before_any_is_queued(tiny_root: Path) -> None:
    pool = StaticPool()
    with make_client(
        Settings(registry=tiny_root, admin_token=ADMIN, max_images_per_request=4), pool=pool
    ) as client:
        refused = client.post("/v2/models/tiny-danet/infer", json={"inputs": [tensor([5, 1, 28, 28])]})
        assert refused.status_code == 413 and "limit of 4" in refused.json()["error"], refused.text
        assert not pool.submitted
        assert (
            client.post("/v2/models/tiny-danet/infer", json={"inputs": [tensor([4, 1, 28, 28])]}).status_code
            == 200
        )


def _images_computed(client: TestClient, model: str = "tiny-danet") -> float:
    """How many requests the worker has run for ``model``: the sum of its batch sizes on /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'spikeserve_batch_size_sum{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_refused_request_has_none_of_its_images_computed(tiny_root: Path) -> None:
    """The queue takes 8; the 9th image of 20 is refused (503), and the 8 queued before it leave the queue."""
    settings = Settings(
        registry=tiny_root,
        admin_token=ADMIN,
        neuron_backend="torch",
        max_queue_size=8,
        max_delay_ms=300.0,  # nothing runs before the refusal is known
        max_images_per_request=100,
    )
    with make_client(settings) as client:
        wait_ready(client)
        before = _images_computed(client)
        refused = client.post("/v2/models/tiny-danet/infer", json={"inputs": [tensor([20, 1, 28, 28])]})
        assert refused.status_code == 503, refused.text
        time.sleep(1.0)  # well past max_delay_ms: whatever stayed queued has run by now
        assert _images_computed(client) == before
        answered = client.post("/v2/models/tiny-danet/infer", json={"inputs": [tensor([2, 1, 28, 28])]})
        assert answered.status_code == 200
        assert _images_computed(client) == before + 2
