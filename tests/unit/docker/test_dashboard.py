"""The Grafana dashboard queries only metrics (and labels) that the code really exports.

The code's metric definitions are read from the source (``Counter("spikeserve_...", doc, [labels])``
and the like, in service/ and workers/), without importing it: what Prometheus would see follows from
the type (a Counter ``x`` or ``x_total`` exports ``x_total``; a Histogram ``x`` exports ``x_bucket``,
``x_sum``, ``x_count``). Every query also goes through promtool's PromQL parser.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "docker/grafana/dashboards/spikeserve.json"
METRIC_KINDS = {"Counter", "Gauge", "Histogram", "Summary"}
# labels Prometheus adds to every scraped series, and the histogram bucket bound
SCRAPE_LABELS = {"instance", "job", "le"}
# what Grafana puts in place of $__rate_interval, for the parser
RATE_INTERVAL = "1m"


def defined_metrics() -> dict[str, tuple[str, set[str]]]:
    """name as written in the code -> (kind, label names), for every metric in service/ and workers/."""
    found: dict[str, tuple[str, set[str]]] = {}
    for path in [*REPO.glob("service/**/*.py"), *REPO.glob("workers/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if kind not in METRIC_KINDS or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            labels_node = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg == "labelnames":
                    labels_node = keyword.value
            labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
            found[node.args[0].value] = (kind, labels)
    return found


def exported_series() -> dict[str, set[str]]:
    """Series name Prometheus sees -> its label names."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in defined_metrics().items():
        if kind == "Counter":
            series[name.removesuffix("_total") + "_total"] = labels
        elif kind in ("Histogram", "Summary"):
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = labels
        else:
            series[name] = labels
    return series


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_code_defines_the_contract_metrics():
    series = exported_series()
    for name in (
        "spikeserve_requests_total",
        "spikeserve_request_duration_seconds_bucket",
        "spikeserve_queue_duration_seconds_bucket",
        "spikeserve_compute_duration_seconds_bucket",
        "spikeserve_batch_size_bucket",
        "spikeserve_spike_rate_bucket",
        "spikeserve_spikes_total",
        "spikeserve_synaptic_ops_total",
        "spikeserve_energy_joules_total",
        "spikeserve_models_loaded",
        "spikeserve_gpu_memory_bytes",
        "spikeserve_queue_depth",
        "spikeserve_worker_batches_total",
        "spikeserve_workers",
        "spikeserve_stream_sessions",
        "spikeserve_stream_windows_total",
        "spikeserve_stream_dropped_windows_total",
        "spikeserve_stream_window_latency_seconds_bucket",
        "spikeserve_stream_window_latency_ratio_bucket",
        "spikeserve_stream_spike_rate_bucket",
        "spikeserve_stream_state_resets_total",
    ):
        assert name in series, f"{name} is not defined in service/ or workers/"


@pytest.mark.parametrize(("title", "expr"), dashboard_queries())
def test_every_query_names_exported_metrics_and_labels(title: str, expr: str):
    series = exported_series()
    names = re.findall(r"\bspikeserve_[a-z0-9_]+", expr)
    assert names, f"panel {title!r} queries no spikeserve metric: {expr}"
    labels_known = set().union(*(series.get(name, set()) for name in names)) | SCRAPE_LABELS
    for name in names:
        assert name in series, f"panel {title!r} queries {name}, which the code does not export"
    grouped = [label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")]
    selected = re.findall(r"\{\s*([a-z_]+)\s*=", expr)
    for label in grouped + selected:
        assert label in labels_known, f"panel {title!r} uses label {label!r}, which {names} do not have"


def test_dashboard_covers_requests_latency_queue_batches_spikes_and_energy():
    queried = " ".join(expr for _title, expr in dashboard_queries())
    for needed in (
        "spikeserve_requests_total",  # request rate
        "histogram_quantile(0.5, sum by (le) (rate(spikeserve_request_duration_seconds_bucket",  # p50
        "histogram_quantile(0.99, sum by (le) (rate(spikeserve_request_duration_seconds_bucket",  # p99
        "spikeserve_queue_duration_seconds_bucket",  # queue time
        "spikeserve_batch_size_sum",  # batch size
        "sum by (model, layer) (rate(spikeserve_spike_rate_sum",  # spike rate per layer
        "spikeserve_synaptic_ops_total",  # SOPs
        "spikeserve_energy_joules_total",  # energy
        "spikeserve_gpu_memory_bytes",  # GPU memory
        "spikeserve_workers",  # worker count
    ):
        assert needed in queried, f"the dashboard has no query with {needed!r}"


def test_every_query_parses_as_promql(tmp_path: Path):
    """promtool parses each query as the expression of a recording rule (``check rules`` parses and
    type-checks PromQL without a server), with ``$__rate_interval`` as Grafana would fill it in."""
    import yaml
    from prometheus_support import prometheus_tools

    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", RATE_INTERVAL)}
        for i, (_title, expr) in enumerate(queries)
    ]
    checked = tmp_path / "dashboard.rules.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = prometheus_tools().promtool
    done = subprocess.run([promtool, "check", "rules", checked], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_a_streams_row_shows_sessions_windows_drops_latency_spike_rate_and_resets():
    """Latency both in seconds and in window lengths: a latency only alarms next to its window."""
    dashboard = json.loads(DASHBOARD.read_text())
    rows = sorted(panel["gridPos"]["y"] for panel in dashboard["panels"] if panel["type"] == "row")
    (row,) = [
        panel for panel in dashboard["panels"] if panel["type"] == "row" and panel["title"] == "Streams"
    ]
    top = row["gridPos"]["y"]
    bottom = min([y for y in rows if y > top], default=float("inf"))  # the next row, if any
    in_row = [panel for panel in dashboard["panels"] if top < panel["gridPos"]["y"] < bottom]
    queried = " ".join(target["expr"] for panel in in_row for target in panel.get("targets", []))
    window_latency = "sum by (le, model) (rate(spikeserve_stream_window_latency_seconds_bucket"
    in_windows = "sum by (le, model) (rate(spikeserve_stream_window_latency_ratio_bucket"
    for needed in (
        "sum by (model) (spikeserve_stream_sessions)",  # active sessions per model
        "sum by (model) (rate(spikeserve_stream_windows_total",  # windows/s
        "sum by (model) (rate(spikeserve_stream_dropped_windows_total",  # dropped windows/s
        f"histogram_quantile(0.5, {window_latency}",  # window latency p50
        f"histogram_quantile(0.99, {window_latency}",  # window latency p99
        f"histogram_quantile(0.99, {in_windows}",  # p99 latency / window length: above 1, behind
        "sum by (model) (rate(spikeserve_stream_spike_rate_sum",  # stream spike rate per model
        "sum by (model) (rate(spikeserve_stream_state_resets_total",  # state resets/s
    ):
        assert needed in queried, f"the Streams row has no query with {needed!r}"


def test_panels_use_the_provisioned_datasource():
    import yaml

    datasources = yaml.safe_load(
        (REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":  # a row only groups the panels below it
            assert panel["datasource"]["uid"] == uid, panel["title"]
