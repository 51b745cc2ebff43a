"""Tests of registry/loading.py: digest check before load, strict build, clear errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save as save_safetensors

from registry.errors import IntegrityError, LoadError
from registry.loading import build_model, read_verified
from registry.manifest import Manifest


def _manifest(make_fields, weights: bytes, **overrides) -> Manifest:
    digest = hashlib.sha256(weights).hexdigest()
    return Manifest.model_validate(
        {**make_fields(**overrides), "version": 1, "weights": {"sha256": digest, "size": len(weights)}}
    )


def test_read_verified_checks_digest_and_size(tmp_path, make_fields):
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    manifest = _manifest(make_fields, b"weights")
    assert read_verified(manifest, blob) == b"weights"
    blob.write_bytes(b"Weights")
    with pytest.raises(IntegrityError, match="do not match the manifest"):
        read_verified(manifest, blob)
    blob.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        read_verified(manifest, blob)


def test_build_model_strict_eval_on_device(make_fields, make_model):
    model = make_model(seed=3)
    weights = save_safetensors(model.state_dict())
    built = build_model(_manifest(make_fields, weights), weights, device="cpu")
    assert not built.training
    x = torch.rand(2, 1, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(built(x), model(x), rtol=0, atol=0)


def test_unknown_architecture_is_a_load_error(make_fields, make_model):
    weights = save_safetensors(make_model().state_dict())
    with pytest.raises(LoadError, match="unknown architecture 'no_such_net'"):
        build_model(_manifest(make_fields, weights, architecture="no_such_net"), weights)


def test_config_the_architecture_refuses_is_a_load_error(make_fields, make_model):
    weights = save_safetensors(make_model().state_dict())
    manifest = _manifest(make_fields, weights, config={"num_classes": 3, "in_channels": 2, "depth": 9})
    with pytest.raises(LoadError, match="refused its config"):
        build_model(manifest, weights)


def test_weights_that_do_not_fit_are_a_load_error(make_fields, make_model):
    state = make_model().state_dict()
    extra = save_safetensors({**state, "surplus": torch.zeros(1)})
    with pytest.raises(LoadError, match="unexpected: surplus"):
        build_model(_manifest(make_fields, extra), extra)
    partial = save_safetensors({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(LoadError, match=r"missing: head\.bias"):
        build_model(_manifest(make_fields, partial), partial)
    wrong_shape = save_safetensors({**state, "head.bias": torch.zeros(7)})
    with pytest.raises(LoadError, match="size mismatch"):
        build_model(_manifest(make_fields, wrong_shape), wrong_shape)
