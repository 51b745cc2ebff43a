"""``GET /v1/workers``: the workers answering this gateway, behind the admin bearer token.

In distributed mode each entry is a worker's last heartbeat (id, host, device, models served and
loaded, batches run, requests in flight, last heartbeat); embedded mode lists the one in-process
worker. Hosts and process ids are operational detail, hence the admin token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.auth import require_admin
from service.state import get_state

router = APIRouter(tags=["management"], dependencies=[Depends(require_admin)])


@router.get("/v1/workers", name="list_workers")
async def list_workers(request: Request) -> dict[str, Any]:
    state = get_state(request)
    return {
        "mode": "redis" if state.settings.redis_url else "embedded",
        "workers": state.pool.describe_workers(),
    }
