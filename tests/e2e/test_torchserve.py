"""The bundled zoo/ exported as .mar archives and served by a real TorchServe, against spikeserve's answers.

``spikeserve export torchserve`` writes both archives; TorchServe (Java frontend, our handler in
its Python workers) answers real MNIST-5k digits and the real N-MNIST recording with the same
labels, probabilities (to 1e-5) and telemetry as a real ``spikeserve serve`` on the same zoo, and
bad input with the same statuses and error codes. The batching delay is long enough that the
concurrent digits meet in TorchServe batches, so one engine batch per TorchServe batch is tested.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from server_process import REPO_ROOT, ServerProcess
from torchserve_process import TorchServeProcess, torchserve_available

from service.cli import main

pytestmark = pytest.mark.slow

ZOO = REPO_ROOT / "zoo"
DANET = "danet-mnist"
SPIKEFORMER = "spikeformer-nmnist"
DIGITS = 16
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = torchserve_available()
    if why is not None:
        pytest.fail(why)  # a dev dependency: CI installs it, so its absence is a failure, not a skip
    store = Path(tmp_path_factory.mktemp("torchserve-store"))
    for ref in (DANET, SPIKEFORMER):
        # a batching delay long enough for the concurrent digits to meet on this shared machine
        code = main(["export", "torchserve", ref, "--registry", str(ZOO), "--output", str(store),
                     "--max-delay-ms", "300", "--torch-threads", "1", "--backend", "torch"])  # fmt: skip
        assert code == 0
    return store


@pytest.fixture(scope="module")
def torchserve(model_store: Path) -> Iterator[TorchServeProcess]:
    with TorchServeProcess(model_store, [DANET, SPIKEFORMER]) as process:
        yield process


@pytest.fixture(scope="module")
def spikeserve() -> Iterator[ServerProcess]:
    env = {"SPIKESERVE_ADMIN_TOKEN": "torchserve-e2e", "SPIKESERVE_NEURON_BACKEND": "torch"}
    with ServerProcess(ZOO, env=env) as process:
        yield process


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _same_answer(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert [p["label"] for p in theirs["predictions"]] == [p["label"] for p in ours["predictions"]]
    np.testing.assert_allclose(
        [p["probability"] for p in theirs["predictions"]],
        [p["probability"] for p in ours["predictions"]],
        atol=TOLERANCE,
    )
    assert theirs["time_steps"] == ours["time_steps"]
    assert theirs["model"] == ours["model"]
    assert theirs["telemetry"]["spikes"] > 0
    assert set(theirs["telemetry"]) == set(ours["telemetry"])
    np.testing.assert_allclose(theirs["telemetry"]["spike_rate"], ours["telemetry"]["spike_rate"], rtol=1e-4)


def test_the_archive_holds_weights_manifest_handler_and_batching(model_store: Path) -> None:
    import yaml

    with zipfile.ZipFile(model_store / f"{DANET}.mar") as archive:
        names = set(archive.namelist())
    assert {"weights.safetensors", "manifest.json", "handler.py", "MAR-INF/MANIFEST.json"} <= names
    config = yaml.safe_load((model_store / f"{DANET}.yaml").read_text())
    assert (config["batchSize"], config["maxBatchDelay"]) == (32, 300)
    assert config["handler"]["torch_threads"] == 1
    assert f"load_models={DANET}={DANET}.mar" in (model_store / "config.properties").read_text()


def test_real_digits_get_spikeserves_answers_in_torchserve_batches(
    torchserve: TorchServeProcess, spikeserve: ServerProcess
) -> None:
    from training.datasets import mnist5k

    images, labels, _ = mnist5k("test")
    bodies = [_png(image) for image in images[:DIGITS]]
    headers = {"content-type": "image/png"}
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(DIGITS) as threads:
        theirs = list(threads.map(
            lambda body: client.post(f"{torchserve.url}/predictions/{DANET}", content=body, headers=headers),
            bodies,
        ))  # fmt: skip
        ours = [
            client.post(f"{spikeserve.url}/v1/models/{DANET}/classify", content=body, headers=headers)
            for body in bodies
        ]
    for their, our in zip(theirs, ours, strict=True):
        assert their.status_code == 200, their.text
        assert our.status_code == 200, our.text
        assert their.headers["content-type"].startswith("application/json")
        _same_answer(our.json(), their.json())
    correct = sum(
        t.json()["predictions"][0]["label"] == str(int(y)) for t, y in zip(theirs, labels, strict=False)
    )
    assert correct >= DIGITS - 2
    # TorchServe grouped the concurrent digits, and each group ran as one engine batch
    assert max(their.json()["batch_size"] for their in theirs) > 1


def test_the_real_nmnist_recording_gets_spikeserves_answer(
    torchserve: TorchServeProcess, spikeserve: ServerProcess, shared_data: Path
) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    headers = {"content-type": "application/octet-stream"}
    with httpx.Client(timeout=120) as client:
        # /<name>/predict keeps the query string (TorchServe drops that of /predictions/<name>)
        their = client.post(f"{torchserve.url}/{SPIKEFORMER}/predict?telemetry=layers", content=data,
                            headers=headers)  # fmt: skip
        our = client.post(f"{spikeserve.url}/v1/models/{SPIKEFORMER}/events?telemetry=layers", content=data,
                          headers=headers)  # fmt: skip
    assert their.status_code == 200, their.text
    assert our.status_code == 200, our.text
    _same_answer(our.json(), their.json())
    assert [layer["name"] for layer in their.json()["telemetry"]["layers"]] == [
        layer["name"] for layer in our.json()["telemetry"]["layers"]
    ]


def test_options_as_form_fields_of_a_multipart_upload(
    torchserve: TorchServeProcess, spikeserve: ServerProcess
) -> None:
    from training.datasets import mnist5k

    upload = {"file": ("digit.png", _png(mnist5k("test")[0][1]), "image/png")}
    with httpx.Client(timeout=120) as client:
        their = client.post(f"{torchserve.url}/predictions/{DANET}", files=upload,
                            data={"time_steps": "8", "top_k": "3"})  # fmt: skip
        our = client.post(f"{spikeserve.url}/v1/models/{DANET}/classify?time_steps=8&top_k=3", files=upload)
    assert their.status_code == 200, their.text
    assert our.status_code == 200, our.text
    assert their.json()["time_steps"] == 8
    assert len(their.json()["predictions"]) == 3
    _same_answer(our.json(), their.json())


@pytest.mark.parametrize(
    ("model", "query", "body", "content_type", "status", "code"),
    [
        (DANET, "", b"not an image at all", "image/png", 400, "undecodable_input"),
        (DANET, "", b"hello", "text/plain", 415, "unsupported_media_type"),
        (DANET, "?time_steps=100", None, "image/png", 422, "invalid_input"),
        (DANET, "?telemetry=everything", None, "image/png", 422, "invalid_request"),
        (SPIKEFORMER, "", b"", "application/octet-stream", 422, "invalid_input"),
        (SPIKEFORMER, "", b"\x00\x01garbage", "application/octet-stream", 415, "unsupported_media_type"),
    ],
)
def test_bad_input_gets_the_gateways_status_and_code(
    torchserve: TorchServeProcess,
    spikeserve: ServerProcess,
    model: str,
    query: str,
    body: bytes | None,
    content_type: str,
    status: int,
    code: str,
) -> None:
    from training.datasets import mnist5k

    content = body if body is not None else _png(mnist5k("test")[0][0])
    route = "classify" if model == DANET else "events"
    headers = {"content-type": content_type}
    with httpx.Client(timeout=120) as client:
        their = client.post(f"{torchserve.url}/{model}/predict{query}", content=content, headers=headers)
        our = client.post(
            f"{spikeserve.url}/v1/models/{model}/{route}{query}", content=content, headers=headers
        )
    assert our.status_code == status, our.text
    assert their.status_code == status, their.text
    assert their.json()["error"]["code"] == our.json()["error"]["code"] == code
    assert their.json()["error"]["message"]
