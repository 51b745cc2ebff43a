"""The web console at /ui/, clicked through in a real headless chromium against a real server process.

The server runs a copy of the bundled zoo (danet-mnist, danet-nmnist, spikeformer-nmnist), so a
drawn "1" must come back as "1". Each flow asserts on what the page shows: labels, numbers that
equal the API's own answer, chart elements, frame counts that equal the server's binning of the
same file, and a browser console without errors. Screenshots of each view go to docs/img/ (shown
in the README).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from browser_support import console_errors, start_chromium, wait_for
from PIL import Image
from server_process import REPO_ROOT, ServerProcess
from tiny_zoo import build_tiny_registry

from eventio import make_events
from eventio.npy import write_npy

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "console-admin-token"
IMAGE_MODEL = "danet-mnist"
EVENTS_MODEL = "spikeformer-nmnist"
SCREENSHOTS = REPO_ROOT / "docs" / "img"
# what Chrome logs for an answer with an error status, which some tests provoke on purpose
FAILED_REQUEST = "the server responded with a status of"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    registry = tmp_path_factory.mktemp("console-zoo") / "zoo"
    shutil.copytree(REPO_ROOT / "zoo", registry)  # the Models tests change aliases and versions
    env = {
        "SPIKESERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SPIKESERVE_NEURON_BACKEND": "torch",  # "auto" would time torch.compile at start-up
        "SPIKESERVE_TORCH_THREADS": "1",
    }
    with ServerProcess(registry, env=env) as process:
        yield process


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def open_view(browser: Any, server: ServerProcess, view: str, model: str | None = None) -> None:
    """Load the console at ``view``; ``model``: choose it in the view's model list (the zoo has two
    event models, and the list starts at the first by name)."""
    browser.get(f"{server.url}/ui/#{view}")
    browser.refresh()  # a hash change alone would keep the previous page's state
    wait_for(
        lambda: browser.execute_script("return document.body.dataset.ready") == "true", 60, "the console"
    )
    if model is not None:
        from selenium.webdriver.support.ui import Select

        Select(by_id(browser, f"{view}-model")).select_by_value(model)
    console_errors(browser)  # start each flow with an empty log


def by_id(browser: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def shown(browser: Any, element_id: str) -> bool:
    return bool(browser.execute_script(f"return !document.getElementById('{element_id}').hidden"))


def stat(browser: Any, result_id: str, name: str) -> str:
    return str(css(browser, f"#{result_id} [data-stat='{name}']")[0].text)


def screenshot(browser: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / name))


def draw_a_one(browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = by_id(browser, "draw-canvas")
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, 4, -95).click_and_hold()
    for _ in range(6):
        stroke = stroke.move_by_offset(-1, 32)
    stroke.release().perform()


def png_digit(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255  # a bar, with noise: not a digit the net has seen
    pixels = np.clip(pixels + rng.integers(0, 60, (28, 28)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_start_page_links_to_the_console_which_loads_only_from_this_server(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/")
    browser.find_element(By.LINK_TEXT, "Console").click()
    wait_for(
        lambda: browser.execute_script("return document.body.dataset.ready") == "true", 60, "the console"
    )
    assert browser.current_url.startswith(f"{server.url}/ui/")
    assert [tab.text for tab in css(browser, "#tabs a")] == ["Classify", "Events", "Live", "Models"]
    assert (
        "ready: danet-mnist:1, danet-nmnist:1, spikeformer-nmnist:1" in by_id(browser, "server-status").text
    )
    # offline: every script, stylesheet and API call went to this server, nowhere else
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server.url) for url in resources), resources
    assert any(url.endswith("/ui/js/main.js") for url in resources)
    assert console_errors(browser) == []


def test_classify_a_drawn_digit(browser, server):
    open_view(browser, server, "classify")
    assert by_id(browser, "classify-steps").get_attribute("value") == "4"  # the manifest's default T
    draw_a_one(browser)
    by_id(browser, "draw-classify").click()
    wait_for(lambda: shown(browser, "classify-result"), 30, "the answer")

    assert stat(browser, "classify-result", "label") == "1"
    top_k = css(browser, "#classify-result svg[aria-label='top-k probabilities'] rect.bar")
    assert len(top_k) == 5
    probabilities = [float(bar.get_attribute("data-value")) for bar in top_k]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.5
    # one column per spiking layer, as many as the API reports for danet-mnist
    layers = css(browser, "#classify-result svg[aria-label='spike rate per layer'] rect.bar")
    spikes = css(browser, "#classify-result svg[aria-label='spikes per layer'] rect.bar")
    answer = httpx.post(
        f"{server.url}/v1/models/{IMAGE_MODEL}/classify?telemetry=layers",
        content=png_digit(0),
        headers={"content-type": "image/png"},
        timeout=60,
    ).json()
    assert len(layers) == len(spikes) == len(answer["telemetry"]["layers"]) > 1
    assert all(0 <= float(bar.get_attribute("data-value")) <= 1 for bar in layers)
    assert stat(browser, "classify-result", "steps") == "4"
    assert stat(browser, "classify-result", "energy").endswith("µJ")
    # the energy estimate beside the same network run as an ANN, both as the server reports them
    energy_bars = css(browser, "#classify-result svg[aria-label='energy comparison'] rect.bar")
    assert len(energy_bars) == 2
    spiking, ann = (float(bar.get_attribute("data-value")) for bar in energy_bars)
    assert spiking > 0 and ann > spiking  # a trained spiking net beats its ANN twin here
    assert stat(browser, "classify-result", "energy-ratio") == f"{spiking / ann:.2f}"
    synaptic = css(browser, "#classify-result svg[aria-label='energy per synaptic layer'] rect.bar")
    assert len(synaptic) == len(answer["telemetry"]["synaptic_layers"]) > 1
    # what the network received: the drawing at the model's 28x28, as is (no conversion warnings)
    assert by_id(browser, "classify-preview").get_attribute("width") == "28"
    assert "warnings" not in by_id(browser, "classify-result").text
    screenshot(browser, "console-classify.png")
    assert console_errors(browser) == []


def test_an_image_file_shows_the_servers_own_answer(browser, server, tmp_path):
    open_view(browser, server, "classify")
    image = tmp_path / "bar.png"
    image.write_bytes(png_digit(1))
    by_id(browser, "classify-topk").clear()
    by_id(browser, "classify-topk").send_keys("3")
    by_id(browser, "classify-file").send_keys(str(image))
    wait_for(lambda: shown(browser, "classify-result"), 30, "the answer")

    expected = httpx.post(
        f"{server.url}/v1/models/{IMAGE_MODEL}/classify?top_k=3",
        content=image.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=60,
    ).json()["predictions"]
    bars = css(browser, "#classify-result svg[aria-label='top-k probabilities'] rect.bar")
    shown_probabilities = [float(bar.get_attribute("data-value")) for bar in bars]
    assert shown_probabilities == pytest.approx([p["probability"] for p in expected], abs=1e-6)
    assert stat(browser, "classify-result", "label") == expected[0]["label"]
    assert console_errors(browser) == []


def test_early_exit_shows_the_steps_the_server_ran(browser, server, tmp_path):
    open_view(browser, server, "classify")
    image = tmp_path / "bar.png"
    image.write_bytes(png_digit(2))
    by_id(browser, "classify-exit").click()
    by_id(browser, "classify-exit-threshold").clear()
    by_id(browser, "classify-exit-threshold").send_keys("0.5")
    by_id(browser, "classify-file").send_keys(str(image))
    wait_for(lambda: shown(browser, "classify-result"), 30, "the answer")

    expected = httpx.post(
        f"{server.url}/v1/models/{IMAGE_MODEL}/classify?exit=confidence&exit_threshold=0.5",
        content=image.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=60,
    ).json()
    used = expected["time_steps_used"]
    assert 1 <= used <= 4
    assert stat(browser, "classify-result", "steps") == str(used)
    assert f"after {used} of 4 time steps" in by_id(browser, "classify-result").text
    probabilities = [
        float(bar.get_attribute("data-value")) for bar in css(browser, "#classify-result rect.bar.top")
    ]
    assert probabilities[0] == pytest.approx(expected["predictions"][0]["probability"], abs=1e-6)
    assert console_errors(browser) == []

    # a model that attends across time cannot stop early: the server's reason, in the page
    open_view(browser, server, "events", EVENTS_MODEL)
    by_id(browser, "events-exit").click()
    recording = tmp_path / "random.npy"
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(0, 100_000, 300))
    recording.write_bytes(
        write_npy(make_events(rng.integers(0, 34, 300), rng.integers(0, 34, 300), t, rng.integers(0, 2, 300)))
    )
    by_id(browser, "events-file").send_keys(str(recording))
    wait_for(lambda: shown(browser, "events-error"), 30, "the 422")
    assert "422" in by_id(browser, "events-error").text
    assert not shown(browser, "events-result")
    assert console_errors(browser, allowed=(FAILED_REQUEST,)) == []


def test_a_bad_file_shows_the_servers_message(browser, server, tmp_path):
    open_view(browser, server, "classify")
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    by_id(browser, "classify-file").send_keys(str(fake))
    wait_for(lambda: shown(browser, "classify-error"), 30, "the error")
    message = by_id(browser, "classify-error").text
    assert message.startswith("4") and "image" in message.lower(), message
    assert not shown(browser, "classify-result")
    assert console_errors(browser, allowed=(FAILED_REQUEST,)) == []


def server_frame_totals(server: ServerProcess, data: bytes, fmt: str, fit: str | None) -> list[list[int]]:
    """[[ON, OFF] per frame]: the server's own decoding, fitting and binning of ``data``."""
    from models.encoding import events_to_frames
    from registry import Registry
    from service.decoding import decode_events, fit_to_sensor

    manifest = Registry(server.registry).resolve(EVENTS_MODEL)
    decoded = decode_events(data, None, fmt, 5_000_000)
    events, _ = fit_to_sensor(decoded, manifest.input, fit)
    spec = manifest.input
    frames = events_to_frames(events, (spec.sensor_width, spec.sensor_height), manifest.time_steps.default)
    return [[int(frame[1].sum()), int(frame[0].sum())] for frame in frames]


def page_frame_totals(browser: Any) -> list[list[int]]:
    rows = css(browser, "#events-counts tbody tr")
    return [[int(cell.text) for cell in row.find_elements("css selector", "td")[1:]] for row in rows]


@pytest.mark.parametrize(
    ("file_name", "fmt", "fit"),
    [("nmnist_sample.bin", "nmnist", None), ("dvxplorer_320x240.aedat4", "aedat4", "crop")],
)
def test_a_real_recording_plays_as_the_frames_the_network_receives(
    browser, server, shared_data, file_name, fmt, fit
):
    open_view(browser, server, "events", EVENTS_MODEL)
    recording = Path(shared_data) / file_name
    by_id(browser, "events-fit").send_keys("crop (centre)" if fit == "crop" else "refuse")
    by_id(browser, "events-file").send_keys(str(recording))
    wait_for(
        lambda: shown(browser, "events-result") and shown(browser, "events-movie-card"), 60, "the answer"
    )

    # the page decoded the file itself (LZ4 packets for the AEDAT4 one) and binned it like the server
    assert page_frame_totals(browser) == server_frame_totals(server, recording.read_bytes(), fmt, fit)
    movie = by_id(browser, "events-movie")
    assert (movie.get_attribute("width"), movie.get_attribute("height")) == ("34", "34")
    assert by_id(browser, "events-frame-label").text.endswith("of 4")
    summary = by_id(browser, "events-summary").text
    assert fmt in summary and "34x34 (time_bins)" in summary
    # the canvas shows both polarities' colours somewhere in the movie
    painted = browser.execute_script(
        "const c = document.getElementById('events-movie');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) n += (d[i] + d[i + 1] + d[i + 2]) > 0; return n;"
    )
    assert painted > 0

    expected = httpx.post(
        f"{server.url}/v1/models/{EVENTS_MODEL}/events?telemetry=layers&format={fmt}"
        + (f"&fit={fit}" if fit else ""),
        content=recording.read_bytes(),
        timeout=60,
    ).json()
    assert stat(browser, "events-result", "label") == expected["predictions"][0]["label"]
    columns = css(browser, "#events-result svg[aria-label='spike rate per layer'] rect.bar")
    assert len(columns) == len(expected["telemetry"]["layers"]) > 1
    if fmt == "aedat4":
        screenshot(browser, "console-events.png")
    assert console_errors(browser) == []


def synthetic_recording(kind: str) -> tuple[bytes, str]:
    """(bytes, file name) of 30,000 random events on a 34x34 sensor over 10 s, in one format.

    Ten seconds pass the 23-bit N-MNIST clock (overflow records); 20,000 events a packet make
    320 kB LZ4 packets of several linked 64 kB blocks.
    """
    import struct

    import zstandard

    from eventio._flatbuffers import io_header
    from eventio.aedat4 import MAGIC, _info_xml, read_layout, write_aedat4
    from eventio.nmnist import write_nmnist

    rng = np.random.default_rng(11)
    n = 30_000
    t = np.sort(rng.integers(0, 10_000_000, n))
    events = make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n))
    if kind == "nmnist":
        return write_nmnist(events), "long.bin"
    if kind in ("none", "lz4"):
        return write_aedat4(events, (34, 34), compression=kind, events_per_packet=20_000), f"{kind}.aedat4"
    # ZSTD: the same packets, each compressed as one ZSTD frame
    plain = write_aedat4(events, (34, 34), compression="none", events_per_packet=20_000)
    header = io_header(3, -1, _info_xml(34, 34, "ZSTD"))
    parts = [MAGIC, struct.pack("<I", len(header)), header]
    for packet in read_layout(plain).packets:
        body = zstandard.ZstdCompressor().compress(plain[packet.offset : packet.offset + packet.size])
        parts += [struct.pack("<ii", packet.stream_id, len(body)), body]
    return b"".join(parts), "zstd.aedat4"


@pytest.mark.parametrize("kind", ["none", "lz4", "nmnist"])
def test_every_format_the_page_decodes_gives_the_servers_frames(browser, server, tmp_path, kind):
    data, name = synthetic_recording(kind)
    recording = tmp_path / name
    recording.write_bytes(data)
    open_view(browser, server, "events", EVENTS_MODEL)
    by_id(browser, "events-file").send_keys(str(recording))
    wait_for(
        lambda: shown(browser, "events-result") and shown(browser, "events-movie-card"), 60, "the answer"
    )
    fmt = "nmnist" if kind == "nmnist" else "aedat4"
    assert page_frame_totals(browser) == server_frame_totals(server, data, fmt, None)
    assert sum(on + off for on, off in page_frame_totals(browser)) == 30_000
    # about 10 s: N-MNIST's overflow records were counted (its 23-bit clock wraps at 8.39 s)
    seconds = float(re.search(r"over ([\d.]+) s", by_id(browser, "events-summary").text).group(1))
    assert 9.9 < seconds <= 10.0
    assert not shown(browser, "events-error")
    assert console_errors(browser) == []


def test_a_recording_the_page_cannot_decode_is_still_classified(browser, server, tmp_path):
    # Debian's chromium has no ZSTD DecompressionStream: no movie, but the server's answer
    data, name = synthetic_recording("zstd")
    recording = tmp_path / name
    recording.write_bytes(data)
    open_view(browser, server, "events", EVENTS_MODEL)
    by_id(browser, "events-file").send_keys(str(recording))
    wait_for(lambda: shown(browser, "events-result"), 60, "the answer")
    assert not shown(browser, "events-movie-card")
    assert "frames not shown" in by_id(browser, "events-error").text
    assert "ZSTD" in by_id(browser, "events-error").text
    assert stat(browser, "events-result", "label") in [str(i) for i in range(10)]
    assert console_errors(browser) == []


def test_live_replays_a_real_recording_as_a_stream_in_real_time(browser, server, shared_data, tmp_path):
    open_view(browser, server, "live", EVENTS_MODEL)
    assert by_id(browser, "live-steps").get_attribute("value") == "1"  # the stream route's default
    recording = Path(shared_data) / "nmnist_sample.bin"  # 4,325 events over 311 ms
    started = browser.execute_script("return performance.now()")
    by_id(browser, "live-file").send_keys(str(recording))
    wait_for(
        lambda: (
            browser.execute_script("return document.getElementById('view-live').dataset.closed") == "1000"
        ),
        60,
        "the session closing normally",
    )
    elapsed_ms = browser.execute_script("return performance.now()") - started
    assert elapsed_ms > 300  # replayed at the recording's own pace, not in one burst

    status = by_id(browser, "live-status").text
    assert "sliding state" in status  # spikeformer-nmnist attends across time: a sliding context
    assert "sent 4,325 of 4,325 events" in status
    windows = int(re.search(r"(\d+) windows answered", status).group(1))
    assert 3 <= windows <= 8  # 311 ms in 50 ms windows, the last one flushed (fewer if merged)
    rows = css(browser, "#live-windows tbody tr")
    assert len(rows) == windows
    assert css(browser, "#live-chart-confidence path.line")[0].get_attribute("data-points") == str(windows)
    assert css(browser, "#live-chart-rate path.line")[0].get_attribute("data-points") == str(windows)
    assert by_id(browser, "live-label").text in [str(digit) for digit in range(10)]
    assert by_id(browser, "live-label").text == rows[0].find_elements("css selector", "td")[1].text
    assert not shown(browser, "live-error")
    screenshot(browser, "console-live.png")
    assert console_errors(browser) == []

    # Stop part-way through a 10 s recording
    data, name = synthetic_recording("nmnist")
    long_recording = tmp_path / name
    long_recording.write_bytes(data)
    by_id(browser, "live-file").send_keys(str(long_recording))
    wait_for(lambda: "of 30,000 events" in by_id(browser, "live-status").text, 30, "the replay starting")
    by_id(browser, "live-stop").click()
    wait_for(
        lambda: (
            browser.execute_script("return document.getElementById('view-live').dataset.closed") == "1000"
        ),
        30,
        "the stopped session closing",
    )
    status = by_id(browser, "live-status").text
    sent = int(re.search(r"sent ([\d,]+) of 30,000 events", status).group(1).replace(",", ""))
    assert sent < 30_000 and "closed by the client" in status
    assert console_errors(browser) == []


def test_an_npy_recording(browser, server, tmp_path):
    rng = np.random.default_rng(3)
    n = 800
    events = make_events(
        rng.integers(0, 34, n),
        rng.integers(0, 34, n),
        np.sort(rng.integers(0, 200_000, n)),
        rng.integers(0, 2, n),
    )
    recording = tmp_path / "random.npy"
    recording.write_bytes(write_npy(events))
    open_view(browser, server, "events", EVENTS_MODEL)
    by_id(browser, "events-file").send_keys(str(recording))
    wait_for(lambda: shown(browser, "events-result"), 60, "the answer")
    assert page_frame_totals(browser) == server_frame_totals(server, recording.read_bytes(), "npy", None)
    assert sum(on + off for on, off in page_frame_totals(browser)) == n
    assert console_errors(browser) == []


def test_models_view_reads_and_manages_the_registry_with_a_tab_only_token(browser, server, tmp_path):
    open_view(browser, server, "models")
    # without the token: what the public routes say
    assert "Served now" in by_id(browser, "models-list").text
    assert "danet-mnist:1" in by_id(browser, "models-list").text

    # a wrong token: the server's 401, in the page
    by_id(browser, "admin-token").send_keys("not-the-token")
    css(browser, "#token-form button[type=submit]")[0].click()
    wait_for(lambda: shown(browser, "models-error"), 10, "the 401")
    assert "401" in by_id(browser, "models-error").text
    console_errors(browser)

    by_id(browser, "admin-token").send_keys(ADMIN_TOKEN)
    css(browser, "#token-form button[type=submit]")[0].click()
    wait_for(lambda: css(browser, "tr[data-model='danet-mnist'] button"), 10, "the registry table")
    assert browser.execute_script("return sessionStorage.getItem('spikeserve.adminToken')") == ADMIN_TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    assert by_id(browser, "admin-token").get_attribute("value") == ""  # not left in the form
    rows = {row.get_attribute("data-model") for row in css(browser, "tr[data-model]")}
    assert rows == {IMAGE_MODEL, "danet-nmnist", EVENTS_MODEL}
    assert "@production → 1" in css(browser, f"tr[data-model='{IMAGE_MODEL}']")[0].text

    css(browser, f"tr[data-model='{IMAGE_MODEL}'] button")[0].click()
    wait_for(
        lambda: css(browser, f"[data-detail='{IMAGE_MODEL}'] details[data-version='1']"), 10, "the manifests"
    )
    manifest = css(browser, f"[data-detail='{IMAGE_MODEL}'] details[data-version='1'] pre")[0]
    assert '"architecture": "danet_resnet18"' in manifest.get_attribute("textContent")

    # register version 2 (the same weights) through the upload form
    registry_manifest = httpx.get(
        f"{server.url}/v1/models/{IMAGE_MODEL}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()["versions"][0]
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(
        (server.registry / "blobs" / "sha256" / registry_manifest["weights"]["sha256"]).read_bytes()
    )
    upload = {
        key: registry_manifest[key]
        for key in ("name", "architecture", "config", "neuron", "time_steps", "input", "labels")
    }
    upload["description"] = "uploaded from the console test"
    css(browser, "#upload-card summary")[0].click()
    by_id(browser, "upload-weights").send_keys(str(weights))
    browser.execute_script(
        "document.getElementById('upload-manifest').value = arguments[0]", json.dumps(upload)
    )
    css(browser, "#upload-form button[type=submit]")[0].click()
    wait_for(
        lambda: css(browser, f"[data-detail='{IMAGE_MODEL}'] details[data-version='2']"), 60, "version 2"
    )

    # point a new alias at it, then delete it (the inline confirmation takes a second click)
    css(browser, f"[data-detail='{IMAGE_MODEL}'] input[aria-label='alias name']")[0].send_keys("canary")
    css(browser, f"[data-detail='{IMAGE_MODEL}'] select[aria-label='alias version']")[0].send_keys("2")
    css(browser, f"[data-detail='{IMAGE_MODEL}'] form button[type=submit]")[0].click()
    wait_for(
        lambda: "@canary → 2" in css(browser, f"tr[data-model='{IMAGE_MODEL}']")[0].text, 10, "the alias"
    )
    aliases = httpx.get(
        f"{server.url}/v1/models/{IMAGE_MODEL}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()["aliases"]
    assert aliases == {"production": 1, "canary": 2}
    screenshot(browser, "console-models.png")

    remove = next(
        b for b in css(browser, f"[data-detail='{IMAGE_MODEL}'] button") if b.text == "Remove @canary"
    )
    remove.click()
    assert remove.text.startswith("Really?")
    remove.click()
    wait_for(
        lambda: "@canary" not in css(browser, f"tr[data-model='{IMAGE_MODEL}']")[0].text, 10, "the alias gone"
    )
    css(browser, f"[data-detail='{IMAGE_MODEL}'] details[data-version='2'] summary")[0].click()
    delete = css(browser, f"[data-detail='{IMAGE_MODEL}'] details[data-version='2'] button.danger")[0]
    assert delete.text == "Delete version 2"
    delete.click()
    delete.click()
    wait_for(
        lambda: (
            css(browser, f"tr[data-model='{IMAGE_MODEL}']")[0].find_elements("css selector", "td")[1].text
            == "1"
        ),
        10,
        "version 2 gone",
    )
    assert "Workers (embedded)" in by_id(browser, "workers").text

    # Forget: the token leaves the tab
    by_id(browser, "token-forget").click()
    wait_for(lambda: "Served now" in by_id(browser, "models-list").text, 10, "the public view")
    assert browser.execute_script("return sessionStorage.getItem('spikeserve.adminToken')") is None
    assert console_errors(browser) == []


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose inference needs an API key (tiny random-weight models: only the flow matters)."""
    registry = tmp_path_factory.mktemp("console-keyed")
    build_tiny_registry(registry)
    env = {
        "SPIKESERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SPIKESERVE_API_KEYS": '["a-client-key"]',
        "SPIKESERVE_NEURON_BACKEND": "torch",
        "SPIKESERVE_TORCH_THREADS": "1",
    }
    with ServerProcess(registry, env=env) as process:
        yield process


def test_a_server_with_api_keys_takes_the_tabs_token(browser, keyed_server):
    open_view(browser, keyed_server, "classify")
    # model metadata needs a key there: the page says where it goes
    assert "enter the admin token on the Models tab" in by_id(browser, "server-status").text
    console_errors(browser)

    by_id(browser, "tabs").find_element("link text", "Models").click()
    by_id(browser, "admin-token").send_keys(ADMIN_TOKEN)
    css(browser, "#token-form button[type=submit]")[0].click()
    # the console starts again with the token, which the tab kept
    wait_for(lambda: "ready: tiny-danet:1" in by_id(browser, "server-status").text, 30, "the models")
    by_id(browser, "tabs").find_element("link text", "Classify").click()
    draw_a_one(browser)
    by_id(browser, "draw-classify").click()
    wait_for(lambda: shown(browser, "classify-result"), 30, "the answer")
    assert not shown(browser, "classify-error")
    assert console_errors(browser) == []

    # a token that goes away mid-session: inference answers 401, and the page says where to fix it
    browser.execute_script("sessionStorage.clear()")
    by_id(browser, "draw-classify").click()
    wait_for(lambda: shown(browser, "classify-error"), 30, "the 401")
    assert by_id(browser, "classify-error").text.startswith("401 unauthorized: inference needs an API key")
    assert "Models tab" in by_id(browser, "classify-error").text
    assert console_errors(browser, allowed=(FAILED_REQUEST,)) == []
