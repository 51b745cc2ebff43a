"""What the container tests share: the repository's root, the figures printed at the end, the stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.compose_stack import podman

REPO_ROOT = Path(__file__).resolve().parents[2]
# build seconds and image sizes, printed by the conftest's terminal summary
REPORT: dict[str, Any] = {"builds_s": {}, "sizes_mb": {}}


@dataclass
class Stack:
    """The running containers: the gateway's URL, each container's name and its metrics port."""

    prefix: str
    gateway: str
    gateway_url: str
    gateway_port: int
    workers: dict[str, int] = field(default_factory=dict)  # container -> metrics port

    def logs(self, container: str) -> str:
        done = podman("logs", container, check=False)
        return done.stdout + done.stderr
