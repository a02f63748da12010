"""End to end, the warm trainer with the real flower-superlink and flower-supernode binaries: one
trainer per node and run, a SIGKILLed trainer costs at most the task in hand, a second run gets
new trainers, and a SIGKILLed SuperNode takes its trainers with it. About two minutes."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from fedbuff_ops.launcher import LocalFederation, start_federation
from tests.chaos import events, running, submit, wait_for
from tests.conftest import ROOT, flower_processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SERVING = re.compile(r"serving run (\d+) on node (\d+) at \S+ \(pid (\d+)\)")


def trainers(directory: str) -> dict[tuple[int, int], list[int]]:
    """(run, node) -> the pids of every trainer that served it, from the trainers' logs."""
    found: dict[tuple[int, int], list[int]] = {}
    for log in Path(directory).glob("*.log"):
        for run, node, pid in SERVING.findall(log.read_text()):
            found.setdefault((int(run), int(node)), []).append(int(pid))
    return found


def test_warm_trainers_serve_each_node_survive_a_kill_and_leave_with_their_supernode(
    tmp_path, no_leftover_processes, trainer_dir
):
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=2,
        tiers=["high"],
        run_config="buffer-size=1 concurrency=2 eval-every=100 local-steps=2",
    )
    with start_federation(federation, out=sys.stdout) as federation_running:
        first = submit(federation_running, tmp_path / "first.log", "max-server-steps=8")
        clientapps: set[str] = set()

        def both_nodes_updated() -> bool:
            clientapps.update(
                cmd.split()[1]
                for cmd in flower_processes("FEDBUFF_TEST_RUN=" + os.environ["FEDBUFF_TEST_RUN"]).values()
                if "flwr-clientapp" in cmd
            )
            return len(trainers(trainer_dir)) == 2 and sum(e["event"] == "update" for e in events(run_dir)) >= 2

        wait_for(both_nodes_updated, 240, "both nodes' first updates")
        # the SuperExecs started the launcher's lean flwr-clientapp (fedbuff_ops/lean_clientapp.py)
        assert clientapps and all(path.endswith("lean-bin/flwr-clientapp") for path in clientapps), clientapps
        (victim_key, (victim,)), _ = sorted(trainers(trainer_dir).items())
        os.kill(victim, signal.SIGKILL)
        killed_at = max((e["time"] for e in events(run_dir)), default=0.0)
        assert first.wait(timeout=300) == 0
        found = events(run_dir)
        run_id, node = victim_key
        assert sum(e["event"] == "step" for e in found) == 8
        later = [e for e in found if e.get("node") == node and e["time"] > killed_at]
        assert any(e["event"] == "update" and e["outcome"] == "accepted" for e in later), (
            "the killed trainer's node never contributed again"
        )
        errors = [e for e in later if e["event"] == "error"]
        assert len(errors) <= 1 and all(e["reason"] == "client-raised" for e in errors), errors
        first_run = trainers(trainer_dir)
        assert len(first_run[victim_key]) == 2  # replaced once
        assert all(len(pids) == 1 for key, pids in first_run.items() if key != victim_key)

        second_dir = tmp_path / "second"
        second = submit(federation_running, tmp_path / "second.log", f'max-server-steps=2 run-dir="{second_dir}"')
        assert second.wait(timeout=300) == 0
        every = trainers(trainer_dir)
        new = {key: pids for key, pids in every.items() if key not in first_run}
        assert len(new) == 2 and {k[0] for k in new} != {run_id}  # a new run: new trainers

        live = [pid for pids in every.values() for pid in pids if running(pid)]
        node_ids = {key[1] for key in every}
        assert len(live) == 4 and len(node_ids) == 2  # two runs × two nodes, all idle and warm
        os.kill(federation_running.supernodes[0].pid, signal.SIGKILL)
        wait_for(lambda: sum(running(pid) for pid in live) == 2, 60, "the SIGKILLed SuperNode's two trainers to exit")
