"""Tests of registry/registry.py: register, resolve, load, aliases, delete, verify, gc, generation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from registry import (
    IntegrityError,
    InvalidManifestError,
    InvalidNameError,
    InvalidWeightsError,
    ModelNotFoundError,
    Registry,
    VersionInUseError,
)


def _blobs(registry: Registry) -> list[str]:
    folder = registry.layout.blobs_dir
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _tamper(path: Path) -> None:
    os.chmod(path, 0o644)  # blobs are stored read-only
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_resolve_all_forms_and_identical_outputs(registry, fields, make_model):
    original = make_model(seed=1)
    first = registry.register(**fields, weights=original.state_dict())
    second = registry.register(**fields, weights=make_model(seed=2).state_dict())
    assert (first.version, second.version) == (1, 2)

    assert registry.resolve("tiny").version == 2  # no production alias: the latest
    registry.set_alias("tiny", "staging", 1)
    assert registry.resolve("tiny:1") == first
    assert registry.resolve("tiny@staging") == first
    registry.set_alias("tiny", "production", 1)
    assert registry.resolve("tiny") == first  # production wins over latest

    manifest, loaded = registry.load("tiny@production")
    assert manifest == first
    assert not loaded.training
    assert loaded.spike.tau == 3.0  # neuron settings came from the manifest
    x = torch.rand(2, 4, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)
        assert not torch.equal(registry.load("tiny:2")[1](x), original(x))


def test_manifest_records_what_was_asked(registry, fields, tiny_weights):
    manifest = registry.register(**fields, weights=tiny_weights)
    assert manifest.architecture == fields["architecture"]
    assert manifest.config == fields["config"]
    assert manifest.labels == ("a", "b", "c")
    assert manifest.metrics[0].name == "accuracy"
    assert manifest.tags == {"team": "registry"}
    assert manifest.software["python"]
    assert manifest.weights.size == tiny_weights.stat().st_size
    stored = registry.layout.blob(manifest.weights.sha256)
    assert stored.read_bytes() == tiny_weights.read_bytes()
    assert registry.layout.manifest("tiny", 1).is_file()


def test_register_with_aliases_and_neuron_none(registry, fields, tiny_weights):
    manifest = registry.register(**{**fields, "neuron": None}, weights=tiny_weights, aliases=["production"])
    assert manifest.neuron is None
    assert registry.aliases("tiny") == {"production": 1}
    _, model = registry.load("tiny")
    assert type(model.spike).__name__ == "PLIF"  # the architecture's own default


def test_same_weights_share_one_blob(registry, fields, tiny_weights):
    a = registry.register(**fields, weights=tiny_weights)
    b = registry.register(**fields, weights=tiny_weights)
    assert a.weights.sha256 == b.weights.sha256
    assert _blobs(registry) == [a.weights.sha256]


def test_bad_fields_are_refused_before_weights_are_copied(registry, make_fields, tiny_weights):
    with pytest.raises(InvalidManifestError, match="2 labels for num_classes=3"):
        registry.register(**make_fields(labels=["a", "b"]), weights=tiny_weights)
    with pytest.raises(InvalidManifestError, match="time_steps"):
        registry.register(**make_fields(time_steps={"default": 9, "max": 4}), weights=tiny_weights)
    with pytest.raises(InvalidManifestError, match="neuron"):
        registry.register(**make_fields(config={"neuron": {}}), weights=tiny_weights)
    assert _blobs(registry) == []


def test_unsupported_weight_format_is_refused(registry, fields, tmp_path):
    pickle_file = tmp_path / "model.bin"
    pickle_file.write_bytes(b"\x80\x04anything")
    with pytest.raises(InvalidWeightsError, match="safetensors"):
        registry.register(**fields, weights=pickle_file)
    with pytest.raises(InvalidWeightsError, match="does not exist"):
        registry.register(**fields, weights=tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["../x", "", "a" * 300, "modèle", "Tiny", "a/b", ".hidden", "a..b", "x\n"])
def test_odd_names_are_refused_everywhere(registry, make_fields, tiny_weights, name):
    with pytest.raises(InvalidNameError, match="invalid model name"):
        registry.register(**make_fields(name=name), weights=tiny_weights)
    with pytest.raises(InvalidNameError):
        registry.resolve(name)
    with pytest.raises(InvalidNameError):
        registry.set_alias(name, "production", 1)
    assert not registry.root.exists() or not any(registry.layout.models_dir.iterdir())


def test_odd_aliases_and_refs_are_refused(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    for alias in ["../prod", "", "Prod", "1st", "a" * 40]:
        with pytest.raises(InvalidNameError, match="invalid alias"):
            registry.set_alias("tiny", alias, 1)
    for ref in ["tiny:0", "tiny:-1", "tiny:x", "tiny:1@prod", "tiny@", ":1"]:
        with pytest.raises(InvalidNameError):
            registry.resolve(ref)


def test_not_found_errors_say_what_exists(registry, fields, tiny_weights):
    with pytest.raises(ModelNotFoundError, match="no model named 'tiny'"):
        registry.resolve("tiny")
    registry.register(**fields, weights=tiny_weights)
    with pytest.raises(ModelNotFoundError, match="no version 7; versions: 1"):
        registry.resolve("tiny:7")
    with pytest.raises(ModelNotFoundError, match="no alias 'staging'"):
        registry.resolve("tiny@staging")
    with pytest.raises(ModelNotFoundError):
        registry.set_alias("tiny", "staging", 7)
    with pytest.raises(ModelNotFoundError):
        registry.remove_alias("tiny", "staging")
    assert isinstance(ModelNotFoundError("x"), LookupError)


def test_list_and_versions(registry, make_fields, tiny_weights):
    assert registry.list() == []
    registry.register(**make_fields("beta"), weights=tiny_weights)
    registry.register(**make_fields("alpha"), weights=tiny_weights)
    registry.register(**make_fields("alpha", description="second"), weights=tiny_weights)
    registry.set_alias("alpha", "production", 1)
    summaries = registry.list()
    assert [s.name for s in summaries] == ["alpha", "beta"]
    alpha = summaries[0]
    assert (alpha.versions, alpha.latest, alpha.default) == ((1, 2), 2, 1)
    assert alpha.aliases == {"production": 1}
    assert (alpha.architecture, alpha.input_kind, alpha.description) == (
        "registry_test_tinynet",
        "image",
        "second",
    )
    assert [m.version for m in registry.versions("alpha")] == [1, 2]
    with pytest.raises(ModelNotFoundError):
        registry.versions("gamma")


def test_delete_refused_while_aliased_then_forced(registry, fields, tiny_weights):
    for _ in range(3):
        registry.register(**fields, weights=tiny_weights)
    registry.set_alias("tiny", "production", 2)
    with pytest.raises(VersionInUseError, match="production"):
        registry.delete_version("tiny", 2)
    assert registry.resolve("tiny:2").version == 2

    registry.delete_version("tiny", 3)
    registry.delete_version("tiny", 2, force=True)
    assert registry.aliases("tiny") == {}
    assert [m.version for m in registry.versions("tiny")] == [1]
    # numbers are never reused: the next version is 4, not 2 or 3
    assert registry.register(**fields, weights=tiny_weights).version == 4
    with pytest.raises(ModelNotFoundError):
        registry.delete_version("tiny", 3)


def test_remove_alias_and_default_falls_back_to_latest(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    registry.register(**fields, weights=tiny_weights)
    registry.set_alias("tiny", "production", 1)
    registry.remove_alias("tiny", "production")
    assert registry.resolve("tiny").version == 2


def test_tampered_weights_are_named_by_verify_and_refused_by_load(registry, fields, make_model, tiny_weights):
    clean = registry.register(**fields, weights=tiny_weights)
    registry.register(**fields, weights=tiny_weights)  # shares the blob
    other = registry.register(**fields, weights=make_model(seed=5).state_dict())
    assert registry.verify().ok

    _tamper(registry.weights_path(clean))
    report = registry.verify()
    assert not report.ok
    assert {(p.kind, p.subject) for p in report.problems} == {("tampered", "tiny:1"), ("tampered", "tiny:2")}
    assert "tiny:1" in report.problems[0].message
    with pytest.raises(IntegrityError, match="do not match the manifest"):
        registry.load("tiny:1")
    registry.load(other.ref)  # an untouched version still loads


def test_verify_reports_missing_blob_bad_manifest_and_dangling_alias(registry, fields, tiny_weights):
    manifest = registry.register(**fields, weights=tiny_weights)
    registry.register(**fields, weights=tiny_weights)
    registry.set_alias("tiny", "staging", 2)
    registry.layout.manifest("tiny", 2).write_text("{not json")
    kinds = {(p.kind, p.subject) for p in registry.verify().problems}
    assert ("invalid_manifest", "tiny:2") in kinds
    assert ("dangling_alias", "tiny@staging") not in kinds  # the file is there, only unreadable

    registry.layout.manifest("tiny", 2).unlink()  # by hand: the head still lists tiny:2
    registry.weights_path(manifest).unlink()
    kinds = {(p.kind, p.subject) for p in registry.verify().problems}
    assert kinds == {("missing_blob", "tiny:1"), ("missing_manifest", "tiny:2")}
    with pytest.raises(IntegrityError, match="missing"):
        registry.load("tiny:1")


def test_gc_removes_only_unreferenced_blobs(registry, fields, make_model, tiny_weights):
    kept = registry.register(**fields, weights=tiny_weights)
    dropped = registry.register(**fields, weights=make_model(seed=9).state_dict())
    registry.delete_version("tiny", dropped.version)
    assert registry.verify().unreferenced_blobs == (dropped.weights.sha256,)
    report = registry.gc()
    assert report.removed_blobs == (dropped.weights.sha256,)
    assert report.freed_bytes == dropped.weights.size
    assert _blobs(registry) == [kept.weights.sha256]
    assert registry.gc().removed_blobs == ()


def test_gc_refuses_to_guess_when_a_manifest_is_unreadable(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    registry.layout.manifest("tiny", 1).write_text("garbage")
    with pytest.raises(IntegrityError, match="not valid"):
        registry.gc()
    assert len(_blobs(registry)) == 1


def test_every_write_moves_the_generation(registry, fields, tiny_weights):
    assert registry.generation() == 0
    registry.register(**fields, weights=tiny_weights)
    assert registry.generation() == 1
    registry.set_alias("tiny", "production", 1)
    assert registry.generation() == 2
    registry.remove_alias("tiny", "production")
    assert registry.generation() == 3


def test_reading_an_absent_registry_creates_nothing(tmp_path):
    registry = Registry(tmp_path / "nowhere")
    assert registry.list() == []
    assert registry.generation() == 0
    assert registry.verify().ok
    assert not (tmp_path / "nowhere").exists()


def test_a_dangling_production_alias_is_not_quietly_replaced(registry, fields, tiny_weights):
    registry.register(**fields, weights=tiny_weights)
    registry.register(**fields, weights=tiny_weights)
    head = registry.layout.head_file("tiny")
    head.write_text('{"versions": [1, 2], "aliases": {"production": 9}, "last_version": 2}')
    with pytest.raises(ModelNotFoundError, match="tiny:9"):
        registry.resolve("tiny")
    assert registry.resolve("tiny:2").version == 2
    assert ("dangling_alias", "tiny@production") in {(p.kind, p.subject) for p in registry.verify().problems}
