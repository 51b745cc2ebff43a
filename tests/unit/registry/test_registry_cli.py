"""Tests of registry/cli.py: every action, tables and --json, one-line errors with exit status 1."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from registry import Registry
from registry.cli import add_commands


class CodeOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr), parsed the way `spikeserve` parses."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="spikeserve")
        add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        code = args.handler(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def extra(fields):
    """--manifest-extra JSON for the tiny net (name and architecture given as flags)."""
    return json.dumps({k: v for k, v in fields.items() if k not in ("name", "architecture")})


@pytest.fixture
def zoo(tmp_path, cli, extra, tiny_weights, fields):
    """A registry path holding tiny:1 and tiny:2, registered through the CLI."""
    root = str(tmp_path / "zoo")
    for _ in range(2):
        code, _, err = cli(
            "registry", "--registry", root, "register", "--name", "tiny", "--arch", fields["architecture"],
            "--weights", str(tiny_weights), "--manifest-extra", extra,
        )  # fmt: skip
        assert code == 0, err
    return root


def _one_line_error(code, out, err, *fragments):
    assert code == 1
    assert out == ""
    assert err.startswith("spikeserve registry: error: ") and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err


def test_register_list_show(cli, zoo, tmp_path):
    code, out, _ = cli("registry", "--registry", zoo, "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "VERSIONS", "LATEST", "DEFAULT", "ALIASES", "ARCHITECTURE", "INPUT"]
    assert row.split() == ["tiny", "2", "2", "2", "-", "registry_test_tinynet", "image"]

    code, out, _ = cli("registry", "list", "--registry", zoo, "--json")  # options after the action too
    assert json.loads(out)[0]["versions"] == [1, 2]

    code, out, _ = cli("registry", "--registry", zoo, "show", "tiny:1")
    assert "ref           tiny:1" in out and "plif" in out and "accuracy=0.5 (toy/test)" in out
    code, out, _ = cli("registry", "--registry", zoo, "--json", "show", "tiny")
    assert json.loads(out)["version"] == 2

    code, out, _ = cli("registry", "--registry", str(tmp_path / "empty"), "list")
    assert code == 0 and out.startswith("no models in registry")


def test_register_from_manifest_file_with_alias_and_json(cli, tmp_path, fields, tiny_weights):
    manifest_file = tmp_path / "m.json"
    manifest_file.write_text(json.dumps(fields))
    root = str(tmp_path / "zoo")
    code, out, err = cli(
        "registry", "--registry", root, "--json", "register", "--weights", str(tiny_weights),
        "--manifest", str(manifest_file), "--manifest-extra", '{"description": "override"}',
        "--alias", "production",
    )  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["name"], shown["version"], shown["description"]) == ("tiny", 1, "override")
    assert Registry(root).aliases("tiny") == {"production": 1}


def test_alias_unalias_delete(cli, zoo):
    assert (
        cli("registry", "--registry", zoo, "alias", "tiny", "production", "1")[1]
        == "tiny@production -> tiny:1\n"
    )
    _one_line_error(*cli("registry", "--registry", zoo, "delete", "tiny:1"), "production", "force")
    _one_line_error(*cli("registry", "--registry", zoo, "delete", "tiny"), "tiny:N")
    code, out, _ = cli("registry", "--registry", zoo, "delete", "tiny@production", "--force")
    assert code == 0 and out.startswith("deleted tiny:1")
    assert cli("registry", "--registry", zoo, "alias", "tiny", "staging", "2")[0] == 0
    assert cli("registry", "--registry", zoo, "unalias", "tiny", "staging")[1] == "removed tiny@staging\n"
    _one_line_error(*cli("registry", "--registry", zoo, "unalias", "tiny", "staging"), "no alias 'staging'")
    assert [m.version for m in Registry(zoo).versions("tiny")] == [2]


def test_verify_gc_export_import(cli, zoo, tmp_path):
    code, out, _ = cli("registry", "--registry", zoo, "verify")
    assert code == 0 and out.strip() == "checked 2 version(s), 1 blob(s): ok"
    bundle = str(tmp_path / "tiny.tar")
    assert cli("registry", "--registry", zoo, "export", "tiny:2", bundle)[0] == 0
    other = str(tmp_path / "other")
    code, out, _ = cli("registry", "--registry", other, "import", bundle, "--name", "copy")
    assert out.strip() == f"imported {bundle} as copy:1"

    blob = Registry(zoo).weights_path(Registry(zoo).resolve("tiny:1"))
    blob.chmod(0o644)
    blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    code, out, _ = cli("registry", "--registry", zoo, "verify")
    assert code == 1
    assert out.count("tampered: tiny:") == 2 and "2 problem(s)" in out
    code, out, _ = cli("registry", "--registry", zoo, "--json", "verify")
    assert code == 1 and json.loads(out)["ok"] is False

    code, out, _ = cli("registry", "--registry", other, "gc")
    assert out.strip() == "removed 0 blob(s) (0 B) and 0 temp file(s)"


def test_registry_path_from_environment(cli, zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKESERVE_REGISTRY", zoo)
    assert "tiny" in cli("registry", "list")[1]
    monkeypatch.delenv("SPIKESERVE_REGISTRY")
    monkeypatch.chdir(tmp_path)  # default ./zoo, which is where the fixture registered
    assert "tiny" in cli("registry", "list")[1]


def test_register_pt_and_refuse_code_running_pt(cli, tmp_path, extra, fields, make_model):
    root = str(tmp_path / "zoo")
    plain = tmp_path / "plain.pt"
    torch.save(make_model().state_dict(), plain)
    args = ("registry", "--registry", root, "register", "--name", "tiny", "--arch", fields["architecture"])
    assert cli(*args, "--weights", str(plain), "--manifest-extra", extra)[0] == 0

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**make_model().state_dict(), "trap": CodeOnLoad(marker)}, evil)
    _one_line_error(*cli(*args, "--weights", str(evil), "--manifest-extra", extra), "weights_only=True")
    assert not marker.exists()
    assert [m.version for m in Registry(root).versions("tiny")] == [1]


@pytest.mark.parametrize(
    ("extra_json", "fragment"),
    [
        ('{"version": 3}', "assigned by the registry"),
        ('{"colour": "red"}', "unknown manifest field(s) colour"),
        ("[1, 2]", "must be a JSON object"),
        ("{bad", "is not JSON"),
        ('{"labels": ["a"]}', "register needs time_steps, input"),
    ],
)
def test_register_argument_errors(cli, tmp_path, tiny_weights, extra_json, fragment):
    result = cli(
        "registry", "--registry", str(tmp_path / "zoo"), "register", "--name", "tiny", "--arch", "x",
        "--weights", str(tiny_weights), "--manifest-extra", extra_json,
    )  # fmt: skip
    _one_line_error(*result, fragment)


def test_errors_are_one_line(cli, zoo, tmp_path):
    _one_line_error(*cli("registry", "--registry", zoo, "show", "../x"), "invalid model name")
    _one_line_error(*cli("registry", "--registry", zoo, "show", "tiny:9"), "no version 9")
    _one_line_error(*cli("registry", "--registry", zoo, "show", "nothing"), "no model named")
    _one_line_error(*cli("registry", "--registry", zoo, "alias", "tiny", "Bad Alias", "1"), "invalid alias")
    _one_line_error(
        *cli("registry", "--registry", zoo, "import", str(tmp_path / "none.tar")), "not a readable tar"
    )


def test_plugged_into_spikeserve(zoo, capsys):
    from service.cli import main

    assert main(["registry", "--registry", zoo, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "tiny"
