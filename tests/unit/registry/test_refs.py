"""Tests of registry/refs.py: ``name``, ``name:N`` and ``name@alias``."""

from __future__ import annotations

import pytest

from registry.errors import InvalidNameError
from registry.refs import Ref, parse_ref, version_number


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("tiny", Ref("tiny")),
        ("tiny:3", Ref("tiny", version=3)),
        ("tiny@staging", Ref("tiny", alias="staging")),
        ("danet.v2-mnist:12", Ref("danet.v2-mnist", version=12)),
    ],
)
def test_parse_ref_forms(text, ref):
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", ":", "tiny:", "tiny:0", "tiny:01", "tiny:-2", "tiny:1.5", "tiny:1@x", "@x", "../x:1", "tiny@Prod"],
)
def test_parse_ref_refuses(text):
    with pytest.raises(InvalidNameError):
        parse_ref(text)


def test_version_number():
    assert version_number("7") == 7
    assert version_number(7) == 7
    for bad in (0, -1, True, "x", "1e3", None):
        with pytest.raises(InvalidNameError, match="positive integer"):
            version_number(bad)


def test_invalid_name_is_a_value_error():
    with pytest.raises(ValueError):
        parse_ref("../etc/passwd")
