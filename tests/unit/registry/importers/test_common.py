"""registry/importers/common.py: reading foreign checkpoints and the all-or-nothing rename."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from registry.importers.common import load_foreign_state_dict, rename_exactly
from registry.importers.errors import WeightMappingError


def test_nested_and_wrapped_state_dicts_are_found(tmp_path: Path) -> None:
    path = tmp_path / "ddp.pth"
    weights = {"module.fc.weight": torch.ones(2, 2), "module._orig_mod.fc.bias": torch.zeros(2)}
    torch.save({"model": {"state_dict": weights}, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    assert set(load_foreign_state_dict(path)) == {"fc.weight", "fc.bias"}


def test_rename_reports_every_kind_of_mismatch() -> None:
    source = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1), "stray": torch.zeros(1)}
    expected = {"x.a": (2,), "x.b": (2,), "x.c": (1,), "x.missing": (4,)}
    with pytest.raises(WeightMappingError) as caught:
        rename_exactly(source, lambda n: None if n == "stray" else f"x.{n}", expected, origin="o", target="t")
    message = str(caught.value)
    assert "stray" in message and "x.missing" in message and "b (3,) -> x.b (2,)" in message
    both = {"a": torch.zeros(2), "A": torch.zeros(2)}
    with pytest.raises(WeightMappingError, match="claim the same target"):
        rename_exactly(both, lambda n: "x.a", {"x.a": (2,)}, origin="o", target="t")
