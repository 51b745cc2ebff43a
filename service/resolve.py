"""``{ref}`` to manifest, on every request, cheaply, and live with the registry.

The registry bumps a generation counter on every write (a new version, an alias moved, a
version deleted). The resolver caches manifests by reference and drops the whole cache when the
counter changes, so an alias move takes effect on the next request without a restart, and an
unchanged registry costs one ``stat`` of the counter's file per request.
"""

from __future__ import annotations

import os
import threading

from registry import Registry
from registry.manifest import Manifest


class RefResolver:
    """Resolves ``name`` | ``name:N`` | ``name@alias`` through ``registry.resolve``, cached."""

    def __init__(self, registry: Registry, max_entries: int = 1024) -> None:
        self.registry = registry
        self.max_entries = max_entries
        self._generation: int | None = None
        self._stamp: tuple[int, ...] | None = None  # the generation file's stat when last read
        self._cache: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def _current_generation(self) -> int:
        """The registry's generation, re-read only when its file changed: the registry replaces the
        file on every bump (a new inode, a new mtime), and one ``stat`` costs the event loop a
        fraction of opening and reading it on every request."""
        try:
            info = os.stat(self.registry.layout.generation_file)
            stamp: tuple[int, ...] | None = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp is None or stamp != self._stamp or self._generation is None:
            self._stamp = stamp
            return self.registry.generation()
        return self._generation

    def resolve(self, ref: str) -> Manifest:
        """The manifest ``ref`` names now. Raises the registry's ModelNotFoundError / InvalidNameError."""
        generation = self._current_generation()
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
