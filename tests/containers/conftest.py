"""Fixtures of the container tests: images built with podman, and the compose stack started from the file.

``make test-containers`` runs tests/containers/setup_podman.sh first (podman, runc, a local Debian
base image), then these tests. The images are built from docker-compose.yml's build sections with
two additions that only this machine needs: the local base image (no image registry is reachable
here) and, for the CPU worker, the torch wheel that lies on this disk (mounted into the build, not
downloaded). What the builds take and how big the images are is printed at the end of the run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from containers.compose_stack import Service, load_compose, podman, run_command, service
from containers.stack_support import REPO_ROOT, REPORT, Stack, build_here
from redis_support import ADMIN_TOKEN, REDIS_URL, free_port, wait_until


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT["builds_s"] and not REPORT["sizes_mb"]:
        return
    terminalreporter.section("container images")
    for name, seconds in REPORT["builds_s"].items():
        terminalreporter.write_line(f"build {name}: {seconds:.0f} s")
    for name, megabytes in REPORT["sizes_mb"].items():
        terminalreporter.write_line(f"size  {name}: {megabytes:.0f} MB")
    for key in ("stack_ready_s", "load_s"):
        if key in REPORT:
            terminalreporter.write_line(f"{key}: {REPORT[key]:.1f}")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose(REPO_ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def admin_token() -> str:
    return ADMIN_TOKEN


@pytest.fixture(scope="session")
def services(compose: dict[str, Any], admin_token: str) -> dict[str, Service]:
    """The compose file's services, read as ``docker compose`` would with this shell environment."""
    env = {**os.environ, "SPIKESERVE_ADMIN_TOKEN": admin_token}
    return {name: service(compose, name, REPO_ROOT, env) for name in compose["services"]}


@pytest.fixture(scope="session")
def images(services: dict[str, Service]) -> dict[str, str]:
    """Service name -> image built from its Dockerfile with podman (fails, never skips, without podman)."""
    return {
        "gateway": build_here(services["gateway"]),
        # torch's few pure-Python dependencies from PyPI: download.pytorch.org is not reachable here
        "worker-cpu": build_here(
            services["worker-cpu"], build_args={"TORCH_INDEX_URL": "https://pypi.org/simple"}
        ),
    }


@pytest.fixture(scope="session")
def stack(services: dict[str, Service], images: dict[str, str]) -> Iterator[Stack]:
    """The gateway and two CPU workers, started from the compose file's settings, on the host's network.

    Their own: a Redis key prefix (the host's Redis is shared) and free ports. Both workers serve the
    bundled zoo/, mounted read-only as the file says.
    """
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the container tests need Redis on 127.0.0.1:6379 (the host's, reached by the stack)")
    run_id = uuid.uuid4().hex[:6]
    prefix = f"test-containers-{run_id}"
    common = {"SPIKESERVE_REDIS_PREFIX": prefix, "SPIKESERVE_TORCH_THREADS": "1"}
    gateway_port = free_port()
    stack = Stack(prefix, f"spikeserve-gateway-{run_id}", f"http://127.0.0.1:{gateway_port}", gateway_port)
    started: list[str] = []
    started_at = time.monotonic()
    try:
        overrides = {**common, "SPIKESERVE_PORT": str(gateway_port)}
        podman(*run_command(services["gateway"], stack.gateway, overrides=overrides))
        started.append(stack.gateway)
        for index in (1, 2):
            container, port = f"spikeserve-worker-cpu-{index}-{run_id}", free_port()
            overrides = {**common, "SPIKESERVE_METRICS_PORT": str(port)}
            podman(*run_command(services["worker-cpu"], container, overrides=overrides))
            started.append(container)
            stack.workers[container] = port

        def ready() -> bool:
            for container in started:
                state = podman("inspect", container, "--format", "{{.State.Status}}").stdout.strip()
                if state != "running":
                    raise RuntimeError(f"{container} is {state}:\n{stack.logs(container)[-3000:]}")
            answer = httpx.get(
                f"{stack.gateway_url}/v1/workers",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=2,
            )
            hosts = {worker["host"] for worker in answer.json()["workers"]}
            return (
                httpx.get(f"{stack.gateway_url}/readyz", timeout=2).status_code == 200
                and set(stack.workers) <= hosts
            )

        wait_until(ready, 300, "the gateway ready and both worker containers heartbeating", 0.5)
        REPORT["stack_ready_s"] = time.monotonic() - started_at
        yield stack
    finally:
        for container in started:
            podman("rm", "--force", "--time", "5", container, check=False)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
