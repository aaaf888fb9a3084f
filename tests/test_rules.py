"""The alert and recording rules load in Prometheus and behave as their unit tests say.

`promtool check rules` validates rules/lektrico.rules.yml; `promtool test rules` runs
rules/tests/*.yml, where every alert has a case where it fires and one where it does not. Names
in the rules are checked against the catalogue in tests/test_dashboards.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.servers import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "lektrico.rules.yml"
RULE_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def alert_cases() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases.extend(group.get("alert_rule_test", []))
    return cases


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_is_tested_firing_and_not_firing(alert: dict[str, Any]) -> None:
    cases = [c for c in alert_cases() if c["alertname"] == alert["alert"]]
    assert any(c.get("exp_alerts") for c in cases), "no case where it fires"
    assert any(not c.get("exp_alerts") for c in cases), "no case where it stays quiet"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_tells_on_call_what_and_where(alert: dict[str, Any]) -> None:
    annotations = alert.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description")
    assert "{{ $labels." in annotations["summary"], "the summary names the device or exporter"
    assert len(annotations["description"]) > 150, "the description says what to check"
    assert alert.get("labels", {}).get("severity") in {"info", "warning", "critical"}


def test_example_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    # As deploy/docker-compose.yml mounts them: the config, and rules/ beside it.
    config = tmp_path / "prometheus.yml"
    config.write_text((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text())

    result = promtool("check", "config", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
