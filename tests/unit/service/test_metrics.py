"""service/metrics.py: request counts and durations with bounded labels, queue depth, exposition."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY
from service_support import StaticPool, npy_bytes

from service.metrics import refresh_queue_depth, set_queue_limit
from service.settings import Settings

ROUTE = "/v1/models/{ref}/classify"
NPY = {"content-type": "application/x-npy"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_model_version_route_and_status(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    ok_labels = {"model": "tiny-danet", "version": "1", "route": ROUTE}
    ok_before = value("spikeserve_requests_total", **ok_labels, status="200")
    bad_before = value("spikeserve_requests_total", **ok_labels, status="422")
    unknown_before = value("spikeserve_requests_total", model="", version="", route=ROUTE, status="404")
    timed_before = value("spikeserve_request_duration_seconds_count", model="tiny-danet", route=ROUTE)
    image = npy_bytes(np.zeros((1, 28, 28), np.float32))
    assert client.post("/v1/models/tiny-danet/classify", content=image, headers=NPY).status_code == 200
    assert (
        client.post("/v1/models/tiny-danet/classify?time_steps=64", content=image, headers=NPY).status_code
        == 422
    )
    assert client.post("/v1/models/no-such-model/classify", content=image, headers=NPY).status_code == 404
    assert value("spikeserve_requests_total", **ok_labels, status="200") == ok_before + 1
    assert value("spikeserve_requests_total", **ok_labels, status="422") == bad_before + 1
    # an unknown name does not become a label value: the label set stays bounded
    assert (
        value("spikeserve_requests_total", model="", version="", route=ROUTE, status="404")
        == unknown_before + 1
    )
    assert (
        value("spikeserve_requests_total", model="no-such-model", version="", route=ROUTE, status="404") == 0
    )
    assert (
        value("spikeserve_request_duration_seconds_count", model="tiny-danet", route=ROUTE)
        == timed_before + 2
    )


def test_unmatched_paths_and_probes_are_not_counted(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    client.get("/some/random/path")
    client.get("/healthz")
    text = client.get("/metrics").text
    assert "/some/random/path" not in text
    assert 'route="/healthz"' not in text


def test_queue_depth_follows_the_pool_and_drains_to_zero() -> None:
    pool = StaticPool()
    pool.depths = {"depth-a": 3, "depth-b": 1}
    refresh_queue_depth(pool)
    assert value("spikeserve_queue_depth", model="depth-a") == 3
    pool.depths = {"depth-b": 2}
    refresh_queue_depth(pool)
    assert value("spikeserve_queue_depth", model="depth-a") == 0
    assert value("spikeserve_queue_depth", model="depth-b") == 2


def test_every_loaded_model_has_a_queue_depth_series_before_anything_waits() -> None:
    pool = StaticPool()
    pool.depths = {}
    pool.loaded_models = lambda: [("depth-idle", 1)]  # type: ignore[method-assign]
    refresh_queue_depth(pool)
    assert REGISTRY.get_sample_value("spikeserve_queue_depth", {"model": "depth-idle"}) == 0.0


def test_queue_limit_is_the_one_this_process_enforces() -> None:
    # embedded: the batcher's queue; distributed: each model's Redis backlog
    set_queue_limit(Settings(max_queue_size=77, redis_max_backlog=9000))
    assert value("spikeserve_queue_limit") == 77
    set_queue_limit(Settings(redis_url="redis://127.0.0.1:6379/0", max_queue_size=77, redis_max_backlog=9000))
    assert value("spikeserve_queue_limit") == 9000


def test_metrics_exposes_the_request_and_worker_families(serving) -> None:  # type: ignore[no-untyped-def]
    image = npy_bytes(np.ones((1, 28, 28), np.float32))
    serving.post("/v1/models/tiny-danet/classify?telemetry=layers", content=image, headers=NPY)
    response = serving.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    for family in (
        "spikeserve_requests_total",
        "spikeserve_request_duration_seconds_bucket",
        "spikeserve_queue_depth",
        "spikeserve_queue_duration_seconds_bucket",
        "spikeserve_compute_duration_seconds_bucket",
        "spikeserve_batch_size_bucket",
        "spikeserve_spike_rate_bucket",
        "spikeserve_spikes_total",
        "spikeserve_synaptic_ops_total",
        "spikeserve_energy_joules_total",
        "spikeserve_models_loaded",
        "spikeserve_worker_batches_total",
    ):
        assert f"\n{family}" in response.text, family
