"""End to end: ``fedbuff resume`` continues a run on the federation it was started on.

Before run folders recorded their federation, resuming a 3-node run started the launcher's
default of 6 SuperNodes: num-partitions 6, so every node trained on a different partition.
"""

from __future__ import annotations

import json
import sys

import pytest

from fedbuff_ops.cli import main
from fedbuff_ops.launcher import LocalFederation, run_local
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

QUIET = "metrics-port=0 write-plots=false checkpoint-every=1"


def test_a_three_node_run_resumes_on_the_same_three_nodes_and_partitions(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    config = f"max-server-steps=2 buffer-size=2 concurrency=3 eval-every=2 {QUIET}"
    first = run_local(
        LocalFederation(app_dir=ROOT, run_dir=run_dir, num_nodes=3, tiers=["high"], run_config=config), out=sys.stdout
    )
    assert first["server_steps"] == 2

    assert main(["resume", str(run_dir), "-c", "max-server-steps=4"]) == 0

    (logs,) = run_dir.glob("logs-resume-*")
    assert sorted(p.name for p in logs.glob("supernode-*.log")) == [f"supernode-{i}.log" for i in range(3)]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (resume_at,) = [i for i, e in enumerate(events) if e["event"] == "resume"]
    after = events[resume_at:]
    updates = [e for e in after if e["event"] == "update"]
    assert updates and {e["partitions"] for e in updates} == {3}
    assert {e["partition"] for e in updates} <= {0, 1, 2}
    assert [e["version"] for e in after if e["event"] == "step"] == [3, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["server_steps"] == 4
