"""The one ``Settings`` class: environment variables with prefix ``SPIKESERVE_``, read once, passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every tunable of a spikeserve process. CLI flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="SPIKESERVE_", extra="ignore")

    # where checkpoints live
    registry: Path = Path("zoo")
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = None  # generated and printed once at start-up when unset
    api_keys: list[str] = Field(default_factory=list)  # when set, inference needs one (X-API-Key or Bearer)
    # limits on input (checked before the expensive work)
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 16 * 1024 * 1024
    max_decoded_bytes: int = 128 * 1024 * 1024  # one image as float32 [C, H, W], read from its header
    max_concurrent_large_decodes: int = Field(default=2, ge=1)  # images over 16 MiB decoded at once
    max_images_per_request: int = Field(default=64, ge=1)  # the batch of one v2 infer request
    max_events: int = 5_000_000
    request_timeout_s: float = 30.0
    # slow and idle clients (each limit answers as docs/DEPLOY.md's table of limits says)
    # header_timeout_s: from connecting (or a kept-alive request's first byte) to the end of the headers
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)  # from the headers to the body's last byte
    keep_alive_timeout_s: int = Field(default=5, ge=1)  # an idle kept-alive connection is closed after this
    max_connections: int = Field(default=1024, ge=1)  # open connections; the next one gets 503
    # batching (per model overrides: {"danet-mnist": 64})
    max_batch_size: int = 32
    max_batch_size_per_model: dict[str, int] = Field(default_factory=dict)
    max_delay_ms: float = 5.0
    max_delay_ms_per_model: dict[str, float] = Field(default_factory=dict)
    max_queue_size: int = 1024
    # what runs the networks
    device: str = "cpu"  # cpu | cuda | cuda:N
    neuron_backend: str = "auto"
    default_models: list[str] = Field(default_factory=list)  # loaded and warmed before /readyz; empty = all
    # torch's intra-op threads (unset: torch's choice) and the batches computed at once (unset: one; on
    # a CPU several share the cores evenly unless torch_threads is set too; workers/concurrency.py)
    torch_threads: int | None = None
    concurrent_batches: int | None = Field(default=None, ge=1)
    # embedded mode: compute batches in this many child processes, one batch each, instead of in
    # threads of the gateway (0); each process holds its own copy of the models
    # (workers/inference_processes.py; docs/PERFORMANCE.md measures both)
    inference_processes: int = Field(default=0, ge=0)
    # hold freed tensor memory in the process rather than page-fault it back at every forward
    # (glibc's malloc; workers/runtime.py says why)
    keep_freed_memory: bool = True
    # distributed mode: set redis_url to put requests on Redis Streams instead of running models here
    redis_url: str | None = None
    redis_prefix: str = "spikeserve"
    redis_max_backlog: int = 10_000
    claim_idle_ms: int = 5_000
    heartbeat_interval_s: float = 2.0
    metrics_port: int | None = None  # a worker's Prometheus /metrics (the gateway serves it on its HTTP port)
    # live streams (WS /v1/models/{ref}/stream): past a limit the socket closes with 4000 + its status
    stream_max_sessions: int = 64  # per server (close 4503 past it)
    stream_max_sessions_per_key: int = 16  # per API key, or per client address without keys (4429)
    stream_max_message_events: int = 1_000_000  # events one binary message may decode to (4413)
    stream_max_pending_windows: int = 4  # windows waiting for the model; past it the newest two merge
    stream_idle_timeout_s: float = 30.0  # no message for this long: final message, close 4408
    # a window waits at most this long for other sessions' windows to share its forward (0: never)
    stream_max_delay_ms: float = Field(default=5.0, ge=0)

    def batch_size_for(self, model: str) -> int:
        return self.max_batch_size_per_model.get(model, self.max_batch_size)

    def delay_ms_for(self, model: str) -> float:
        return self.max_delay_ms_per_model.get(model, self.max_delay_ms)
