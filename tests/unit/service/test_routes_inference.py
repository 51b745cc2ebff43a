"""service/routes/inference.py through the real gateway and embedded worker (tiny registry):
the answer's shape, options, input forms, and every bad input answered with its status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import StaticPool, make_client, npy_bytes, png_bytes

from eventio import make_events
from eventio.aedat4 import write_aedat4
from service.settings import Settings

NPY = {"content-type": "application/x-npy"}
CLASSIFY = "/v1/models/tiny-danet/classify"
EVENTS = "/v1/models/tiny-spikeformer/events"


def digit(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)


def recording(n: int = 300, size: int = 34, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 90_000, n))
    return make_events(rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n))


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_classify_answers_the_documented_shape(serving: TestClient) -> None:
    response = serving.post(f"{CLASSIFY}?telemetry=layers&top_k=3", content=npy_bytes(digit()), headers=NPY)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) >= {
        "request_id",
        "model",
        "time_steps",
        "predictions",
        "telemetry",
        "timing_ms",
        "warnings",
    }
    assert answer["model"] == {"name": "tiny-danet", "version": 1}
    assert answer["time_steps"] == 4
    assert len(answer["predictions"]) == 3
    assert set(answer["predictions"][0]) == {"label", "index", "probability"}
    telemetry = answer["telemetry"]
    assert set(telemetry) >= {"spike_rate", "spikes", "synaptic_ops", "energy_uj", "layers"}
    assert set(telemetry["layers"][0]) == {"name", "neurons", "spikes", "spike_rate"}
    assert set(telemetry) >= {"synaptic_ops_nominal", "dense_macs", "ann_energy_uj", "synaptic_layers"}
    stem, *_, classifier = telemetry["synaptic_layers"]
    assert set(stem) == {
        "name",
        "input",
        "macs",
        "synaptic_ops",
        "synaptic_ops_nominal",
        "energy_uj",
        "energy_share",
    }
    assert stem["input"] == classifier["input"] == "real"  # an image, and average-pooled spikes
    assert set(answer["timing_ms"]) == {"queue", "compute", "total"}
    assert answer["timing_ms"]["total"] >= answer["timing_ms"]["compute"] > 0


def test_options_time_steps_top_k_telemetry_and_request_id(serving: TestClient) -> None:
    headers = {**NPY, "X-Request-ID": "client-id-42"}
    answer = serving.post(
        f"{CLASSIFY}?time_steps=2&top_k=50&telemetry=none", content=npy_bytes(digit()), headers=headers
    )
    body = answer.json()
    # the server correlates on an id it minted; the client's value is echoed as a label only
    assert body["request_id"] != "client-id-42" and len(body["request_id"]) == 32
    assert body["client_request_id"] == "client-id-42"
    assert answer.headers["X-Request-ID"] == "client-id-42"
    assert body["time_steps"] == 2
    assert len(body["predictions"]) == 10  # top_k beyond the classes: every class
    assert body["telemetry"] is None
    summary = serving.post(CLASSIFY, content=npy_bytes(digit()), headers=NPY).json()["telemetry"]
    assert "layers" not in summary or summary["layers"] is None


def test_png_raw_and_multipart_give_the_same_answer(serving: TestClient) -> None:
    pixels = (digit(3)[0] * 255).astype(np.uint8)
    png = png_bytes(pixels)
    raw = serving.post(CLASSIFY, content=png, headers={"content-type": "image/png"}).json()
    multipart = serving.post(CLASSIFY, files={"file": ("digit.png", png, "image/png")}).json()
    assert raw["predictions"] == multipart["predictions"]


def test_a_larger_image_is_resized_with_a_warning(serving: TestClient) -> None:
    png = png_bytes((np.random.default_rng(0).random((56, 56)) * 255).astype(np.uint8))
    answer = serving.post(CLASSIFY, content=png, headers={"content-type": "image/png"})
    assert answer.status_code == 200
    assert any("28" in warning for warning in answer.json()["warnings"])


def test_events_from_npy_raw_and_multipart(serving: TestClient) -> None:
    data = npy_bytes(recording())
    raw = serving.post(f"{EVENTS}?telemetry=layers", content=data, headers=NPY)
    assert raw.status_code == 200, raw.text
    assert raw.json()["model"] == {"name": "tiny-spikeformer", "version": 1}
    assert raw.json()["telemetry"]["layers"]
    multipart = serving.post(
        f"{EVENTS}?format=npy", files={"file": ("rec.npy", data, "application/octet-stream")}
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["predictions"] == raw.json()["predictions"]


def test_events_from_a_larger_sensor_need_fit(serving: TestClient) -> None:
    data = npy_bytes(recording(size=68))
    status, code, message = error_of(serving.post(EVENTS, content=data, headers=NPY))
    assert (status, code) == (422, "invalid_input")
    assert "34" in message
    for fit in ("crop", "scale"):
        fitted = serving.post(f"{EVENTS}?fit={fit}", content=data, headers=NPY)
        assert fitted.status_code == 200, fitted.text


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code", "in_message"),
    [
        ("/v1/models/no-such/classify", b"x", NPY, 404, "model_not_found", "no-such"),
        ("/v1/models/tiny-danet:7/classify", b"x", NPY, 404, "model_not_found", "7"),
        ("/v1/models/tiny-danet@staging/classify", b"x", NPY, 404, "model_not_found", "staging"),
        ("/v1/models/Bad..Name/classify", b"x", NPY, 422, "invalid_name", "name"),
        (f"{CLASSIFY}?time_steps=9", b"x", NPY, 422, "invalid_input", "1..8"),
        (f"{CLASSIFY}?time_steps=0", b"x", NPY, 422, "invalid_request", "time_steps"),
        (f"{CLASSIFY}?top_k=0", b"x", NPY, 422, "invalid_request", "top_k"),
        (f"{CLASSIFY}?telemetry=verbose", b"x", NPY, 422, "invalid_request", "telemetry"),
        (
            CLASSIFY,
            b"\x89PNG\r\n\x1a\nbroken",
            {"content-type": "image/png"},
            400,
            "undecodable_input",
            "PNG",
        ),
        (CLASSIFY, b"hello", {"content-type": "text/plain"}, 415, "unsupported_media_type", "image/png"),
        (CLASSIFY, b"", {"content-type": "image/png"}, 400, "undecodable_input", ""),
        (CLASSIFY, npy_bytes(np.zeros((1, 1, 1, 28, 28), np.float32)), NPY, 422, "invalid_input", "shape"),
        (CLASSIFY, npy_bytes(np.full((1, 28, 28), np.nan, np.float32)), NPY, 422, "invalid_input", "finite"),
        (CLASSIFY, npy_bytes(np.full((1, 28, 28), 2.0, np.float32)), NPY, 422, "invalid_input", "[0, 1]"),
        (EVENTS.replace("tiny-spikeformer", "tiny-danet"), b"x", NPY, 422, "invalid_input", "classify"),
        (CLASSIFY.replace("tiny-danet", "tiny-spikeformer"), b"x", NPY, 422, "invalid_input", "events"),
        (EVENTS, b"not events at all", {"content-type": "text/plain"}, 415, "unsupported_media_type", ""),
        (EVENTS, npy_bytes(recording(n=0)), NPY, 422, "invalid_input", "no events"),
        (EVENTS, npy_bytes(recording()[::-1].copy()), NPY, 422, "invalid_input", "backwards"),
        (f"{EVENTS}?fit=stretch", npy_bytes(recording()), NPY, 422, "invalid_request", "fit"),
    ],
)
def test_bad_input_gets_its_status_and_the_server_still_answers(
    serving: TestClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    in_message: str,
) -> None:
    got_status, got_code, message = error_of(serving.post(path, content=body, headers=headers))
    assert (got_status, got_code) == (status, code), message
    assert in_message.lower() in message.lower()
    assert serving.post(CLASSIFY, content=npy_bytes(digit()), headers=NPY).status_code == 200


def test_a_multipart_upload_without_the_file_field(serving: TestClient) -> None:
    status, code, message = error_of(serving.post(CLASSIFY, files={"image": ("d.npy", npy_bytes(digit()))}))
    assert (status, code) == (400, "bad_request") and "'file'" in message


def test_limits_on_pixels_and_events(tiny_root: Path) -> None:
    settings = Settings(registry=tiny_root, max_image_pixels=32 * 32, max_events=100)
    with make_client(settings, pool=StaticPool()) as client:
        big = png_bytes(np.zeros((64, 64), np.uint8))
        status, code, _ = error_of(client.post(CLASSIFY, content=big, headers={"content-type": "image/png"}))
        assert (status, code) == (413, "payload_too_large")
        status, code, _ = error_of(client.post(EVENTS, content=npy_bytes(recording(n=500)), headers=NPY))
        assert (status, code) == (413, "payload_too_large")


def test_worker_errors_keep_their_status(tiny_root: Path) -> None:
    from workers.errors import DeadlineExceededError, QueueFullError

    for error, status in (
        (QueueFullError("full", retry_after_s=4), 503),
        (DeadlineExceededError("late"), 504),
    ):
        with make_client(Settings(registry=tiny_root), pool=StaticPool(error=error)) as client:
            response = client.post(CLASSIFY, content=npy_bytes(digit()), headers=NPY)
            assert response.status_code == status
            if status == 503:
                assert response.headers["Retry-After"] == "4"


def test_same_input_same_answer_whatever_came_before(serving: TestClient) -> None:
    probe = npy_bytes(digit(11))
    first = serving.post(f"{CLASSIFY}?top_k=10", content=probe, headers=NPY).json()["predictions"]
    for _ in range(3):
        assert serving.post(
            CLASSIFY, content=npy_bytes(np.ones((1, 28, 28), np.float32)), headers=NPY
        ).is_success
    again = serving.post(f"{CLASSIFY}?top_k=10", content=probe, headers=NPY).json()["predictions"]
    assert first == again


def test_a_multipart_upload_with_two_file_parts_is_refused(static_app: tuple[TestClient, StaticPool]) -> None:
    """Taking either part would answer for a file the client may not have meant."""
    client, pool = static_app
    one, two = npy_bytes(digit(1)), npy_bytes(digit(2))
    files = [("file", ("a.npy", one, "application/x-npy")), ("file", ("b.npy", two, "application/x-npy"))]
    status, code, message = error_of(client.post(CLASSIFY, files=files))
    assert (status, code) == (400, "bad_request") and "2 'file' parts" in message
    assert not pool.submitted
    assert client.post(CLASSIFY, files=files[:1]).status_code == 200


@pytest.mark.parametrize("shape", ["'28'", "(28.0, 28)"])
def test_an_npy_image_whose_header_shape_is_not_integers_is_a_400(
    static_app: tuple[TestClient, StaticPool], shape: str
) -> None:
    client, pool = static_app
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(28 * 28)
    status, code, message = error_of(client.post(CLASSIFY, content=data, headers=NPY))
    assert (status, code) == (400, "undecodable_input") and "shape" in message
    assert not pool.submitted


@pytest.mark.parametrize(("fmt", "name"), [("aedat2", "AER-DAT2.0"), ("aedat3", "AER-DAT3.1")])
def test_a_stated_aedat_format_on_other_bytes_names_it_whole(
    static_app: tuple[TestClient, StaticPool], fmt: str, name: str
) -> None:
    client, _ = static_app
    status, code, message = error_of(client.post(f"{EVENTS}?format={fmt}", content=b"x" * 100))
    assert (
        (status, code) == (400, "undecodable_input")
        and f"not an {name} file" in message
        and f"'#!{name}'" in message
    )


def test_an_aedat4_frame_packet_on_the_event_stream_is_a_400(
    static_app: tuple[TestClient, StaticPool],
) -> None:
    client, pool = static_app
    data = bytearray(write_aedat4(recording(50), (34, 34), compression="none"))
    at = data.rindex(b"EVTS")  # the packet's flatbuffer identifier (the header's XML names EVTS earlier)
    data[at : at + 4] = b"FRME"
    status, code, message = error_of(client.post(EVENTS, content=bytes(data)))
    assert (status, code) == (400, "undecodable_input") and "FRME" in message
    assert not pool.submitted


def _big_png(width: int, height: int, mode: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")  # one colour: a few kB of PNG
    return buffer.getvalue()


def test_an_image_too_large_once_decoded_is_refused_from_its_header(
    static_app: tuple[TestClient, StaticPool],
) -> None:
    """4096x4096 RGBA is within the pixel limit, but 256 MiB as float32 (it took 520 MB to decode)."""
    client, pool = static_app
    data = _big_png(4096, 4096, "RGBA")
    assert len(data) < 1_000_000
    status, code, message = error_of(
        client.post(CLASSIFY, content=data, headers={"content-type": "image/png"})
    )
    assert (status, code) == (413, "payload_too_large") and "SPIKESERVE_MAX_DECODED_BYTES" in message
    assert not pool.submitted


def test_large_images_are_decoded_a_few_at_a_time(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import service.routes.inference as routes

    running, most = 0, 0
    lock = threading.Lock()
    real_decode = routes.decode_image

    def counted_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.2)  # long enough for every request to be in flight at once
            return real_decode(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(routes, "decode_image", counted_decode)
    settings = Settings(registry=tiny_root, max_concurrent_large_decodes=2)
    large = _big_png(2048, 2048, "RGB")  # 48 MiB as float32: a large decode
    with make_client(settings, pool=StaticPool()) as client:

        def classify(body: bytes) -> int:
            return client.post(CLASSIFY, content=body, headers={"content-type": "image/png"}).status_code

        with ThreadPoolExecutor(8) as threads:
            assert list(threads.map(classify, [large] * 8)) == [200] * 8
        assert most == 2
        most = 0
        small = png_bytes(np.zeros((28, 28), np.uint8))
        with ThreadPoolExecutor(8) as threads:
            assert list(threads.map(classify, [small] * 8)) == [200] * 8
        # small images take no slot: they decode on the event loop as they come (a hand-off to a
        # thread would cost more than their decode), so never two at once and never held back
        assert most == 1
