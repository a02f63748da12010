"""Alert rules, statically: every alert has a firing and a non-firing promtool test, and
rules and tests refer only to series the exporter publishes (promtool itself runs in
tests/test_prometheus.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.test_grafana import exporter_series

PROMETHEUS = Path(__file__).resolve().parents[1] / "docker" / "prometheus"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_tests() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]


def test_every_alert_has_a_firing_and_a_quiet_test():
    cases: dict[str, set[bool]] = {}
    for test in rule_tests():
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    names = {rule["alert"] for rule in alert_rules()}
    assert len(names) == 8
    for name in names:
        assert cases.get(name) == {True, False}, f"{name}: tests {cases.get(name)}"
    assert set(cases) <= names


def test_every_rule_is_labelled_and_explained():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_and_their_tests_name_only_published_series():
    _, samples = exporter_series()
    texts = [rule["expr"] for rule in alert_rules()]
    texts += [series["series"] for test in rule_tests() for series in test["input_series"]]
    for text in texts:
        for name in re.findall(r"\bfl_[a-z0-9_]+", text):
            assert name in samples, f"{name} in {text}"


def test_the_server_down_rule_watches_the_scrape_job():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]["job_name"]
    down = next(rule for rule in alert_rules() if rule["alert"] == "FedbuffServerDown")
    assert f'job="{job}"' in down["expr"]
    assert config["rule_files"] == ["alerts.yml"]
