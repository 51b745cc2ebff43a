"""pyproject.toml: an installed spikeserve (a wheel, a container image, next to TorchServe) carries
every file it reads at run time, not only its Python modules."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _package_data() -> dict[str, list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"]["package-data"])


def _shipped(package: str, patterns: list[str]) -> set[Path]:
    root = REPO / package
    return {path for pattern in patterns for path in root.glob(pattern)}


def test_the_native_kernels_c_sources_ship_with_the_package() -> None:
    """Built on first use by the system compiler: without their sources an installed package
    would quietly run the slower eager neurons and dense convs."""
    sources = set((REPO / "models").rglob("*.c"))
    assert sources, "no C sources under models/"
    assert sources <= _shipped("models", _package_data().get("models", []))


def test_the_web_console_ships_with_the_package() -> None:
    console = {p for p in (REPO / "service" / "ui").rglob("*") if p.suffix in {".html", ".css", ".js"}}
    assert console <= _shipped("service", _package_data()["service"])
