"""service/worker_command.py: the ``spikeserve worker`` command's checks before it serves anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_zoo import IMAGE_MODEL, build_tiny_registry, register_danet

from registry import Registry
from service.cli import build_parser, main
from service.worker_command import _Served, check_models


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_registry(Path(tmp_path_factory.mktemp("tiny-registry")))


def test_worker_command_is_listed_with_its_flags():
    args = build_parser().parse_args(
        [
            "worker",
            "--redis",
            "redis://h:6379/0",
            "--models",
            "a",
            "b",
            "--device",
            "cuda",
            "--metrics-port",
            "9100",
        ]
    )
    assert args.command == "worker"
    assert args.redis_url == "redis://h:6379/0"
    assert args.default_models == ["a", "b"]
    assert (args.device, args.metrics_port) == ("cuda", 9100)


def test_metrics_port_comes_from_the_environment_and_the_flag_wins(monkeypatch):
    """Images take settings from the environment only: their health check reads the same variable."""
    from service.commands import settings_from_args
    from service.worker_command import _worker_flags

    monkeypatch.setenv("SPIKESERVE_METRICS_PORT", "9101")
    args = build_parser().parse_args(["worker"])
    assert settings_from_args(args, _worker_flags()).metrics_port == 9101
    args = build_parser().parse_args(["worker", "--metrics-port", "9102"])
    assert settings_from_args(args, _worker_flags()).metrics_port == 9102


def test_serve_command_takes_redis(monkeypatch):
    args = build_parser().parse_args(["serve", "--redis", "redis://h:6379/0"])
    assert args.redis_url == "redis://h:6379/0"


def test_check_models_names_what_is_missing_and_what_exists(tiny_registry):
    assert check_models(tiny_registry, [IMAGE_MODEL, f"{IMAGE_MODEL}@production"]) is None
    problem = check_models(tiny_registry, ["nope", f"{IMAGE_MODEL}:99"])
    assert problem is not None
    assert "cannot serve 'nope'" in problem and "cannot serve 'tiny-danet:99'" in problem
    assert IMAGE_MODEL in problem.split("cannot serve 'nope'")[1]  # the registry's models are named


def test_unknown_model_exits_1_with_a_message_before_touching_redis(tiny_registry, capsys):
    # port 1: nothing listens there; the check must fail before any connection is tried
    code = main(
        [
            "worker",
            "--redis",
            "redis://127.0.0.1:1/0",
            "--registry",
            str(tiny_registry.root),
            "--models",
            "nope",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("spikeserve worker: cannot serve 'nope'")


def test_missing_redis_or_registry_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPIKESERVE_REDIS_URL", raising=False)
    assert main(["worker", "--registry", str(tmp_path)]) == 1
    assert "--redis URL or SPIKESERVE_REDIS_URL" in capsys.readouterr().err
    assert main(["worker", "--redis", "redis://127.0.0.1:1/0", "--registry", str(tmp_path / "absent")]) == 1
    assert "no registry folder" in capsys.readouterr().err


@pytest.fixture
def own_registry(tmp_path) -> Registry:
    registry = Registry(tmp_path / "registry")
    register_danet(registry, aliases=("production",))
    register_danet(registry, seed=1)
    register_danet(registry, seed=2, aliases=("staging",))
    return registry


def test_served_models_fixed_or_all_and_the_versions_to_preload(own_registry):
    fixed = _Served(own_registry, [f"{IMAGE_MODEL}@production"])
    assert fixed() == [IMAGE_MODEL]
    # what a bare name means (the production alias) and every alias target; not version 2, which only
    # an explicit tiny-danet:2 reaches (loaded on its first request)
    assert fixed.wanted_versions() == {(IMAGE_MODEL, 1), (IMAGE_MODEL, 3)}
    everything = _Served(own_registry, [])
    assert everything() == [IMAGE_MODEL]
    register_danet(own_registry, name="another")
    assert everything() == ["another", IMAGE_MODEL]  # registered later: served too
    assert fixed() == [IMAGE_MODEL]


def test_without_torch_the_worker_says_which_image_to_use(tiny_registry, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    code = main(["worker", "--redis", "redis://127.0.0.1:1/0", "--registry", str(tiny_registry.root)])
    assert code == 1
    assert "needs torch" in capsys.readouterr().err
