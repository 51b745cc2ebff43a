"""workers/options.py: the one check of T, input kind, top-k and telemetry against a manifest."""

from __future__ import annotations

import pytest
from tiny_zoo import IMAGE_INPUT, LABELS, TIME_STEPS

from registry.manifest import EarlyExit, Manifest
from workers.errors import EarlyExitUnsupportedError, InvalidInputError
from workers.options import ExitQuery, check_options

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


def test_early_exit_defaults_come_from_the_manifest_else_0_9() -> None:
    assert check_options(MANIFEST, "image", None, 5, "none").exit_threshold is None
    asked = check_options(MANIFEST, "image", None, 5, "none", exit=ExitQuery("confidence"))
    assert (asked.exit_threshold, asked.min_steps) == (0.9, 1)
    own = MANIFEST.model_copy(update={"early_exit": EarlyExit(threshold=0.7, min_steps=2)})
    chosen = check_options(own, "image", None, 5, "none", exit=ExitQuery("confidence"))
    assert (chosen.exit_threshold, chosen.min_steps) == (0.7, 2)
    given = check_options(own, "image", 6, 5, "none", exit=ExitQuery("confidence", 0.99, 5))
    assert (given.exit_threshold, given.min_steps, given.time_steps) == (0.99, 5, 6)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (ExitQuery("sometimes"), "exit='sometimes' is not known"),
        (ExitQuery("confidence", 0.0), "exit_threshold=0.0 must be in"),
        (ExitQuery("confidence", 1.01), "exit_threshold=1.01 must be in"),
        (ExitQuery("confidence", float("nan")), "exit_threshold=nan must be in"),
        (ExitQuery("confidence", None, 0), "min_steps=0 must be in 1..time_steps"),
        (ExitQuery("confidence", None, 5), "min_steps=5 must be in 1..time_steps \\(4\\)"),
        (ExitQuery(None, 0.5), "exit_threshold need exit=confidence"),
        (ExitQuery(None, None, 2), "min_steps need exit=confidence"),
    ],
)
def test_early_exit_refusals(query: ExitQuery, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        check_options(MANIFEST, "image", None, 5, "none", exit=query)


def test_a_manifest_that_cannot_exit_early_is_refused_with_its_reason() -> None:
    refusing = MANIFEST.model_copy(
        update={"early_exit": EarlyExit(supported=False, reason="attends across time")}
    )
    with pytest.raises(EarlyExitUnsupportedError, match="m:3 cannot exit early: attends across time"):
        check_options(refusing, "image", None, 5, "none", exit=ExitQuery("confidence"))
    assert check_options(refusing, "image", None, 5, "none").exit_threshold is None
