"""Tests of registry/__init__.py: the public names, and no torch on import (the gateway stays light)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import registry

REPO_ROOT = Path(registry.__file__).resolve().parents[1]


def test_importing_registry_and_its_cli_leaves_torch_out():
    code = (
        "import sys, registry, registry.cli; "
        "registry.Registry('unused').list(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "False"


def test_public_names():
    for name in (
        "Registry",
        "Manifest",
        "RegistryError",
        "ModelNotFoundError",
        "InvalidNameError",
        "IntegrityError",
    ):
        assert hasattr(registry, name), name
    assert issubclass(registry.ModelNotFoundError, registry.RegistryError)
    assert issubclass(registry.ModelNotFoundError, LookupError)
    assert issubclass(registry.InvalidNameError, ValueError)
    assert issubclass(registry.IntegrityError, registry.RegistryError)
