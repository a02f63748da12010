"""A real local federation scraped by a real Prometheus: the dashboard works on a live run.

Grafana cannot be installed here; its dashboard is checked the way Grafana would use it,
each panel query sent to Prometheus while the run is going.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

import pytest

from fedbuff_ops.launcher import LocalFederation, free_port, run_local
from tests.conftest import ROOT
from tests.test_prometheus import (
    FEDERATED_EVAL_PANELS,
    SCHEDULING_PANELS,
    Prometheus,
    dashboard_problems,
    require_binary,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_a_live_run_feeds_every_dashboard_panel_and_writes_plots(tmp_path, no_leftover_processes):
    require_binary("prometheus")
    metrics_port = free_port()
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=4,
        tiers=["low", "mid", "high", "high"],
        node_overrides={3: 'test-fault="shape"'},
        run_config=(
            f"max-server-steps=10 buffer-size=2 concurrency=4 eval-every=2 metrics-port={metrics_port} "
            "straggler-deadline-seconds=4.0"
        ),
    )
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = run_local(federation, out=sys.stdout)
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    runner = threading.Thread(target=run, daemon=True)
    runner.start()

    def scraped():
        assert "error" not in outcome, outcome["error"]
        return prometheus.query('up{job="fedbuff-serverapp"} == 1')["data"]["result"]

    try:
        prometheus.wait_for("the ServerApp to be scraped", scraped, timeout=180)
        prometheus.wait_for(
            "a few server steps",
            lambda: any(float(r["value"][1]) >= 3 for r in prometheus.query("fl_model_version")["data"]["result"]),
            timeout=180,
        )

        # a plain FedBuff run schedules nothing: those panels' data is checked by test_prometheus
        problems = dashboard_problems(prometheus.query, without_data=SCHEDULING_PANELS | FEDERATED_EVAL_PANELS)
        assert not problems, "\n".join(problems)

        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
        checked = subprocess.run(
            [require_binary("promtool"), "check", "metrics"], input=scrape, capture_output=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        runner.join(timeout=400)
        prometheus.stop()
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["server_steps"] == 10
    assert summary["rejected_by_reason"]["shape"] >= 1
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert plots and all((run_dir / "plots" / p).stat().st_size > 0 for p in plots)
