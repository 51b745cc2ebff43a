"""workers/options.py: the one check of T, input kind, top-k and telemetry against a manifest."""

from __future__ import annotations

import pytest
from tiny_zoo import IMAGE_INPUT, LABELS, TIME_STEPS

from registry.manifest import Manifest
from workers.errors import InvalidInputError
from workers.options import check_options

MANIFEST = Manifest.model_validate(
    {
        "name": "m",
        "version": 3,
        "architecture": "danet_resnet18",
        "config": {},
        "time_steps": TIME_STEPS,
        "input": IMAGE_INPUT,
        "labels": LABELS,
        "weights": {"sha256": "0" * 64, "size": 1},
    }
)


def test_defaults_and_clamping() -> None:
    options = check_options(MANIFEST, "image", None, 50, "summary")
    assert (options.kind, options.time_steps, options.top_k, options.telemetry) == ("image", 4, 10, "summary")
    assert check_options(MANIFEST, "image", 8, 3, "none").time_steps == 8


@pytest.mark.parametrize(
    ("kind", "time_steps", "top_k", "telemetry", "says"),
    [
        ("image", 9, 5, "summary", "use 1..8 (default 4)"),
        ("image", 0, 5, "summary", "outside the range of m:3"),
        ("events", None, 5, "summary", "takes image input, not events; use POST /other"),
        ("image", None, 0, "summary", "top_k must be at least 1"),
        ("image", None, 5, "everything", "telemetry must be one of"),
    ],
)
def test_refusals_name_what_fits(
    kind: str, time_steps: int | None, top_k: int, telemetry: str, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_options(MANIFEST, kind, time_steps, top_k, telemetry, "POST /other")
