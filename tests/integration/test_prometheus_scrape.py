"""A real Prometheus scrapes a real gateway and Redis worker; every dashboard query and alert works on it.

The dashboard and the alert rules are otherwise only parsed: here Prometheus (Debian's package,
unpacked by tests/prometheus_support.py) scrapes both processes on loopback every second while
images, event recordings, bad requests and a short live stream session go through, then every
Grafana query is evaluated through
the HTTP API (``$__rate_interval`` replaced by a fixed window) and must return series, and the
alert rules loaded from docker/prometheus/ must evaluate cleanly and fire when a worker goes away.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_support import PrometheusServer, free_port, prometheus_tools
from redis_support import (
    REDIS_URL,
    npy_bytes,
    start_gateway,
    start_worker,
    wait_for_workers,
    wait_until,
)
from stream_support import nmnist_in_1ms_chunks
from tiny_zoo import EVENTS_MODEL, IMAGE_MODEL
from websockets.sync.client import connect

from eventio import make_events

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/dashboards/spikeserve.json"
RULES = REPO / "docker/prometheus/alerts.rules.yml"
RATE_WINDOW = "30s"  # stands for Grafana's $__rate_interval: many 1 s scrapes
# allocated GPU memory is exported by workers that run on a GPU; this one runs on the CPU
NEEDS_A_GPU = {"spikeserve_gpu_memory_bytes"}
FAST_BEATS = {"SPIKESERVE_HEARTBEAT_INTERVAL_S": "0.5"}
# the stream session's second half arrives at once: room for all its windows, so none is dropped
# and the dropped-windows alert stays quiet
ROOMY_STREAMS = {"SPIKESERVE_STREAM_MAX_PENDING_WINDOWS": "64"}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def scrape_config(gateway_port: int, worker_metrics_port: int) -> str:
    """Both jobs as docker/prometheus.yml names them, on loopback, scraped and evaluated every second."""
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "spikeserve-gateway",
                    "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
                },
                {
                    "job_name": "spikeserve-worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_metrics_port}"]}],
                },
            ],
        }
    )


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((28, 28)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def recording(seed: int, n: int = 400) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 300_000, n))
    return npy_bytes(make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n)))


def send_traffic(base: str) -> int:
    """Images, event recordings and requests that fail; returns how many requests were answered."""
    sent = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        for seed in range(12):
            image = client.post(
                f"/v1/models/{IMAGE_MODEL}/classify?telemetry=layers",
                content=png_bytes(seed),
                headers={"content-type": "image/png"},
            )
            assert image.status_code == 200, image.text
            events = client.post(
                f"/v1/models/{EVENTS_MODEL}/events",
                content=recording(seed),
                headers={"content-type": "application/x-npy"},
            )
            assert events.status_code == 200, events.text
            sent += 2
        failures = [
            client.post("/v1/models/no-such-model/classify", content=png_bytes(0)),
            client.post(f"/v1/models/{IMAGE_MODEL}/classify", content=b"not an image"),
            client.post(f"/v1/models/{IMAGE_MODEL}/classify?time_steps=99", content=png_bytes(0)),
        ]
        assert [answer.status_code for answer in failures] == [404, 415, 422], [a.text for a in failures]
        sent += len(failures)
    return sent


def stream_session(base: str, recording: bytes, prometheus: PrometheusServer) -> int:
    """The real N-MNIST recording streamed to the events model in 10 ms chunks; returns the windows.

    Prometheus scrapes the session's first windows before the rest are sent, so that rates and
    quantiles over the stream series see them move (a session shorter than a scrape would not)."""
    url = f"{base.replace('http://', 'ws://')}/v1/models/{EVENTS_MODEL}/stream?window_ms=20&time_steps=2"
    chunks = nmnist_in_1ms_chunks(recording)
    batches = [b"".join(chunks[start : start + 10]) for start in range(0, len(chunks), 10)]
    half = len(batches) // 2
    with connect(url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        for batch in batches[:half]:
            ws.send(batch)

        def first_windows_scraped() -> bool:
            return bool(prometheus.query("spikeserve_stream_window_latency_seconds_count > 0"))

        wait_until(first_windows_scraped, 30, "Prometheus scraping the first stream windows", interval_s=0.5)
        for batch in batches[half:]:
            ws.send(batch)
        ws.send(json.dumps({"close": True}))
        messages = [json.loads(ws.recv(timeout=60))]
        while messages[-1]["type"] != "closed":
            messages.append(json.loads(ws.recv(timeout=60)))
    windows = [m for m in messages if m["type"] == "window"]
    assert windows and messages[-1]["windows"] == len(windows), messages[-1]
    assert messages[-1]["dropped_windows"] == 0, messages[-1]
    return len(windows)


def test_a_real_prometheus_answers_every_dashboard_query_and_evaluates_the_alerts(
    redis_registry, redis_prefix, tmp_path, shared_data
):
    tools = prometheus_tools()
    with contextlib.ExitStack() as stack:
        gateway, base = start_gateway(
            redis_registry, REDIS_URL, redis_prefix, tmp_path, {**FAST_BEATS, **ROOMY_STREAMS}
        )
        stack.callback(gateway.stop)
        metrics_port = free_port()
        worker = start_worker(
            redis_registry,
            REDIS_URL,
            redis_prefix,
            tmp_path,
            "w-prom",
            [IMAGE_MODEL, EVENTS_MODEL],
            extra=["--metrics-port", str(metrics_port)],
            env=FAST_BEATS,
        )
        stack.callback(worker.stop)
        wait_for_workers(base, {"w-prom"}, [worker])
        gateway_port = int(base.rsplit(":", 1)[1])
        prometheus = stack.enter_context(PrometheusServer(tools, scrape_config(gateway_port, metrics_port)))

        def both_targets_up() -> bool:
            return [t["health"] for t in prometheus.targets()] == ["up", "up"]

        wait_until(both_targets_up, 30, "Prometheus scraping the gateway and the worker")
        sent = send_traffic(base)
        windows = stream_session(base, (shared_data / "nmnist_sample.bin").read_bytes(), prometheus)

        # every answered request and window scraped, then enough later scrapes for rate() to see them move
        def all_counted() -> bool:
            counted = prometheus.query('sum(spikeserve_requests_total{job="spikeserve-gateway"})')
            answered = prometheus.query("sum(spikeserve_stream_windows_total)")
            return (
                bool(counted and answered)
                and float(counted[0]["value"][1]) >= sent
                and float(answered[0]["value"][1]) >= windows
            )

        wait_until(
            all_counted, 30, f"Prometheus counting {sent} requests and {windows} windows", interval_s=0.5
        )
        queries = [
            (title, expr.replace("$__rate_interval", RATE_WINDOW)) for title, expr in dashboard_queries()
        ]
        expected = [(t, e) for t, e in queries if not NEEDS_A_GPU & set(re.findall(r"spikeserve_\w+", e))]
        assert len(expected) >= len(queries) - 1

        def empty_queries() -> list[tuple[str, str]]:
            return [(title, expr) for title, expr in expected if not prometheus.query(expr)]

        # a rate over a fresh series needs two samples in the window: give it a few scrapes
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not empty_queries(), 20, "every dashboard query returning series")
        assert empty_queries() == [], "dashboard queries without series after real scrapes"

        # the series carry the labels the panels group by
        by_route = prometheus.query(
            f"sum by (route, status) (rate(spikeserve_requests_total[{RATE_WINDOW}]))"
        )
        statuses = {(s["metric"]["route"], s["metric"]["status"]) for s in by_route}
        assert ("/v1/models/{ref}/classify", "200") in statuses
        assert ("/v1/models/{ref}/events", "200") in statuses
        assert {"404", "415", "422"} <= {status for _route, status in statuses}
        layers = prometheus.query(f"sum by (model, layer) (rate(spikeserve_spike_rate_count[{RATE_WINDOW}]))")
        assert {s["metric"]["model"] for s in layers} == {IMAGE_MODEL, EVENTS_MODEL}
        # the Streams row: the session's model, its windows measured, and none closed over
        for stream_series in ("spikeserve_stream_sessions", "spikeserve_stream_window_latency_seconds_count"):
            assert {s["metric"]["model"] for s in prometheus.query(stream_series)} == {EVENTS_MODEL}
        assert float(prometheus.query("sum(spikeserve_stream_sessions)")[0]["value"][1]) == 0
        latency_p99 = prometheus.query(
            "histogram_quantile(0.99, sum by (le, model) "
            "(increase(spikeserve_stream_window_latency_seconds_bucket[5m])))"
        )
        assert 0 < float(latency_p99[0]["value"][1]) <= 5.0, latency_p99
        windows_per_s = prometheus.query("sum(rate(spikeserve_stream_windows_total[5m]))")
        assert float(windows_per_s[0]["value"][1]) > 0, windows_per_s

        # the alert rules: loaded, every one evaluated without error, every metric they read exported
        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
        assert set(loaded) == {rule["alert"] for rule in alert_rules()}
        wait_until(
            lambda: all(r.get("lastEvaluation", "").startswith("20") for r in loaded_rules(prometheus)),
            10,
            "every rule evaluated once",
        )
        for rule in loaded_rules(prometheus):
            assert rule["health"] == "ok", rule
        for rule in alert_rules():
            for metric in set(re.findall(r"\b(spikeserve_\w+|up)\b", rule["expr"])):
                assert prometheus.query(metric), f"{rule['alert']} reads {metric}, which nobody exports"
        # nothing is down or slow; the spike-rate alerts follow the rates these random-weight nets have
        mean_rates = {
            s["metric"]["model"]: float(s["value"][1])
            for s in prometheus.query(
                f"sum by (model) (rate(spikeserve_spike_rate_sum[{RATE_WINDOW}]))"
                f" / sum by (model) (rate(spikeserve_spike_rate_count[{RATE_WINDOW}]))"
            )
        }
        expected_alerts = set()
        if any(rate < 0.001 for rate in mean_rates.values()):
            expected_alerts.add("SpikeserveSpikeRateCollapsed")
        if any(rate > 0.5 for rate in mean_rates.values()):
            expected_alerts.add("SpikeserveSpikeRateSaturated")
        # the session's second half was sent at once, faster than real time: its last windows may
        # be answered after more than their length, as the rule reads it
        late = prometheus.query(
            "histogram_quantile(0.99, sum by (le, model) "
            "(rate(spikeserve_stream_window_latency_ratio_bucket[2m]))) > 1"
        )
        if late:
            expected_alerts.add("SpikeserveStreamSlowerThanRealTime")
        assert firing_or_pending(prometheus) == expected_alerts, (mean_rates, late)

        # a worker that goes away: its target is down and the gateway sees no live worker
        worker.stop()
        wait_until(
            lambda: {"SpikeserveTargetDown", "SpikeserveNoLiveWorkers"} <= firing_or_pending(prometheus),
            30,
            "the down and no-worker alerts pending",
            interval_s=0.5,
        )


def loaded_rules(prometheus: PrometheusServer) -> list[dict]:
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def firing_or_pending(prometheus: PrometheusServer) -> set[str]:
    alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts}
