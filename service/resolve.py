"""``{ref}`` to manifest, on every request, cheaply, and live with the registry.

The registry bumps a generation counter on every write (a new version, an alias moved, a
version deleted). The resolver caches manifests by reference and drops the whole cache when the
counter changes, so an alias move takes effect on the next request without a restart, and an
unchanged registry costs one small file read per request.
"""

from __future__ import annotations

import threading

from registry import Registry
from registry.manifest import Manifest


class RefResolver:
    """Resolves ``name`` | ``name:N`` | ``name@alias`` through ``registry.resolve``, cached."""

    def __init__(self, registry: Registry, max_entries: int = 1024) -> None:
        self.registry = registry
        self.max_entries = max_entries
        self._generation: int | None = None
        self._cache: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> Manifest:
        """The manifest ``ref`` names now. Raises the registry's ModelNotFoundError / InvalidNameError."""
        generation = self.registry.generation()
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            manifest = self._cache.get(ref)
        if manifest is not None:
            return manifest
        manifest = self.registry.resolve(ref)
        with self._lock:
            if self._generation == generation:
                if len(self._cache) >= self.max_entries:  # a flood of distinct refs must not grow memory
                    self._cache.clear()
                self._cache[ref] = manifest
        return manifest
