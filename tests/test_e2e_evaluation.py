"""End to end: where a run's quality numbers come from, with real flower-superlink and
flower-supernode processes on localhost. A ServerApp that holds no data learns its model's
quality by federated evaluation and stops at a target on it; Flower's FedAvg stops at its target.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
import urllib.request

import pytest

from fedbuff_ops.launcher import LocalFederation, free_port, run_local
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DEPLOYED_TASK = '''
"""The digits split among the nodes, each holding out a fifth of its own rows: the server holds nothing."""

import numpy as np

from fedbuff.builtin_tasks import BundledTask
from fedbuff.task import NodeData


class Deployed(BundledTask):
    def __init__(self, config):
        super().__init__("digits", config)

    def central_data(self):
        return None

    def load_data(self, node):
        train = super().load_data(node).train
        cut = len(train) // 5
        return NodeData(train.select(np.arange(cut, len(train))), train.select(np.arange(cut)))
'''


def deployed_app(folder):
    """This project's app with the task above: a deployment whose server has no central data."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace('task = "digits"', 'task = "deployed:Deployed"', 1)
    pyproject = re.sub(r"fab-include = \[[^\]]*\]", 'fab-include = ["deployed.py"]', pyproject, count=1)
    folder.mkdir()
    (folder / "pyproject.toml").write_text(pyproject)
    (folder / "deployed.py").write_text(textwrap.dedent(DEPLOYED_TASK))
    return folder


class Scraper(threading.Thread):
    """Keeps the ServerApp's metrics page from the last scrape that showed federated accuracy per
    tier: once set, those gauges stay until the run ends, and the run goes on for at least one
    more evaluation after the first one (its accuracy is far below any target)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url, self.page, self.halt = f"http://127.0.0.1:{port}/metrics", "", threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.25):
            try:
                page = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                continue
            if "fl_federated_eval_tier_accuracy_ratio{" in page:
                self.page = page


def test_a_server_without_data_stops_at_a_target_measured_by_federated_evaluation(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    port = free_port()
    federation = LocalFederation(
        app_dir=deployed_app(tmp_path / "app"),
        run_dir=run_dir,
        num_nodes=3,
        tiers=["low", "high", "high"],
        run_config=(
            "max-server-steps=40 buffer-size=2 concurrency=3 eval-every=2 local-steps=8 "
            f"target-accuracy=0.6 federated-eval-fraction=1.0 emulated-step-seconds=0.01 metrics-port={port}"
        ),
    )
    scraper = Scraper(port)
    scraper.start()
    try:
        summary = run_local(federation, out=sys.stdout)
    finally:
        scraper.halt.set()
        scraper.join(timeout=10)

    assert summary["stop_reason"].startswith("target-accuracy 0.6 reached at version")
    assert summary["stop_reason"].endswith("(federated evaluation)")
    assert summary["server_steps"] < 40
    assert summary["final_metrics"] == {}  # the server evaluated nothing itself
    assert set(summary["federated_metrics_by_tier"]) == {"low", "high"}
    assert set(summary["accuracy_by_tier"]) == {"low", "high"}  # the fairness report, from the nodes
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    federated = {e["version"]: e for e in events if e["event"] == "federated-eval"}
    assert all(e["nodes"] >= 1 and e["examples"] > 0 for e in federated.values())
    reached = int(summary["stop_reason"].split("reached at version ")[1].split()[0])
    assert federated[reached]["metrics"]["accuracy"] >= 0.6  # the evaluation that stopped the run
    # the model the run ends with (training went on while that evaluation ran) is evaluated too
    last = summary["server_steps"]
    assert last >= reached and federated[last]["metrics"] == summary["final_federated_metrics"]
    assert all(not e["metrics"] for e in events if e["event"] == "eval")
    # Prometheus saw the federated metrics, per tier too
    assert 'fl_federated_eval_value{metric="accuracy"}' in scraper.page
    assert {f'fl_federated_eval_tier_accuracy_ratio{{device_tier="{t}"}}' for t in ("low", "high")} <= {
        line.split(" ")[0] for line in scraper.page.splitlines()
    }


def test_flowers_fedavg_stops_at_the_round_that_reaches_its_target(tmp_path, no_leftover_processes):
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=tmp_path / "run",
        num_nodes=3,
        tiers=["high"],
        run_config='strategy="flower-fedavg" max-server-steps=30 concurrency=3 target-accuracy=0.5 local-epochs=2',
    )
    summary = run_local(federation, out=sys.stdout)
    rounds = summary["server_steps"]
    assert summary["stop_reason"] == f"target-accuracy 0.5 reached at version {rounds}"
    assert 1 <= rounds < 30
    assert summary["final_accuracy"] >= 0.5


def test_federated_evaluation_runs_in_flowers_simulation_engine_on_the_virtual_clock(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=deployed_app(tmp_path / "app"),
        run_dir=run_dir,
        num_nodes=6,
        simulation=True,
        run_config=(
            "virtual-clock=true max-server-steps=6 buffer-size=2 concurrency=4 eval-every=3 local-steps=4 "
            "write-plots=false metrics-port=0"
        ),
    )
    summary = run_local(federation, out=sys.stdout)
    assert summary["server_steps"] == 6 and "virtual_seconds" in summary
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    federated = [e for e in events if e["event"] == "federated-eval"]
    assert [e["version"] for e in federated][-1] == 6  # the last model, waited for at the end
    assert all(e["nodes"] == 3 and e["failed"] == 0 for e in federated)  # ⌈0.34 × 6⌉ nodes
    # each virtual node counts as the tier the virtual clock gave it, not as its node config's "real"
    assert all(set(e["metrics_by_tier"]) <= {"low", "mid", "high"} for e in federated)
    assert set(summary["final_federated_metrics"]) == {"accuracy", "loss"}
