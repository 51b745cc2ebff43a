"""WS /v1/models/{ref}/stream with the real embedded worker: windows, state, limits, close codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_support import ADMIN, TestClient, make_client, wait_ready
from starlette.websockets import WebSocketDisconnect
from stream_support import nmnist_in_1ms_chunks
from tiny_zoo import EVENT_DANET_MODEL, EVENTS_INPUT, register_event_danet, register_spikeformer

from eventio import read_events
from eventio.npy import write_npy
from registry import Registry
from service.settings import Settings

WINDOWED = "windowed-danet"  # the same weights, binned in 5 ms bins from the first event
WINDOWED_INPUT = {**EVENTS_INPUT, "binning": "time_window", "time_window_us": 5_000}


@pytest.fixture(scope="module")
def stream_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("stream-registry"))
    registry = Registry(root)
    register_event_danet(registry)
    register_event_danet(registry, name=WINDOWED, input=WINDOWED_INPUT)
    register_spikeformer(registry)
    return root


def client_for(root: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        registry=root, admin_token=ADMIN, max_delay_ms=2.0, neuron_backend="torch", **overrides
    )
    return make_client(settings)


@pytest.fixture(scope="module")
def streaming(stream_root: Path) -> Iterator[TestClient]:
    with client_for(stream_root, stream_max_pending_windows=64) as client:
        wait_ready(client)
        yield client


def receive_until_closed(ws: Any) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = ws.receive_json()
        messages.append(message)
        if message["type"] == "closed":
            return messages


def test_real_nmnist_streamed_in_1ms_chunks_ends_with_the_logits_of_one_upload(
    streaming: TestClient, shared_data: Path
) -> None:
    data = (shared_data / "nmnist_sample.bin").read_bytes()
    with streaming.websocket_connect(
        f"/v1/models/{WINDOWED}/stream?window_us=20000&time_steps=4&top_k=10"
    ) as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["mode"] == "stateful"
        for chunk in nmnist_in_1ms_chunks(data):
            ws.send_bytes(chunk)
        ws.send_text(json.dumps({"close": True}))
        messages = receive_until_closed(ws)
    windows = [m for m in messages if m["type"] == "window"]
    assert [w["window"] for w in windows] == list(range(len(windows)))  # in order, none twice
    assert [w["seq"] for w in windows] == list(range(1, len(windows) + 1))
    assert {w["worker"] for w in windows} == {"embedded"}
    assert all(w["end_us"] - w["start_us"] == 20_000 for w in windows)
    assert [w["state_steps"] for w in windows] == [4 * (i + 1) for i in range(len(windows))]
    assert messages[-1]["dropped_windows"] == 0 and messages[-1]["events"] == len(data) // 5
    time_steps = 4 * len(windows)  # the same 5 ms bins from the first event, as one upload
    upload = streaming.post(
        f"/v1/models/{WINDOWED}/events?time_steps={time_steps}&top_k=10",
        content=data,
        headers={"content-type": "application/x-nmnist"},
    )
    assert upload.status_code == 200, upload.text
    uploaded = {p["index"]: p["probability"] for p in upload.json()["predictions"]}
    last = windows[-1]
    logits = np.asarray(last["logits"])
    streamed = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(streamed, [uploaded[i] for i in range(10)], atol=1e-5)
    assert last["predictions"][0]["index"] == upload.json()["predictions"][0]["index"]
    assert 0.0 <= last["telemetry"]["spike_rate"] <= 1.0 and last["compute_ms"] > 0


def test_spikeformer_slides_over_its_context(streaming: TestClient, shared_data: Path) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    with streaming.websocket_connect("/v1/models/tiny-spikeformer/stream?window_ms=50&time_steps=2") as ws:
        ready = ws.receive_json()
        assert ready["mode"] == "sliding" and ready["context_steps"] == 4
        ws.send_bytes(write_npy(events))
        ws.send_text(json.dumps({"close": True}))
        windows = [m for m in receive_until_closed(ws) if m["type"] == "window"]
    assert [w["state_steps"] for w in windows] == [2] + [4] * (len(windows) - 1)


def test_reset_restarts_state_and_grid(streaming: TestClient, shared_data: Path) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    with streaming.websocket_connect(f"/v1/models/{EVENT_DANET_MODEL}/stream?window_ms=100") as ws:
        ws.receive_json()
        ws.send_bytes(write_npy(events[:2000]))
        ws.send_text(json.dumps({"reset": True}))
        ws.send_bytes(write_npy(events[2000:]))
        ws.send_text(json.dumps({"close": True}))
        windows = [m for m in receive_until_closed(ws) if m["type"] == "window"]
    steps = [w["state_steps"] for w in windows]
    assert 1 in steps[1:]  # counting starts again after the reset
    assert not any(w["state_reset"] for w in windows)  # asked for: not a lost state


def test_producer_faster_than_the_model_merges_windows_and_counts_them(
    stream_root: Path, shared_data: Path
) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    with client_for(stream_root, stream_max_pending_windows=1) as client:
        wait_ready(client)
        with client.websocket_connect(f"/v1/models/{EVENT_DANET_MODEL}/stream?window_ms=2") as ws:
            ws.receive_json()
            ws.send_bytes(write_npy(events))  # 150 windows at once
            ws.send_text(json.dumps({"close": True}))
            messages = receive_until_closed(ws)
    windows = [m for m in messages if m["type"] == "window"]
    closed = messages[-1]
    assert closed["dropped_windows"] > 0
    assert len(windows) + closed["dropped_windows"] == sum(w["merged_windows"] for w in windows)
    assert sum(w["events"] for w in windows) == len(events)  # merged, never lost


def close_code_of(
    client: TestClient, path: str, send: bytes | None = None, **kwargs: Any
) -> tuple[int, dict]:
    with client.websocket_connect(path, **kwargs) as ws:
        first = ws.receive_json()
        if send is not None:
            ws.send_bytes(send)
        error = first if first["type"] == "error" else None
        try:
            while True:
                message = ws.receive_json()
                if message["type"] == "error":
                    error = message
        except WebSocketDisconnect as closed:
            assert error is not None
            return closed.code, error["error"]
    raise AssertionError("not closed")


def test_refusals_close_with_4000_plus_the_status(streaming: TestClient) -> None:
    assert close_code_of(streaming, "/v1/models/no-such-model/stream")[0] == 4404
    code, error = close_code_of(streaming, f"/v1/models/{EVENT_DANET_MODEL}/stream?fit=stretch")
    assert code == 4422 and error["code"] == "invalid_request"
    assert close_code_of(streaming, f"/v1/models/{EVENT_DANET_MODEL}/stream?time_steps=999")[0] == 4422
    assert close_code_of(streaming, f"/v1/models/{EVENT_DANET_MODEL}/stream?format=aedat2")[0] == 4415
    corrupt = close_code_of(
        streaming, f"/v1/models/{EVENT_DANET_MODEL}/stream?format=npy", send=b"\x93NUMPY\x09\x00" + bytes(20)
    )
    assert corrupt[0] == 4400


def test_a_larger_sensor_needs_fit(streaming: TestClient, shared_data: Path) -> None:
    data = (shared_data / "dvxplorer_320x240.aedat4").read_bytes()
    code, error = close_code_of(streaming, f"/v1/models/{EVENT_DANET_MODEL}/stream", send=data)
    assert code == 4422 and "fit=crop or fit=scale" in error["message"]


def test_limits_per_key_and_idle_timeout(stream_root: Path) -> None:
    settings = {
        "stream_max_sessions_per_key": 1,
        "stream_idle_timeout_s": 0.5,
        "stream_max_message_events": 100,
    }
    with client_for(stream_root, **settings) as client:
        wait_ready(client)
        too_many = write_npy(read_events(b"".join([bytes([1, 1, 0, 0, 1])] * 101), fmt="nmnist").events)
        code, error = close_code_of(client, f"/v1/models/{EVENT_DANET_MODEL}/stream", send=too_many)
        assert code == 4413 and error["code"] == "payload_too_large"
        with client.websocket_connect(f"/v1/models/{EVENT_DANET_MODEL}/stream") as first:
            assert first.receive_json()["type"] == "ready"
            code, error = close_code_of(client, f"/v1/models/{EVENT_DANET_MODEL}/stream")
            assert code == 4429 and error["code"] == "too_many_streams"
            closed = first.receive_json()  # nothing sent for 0.5 s
            assert closed["type"] in ("error", "closed")
            with pytest.raises(WebSocketDisconnect) as ended:
                while True:
                    first.receive_json()
            assert ended.value.code == 4408


def test_api_key_required_when_configured(stream_root: Path) -> None:
    with client_for(stream_root, api_keys=["k1"]) as client:
        wait_ready(client)
        assert close_code_of(client, f"/v1/models/{EVENT_DANET_MODEL}/stream")[0] == 4401
        with client.websocket_connect(
            f"/v1/models/{EVENT_DANET_MODEL}/stream", headers={"X-API-Key": "k1"}
        ) as ws:
            assert ws.receive_json()["type"] == "ready"


def test_stream_metrics_are_exported_and_promtool_clean(streaming: TestClient, shared_data: Path) -> None:
    import subprocess

    from prometheus_support import prometheus_tools

    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    with streaming.websocket_connect(f"/v1/models/{EVENT_DANET_MODEL}/stream?window_ms=50") as ws:
        ws.receive_json()
        ws.send_bytes(write_npy(events))
        ws.send_text(json.dumps({"close": True}))
        receive_until_closed(ws)
    text = streaming.get("/metrics").text
    for name in (
        f'spikeserve_stream_sessions{{model="{EVENT_DANET_MODEL}"}}',
        f'spikeserve_stream_windows_total{{model="{EVENT_DANET_MODEL}"}}',
        f'spikeserve_stream_dropped_windows_total{{model="{EVENT_DANET_MODEL}"}}',
        f'spikeserve_stream_state_resets_total{{model="{EVENT_DANET_MODEL}"}} 0.0',
        "spikeserve_stream_window_latency_seconds_bucket",
        "spikeserve_stream_window_latency_ratio_bucket",
        "spikeserve_stream_spike_rate_bucket",
    ):
        assert name in text, name
    promtool = prometheus_tools().promtool
    lines = [line for line in text.splitlines() if "spikeserve_stream" in line]
    checked = subprocess.run(
        [str(promtool), "check", "metrics"], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _latency_samples(model: str) -> tuple[float, float, float, float]:
    """(seconds count, seconds sum, ratio count, ratio sum) of the window latency histograms."""
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(f"spikeserve_stream_window_latency_{name}", {"model": model}) or 0.0

    return value("seconds_count"), value("seconds_sum"), value("ratio_count"), value("ratio_sum")


def test_window_latency_is_also_measured_in_window_lengths(streaming: TestClient, shared_data: Path) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    before = _latency_samples(WINDOWED)
    with streaming.websocket_connect(f"/v1/models/{WINDOWED}/stream?window_ms=40") as ws:
        ws.receive_json()
        ws.send_bytes(write_npy(events))
        ws.send_text(json.dumps({"close": True}))
        windows = [m for m in receive_until_closed(ws) if m["type"] == "window"]
    seconds_count, seconds_sum, ratio_count, ratio_sum = (
        after - start for after, start in zip(_latency_samples(WINDOWED), before, strict=True)
    )
    assert seconds_count == ratio_count == len(windows) > 1
    assert all(w["merged_windows"] == 1 for w in windows)
    assert ratio_sum == pytest.approx(seconds_sum / 0.040, rel=1e-9)  # each latency over 40 ms


def test_windows_of_a_fixed_event_count(streaming: TestClient, shared_data: Path) -> None:
    events = read_events((shared_data / "nmnist_sample.bin").read_bytes()).events
    with streaming.websocket_connect(
        f"/v1/models/{EVENT_DANET_MODEL}/stream?window_events=1000&time_steps=2"
    ) as ws:
        ready = ws.receive_json()
        assert ready["window_events"] == 1000 and ready["window_us"] is None
        ws.send_bytes(write_npy(events))
        ws.send_text(json.dumps({"close": True}))
        windows = [m for m in receive_until_closed(ws) if m["type"] == "window"]
    assert [w["events"] for w in windows] == [1000] * 4 + [len(events) - 4000]
    assert [w["state_steps"] for w in windows] == [2, 4, 6, 8, 10]
