"""The gateway as users run it: a real server process, real HTTP, the tiny registry.

Images and recordings, the v2 protocol, management with and without the token, an alias moved
live, every bad input answered with its status (and the server still answering after), state
isolation, and concurrent requests batched with each answer its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save as save_safetensors
from server_process import E2E_ADMIN_TOKEN as ADMIN_TOKEN
from server_process import E2E_MAX_BODY_BYTES as MAX_BODY_BYTES
from server_process import ServerProcess
from tiny_zoo import DANET_CONFIG, IMAGE_INPUT, IMAGE_MODEL, LABELS, TIME_STEPS, random_state_dict

from eventio import make_events

pytestmark = pytest.mark.slow  # a real server process: start-up alone takes seconds on a shared CPU

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NPY = {"content-type": "application/x-npy"}
CLASSIFY = f"/v1/models/{IMAGE_MODEL}/classify"
EVENTS = "/v1/models/tiny-spikeformer/events"


def png(seed: int, size: int = 28) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def recording(seed: int = 0, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 300_000, n))
    return make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n))


def probabilities(answer: dict) -> list[float]:
    by_index = {p["index"]: p["probability"] for p in answer["predictions"]}
    return [by_index[i] for i in range(len(by_index))]


def test_classify_a_png_and_an_event_recording(client: httpx.Client) -> None:
    image = client.post(f"{CLASSIFY}?telemetry=layers", content=png(0), headers={"content-type": "image/png"})
    assert image.status_code == 200, image.text
    assert image.json()["telemetry"]["layers"] and image.json()["predictions"]
    events = client.post(EVENTS, files={"file": ("digit.npy", npy(recording()), "application/x-npy")})
    assert events.status_code == 200, events.text
    assert events.json()["model"]["name"] == "tiny-spikeformer"


def test_open_inference_protocol(client: httpx.Client) -> None:
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{IMAGE_MODEL}").json()["inputs"][0]["shape"] == [-1, 1, 28, 28]
    data = np.random.default_rng(1).random(784).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": data}]}
    out = client.post(f"/v2/models/{IMAGE_MODEL}/infer", json=body).json()
    assert out["outputs"][0]["name"] == "probabilities" and out["outputs"][0]["shape"] == [1, 10]


def test_management_needs_the_token_and_an_alias_move_is_live(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert {m["name"] for m in client.get("/v1/models", headers=ADMIN).json()["models"]} >= {IMAGE_MODEL}
    manifest = {
        "name": IMAGE_MODEL,
        "architecture": "danet_resnet18",
        "config": DANET_CONFIG,
        "time_steps": TIME_STEPS,
        "input": IMAGE_INPUT,
        "labels": LABELS,
    }
    weights = save_safetensors(random_state_dict("danet_resnet18", DANET_CONFIG, seed=3))
    files = {"weights": ("w.safetensors", weights, "application/octet-stream")}
    unauthorised = client.post("/v1/models", files=files, data={"manifest": json.dumps(manifest)})
    assert unauthorised.status_code == 401
    created = client.post("/v1/models", headers=ADMIN, files=files, data={"manifest": json.dumps(manifest)})
    assert created.status_code == 201, created.text
    version = created.json()["version"]
    before = client.post(f"{CLASSIFY}?top_k=10", content=png(2), headers={"content-type": "image/png"}).json()
    assert before["model"]["version"] == 1
    moved = client.put(
        f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=ADMIN, json={"version": version}
    )
    assert moved.status_code == 200
    after = client.post(f"{CLASSIFY}?top_k=10", content=png(2), headers={"content-type": "image/png"}).json()
    assert after["model"]["version"] == version
    assert probabilities(after) != probabilities(before)  # other weights answered
    client.put(f"/v1/models/{IMAGE_MODEL}/aliases/production", headers=ADMIN, json={"version": 1})
    assert client.delete(f"/v1/models/{IMAGE_MODEL}/versions/{version}", headers=ADMIN).status_code == 200


BAD_INPUTS = [
    ("/v1/models/unknown-model/classify", png(0), {"content-type": "image/png"}, 404, "model_not_found"),
    (f"/v1/models/{IMAGE_MODEL}:99/classify", png(0), {"content-type": "image/png"}, 404, "model_not_found"),
    (f"{CLASSIFY}?time_steps=50", png(0), {"content-type": "image/png"}, 422, "invalid_input"),
    (CLASSIFY, b"\x89PNG\r\n\x1a\n" + b"\0" * 40, {"content-type": "image/png"}, 400, "undecodable_input"),
    (CLASSIFY, b"<html></html>", {"content-type": "text/html"}, 415, "unsupported_media_type"),
    (CLASSIFY, png(0, size=3000), {"content-type": "image/png"}, 413, "payload_too_large"),
    (
        EVENTS,
        b"#!AER-DAT4.0\r\n" + b"\xff" * 64,
        {"content-type": "application/octet-stream"},
        400,
        "undecodable_input",
    ),
    (EVENTS, npy(recording()[:0]), NPY, 422, "invalid_input"),
    (EVENTS, npy(recording()[::-1].copy()), NPY, 422, "invalid_input"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "code"), BAD_INPUTS)
def test_bad_input_is_a_clear_4xx_and_the_server_still_answers(
    client: httpx.Client, path: str, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    assert client.post(CLASSIFY, content=png(0), headers={"content-type": "image/png"}).status_code == 200


def test_a_body_over_the_limit_is_refused_declared_or_streamed(client: httpx.Client) -> None:
    declared = client.post(CLASSIFY, content=b"\0" * (MAX_BODY_BYTES + 1), headers=NPY)
    assert declared.status_code == 413

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b"\0" * 100_000

    streamed = client.post(CLASSIFY, content=chunks(), headers=NPY)
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"
    assert client.get("/healthz").status_code == 200


def test_same_input_same_answer_whatever_came_before(client: httpx.Client) -> None:
    def ask(body: bytes) -> list[float]:
        answer = client.post(f"{CLASSIFY}?top_k=10", content=body, headers={"content-type": "image/png"})
        return probabilities(answer.json())

    first = ask(png(7))
    for seed in range(20, 25):
        ask(png(seed))
    assert ask(png(7)) == first


def _metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: ServerProcess, client: httpx.Client
) -> None:
    bodies = [png(100 + i) for i in range(16)]
    png_type = {"content-type": "image/png"}
    alone = [
        probabilities(client.post(f"{CLASSIFY}?top_k=10", content=b, headers=png_type).json()) for b in bodies
    ]
    metrics = client.get("/metrics").text
    count0 = _metric(metrics, "spikeserve_batch_size_count", IMAGE_MODEL)
    sum0 = _metric(metrics, "spikeserve_batch_size_sum", IMAGE_MODEL)

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            responses = await asyncio.gather(
                *(
                    http.post(f"{CLASSIFY}?top_k=10", content=b, headers={"content-type": "image/png"})
                    for b in bodies
                )
            )
        return [r.json() for r in responses]

    answers = asyncio.run(burst())
    assert max(a["batch_size"] for a in answers) > 1
    for own, answer in zip(alone, answers, strict=True):
        np.testing.assert_allclose(probabilities(answer), own, rtol=1e-4, atol=1e-6)
    metrics = client.get("/metrics").text
    batches = _metric(metrics, "spikeserve_batch_size_count", IMAGE_MODEL) - count0
    requests = _metric(metrics, "spikeserve_batch_size_sum", IMAGE_MODEL) - sum0
    assert requests == 16 and batches < 16  # the batch-size metric saw batches of more than one


def test_metrics_and_probes(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    assert (
        'spikeserve_requests_total{model="tiny-danet",route="/v1/models/{ref}/classify",status="200",version="1"}'
        in text
    )


def test_a_server_without_a_token_prints_one_once(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, env={"SPIKESERVE_ADMIN_TOKEN": ""}) as process:
        log = process.log()
        assert log.count("management API token") == 1
        token = log.split("management API token for this run:\n", 1)[1].split()[0]
        with httpx.Client(base_url=process.url) as http:
            assert http.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).json() == {
                "models": []
            }
            assert http.get("/v1/models").status_code == 401


def test_the_real_recordings_with_and_without_fit(client: httpx.Client, shared_data: Path) -> None:
    """The genuine N-MNIST and DVXplorer files (formats, sensor sizes, extra streams) on tiny-spikeformer."""
    octet = {"content-type": "application/octet-stream"}
    nmnist = client.post(EVENTS, content=(shared_data / "nmnist_sample.bin").read_bytes(), headers=octet)
    assert nmnist.status_code == 200, nmnist.text
    dvx = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    refused = client.post(EVENTS, content=dvx, headers=octet)
    assert refused.status_code == 422
    assert all(size in refused.json()["error"]["message"] for size in ("320", "240", "34"))
    for fit in ("crop", "scale"):
        fitted = client.post(f"{EVENTS}?fit={fit}&format=aedat4", content=dvx, headers=octet)
        assert fitted.status_code == 200, fitted.text
        assert fitted.json()["warnings"], "the IMU and trigger streams were ignored without a word"
