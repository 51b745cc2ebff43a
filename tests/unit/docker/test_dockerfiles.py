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


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM belong to none)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _base_default(path: Path) -> str:
    """The default of ``ARG BASE_IMAGE``, the image users build on (tests pass a local one)."""
    (default,) = [
        args.split("=", 1)[1]
        for k, args in _instructions(path)
        if k == "ARG" and args.startswith("BASE_IMAGE=")
    ]
    return default


def test_every_image_exists():
    assert [p.name for p in DOCKERFILES] == [
        "gateway.Dockerfile",
        "worker-cpu.Dockerfile",
        "worker.Dockerfile",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_not_ignored(dockerfile: Path):
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    copies = [shlex.split(args) for keyword, args in _instructions(dockerfile) if keyword == "COPY"]
    from_context = [parts for parts in copies if not parts[0].startswith("--from=")]
    assert from_context
    for parts in from_context:
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"
    # every package that pyproject.toml installs is copied in
    copied = {source for parts in from_context for source in parts[:-1]}
    for package in ("models", "registry", "workers", "service", "training", "eventio"):
        assert package in copied, f"{dockerfile.name} does not copy {package}/"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_two_stages_on_one_base_and_the_final_one_installs_nothing_from_pip(dockerfile: Path):
    build, final = _stages(dockerfile)
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    final_runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "pip" not in final_runs
    assert "pip uninstall --yes pip" in " ".join(args for keyword, args in build if keyword == "RUN")


def test_gateway_image_is_slim_without_cuda_or_torch():
    assert _base_default(REPO / "docker/gateway.Dockerfile").startswith("python:3.11-slim")
    instructions = _instructions(REPO / "docker/gateway.Dockerfile")
    install = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "--no-deps ." in install  # the project without its torch dependency
    assert "startswith('torch')" in install  # torch filtered out of the requirements
    assert "nvidia" not in install and "cuda" not in install.lower()


def test_cpu_worker_pins_the_cpu_build_of_torch():
    path = REPO / "docker/worker-cpu.Dockerfile"
    assert _base_default(path).startswith("python:3.11-slim")
    install = " ".join(args for keyword, args in _instructions(path) if keyword == "RUN")
    assert '"torch==${TORCH_VERSION}+cpu"' in install
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in path.read_text()


def test_gpu_worker_is_cuda_with_torch_and_triton():
    path = REPO / "docker/worker.Dockerfile"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", _base_default(path))
    install = " ".join(args for keyword, args in _instructions(path) if keyword == "RUN")
    assert '"torch==${TORCH_VERSION}"' in install
    assert '".[gpu]"' in install
    # triton compiles its launchers with gcc at run time: the one build tool in a final stage
    (_build, final) = _stages(path)
    assert "gcc" in " ".join(args for keyword, args in final if keyword == "RUN")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_settings_come_from_the_environment_and_the_process_runs_as_a_user(dockerfile: Path):
    instructions = dict(_stages(dockerfile)[-1])
    assert instructions["ENTRYPOINT"] == '["spikeserve"]'
    assert instructions["CMD"] in ('["serve"]', '["worker"]')  # no flags: SPIKESERVE_* variables
    assert instructions["USER"] == "spikeserve"
    assert instructions["VOLUME"] == "/registry"
    probe = instructions["HEALTHCHECK"]
    assert ("/readyz" if "gateway" in dockerfile.name else "/metrics") in probe
    assert "os.environ.get('SPIKESERVE_" in probe  # follows the port the settings give
