"""service/resolve.py: cached by reference, refreshed when the registry's generation moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_zoo import IMAGE_MODEL, register_danet

from registry import ModelNotFoundError, Registry
from service.resolve import RefResolver


class CountingRegistry(Registry):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.resolves = 0

    def resolve(self, ref: str) -> Any:
        self.resolves += 1
        return super().resolve(ref)


def test_cache_until_the_registry_changes_then_follow_it(tmp_path: Path) -> None:
    registry = CountingRegistry(tmp_path)
    register_danet(registry, seed=0, aliases=("production",))
    resolver = RefResolver(registry)
    assert resolver.resolve(IMAGE_MODEL).version == 1
    assert resolver.resolve(IMAGE_MODEL).version == 1
    assert registry.resolves == 1  # the second call came from the cache
    register_danet(registry, seed=1)  # a new version: production still points at 1
    assert resolver.resolve(IMAGE_MODEL).version == 1
    registry.set_alias(IMAGE_MODEL, "production", 2)  # an alias move: picked up at once
    assert resolver.resolve(IMAGE_MODEL).version == 2
    assert resolver.resolve(f"{IMAGE_MODEL}@production").version == 2
    assert resolver.resolve(f"{IMAGE_MODEL}:1").version == 1
    with pytest.raises(ModelNotFoundError):
        resolver.resolve(f"{IMAGE_MODEL}:9")


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for seed in range(3):
        register_danet(registry, seed=seed)
    resolver = RefResolver(registry, max_entries=2)
    versions = [resolver.resolve(f"{IMAGE_MODEL}:{v}").version for v in (1, 2, 3)]
    assert versions == [1, 2, 3]
    assert len(resolver._cache) <= 2
