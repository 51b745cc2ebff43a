"""What the container tests share: the repository's root, the figures printed at the end, the stack."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from containers.compose_stack import Service, build_command, podman

REPO_ROOT = Path(__file__).resolve().parents[2]
# build seconds and image sizes, printed by the conftest's terminal summary
REPORT: dict[str, Any] = {"builds_s": {}, "sizes_mb": {}}
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/spikeserve-base:bookworm")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # what this machine's pip trusts (PIP_CERT)


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


def local_torch_wheels() -> str | None:
    """A folder on this disk holding torch's CPU wheel for Python 3.11, from pip's own configuration."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    done = subprocess.run(["pip", "config", "list"], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            folders += value.strip("'\"").split()
    for folder in folders:
        folder = folder.removeprefix("file://")
        if glob.glob(os.path.join(folder, "torch-*+cpu-cp311-*.whl")):
            return folder
    return None


def build_here(svc: Service, *, build_args: dict[str, str] | None = None, tag: str | None = None) -> str:
    """Build ``svc``'s image on this machine: the local base, the host's CA bundle, torch from this disk.

    A Dockerfile that declares ``ARG WHEELS`` gets the folder holding torch's CPU wheel mounted at
    /wheels (pip prefers it to a download). Records the build's seconds and the image's size.
    """
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `make test-containers` (it installs it)")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"no base image {BASE_IMAGE}: run tests/containers/setup_podman.sh")
    assert svc.dockerfile is not None
    args = {"BASE_IMAGE": BASE_IMAGE, **(build_args or {})}
    volumes = [f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    wheels = local_torch_wheels()
    if wheels and "ARG WHEELS" in svc.dockerfile.read_text():
        args["WHEELS"] = "/wheels"
        volumes.append(f"{wheels}:/wheels:ro")
    image = tag or svc.image
    started = time.monotonic()
    done = podman(
        *build_command(svc, build_args=args, volumes=volumes, tag=image), timeout_s=1800, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"building {image} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    REPORT["builds_s"][image] = time.monotonic() - started
    REPORT["sizes_mb"][image] = int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout) / 1e6
    return image
