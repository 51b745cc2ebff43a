"""What gateways and workers agree on in Redis: key names, the consumer group, and two Lua scripts.

Layout under one prefix (``settings.redis_prefix``; tests use their own):

- ``{prefix}:requests:{model}``: a stream per model. An entry has fields ``req`` (an
  ``InferenceRequest`` as msgpack) and ``reply`` (the key of the asking gateway's reply stream).
  Workers delete an entry once answered, so the stream's length is the backlog: entries not yet
  read plus entries read but not yet answered.
- ``{prefix}:replies:{gateway_id}``: one reply stream per gateway; entries have field ``res``
  (an ``InferenceResult`` as msgpack). It expires when its gateway stops refreshing it.
- ``{prefix}:windows:{worker_id}``: a stream per worker of live-stream messages for that worker
  alone (a session's state lives on one worker): fields ``op`` (open | window | close), ``msg``
  (a ``StreamOpen`` or ``StreamWindow`` as msgpack) and ``reply``. The worker deletes what it read;
  the key expires when no gateway has written to it for a while (its worker died).
  Answers go to the reply stream of the asking gateway with field ``win`` (a ``StreamAnswer``).
- ``{prefix}:worker:{worker_id}``: a worker's last heartbeat (JSON), expiring after a few beats;
  ``{prefix}:workers``: a sorted set of worker ids scored by the time of their last beat.
- ``{prefix}:registry``: the pub/sub channel that says "the registry changed" (alias moves,
  new versions); workers reload what they serve.

Both scripts make a check and a write one atomic step, so two gateways cannot both squeeze past
the backlog limit, and a reply is written at most once per entry even when two workers finish it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

GROUP = "spikeserve-workers"
REPLY_TTL_MS = 120_000  # a reply stream whose gateway stopped refreshing it disappears after this

# KEYS[1] request stream; ARGV: max_backlog, maxlen cap, request bytes, reply stream key.
# Returns the new entry id, or false when the backlog is at the limit (the caller answers 503).
# MAXLEN is only a safety cap above the backlog limit: back-pressure refuses new work instead of
# letting the trim silently drop requests that are already queued.
ENQUEUE_LUA = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'req', ARGV[3], 'reply', ARGV[4])
"""

# KEYS[1] request stream, KEYS[2] reply stream; ARGV: group, entry id, result bytes, reply maxlen,
# reply ttl ms. Writes the reply, then acknowledges and deletes the entry, all only if the entry is
# still pending: a second worker finishing the same (claimed) entry writes nothing. Returns 1 when
# this call wrote the reply, 0 when another worker had already answered.
REPLY_LUA = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'res', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StreamKeys:
    """Key names under one prefix."""

    prefix: str = "spikeserve"

    def requests(self, model: str) -> str:
        return f"{self.prefix}:requests:{model}"

    def model_of(self, stream: str | bytes) -> str:
        """The model name of a request stream key."""
        key = stream.decode() if isinstance(stream, bytes) else stream
        return key.removeprefix(f"{self.prefix}:requests:")

    def replies(self, gateway_id: str) -> str:
        return f"{self.prefix}:replies:{gateway_id}"

    def windows(self, worker_id: str) -> str:
        return f"{self.prefix}:windows:{worker_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def registry_channel(self) -> str:
        return f"{self.prefix}:registry"


def connect(url: str, *, socket_timeout: float | None = 5.0) -> aioredis.Redis:
    """An asyncio client that fails fast when Redis is down.

    One retry (without back-off) replaces a pooled connection that died with a restarted server;
    redis-py's default of ten retries with back-off would turn "Redis is down" into seconds of
    waiting before the 503.
    """
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )


async def ensure_group(client: aioredis.Redis, stream: str) -> None:
    """Create the consumer group of ``stream`` (and the stream) unless it exists.

    The group starts at id 0 so that requests queued before any worker existed are served too.
    """
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def field(fields: dict[Any, Any], name: str) -> bytes | None:
    """A stream entry field, whichever way the client decoded the keys."""
    value = fields.get(name.encode())
    if value is None:
        value = fields.get(name)
    if isinstance(value, str):
        return value.encode()
    return value
