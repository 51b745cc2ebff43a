"""References to a checkpoint: ``name``, ``name:3`` or ``name@staging``.

``name`` alone means the ``production`` alias when it is set, else the latest version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidNameError
from registry.manifest import check_alias, check_model_name

DEFAULT_ALIAS = "production"
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


@dataclass(frozen=True)
class Ref:
    """A parsed reference: at most one of ``version`` and ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def model_name(name: str) -> str:
    """``name`` if it follows MODEL_NAME_PATTERN, else InvalidNameError saying the rule."""
    try:
        return check_model_name(name)
    except ValueError as exc:
        raise InvalidNameError(str(exc)) from None


def alias_name(alias: str) -> str:
    """``alias`` if it follows ALIAS_PATTERN, else InvalidNameError saying the rule."""
    try:
        return check_alias(alias)
    except ValueError as exc:
        raise InvalidNameError(str(exc)) from None


def version_number(version: int | str) -> int:
    """A version as a positive int; accepts the digits of a CLI argument."""
    if isinstance(version, bool):  # bool is an int; True is not version 1
        raise InvalidNameError(f"invalid version {version!r}: use a positive integer")
    if isinstance(version, int):
        if version < 1:
            raise InvalidNameError(f"invalid version {version!r}: use a positive integer")
        return version
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidNameError(f"invalid version {version!r}: use a positive integer")
    return int(version)


def parse_ref(ref: str) -> Ref:
    """Parse ``name``, ``name:N`` or ``name@alias``; InvalidNameError names what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise InvalidNameError(f"invalid reference {ref!r}: use name, name:VERSION or name@ALIAS")
    if ":" in ref and "@" in ref:
        raise InvalidNameError(f"invalid reference {ref!r}: give a version or an alias, not both")
    if ":" in ref:
        name, _, version = ref.partition(":")
        return Ref(model_name(name), version=version_number(version))
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return Ref(model_name(name), alias=alias_name(alias))
    return Ref(model_name(ref))
