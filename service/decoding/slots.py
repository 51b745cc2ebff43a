"""How many large images the gateway decodes at once.

One 4096x4096 RGBA PNG takes about half a gigabyte while it is decoded (the pixels, their RGB
copy, the float32 array); eight at once took a server from 0.7 to 4.3 GB. Small images (most
requests: the models take 28x28 to 224x224) decode freely; an image whose float32 form is over
``LARGE_DECODE_BYTES`` waits for one of ``max_concurrent`` slots, so the decodes' peak memory is
bounded by ``max_concurrent x max_decoded_bytes`` (and a little per small image). A request that
cannot get a slot before its deadline gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from workers.errors import QueueFullError

LARGE_DECODE_BYTES = 16 * 1024 * 1024  # a 2048x2048 grayscale or ~1180x1180 RGB image, as float32


class DecodeSlots:
    """``async with slots.slot(decoded_bytes, timeout_s):`` around the decode of one image."""

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self.in_use = 0  # large decodes running now (for tests and metrics)

    @contextlib.asynccontextmanager
    async def slot(self, decoded_bytes: int, timeout_s: float) -> AsyncIterator[None]:
        if decoded_bytes <= LARGE_DECODE_BYTES:
            yield
            return
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=timeout_s)
        except TimeoutError:
            raise QueueFullError(
                f"{self.max_concurrent} large images are being decoded "
                "(SPIKESERVE_MAX_CONCURRENT_LARGE_DECODES); retry shortly or send a smaller image",
                retry_after_s=1.0,
            ) from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._semaphore.release()
