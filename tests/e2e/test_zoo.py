"""The bundled zoo/ served for real: a held-out MNIST digit, the real N-MNIST and DVXplorer recordings.

Skipped, saying why, while zoo/ lacks danet-mnist or spikeformer-nmnist (the training recipes
produce them). Recordings come from ../shared/data (the ``shared_data`` fixture).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_process import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.slow

ZOO = REPO_ROOT / "zoo"
DANET = "danet-mnist"
SPIKEFORMER = "spikeformer-nmnist"


def _zoo_models() -> set[str]:
    try:
        from registry import Registry

        return {summary.name for summary in Registry(ZOO).list()}
    except Exception:  # no zoo folder, or one being written right now
        return set()


@pytest.fixture(scope="module")
def zoo_server() -> Iterator[ServerProcess]:
    missing = {DANET, SPIKEFORMER} - _zoo_models()
    if missing:
        pytest.skip(f"zoo/ lacks {', '.join(sorted(missing))}: run the training recipes (docs/) first")
    with ServerProcess(ZOO, env={"SPIKESERVE_ADMIN_TOKEN": "zoo-e2e"}) as process:
        yield process


@pytest.fixture
def client(zoo_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=zoo_server.url, timeout=60) as http:
        yield http


def test_held_out_mnist_digits_are_classified_correctly(client: httpx.Client) -> None:
    from training.datasets import mnist5k

    images, labels, _ = mnist5k("test")  # never used for training or selection
    correct = 0
    for image, label in zip(images[:20], labels[:20], strict=True):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
        answer = client.post(
            f"/v1/models/{DANET}/classify", content=buffer.getvalue(), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        correct += answer.json()["predictions"][0]["label"] == str(int(label))
    assert correct >= 18, f"{correct}/20 held-out digits right; the checkpoint claims >= 98%"


def _direct_top1(data: bytes) -> int:
    """The class spikeformer-nmnist gives the recording in this process, without the server."""
    import torch

    from models.encoding import events_to_frames
    from registry import Registry
    from service.decoding import decode_events, fit_to_sensor

    manifest, module = Registry(ZOO).load(SPIKEFORMER)
    spec = manifest.input
    events, _ = fit_to_sensor(decode_events(data, None, None, 10_000_000), spec, None)
    frames = events_to_frames(events, (spec.sensor_width, spec.sensor_height), manifest.time_steps.default,
                              spec.binning, spec.time_window_us, spec.event_count)  # fmt: skip
    with torch.inference_mode():
        return int(module(torch.from_numpy(frames)[:, None]).argmax())


def test_the_real_nmnist_recording(client: httpx.Client, shared_data: Path) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    answer = client.post(f"/v1/models/{SPIKEFORMER}/events?telemetry=layers", content=data,
                         headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["predictions"][0]["index"] == _direct_top1(data)  # the served path is the model's own
    assert body["telemetry"]["spikes"] > 0


def test_the_real_dvxplorer_recording_needs_fit(client: httpx.Client, shared_data: Path) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    url = f"/v1/models/{SPIKEFORMER}/events"
    refused = client.post(url, content=data, headers={"content-type": "application/octet-stream"})
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "320" in message and "240" in message and "34" in message
    for fit in ("crop", "scale"):
        fitted = client.post(
            f"{url}?fit={fit}", content=data, headers={"content-type": "application/octet-stream"}
        )
        assert fitted.status_code == 200, fitted.text
        warnings = " ".join(fitted.json()["warnings"]).lower()
        assert "imu" in warnings or "stream" in warnings  # the other streams were ignored, and said so
