"""Tests of registry/bundle.py through Registry.export/import_: round trip and unsafe tars refused."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

from registry import BundleError, IntegrityError, Registry
from registry.bundle import MANIFEST_MEMBER, WEIGHTS_MEMBER, read_bundle


@pytest.fixture
def exported(registry, fields, tiny_weights, tmp_path):
    """(manifest, path of its bundle) for tiny:1."""
    manifest = registry.register(**fields, weights=tiny_weights)
    path = tmp_path / "out" / "tiny-1.tar"
    registry.export("tiny:1", path)
    return manifest, path


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write_tar(path, entries):
    """entries: (TarInfo, bytes | None) pairs, written as they are."""
    with tarfile.open(path, "w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data):
    return tarfile.TarInfo(name), data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def test_export_import_round_trip(registry, exported, tmp_path, make_model):
    manifest, path = exported
    assert sorted(_members(path)) == [MANIFEST_MEMBER, WEIGHTS_MEMBER]

    elsewhere = Registry(tmp_path / "other")
    imported = elsewhere.import_(path)
    assert imported.version == 1
    assert imported.model_dump(exclude={"version"}) == manifest.model_dump(exclude={"version"})
    _, model = elsewhere.load("tiny")
    x = torch.rand(2, 1, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), make_model()(x), rtol=0, atol=0)

    again = registry.import_(path, name="tiny-copy")  # same registry, another name
    assert again.ref == "tiny-copy:1"
    assert registry.import_(path).ref == "tiny:2"  # same name: a new version
    assert registry.verify().ok


def test_export_refuses_tampered_weights(registry, exported, tmp_path):
    manifest, _ = exported
    blob = registry.weights_path(manifest)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError):
        registry.export("tiny:1", tmp_path / "again.tar")
    assert not (tmp_path / "again.tar").exists()


def _bundle_parts(path):
    members = _members(path)
    return members[MANIFEST_MEMBER], members[WEIGHTS_MEMBER]


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda m, w: [_file("/etc/manifest.json", m), _file(WEIGHTS_MEMBER, w)], "absolute path"),
        (lambda m, w: [_file("../manifest.json", m), _file(WEIGHTS_MEMBER, w)], "outside the bundle"),
        (lambda m, w: [_file("a/../../x", m), _file(WEIGHTS_MEMBER, w)], "outside the bundle"),
        (
            lambda m, w: [
                _file(MANIFEST_MEMBER, m),
                _special(WEIGHTS_MEMBER, tarfile.SYMTYPE, "/etc/passwd"),
            ],
            "symbolic link",
        ),
        (
            lambda m, w: [
                _file(MANIFEST_MEMBER, m),
                _special(WEIGHTS_MEMBER, tarfile.LNKTYPE, MANIFEST_MEMBER),
            ],
            "hard link",
        ),
        (lambda m, w: [_file(MANIFEST_MEMBER, m), _special(WEIGHTS_MEMBER, tarfile.CHRTYPE)], "device"),
        (lambda m, w: [_file(MANIFEST_MEMBER, m), _special(WEIGHTS_MEMBER, tarfile.FIFOTYPE)], "FIFO"),
        (lambda m, w: [_special("dir", tarfile.DIRTYPE), _file(MANIFEST_MEMBER, m)], "folder"),
        (
            lambda m, w: [_file(MANIFEST_MEMBER, m), _file(WEIGHTS_MEMBER, w), _file("run.sh", b"x")],
            "unexpected",
        ),
        (lambda m, w: [_file(MANIFEST_MEMBER, m), _file(MANIFEST_MEMBER, m)], "twice"),
        (lambda m, w: [_file(MANIFEST_MEMBER, m)], "weights.safetensors is missing"),
        (lambda m, w: [_file(MANIFEST_MEMBER, b"x" * (1024 * 1024 + 1))], "over the limit"),
        (lambda m, w: [_file(MANIFEST_MEMBER, b"{oops"), _file(WEIGHTS_MEMBER, w)], "not JSON"),
        (
            lambda m, w: [_file(MANIFEST_MEMBER, b'{"name": "x"}'), _file(WEIGHTS_MEMBER, w)],
            "not a valid manifest",
        ),
    ],
)
def test_unsafe_or_malformed_bundles_are_refused(registry, exported, tmp_path, build, why):
    manifest_bytes, weights = _bundle_parts(exported[1])
    bad = _write_tar(tmp_path / "bad.tar", build(manifest_bytes, weights))
    target = Registry(tmp_path / "target")
    with pytest.raises(BundleError, match=why):
        target.import_(bad)
    assert not target.root.exists() or not any(target.layout.blobs_dir.glob("*"))
    assert not (tmp_path / "etc").exists()


def test_oversize_weights_are_refused(registry, exported, tmp_path):
    with pytest.raises(BundleError, match="over the limit"):
        read_bundle(registry.layout, exported[1], max_weights_bytes=16)


def test_altered_weights_in_a_bundle_are_refused(registry, exported, tmp_path):
    manifest_bytes, weights = _bundle_parts(exported[1])
    altered = weights[:-1] + bytes([weights[-1] ^ 1])
    bad = _write_tar(
        tmp_path / "altered.tar", [_file(MANIFEST_MEMBER, manifest_bytes), _file(WEIGHTS_MEMBER, altered)]
    )
    target = Registry(tmp_path / "target")
    with pytest.raises(IntegrityError, match="altered or damaged"):
        target.import_(bad)
    assert target.list() == []
    assert list(target.layout.blobs_dir.iterdir()) == []  # the staged copy was dropped


def test_not_a_tar_is_refused(registry, tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"plain text")
    with pytest.raises(BundleError, match="not a readable tar"):
        registry.import_(path)
