"""service/v2_binary.py: binary tensors in and out, with requests built and answers read by Triton's
own HTTP client library (the way Triton's and KServe's clients talk to a v2 server by default)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient

INFER = "/v2/models/tiny-danet/infer"
HEADER = "Inference-Header-Content-Length"


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def _post(client: TestClient, body: bytes, json_size: int | None) -> Any:
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers[HEADER] = str(json_size)
    return client.post(INFER, content=body, headers=headers)


def _triton_infer(
    client: TestClient,
    images: np.ndarray,
    *,
    binary_input: bool = True,
    outputs: list[Any] | None = None,
) -> Any:
    """An infer request exactly as tritonclient builds it; its answer as tritonclient reads it."""
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary_input)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    response = _post(client, body, json_size)
    assert response.status_code == 200, response.text[:500]
    length = response.headers.get(HEADER)
    return response, triton.InferenceServerClient.parse_response_body(
        response.content, header_length=None if length is None else int(length)
    )


def _json_probabilities(client: TestClient, images: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ]
    }
    output = client.post(INFER, json=body).json()["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def test_the_server_announces_the_extension(serving: TestClient) -> None:
    assert "binary_tensor_data" in serving.get("/v2").json()["extensions"]


def test_binary_in_binary_out_as_tritonclient_sends_by_default(serving: TestClient) -> None:
    images = _images(2)
    response, result = _triton_infer(serving, images)
    assert response.headers["content-type"] == "application/octet-stream"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities, _json_probabilities(serving, images), atol=1e-6)
    output = result.get_output("probabilities")
    assert output["parameters"]["binary_data_size"] == 2 * 10 * 4 and "data" not in output


def test_binary_in_json_out(serving: TestClient) -> None:
    images = _images(1, seed=1)
    response, result = _triton_infer(
        serving, images, outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)]
    )
    assert HEADER not in response.headers
    assert len(response.json()["outputs"][0]["data"]) == 10
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), _json_probabilities(serving, images), atol=1e-6
    )


def test_json_in_binary_out(serving: TestClient) -> None:
    images = _images(3, seed=2)
    _, result = _triton_infer(serving, images, binary_input=False)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), _json_probabilities(serving, images), atol=1e-6
    )


def _binary_request(images: np.ndarray, size: int | None = None, data: Any = None) -> tuple[bytes, int]:
    tensor: dict[str, Any] = {"name": "input", "shape": list(images.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": images.nbytes if size is None else size}
    if data is not None:
        tensor["data"] = data
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + images.astype("<f4").tobytes(), len(header)


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("header longer than the body", 400, HEADER),
        ("bytes left over", 400, "after the tensors"),
        ("size past the body", 400, "binary bytes"),
        ("data and binary", 400, "both data and a binary_data_size"),
        ("size not a multiple of 4", 400, "whole number of FP32"),
        ("size not the shape's", 422, "784"),
    ],
)
def test_malformed_binary_requests_are_4xx(serving: TestClient, case: str, status: int, needle: str) -> None:
    images = _images(1)
    body, json_size = _binary_request(images)
    if case == "header longer than the body":
        json_size = len(body) + 1
    elif case == "bytes left over":
        body += b"\0" * 8
    elif case == "size past the body":
        body, json_size = _binary_request(images, size=images.nbytes + 4)
    elif case == "data and binary":
        body, json_size = _binary_request(images, data=[0.0] * 784)
    elif case == "size not a multiple of 4":
        body, json_size = _binary_request(images, size=images.nbytes - 2)
        body = body[:-2]
    elif case == "size not the shape's":
        body, json_size = _binary_request(images, size=images.nbytes - 4)
        body = body[:-4]
    response = _post(serving, body, json_size)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]
