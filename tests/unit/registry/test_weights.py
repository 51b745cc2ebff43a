"""Tests of registry/weights.py: safetensors checks, state dicts, and .pt files that must not run code."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from registry.errors import InvalidWeightsError
from registry.store import RegistryLayout
from registry.weights import (
    read_safetensors_header_file,
    stage_weights,
    state_dict_from_pt,
    state_dict_to_safetensors,
)


class CodeOnLoad:
    """Unpickling this runs ``os.mkdir(marker)``: the classic malicious-checkpoint payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _raw_safetensors(header: dict, buffer: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + buffer


@pytest.fixture
def layout(tmp_path):
    return RegistryLayout(tmp_path / "zoo")


def test_valid_safetensors_header_lists_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(save_safetensors({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}))
    infos = {t.name: (t.dtype, t.shape) for t in read_safetensors_header_file(path)}
    assert infos == {"a": ("F32", (2, 3)), "b": ("I64", (4,))}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "shorter than"),
        (struct.pack("<Q", 10**12) + b"{}", "does not fit"),
        (struct.pack("<Q", 5) + b"nope!", "not JSON"),
        (_raw_safetensors([], b""), "not a JSON object"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "lacks"),
        (
            _raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8),
            "outside",
        ),
        (
            _raw_safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "byte length",
        ),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gaps"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover"),
    ],
)
def test_broken_safetensors_files_are_refused(tmp_path, content, why):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidWeightsError, match=why):
        read_safetensors_header_file(path)


def test_stage_safetensors_file_copies_bytes(tmp_path, layout):
    path = tmp_path / "w.safetensors"
    path.write_bytes(save_safetensors({"a": torch.arange(5.0)}))
    staged = stage_weights(layout, path)
    assert staged.temp_path.read_bytes() == path.read_bytes()


def test_state_dict_with_tied_and_viewed_tensors(layout):
    shared = torch.randn(4, 4)
    state = {"embed": shared, "head": shared, "half": shared[:2], "scalar": torch.tensor(3.0)}
    loaded = load_safetensors(state_dict_to_safetensors(state))
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    with pytest.raises(InvalidWeightsError, match="empty"):
        state_dict_to_safetensors({})
    with pytest.raises(InvalidWeightsError, match="not a named tensor"):
        state_dict_to_safetensors({"a": [1, 2]})


def test_pt_state_dict_is_read_with_weights_only(tmp_path, layout):
    tensors = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pth"
    torch.save(tensors, plain)
    torch.save({"state_dict": tensors, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        loaded = state_dict_from_pt(path)
        assert loaded.keys() == tensors.keys()
        torch.testing.assert_close(loaded["w"], tensors["w"])
        staged = stage_weights(layout, path)
        torch.testing.assert_close(load_safetensors(staged.temp_path.read_bytes())["w"], tensors["w"])


def test_pt_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InvalidWeightsError, match="not a mapping"):
        state_dict_from_pt(path)
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(InvalidWeightsError, match="not tensors: note"):
        state_dict_from_pt(path)


def test_pt_with_a_code_running_pickle_is_refused_and_the_code_does_not_run(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "trap": CodeOnLoad(marker)}, payload)

    with pytest.raises(InvalidWeightsError, match="weights_only=True"):
        stage_weights(layout, payload)
    assert not marker.exists()
    assert not layout.blobs_dir.exists() or not any(layout.blobs_dir.iterdir())

    # the payload is real: an unsafe load would have run it
    torch.load(payload, weights_only=False)
    assert marker.is_dir()


def test_other_formats_are_refused(tmp_path, layout):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"anything")
    with pytest.raises(InvalidWeightsError, match=r"use a \.safetensors file"):
        stage_weights(layout, path)
