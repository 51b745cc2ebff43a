"""service/app.py: torch-free import, background start, readiness, the routes it serves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from service_support import StaticPool, make_client, wait_ready

from service.settings import Settings


def test_importing_the_gateway_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import service.app, service.commands, service.routes\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class SlowPool(StaticPool):
    """Ready only once ``release`` is set: /readyz must say 503 until then."""

    def __init__(self) -> None:
        super().__init__(ready=False)
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        self.ready = True


class BrokenPool(StaticPool):
    async def start(self) -> None:
        raise RuntimeError("weights for danet-mnist:3 are corrupt")

    def is_ready(self) -> bool:
        return False


def test_healthz_answers_at_once_and_readyz_waits_for_the_pool(tiny_root: Path) -> None:
    pool = SlowPool()
    with make_client(Settings(registry=tiny_root), pool=pool) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "Retry-After" in not_ready.headers
        assert client.get("/v2/health/ready").status_code == 400
        client.portal.call(pool.release.set)  # type: ignore[union-attr]
        wait_ready(client, timeout_s=5)
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_a_pool_that_fails_to_start_says_why_on_readyz(tiny_root: Path) -> None:
    with make_client(Settings(registry=tiny_root), pool=BrokenPool()) as client:
        for _ in range(100):
            answer = client.get("/readyz").json()
            if "corrupt" in answer["error"]["message"]:
                break
        assert "weights for danet-mnist:3 are corrupt" in answer["error"]["message"]
        assert client.get("/healthz").status_code == 200


def test_serves_the_documented_routes(static_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = static_app
    paths = set(client.get("/openapi.json").json()["paths"])
    expected = {
        "/v1/models/{ref}/classify",
        "/v1/models/{ref}/events",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/aliases/{alias}",
        "/v1/models/{name}/versions/{version}",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert expected <= paths, expected - paths
