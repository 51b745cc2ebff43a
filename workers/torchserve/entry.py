"""The handler file packed into a ``.mar``: TorchServe imports it by path and calls ``handle``.

Everything it does lives in the installed ``spikeserve`` package (``workers.torchserve.handler``);
this file only hands TorchServe's calls over, so a .mar never carries a copy of our code.
"""

from __future__ import annotations

from typing import Any

from workers.torchserve.handler import SpikeserveHandler

_service = SpikeserveHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """One TorchServe batch -> one answer per request (TorchServe calls it with None at load)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
