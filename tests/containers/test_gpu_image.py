"""docker/worker.Dockerfile built here, on a Debian base instead of its CUDA one, with CPU torch.

The CUDA runtime base cannot be pulled here (no image registry) and torch's CUDA build is not on
this disk, so this builds every step of the file on the local bookworm base (which has the same
python3.11, venv, gcc and headers packages that the Ubuntu 22.04 CUDA base installs) with the CPU
wheel: the stages, the apt and pip steps, triton from PyPI, the user, the health check and the
entry point. It takes about 9 minutes here and 2.6 GB, so it runs only when asked,
by ``make test-gpu-image-here`` (which sets SPIKESERVE_BUILD_GPU_IMAGE=1).

What it cannot check, a Docker host with an NVIDIA GPU must: docs/DEPLOY.md.
"""

from __future__ import annotations

import json
import os

import pytest
from containers.compose_stack import Service, podman
from containers.stack_support import build_here

pytestmark = pytest.mark.skipif(
    os.environ.get("SPIKESERVE_BUILD_GPU_IMAGE") != "1",
    reason="9 minutes and 2.6 GB: set SPIKESERVE_BUILD_GPU_IMAGE=1 to build the GPU worker's file here",
)
CHECK_TAG = "localhost/spikeserve-worker:debian-cpu-check"  # not the image the compose file means


def test_the_gpu_worker_file_builds_and_runs_on_a_debian_base(services: dict[str, Service]) -> None:
    image = build_here(services["worker"], tag=CHECK_TAG)
    try:
        (inspected,) = json.loads(podman("image", "inspect", image).stdout)
        assert inspected["Config"]["User"] == "spikeserve"
        assert "/metrics" in " ".join(inspected["Healthcheck"]["Test"])
        script = (
            "id -u; command -v gcc; command -v pip || echo no-pip;"
            " python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)';"
            " spikeserve worker --help >/dev/null && echo cli-ok; echo $SPIKESERVE_DEVICE"
        )
        done = podman("run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c", script)
        uid, gcc, pip, versions, cli, device = done.stdout.split("\n")[:6]
        assert uid == "10001"
        assert gcc.endswith("/gcc")  # triton builds its launchers with it at run time
        assert pip == "no-pip"
        assert versions.startswith("2.13.0")
        assert cli == "cli-ok"
        assert device == "cuda"
    finally:
        podman("rmi", "--force", image, check=False)
