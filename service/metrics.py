"""Request-side Prometheus metrics of the gateway, and the ``/metrics`` exposition.

- ``spikeserve_requests_total{model,version,route,status}``: every answered request to a route.
- ``spikeserve_request_duration_seconds{model,route}``: histogram, from first byte in to answer out.
- ``spikeserve_queue_depth{model}``: gauge, read from the worker pool at scrape time.
- ``spikeserve_queue_limit``: gauge, the waiting requests past which new ones get 503 ``queue_full``
  (so an alert can compare depth with it instead of repeating a setting).

``route`` is the route's template (``/v1/models/{ref}/classify``), never the raw path, and
``model``/``version`` are set only once a reference resolved, so label values stay bounded. The
worker-side metrics (``workers.metrics``) live in the same default registry and are exported here
too in embedded mode.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.pool import WorkerPool

REQUESTS = Counter(
    "spikeserve_requests",
    "Requests answered, by model, version, route and status.",
    ["model", "version", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "spikeserve_request_duration_seconds",
    "Time from receiving a request to sending its answer.",
    ["model", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
QUEUE_DEPTH = Gauge("spikeserve_queue_depth", "Requests waiting for a batch.", ["model"])
QUEUE_LIMIT = Gauge(
    "spikeserve_queue_limit",
    "Waiting requests past which new ones are answered 503 (per process; per model when distributed).",
)

# routes that are not worth a time series of their own (scrapes, probes)
_UNCOUNTED = frozenset({"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def label_model(request: Request, name: str, version: int) -> None:
    """Called by a route once ``{ref}`` resolved: the request's metrics carry this model."""
    request.state.metrics_model = name
    request.state.metrics_version = str(version)


class RequestMetricsMiddleware:
    """Pure ASGI middleware: counts and times every request that matched a route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_template(scope)
            if route is not None and route not in _UNCOUNTED:
                state: dict[str, Any] = scope.get("state") or {}
                model = str(state.get("metrics_model", ""))
                version = str(state.get("metrics_version", ""))
                REQUESTS.labels(model, version, route, str(status)).inc()
                REQUEST_DURATION.labels(model, route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


_known_depth_labels: set[str] = set()


def refresh_queue_depth(pool: WorkerPool) -> None:
    """Copy the pool's queue depth per model into the gauge.

    Every loaded model has a series, 0 while nothing waits: a queue that a scrape never happens to
    catch non-empty would otherwise have no series at all, and its panel would read "no data".
    """
    depths = pool.queue_depth_by_model()
    for name, _version in pool.loaded_models():
        depths.setdefault(name, 0)
    for model in _known_depth_labels - depths.keys():
        QUEUE_DEPTH.labels(model).set(0)  # a drained queue reads 0, not its last value
    for model, depth in depths.items():
        QUEUE_DEPTH.labels(model).set(depth)
    _known_depth_labels.update(depths)


def set_queue_limit(settings: Any) -> None:
    """Export the limit this process enforces: the Redis backlog per model, or the embedded queue."""
    QUEUE_LIMIT.set(settings.redis_max_backlog if settings.redis_url else settings.max_queue_size)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every metric in the default registry, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
