"""Who may open a stream: at most N sessions per server and M per API key (or client address).

Past a limit the socket closes with 4000 + the status a request would get: 4503 when the server
is full (retry later, elsewhere), 4429 when this key holds its share already.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from typing import TYPE_CHECKING

from service.streams import metrics

if TYPE_CHECKING:
    from service.streams.session import StreamSession


class StreamSessions:
    """The open sessions of one gateway, counted per key; ``shutdown`` ends them all."""

    def __init__(self, max_sessions: int, max_per_key: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_key = max_per_key
        self._sessions: dict[StreamSession, str] = {}
        self._per_key: Counter[str] = Counter()
        self._per_model: Counter[str] = Counter()

    @staticmethod
    def key_of(api_key: str | None, client_host: str | None) -> str:
        """A bounded identity: a digest of the API key, else the client's address."""
        if api_key:
            return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        return f"addr:{client_host or '?'}"

    def refusal(self, key: str) -> tuple[int, str, str] | None:
        """(close code, error code, message) when ``key`` may not open another session now."""
        if len(self._sessions) >= self.max_sessions:
            metrics.REFUSED.labels("server_full").inc()
            return 4503, "unavailable", f"this server holds its maximum of {self.max_sessions} streams"
        if self._per_key[key] >= self.max_per_key:
            metrics.REFUSED.labels("per_key").inc()
            return 4429, "too_many_streams", f"this key holds its maximum of {self.max_per_key} streams"
        return None

    def add(self, session: StreamSession, key: str) -> None:
        self._sessions[session] = key
        self._per_key[key] += 1
        self._count_model(session.manifest.name, +1)

    def remove(self, session: StreamSession) -> None:
        key = self._sessions.pop(session, None)
        if key is not None:
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]
            self._count_model(session.manifest.name, -1)

    def _count_model(self, model: str, change: int) -> None:
        # a model's series stays at 0 once its last session ends, so a dashboard shows it drop
        self._per_model[model] += change
        metrics.ACTIVE.labels(model).set(self._per_model[model])

    def __len__(self) -> int:
        return len(self._sessions)

    async def shutdown(self) -> None:
        """Give every open session its final message and close it (1001)."""
        sessions = list(self._sessions)
        with contextlib.suppress(Exception):
            await asyncio.gather(*(session.shutdown() for session in sessions), return_exceptions=True)
