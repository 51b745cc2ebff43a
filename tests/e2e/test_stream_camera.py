"""A real camera pipeline: dv-processing's NetworkWriter serves the real DVXplorer recording in real
time, ``spikeserve stream --connect`` forwards it to a real gateway's WebSocket, windows come back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dv_network import DvNetworkServer
from server_process import REPO_ROOT, ServerProcess
from tiny_zoo import EVENT_DANET_MODEL, register_event_danet

from eventio import read_events
from registry import Registry

DVXPLORER = "dvxplorer_320x240.aedat4"


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = Path(tmp_path_factory.mktemp("stream-e2e-registry"))
    register_event_danet(Registry(root), aliases=("production",))
    env = {"SPIKESERVE_TORCH_THREADS": "1", "SPIKESERVE_NEURON_BACKEND": "torch"}
    with ServerProcess(root, env=env) as process:
        yield process


def run_stream(server: ServerProcess, *args: str, timeout_s: float = 180) -> list[dict]:
    command = [sys.executable, "-m", "service.cli", "stream", "--model", EVENT_DANET_MODEL]
    command += ["--gateway", server.url, "--json", *args]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_dv_network_server_in_real_time_to_windows_in_order(
    stream_server: ServerProcess, shared_data: Path
) -> None:
    path = shared_data / DVXPLORER
    expected_events = len(read_events(path.read_bytes()).events)
    with DvNetworkServer(path, speed=1.0) as camera:
        started = time.monotonic()
        messages = run_stream(stream_server, "--connect", f"127.0.0.1:{camera.port}", "--fit", "scale")
        elapsed = time.monotonic() - started
    assert elapsed >= 0.5  # the recording lasts 0.59 s and was sent at its own pace
    assert messages[0]["type"] == "ready" and messages[0]["mode"] == "stateful"
    windows = [m for m in messages if m["type"] == "window"]
    closed = messages[-1]
    assert closed["type"] == "closed" and closed["events"] == expected_events
    assert [w["window"] for w in windows] == list(range(len(windows)))  # in order, none twice
    assert len(windows) + closed["dropped_windows"] == sum(w["merged_windows"] for w in windows)
    assert sum(w["merged_windows"] for w in windows) >= 11  # 0.59 s in 50 ms windows
    starts = [w["start_us"] for w in windows]
    assert starts == sorted(starts) and all(w["predictions"] for w in windows)
    assert all(0.0 <= w["predictions"][0]["probability"] <= 1.0 for w in windows)
    assert any("scaled" in warning for warning in closed["warnings"])


def test_file_replay_prints_a_line_per_window(stream_server: ServerProcess, shared_data: Path) -> None:
    command = [sys.executable, "-m", "service.cli", "stream", "--model", EVENT_DANET_MODEL]
    command += [
        "--gateway",
        stream_server.url,
        "--file",
        str(shared_data / "nmnist_sample.bin"),
        "--speed",
        "0",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # 311 ms in 50 ms windows; sent as fast as possible, some merge while the model is busy
    assert len(lines) >= 2 and all("top-1" in line and "spike rate" in line for line in lines)
    assert "closed (closed by the client)" in done.stderr


@pytest.mark.parametrize(
    ("flags", "link"),
    [
        ((), "uncompressed"),  # auto, to a loopback gateway
        (("--compression", "none"), "uncompressed"),
        (("--compression", "deflate"), "per-message deflate"),
    ],
)
def test_the_gateway_takes_a_stream_deflated_or_not(
    stream_server: ServerProcess, shared_data: Path, flags: tuple[str, ...], link: str
) -> None:
    command = [sys.executable, "-m", "service.cli", "stream", "--model", EVENT_DANET_MODEL]
    command += ["--gateway", stream_server.url, "--file", str(shared_data / "nmnist_sample.bin"), *flags]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("streaming to ") and f"{link})" in done.stderr.splitlines()[0]
    assert len(done.stdout.splitlines()) >= 2  # 311 ms in 50 ms windows, answered
    assert "closed (closed by the client)" in done.stderr


def test_unknown_model_exits_non_zero_with_the_reason(
    stream_server: ServerProcess, shared_data: Path
) -> None:
    command = [sys.executable, "-m", "service.cli", "stream", "--model", "no-such-model"]
    command += ["--gateway", stream_server.url, "--file", str(shared_data / "nmnist_sample.bin")]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "model_not_found" in done.stderr


def test_server_shutdown_sends_a_final_message_then_1001(tmp_path: Path) -> None:
    import asyncio
    import signal

    import websockets

    register_event_danet(Registry(tmp_path), aliases=("production",))
    env = {"SPIKESERVE_TORCH_THREADS": "1", "SPIKESERVE_NEURON_BACKEND": "torch"}
    with ServerProcess(tmp_path, env=env) as server:

        async def session() -> tuple[list[dict], int | None]:
            url = server.url.replace("http://", "ws://") + f"/v1/models/{EVENT_DANET_MODEL}/stream"
            received = []
            async with websockets.connect(url) as ws:
                received.append(json.loads(await ws.recv()))
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for raw in ws:
                        received.append(json.loads(raw))
                return received, ws.close_code

        messages, code = asyncio.run(session())
    assert [m["type"] for m in messages] == ["ready", "closed"]
    assert messages[-1]["reason"] == "server shutting down" and code == 1001
