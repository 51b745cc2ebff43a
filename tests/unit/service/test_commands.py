"""service/commands.py: `spikeserve serve` flags, their precedence over the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.cli import build_parser
from service.commands import SERVE_FLAGS, Flag, add_serve_flags, run_serve, settings_from_args


def test_serve_is_a_subcommand_with_its_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "9123",
            "--registry",
            "somewhere",
            "--models",
            "a",
            "b:2",
            "--max-batch-size",
            "16",
            "--inference-processes",
            "2",
        ]
    )
    settings = settings_from_args(args)
    assert settings.port == 9123
    assert settings.registry == Path("somewhere")
    assert settings.default_models == ["a", "b:2"]
    assert settings.max_batch_size == 16
    assert settings.inference_processes == 2
    assert args.handler is run_serve


def test_flags_override_the_environment_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKESERVE_PORT", "9000")
    monkeypatch.setenv("SPIKESERVE_MAX_DELAY_MS", "7.5")
    settings = settings_from_args(build_parser().parse_args(["serve", "--port", "9100"]))
    assert settings.port == 9100
    assert settings.max_delay_ms == 7.5
    assert settings.host == "127.0.0.1"


def test_a_new_flag_is_one_row() -> None:
    parser = argparse.ArgumentParser()
    flags = [*SERVE_FLAGS, Flag("--redis-prefix", "redis_prefix", str, "key prefix")]
    add_serve_flags(parser, flags)
    settings = settings_from_args(parser.parse_args(["--redis-prefix", "blue"]), flags)
    assert settings.redis_prefix == "blue"


def test_a_missing_registry_folder_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--registry", str(tmp_path / "absent")])
    assert run_serve(args) == 1
    assert "no registry folder" in capsys.readouterr().err


def test_invalid_settings_fail_in_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPIKESERVE_API_KEYS", "key-1,key-2")  # not JSON
    assert run_serve(build_parser().parse_args(["serve", "--registry", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert "invalid settings" in err and "api_keys" in err and "JSON" in err
