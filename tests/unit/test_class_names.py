"""No two classes of the product share a name: an ``except ModelNotFoundError`` or a type in a
traceback must name one thing only."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGES = ("models", "registry", "workers", "service", "eventio", "training")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_class_name_is_defined_once() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(str(path.relative_to(REPO_ROOT)))
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, f"class names defined more than once: {shared}"
