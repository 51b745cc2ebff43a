"""The worker side of live streams in distributed mode: this worker's own window stream.

A session's membranes live on one worker, so its windows cannot go through a model's shared
request stream (any worker may take an entry there). Each gateway pins a session to one worker
and writes its messages to that worker's ``{prefix}:windows:{worker_id}``; the ``StreamInbox``
reads it with a blocking ``XREAD``, answers opens (the network's stream mode and context), runs
windows through the ``StreamRunner`` (what arrived together runs together: sessions that share a
network go as one batch), forgets closed sessions, and writes each answer to the asking gateway's
reply stream. Entries are deleted once read: a window is run at most once here, and a window
whose answer was lost with this worker is sent again, by its gateway, to another worker.

A worker restarted under the same id reads what waited in its stream: those sessions start from
rest on it and their answers say ``state_reset``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.error_codec import encode_error
from workers.redis_replies import REPLY_MAXLEN
from workers.redis_streams import REPLY_TTL_MS, StreamKeys, connect, field
from workers.stream_protocol import StreamAnswer, StreamOpen, StreamWindow

if TYPE_CHECKING:
    from workers.stream_runner import StreamRunner

log = logging.getLogger(__name__)

READ_COUNT = 64  # entries taken per read: windows of up to this many sessions share a forward


class StreamInbox:
    """Serves ``{prefix}:windows:{worker_id}`` with ``runner`` until ``stop()``."""

    def __init__(
        self,
        redis_url: str,
        runner: StreamRunner,
        worker_id: str,
        *,
        prefix: str = "spikeserve",
        block_ms: int = 1_000,
    ) -> None:
        self.redis_url = redis_url
        self.runner = runner
        self.worker_id = worker_id
        self.key = StreamKeys(prefix).windows(worker_id)
        self.block_ms = block_ms
        self.windows_run = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Read, answer, delete; survive Redis going away (the loop retries with back-off)."""
        client = connect(self.redis_url)
        reader = connect(self.redis_url, socket_timeout=self.block_ms / 1000 + 5.0)
        last_id: Any = b"0-0"  # what waited for this id before it started is served too
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    response: Any = await reader.xread(
                        {self.key: last_id}, count=READ_COUNT, block=self.block_ms
                    )
                    entries = [entry for _stream, batch in response or () for entry in batch]
                    if entries:
                        last_id = entries[-1][0]
                        await client.xdel(self.key, *[entry_id for entry_id, _ in entries])
                        await self._serve(client, [fields for _, fields in entries])
                    backoff = 0.1
                except (RedisError, OSError) as exc:
                    log.warning("cannot read stream windows (%s); retrying in %.1f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            await reader.aclose()
            await client.aclose()

    async def _serve(self, client: aioredis.Redis, entries: list[dict[Any, Any]]) -> None:
        """Answer entries in their order; consecutive windows run as one ``run_windows`` call."""
        answers: list[tuple[bytes, StreamAnswer]] = []
        windows: list[tuple[bytes, StreamWindow]] = []
        for fields in entries:
            op, payload, reply_to = field(fields, "op"), field(fields, "msg"), field(fields, "reply")
            if op is None or payload is None or reply_to is None:
                log.warning("dropping a stream message without op, msg or reply")
                continue
            try:
                kind = StreamWindow if op == b"window" else StreamOpen
                message = kind.from_bytes(payload)
            except Exception:  # nobody can be answered for a message that does not decode
                log.exception("dropping an undecodable stream message")
                continue
            if isinstance(message, StreamWindow):
                windows.append((reply_to, message))
                continue
            answers += await self._run(windows)  # a session's close comes after its windows
            windows = []
            if message.close:
                self.runner.close(message.session_id)
            else:
                answers.append((reply_to, await self._open(message)))
        answers += await self._run(windows)
        if answers:
            async with client.pipeline(transaction=False) as pipe:
                for reply_to, answer in answers:
                    pipe.xadd(reply_to, {"win": answer.to_bytes()}, maxlen=REPLY_MAXLEN, approximate=True)
                    pipe.pexpire(reply_to, REPLY_TTL_MS)
                await pipe.execute()

    async def _open(self, message: StreamOpen) -> StreamAnswer:
        try:
            mode, context_steps = await asyncio.to_thread(
                self.runner.describe, message.model_name, message.model_version
            )
        except Exception as exc:  # a model that cannot load here: the session is refused with its code
            log.warning("cannot open a stream on %s:%d: %s", message.model_name, message.model_version, exc)
            return StreamAnswer(
                message.session_id, -1, "stateful", worker_id=self.worker_id, error=encode_error(exc)
            )
        return StreamAnswer(
            message.session_id, -1, mode, worker_id=self.worker_id, context_steps=context_steps
        )

    async def _run(self, windows: list[tuple[bytes, StreamWindow]]) -> list[tuple[bytes, StreamAnswer]]:
        if not windows:
            return []
        try:
            answers = await asyncio.to_thread(self.runner.run_windows, [window for _, window in windows])
        except Exception as exc:
            log.exception("stream windows failed")
            error = encode_error(exc)
            answers = [
                StreamAnswer(
                    w.session_id, w.index, "stateful", seq=w.seq, worker_id=self.worker_id, error=error
                )
                for _, w in windows
            ]
        self.windows_run += len(answers)
        return [(reply_to, answer) for (reply_to, _), answer in zip(windows, answers, strict=True)]
