"""Prometheus metrics of live streams (gateway side), with the project's ``spikeserve_`` prefix.

Windows per second is ``rate(spikeserve_stream_windows_total[1m])``; ``model`` is a resolved model
name, so label values stay bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE = Gauge("spikeserve_stream_sessions", "Live stream sessions open now, by model.", ["model"])
REFUSED = Counter(
    "spikeserve_stream_sessions_refused", "Stream sessions refused at admission, by reason.", ["reason"]
)
WINDOWS = Counter("spikeserve_stream_windows", "Stream windows answered.", ["model"])
DROPPED = Counter(
    "spikeserve_stream_dropped_windows",
    "Stream windows not answered on their own (merged into the next while the model was behind, or "
    "discarded by a reset).",
    ["model"],
)
STATE_RESETS = Counter(
    "spikeserve_stream_state_resets",
    "Stream windows answered from a state started afresh without the client asking: the worker had "
    "dropped the session, or the session moved to another worker after its worker died.",
    ["model"],
)
EVENTS = Counter("spikeserve_stream_events", "Events received on live streams (after fitting).", ["model"])
WINDOW_LATENCY = Histogram(
    "spikeserve_stream_window_latency_seconds",
    "From the message that completed a window to its answer being sent.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# a latency alarms only next to its window: sessions choose their window length, so the model's
# series mixes them; 1.0 is a bucket bound, so "p99 above 1" reads exactly "over 1% of windows late"
WINDOW_LATENCY_RATIO = Histogram(
    "spikeserve_stream_window_latency_ratio",
    "Stream window latency over the window's length in event time: above 1, windows are answered "
    "slower than real time.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0),
)
SPIKE_RATE = Histogram(
    "spikeserve_stream_spike_rate",
    "Network spike rate of each answered stream window.",
    ["model"],
    buckets=(0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
)
