"""docker/prometheus and docker/grafana against the real thing: promtool checks the config
and the rules and runs the alert unit tests; a real Prometheus scrapes a live exporter and
every panel query of the Grafana dashboard must return data from it.

Needs Debian's ``prometheus`` package (``apt-get install -y prometheus``: both
``prometheus`` and ``promtool``). Without it these tests skip, except under ``CI=true``,
where a missing binary fails: CI never skips.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server_app.metrics import MetricsConfig, MetricsExporter
from tests.test_metrics import synthetic_events

pytestmark = pytest.mark.e2e  # promtool and a real Prometheus process

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "fedbuff.json"
# Grafana's template variables, made concrete for a Prometheus that scrapes every second.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "1m",
    "${__rate_interval}": "1m",
    "${__interval}": "5s",
    "${__range}": "1m",
}


def require_binary(name: str) -> str:
    """The path of ``name``; skip the test when it is missing, but fail under ``CI=true``."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install -y prometheus)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{message}; CI=true never skips")
    pytest.skip(message)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_binary("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true never skips"):
        require_binary("promtool")


# -- promtool ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_promtool_checks_the_prometheus_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_promtool_checks_the_alert_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@pytest.mark.timeout(60)
def test_promtool_alert_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- a real Prometheus ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """A throwaway Prometheus process with its own config, storage and port."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
                    "scrape_configs": [{"job_name": "fedbuff-serverapp", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (Prometheus writes it until stop() closes it)
        self.process = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> dict:
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as err:  # 400 for a bad query: return its JSON error
            if err.code == 503:  # still starting up (slow on a busy machine): an OSError, polled again
                raise
            return json.loads(err.read())

    def wait_for(self, what: str, condition, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.log()}")
            try:
                result = condition()
            except OSError:
                result = None
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class Feeder(threading.Thread):
    """Plays a synthetic run into the exporter, ~200 events per second, until stopped."""

    def __init__(self, exporter: MetricsExporter) -> None:
        super().__init__(daemon=True)
        self.exporter = exporter
        self.halt = threading.Event()

    def run(self) -> None:
        for i, (kind, fields) in enumerate(synthetic_events(seed=11)):
            if self.halt.is_set():
                return
            self.exporter.event(kind, **fields)
            if i % 50 == 0:
                self.exporter.set_privacy(0.01 * (i // 50), delta=1e-5)
            if i % 10 == 0:
                time.sleep(0.05)


@pytest.fixture
def live_exporter():
    exporter = MetricsExporter(MetricsConfig(port=0, straggler_deadline_seconds=60.0))
    exporter.describe_run(buffer_size=3, max_staleness=6, concurrency=9)
    exporter.start()
    # a diverged evaluation: its NaN loss is dropped, never observed
    exporter.event("eval", time=0.0, version=0, loss=float("nan"), accuracy=0.1)
    feeder = Feeder(exporter)
    feeder.start()
    try:
        yield exporter
    finally:
        feeder.halt.set()
        feeder.join(timeout=10)
        exporter.close()


@pytest.fixture
def prometheus(tmp_path, live_exporter):
    require_binary("prometheus")
    server = Prometheus(tmp_path, f"127.0.0.1:{live_exporter.port}")
    try:
        yield server
    finally:
        server.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included."""

    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"]) for panel in walk(dashboard["panels"]) for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    for variable, window in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, window)
    assert "$" not in expr, f"unreplaced template variable in {expr}"
    return expr


# the compute-aware scheduling row: a run without a scheduler (plain FedBuff) has nothing to show
# there; the federated evaluation row: nor has a run whose server evaluates centrally
SCHEDULING_PANELS = frozenset(
    {"Assigned local steps by tier (p50 / p90)", "Arrival groups: closes by reason, mean size"}
)
FEDERATED_EVAL_PANELS = frozenset(
    {"Federated evaluation: the task's metrics", "Federated accuracy by tier, evaluate tasks failed"}
)


def dashboard_problems(query: Callable[[str], dict], without_data: frozenset[str] = frozenset()) -> list[str]:
    """Each dashboard query (made concrete) that ``query`` answers with an error or no finite value
    (panels titled in ``without_data`` need only be valid: the run has nothing to show there)."""
    problems = []
    for title, expr in dashboard_queries():
        answer = query(concrete(expr))
        if answer.get("status") != "success":
            problems.append(f"{title}: {expr}\n  error: {answer.get('error')}")
            continue
        values = [float(r["value"][1]) for r in answer["data"]["result"]]
        if title not in without_data and not any(math.isfinite(v) for v in values):
            problems.append(f"{title}: {expr}\n  no finite data: {answer['data']['result']}")
    return problems


@pytest.mark.timeout(150)
def test_every_dashboard_query_returns_data_from_a_real_prometheus(prometheus, live_exporter):
    """Grafana itself cannot be installed on this machine, so the dashboard is checked the
    way Grafana would use it: each panel query (template variables made concrete) is sent to
    a real Prometheus scraping a live exporter and must be valid and return finite data.
    """
    prometheus.wait_for(
        "the target to be scraped", lambda: prometheus.query('up{job="fedbuff-serverapp"} == 1')["data"]["result"]
    )
    # rate() needs two samples in its window and the feeder keeps counters moving: wait for three
    prometheus.wait_for(
        "three scrapes",
        lambda: any(
            float(r["value"][1]) >= 3
            for r in prometheus.query("count_over_time(fl_server_steps_total[1m])")["data"]["result"]
        ),
    )

    assert len(dashboard_queries()) >= 20
    problems = dashboard_problems(prometheus.query)
    assert not problems, "\n".join(problems)


def epoch(rfc3339: str) -> float:
    """Seconds since the epoch of an API timestamp such as 2026-01-02T03:04:05.123456789Z."""
    stamp, _, fraction = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


@pytest.mark.timeout(150)
def test_alert_rules_evaluate_cleanly_on_live_data(prometheus, live_exporter):
    first = prometheus.wait_for("the first sample", lambda: prometheus.query("fl_model_version")["data"]["result"])
    data_since = float(first[0]["value"][0])

    def rules_after_data():
        rules = [rule for group in prometheus.get("/api/v1/rules")["data"]["groups"] for rule in group["rules"]]
        done = rules and all(epoch(r["lastEvaluation"]) > data_since for r in rules)
        return rules if done else None

    rules = prometheus.wait_for("a rule evaluation on scraped data", rules_after_data)
    assert {r["name"] for r in rules} == {
        "FedbuffServerDown",
        "FedbuffModelVersionStalled",
        "FedbuffBufferStuck",
        "FedbuffInvalidUpdateRatioHigh",
        "FedbuffStalenessHigh",
        "FedbuffDropoutRatioHigh",
        "FedbuffTierParticipationCollapsed",
        "FedbuffServerStepRefused",
    }
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # a healthy, busy run: nothing may be firing
    firing = [a for r in rules for a in r.get("alerts", []) if a["state"] == "firing"]
    assert not firing, firing


def test_the_exposition_parses_as_prometheus_text(live_exporter):
    """Cheap guard without the binaries: the live endpoint speaks the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(live_exporter.url, timeout=5) as response:
        families = {f.name for f in text_string_to_metric_families(response.read().decode())}
    assert {"fl_model_version", "fl_updates", "fl_update_staleness", "fl_round_trip_seconds"} <= families
    assert all(re.fullmatch(r"fl_[a-z0-9_]+", name) for name in families)
    assert not any(name.endswith(("_summary", "_quantile")) for name in families)
