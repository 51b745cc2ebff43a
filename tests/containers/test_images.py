"""The images as built: a user that is not root, a health check, no build tools, and the right torch.

Each check runs the built image (``podman run --entrypoint ...``), not the Dockerfile's text.
"""

from __future__ import annotations

import json

import pytest
from containers.compose_stack import podman

# Upper bounds with room over what was measured (docs/DEPLOY.md): a regression that drags in the
# CUDA build of torch (gigabytes) or a compiler into the CPU images fails here.
MAX_SIZE_MB = {"gateway": 400, "worker-cpu": 1100}
BUILD_TOOLS = ("gcc", "cc", "g++", "c++", "make", "pip", "pip3")


def _inspect(image: str) -> dict:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    return dict(inspected)


def _sh(image: str, script: str) -> str:
    return podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script).stdout


@pytest.mark.parametrize("name", ["gateway", "worker-cpu"])
def test_runs_as_an_unprivileged_user_with_a_health_check(images: dict[str, str], name: str) -> None:
    inspected = _inspect(images[name])
    config = inspected["Config"]
    assert config["User"] == "spikeserve"
    assert _sh(images[name], "id -u").strip() == "10001"
    probe = " ".join(inspected["Healthcheck"]["Test"])  # kept: the images are built in Docker's format
    assert ("/readyz" if name == "gateway" else "/metrics") in probe
    assert "/registry" in config["Volumes"]
    assert config["Entrypoint"] == ["spikeserve"]


@pytest.mark.parametrize("name", ["gateway", "worker-cpu"])
def test_no_build_tools_in_the_final_stage(images: dict[str, str], name: str) -> None:
    found = _sh(images[name], " ".join(f"command -v {tool};" for tool in BUILD_TOOLS) + " true")
    assert found.strip() == "", f"build tools left in {images[name]}: {found.split()}"


def test_the_gateway_has_no_torch_and_the_cpu_worker_no_cuda(images: dict[str, str]) -> None:
    gateway = _sh(images["gateway"], "python3 -c 'import importlib.util as u; print(u.find_spec(\"torch\"))'")
    assert gateway.strip() == "None"
    cuda = _sh(images["worker-cpu"], "python3 -c 'import torch; print(torch.version.cuda)'")
    assert cuda.strip() == "None"
    nvidia = _sh(images["worker-cpu"], "ls /opt/venv/lib/python3.11/site-packages | grep -ci nvidia || true")
    assert nvidia.strip() == "0"


@pytest.mark.parametrize("name", ["gateway", "worker-cpu"])
def test_images_stay_small(images: dict[str, str], name: str) -> None:
    size_mb = int(podman("image", "inspect", images[name], "--format", "{{.Size}}").stdout) / 1e6
    assert size_mb < MAX_SIZE_MB[name], f"{images[name]} is {size_mb:.0f} MB"
