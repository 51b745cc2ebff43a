"""docker/*.Dockerfile: every file they copy exists, and each image is the kind it claims to be."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_not_ignored(dockerfile: Path):
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    copies = [shlex.split(args) for keyword, args in _instructions(dockerfile) if keyword == "COPY"]
    assert copies
    for parts in copies:
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"
    # every package that pyproject.toml installs is copied in
    copied = {source for parts in copies for source in parts[:-1]}
    for package in ("models", "registry", "workers", "service", "training", "eventio"):
        assert package in copied, f"{dockerfile.name} does not copy {package}/"


def test_gateway_image_is_slim_without_cuda_or_torch():
    instructions = _instructions(REPO / "docker/gateway.Dockerfile")
    (base,) = [args for keyword, args in instructions if keyword == "FROM"]
    assert base.startswith("python:") and "slim" in base
    install = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "--no-deps ." in install  # the project without its torch dependency
    assert "startswith('torch')" in install  # torch filtered out of the requirements
    assert "nvidia" not in install and "cuda" not in install.lower()


def test_worker_image_is_cuda_with_torch():
    instructions = _instructions(REPO / "docker/worker.Dockerfile")
    (base,) = [args for keyword, args in instructions if keyword == "FROM"]
    assert base.startswith("nvidia/cuda:")
    install = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert 'pip install "torch==' in install
    assert '".[gpu]"' in install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_cli_and_runs_as_a_user(dockerfile: Path):
    instructions = dict(_instructions(dockerfile))
    assert instructions["ENTRYPOINT"] == '["spikeserve"]'
    assert instructions["USER"] == "spikeserve"
