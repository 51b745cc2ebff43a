"""Fixtures for the workers' tests: one tiny registry per session (random weights, fixed seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_zoo import build_tiny_registry


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_registry(Path(tmp_path_factory.mktemp("tiny-registry")))
