"""service/routes/workers.py: ``GET /v1/workers`` lists the pool's workers, behind the admin token."""

from __future__ import annotations

from typing import Any

from service_support import ADMIN, StaticPool, admin_headers, make_client

from service.settings import Settings


class ListingPool(StaticPool):
    """A pool that reports two workers, as ``RedisPool.describe_workers`` does from heartbeats."""

    def describe_workers(self) -> list[dict[str, Any]]:
        return [
            {"id": "w1", "device": "cuda", "models": ["tiny-danet"], "batches": 12, "last_heartbeat": 1.0},
            {"id": "w2", "device": "cpu", "models": ["tiny-danet"], "batches": 3, "last_heartbeat": 2.0},
        ]


def test_workers_need_the_admin_token(tiny_root):
    with make_client(Settings(registry=tiny_root, admin_token=ADMIN), pool=ListingPool()) as client:
        missing = client.get("/v1/workers")
        wrong = client.get("/v1/workers", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401


def test_workers_lists_what_the_pool_describes(tiny_root):
    settings = Settings(registry=tiny_root, admin_token=ADMIN, redis_url="redis://127.0.0.1:1/0")
    with make_client(settings, pool=ListingPool()) as client:
        answer = client.get("/v1/workers", headers=admin_headers())
    assert answer.status_code == 200
    body = answer.json()
    assert body["mode"] == "redis"
    assert [w["id"] for w in body["workers"]] == ["w1", "w2"]
    assert body["workers"][0] == {
        "id": "w1",
        "device": "cuda",
        "models": ["tiny-danet"],
        "batches": 12,
        "last_heartbeat": 1.0,
    }


def test_embedded_mode_says_so(tiny_root):
    with make_client(Settings(registry=tiny_root, admin_token=ADMIN), pool=StaticPool()) as client:
        body = client.get("/v1/workers", headers=admin_headers()).json()
    assert body == {"mode": "embedded", "workers": []}
