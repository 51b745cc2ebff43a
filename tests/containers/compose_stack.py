"""docker-compose.yml's services run with podman, one by one, from the file's own settings.

No Docker engine runs on the test machines, and podman-compose cannot give each service the host's
network and a port of its own, so this reads each service of the compose file (image, build,
command, environment, volumes, stop grace period) and turns it into ``podman build`` and
``podman run`` arguments. The file stays the one users run with ``docker compose``; the test cannot
drift from it because it has no settings of its own except those host networking on a shared
machine forces, passed as ``overrides`` and named where they are made:

- ``--network host``, with ``--add-host redis:127.0.0.1`` so that the file's ``redis://redis:6379``
  reaches the host's Redis (the services keep to a key prefix of their own there);
- free ports instead of 8000 and 9100, which other processes on the host may hold.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PODMAN = ["podman", "--runtime", "runc"]  # crun fails on this machine's hybrid cgroups
REDIS_HOST = "127.0.0.1"  # what the compose service name "redis" means on the host's network

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``${NAME}``, ``${NAME:-default}`` (unset or empty), ``${NAME-default}``
    (unset), and ``$$`` for a literal ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name"), match.group("op"), match.group("default") or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


@dataclass(frozen=True)
class Volume:
    source: str  # an absolute host path, or a named volume
    target: str
    read_only: bool

    def podman_arg(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Service:
    """One service of the compose file, with the file's variables interpolated and paths made absolute."""

    name: str
    image: str
    build_context: Path | None
    dockerfile: Path | None
    build_args: dict[str, str]
    command: list[str]
    environment: dict[str, str]
    volumes: list[Volume]
    stop_grace_s: int | None
    extra_hosts: dict[str, str] = field(default_factory=dict)


def load_compose(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _duration_s(text: str | None) -> int | None:
    """Compose durations as whole seconds: ``30s``, ``1m30s``, ``2m``."""
    if text is None:
        return None
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(text))
    if parts is None or not any(parts.groups()):
        raise ValueError(f"cannot read the duration {text!r}")
    minutes, seconds = (int(p or 0) for p in parts.groups())
    return 60 * minutes + seconds


def service(compose: dict[str, Any], name: str, project_dir: Path, env: Mapping[str, str]) -> Service:
    """The service ``name`` of ``compose``, with ``env`` as the shell environment compose would read."""
    spec = compose["services"][name]

    def text(value: Any) -> str:
        return interpolate(str(value), env)

    environment = spec.get("environment") or {}
    if isinstance(environment, list):  # the ["NAME=value", ...] form
        environment = dict(item.split("=", 1) for item in environment)
    volumes = []
    for entry in spec.get("volumes") or []:
        source, target, *mode = text(entry).split(":")
        if source.startswith((".", "/")):
            source = str((project_dir / source).resolve())
        volumes.append(Volume(source, target, read_only=mode == ["ro"]))
    build = spec.get("build")
    context = dockerfile = None
    build_args: dict[str, str] = {}
    if build is not None:
        context = (project_dir / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        build_args = {key: text(value) for key, value in (build.get("args") or {}).items()}
    return Service(
        name=name,
        image=text(spec["image"]),
        build_context=context,
        dockerfile=dockerfile,
        build_args=build_args,
        command=[text(part) for part in spec.get("command") or []],
        environment={key: text(value) for key, value in environment.items()},
        volumes=volumes,
        stop_grace_s=_duration_s(spec.get("stop_grace_period")),
    )


def build_command(
    svc: Service, *, build_args: Mapping[str, str], volumes: list[str], tag: str | None = None
) -> list[str]:
    """The arguments of ``podman build`` for ``svc``: the file's build args, then ``build_args`` on top
    (a local base image, a wheel folder); ``volumes`` are bind mounts that exist only while the build runs;
    ``tag`` replaces the file's image name (for an image that is not the one the file means).
    """
    if svc.build_context is None or svc.dockerfile is None:
        raise ValueError(f"{svc.name} has no build section")
    args = ["build", "--format", "docker", "--network", "host", "-f", str(svc.dockerfile)]
    for key, value in {**svc.build_args, **build_args}.items():
        args += ["--build-arg", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    return [*args, "--tag", tag or svc.image, str(svc.build_context)]


def run_command(svc: Service, container: str, *, overrides: Mapping[str, str]) -> list[str]:
    """The arguments of ``podman run -d`` for ``svc`` as container ``container`` on the host's network.

    overrides: environment variables set on top of the file's (free ports, a Redis key prefix).
    The container's host name is its name, as compose gives each container a host name of its own.
    """
    args = ["run", "--detach", "--name", container, "--hostname", container, "--network", "host"]
    args += ["--add-host", f"redis:{REDIS_HOST}"]
    if svc.stop_grace_s is not None:
        args += ["--stop-timeout", str(svc.stop_grace_s)]
    for key, value in {**svc.environment, **overrides}.items():
        args += ["--env", f"{key}={value}"]
    for volume in svc.volumes:
        args += ["--volume", volume.podman_arg()]
    return [*args, svc.image, *svc.command]


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman --runtime runc ARGS``; on failure raise with what podman said."""
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout_s, env={**os.environ}
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done
