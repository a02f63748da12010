"""The provisioned Grafana dashboard, checked statically: it uses the provisioned datasource,
shows every series the exporter publishes, and refers to no series that does not exist.
(Its queries run against a real Prometheus in tests/test_prometheus.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from server_app.metrics import MetricsExporter

GRAFANA = Path(__file__).resolve().parents[1] / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fedbuff.json"
# the version gauges: the evaluations beside them say as much
NOT_ON_THE_DASHBOARD = {"fl_eval_model_version", "fl_federated_eval_model_version"}


def exporter_series() -> tuple[set[str], set[str]]:
    """(family names, sample names) the exporter publishes."""
    families, samples = set(), set()
    for family in MetricsExporter().registry.collect():
        families.add(family.name)
        samples.add(family.name)
        samples.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    return families, samples


def panels(items=None):
    for panel in json.loads(DASHBOARD.read_text())["panels"] if items is None else items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert (source["type"], source["uid"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_uses_the_provisioned_datasource_and_has_a_place():
    seen_ids, cells = set(), set()
    for panel in panels():
        assert panel["id"] not in seen_ids
        seen_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus" and target["expr"].strip()


def test_queries_name_only_series_the_exporter_publishes():
    _, samples = exporter_series()
    for expr in queries():
        for name in re.findall(r"\bfl_[a-z0-9_]+", expr):
            assert name in samples, f"{name} in {expr}"


def test_every_exporter_series_is_on_the_dashboard():
    families, _ = exporter_series()
    shown = {name for expr in queries() for name in re.findall(r"\bfl_[a-z0-9_]+", expr)}
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    missing = {f for f in families if not any(f + suffix in shown for suffix in suffixes)}
    assert missing == NOT_ON_THE_DASHBOARD


def test_queries_use_bounded_labels_and_only_grafana_builtin_variables():
    for expr in queries():
        assert not re.search(r"\bnode(_id)?\b", expr), expr
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable.startswith("__"), f"dashboard variable ${variable} in {expr}"
