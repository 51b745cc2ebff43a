"""The alert rules in docker/prometheus/: valid for promtool, unit-tested, loaded by compose, documented.

``promtool check rules`` and ``promtool test rules`` run here (Debian's promtool, fetched by
tests/prometheus_support.py); the tests below also check that every alert has a unit test that
makes it fire, that the compose Prometheus loads the file, and that docs/DEPLOY.md explains each.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_support import prometheus_tools

REPO = Path(__file__).resolve().parents[3]
RULES_DIR = REPO / "docker/prometheus"
RULES = RULES_DIR / "alerts.rules.yml"
UNIT_TESTS = RULES_DIR / "alerts.test.yml"
# every alert the deployment must have, one per failure it watches for
EXPECTED_ALERTS = {
    "SpikeserveNoLiveWorkers",
    "SpikeserveTargetDown",
    "SpikeserveHighErrorRatio",
    "SpikeserveQueueNearLimit",
    "SpikeserveLatencyP99High",
    "SpikeserveSpikeRateCollapsed",
    "SpikeserveSpikeRateSaturated",
    "SpikeserveStreamWindowsDropped",
    "SpikeserveStreamStateResets",
    "SpikeserveStreamSlowerThanRealTime",
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_tools().promtool


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_the_rules_cover_every_failure_watched():
    assert alert_names() == EXPECTED_ALERTS


def test_promtool_check_rules(promtool: Path):
    done = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass(promtool: Path):
    done = subprocess.run(
        [promtool, "test", "rules", UNIT_TESTS.name], cwd=RULES_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_makes_it_fire():
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == alert_names()


def test_the_compose_prometheus_loads_the_rules(promtool: Path, tmp_path: Path):
    """The config compose mounts, with its container paths mapped back to the repository, passes
    ``promtool check config`` and loads every rule."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO / source
    config = yaml.safe_load((REPO / "docker/prometheus.yml").read_text())
    rule_files = []
    for pattern in config["rule_files"]:
        folder, name = pattern.rsplit("/", 1)
        assert folder in mounts, f"{pattern} is not inside a folder compose mounts"
        assert mounts[folder] == RULES_DIR
        rule_files.append(str(mounts[folder] / name))
    config["rule_files"] = rule_files
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", checked], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in done.stdout


def test_deploy_doc_explains_every_alert():
    text = (REPO / "docs/DEPLOY.md").read_text()
    missing = [name for name in sorted(alert_names()) if f"`{name}`" not in text]
    assert not missing, f"docs/DEPLOY.md does not explain {missing}"
