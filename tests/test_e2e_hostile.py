"""End to end: a SuperNode running a hostile ClientApp beside three honest ones.

The honest SuperNodes run the project's ClientApp from the run's FAB. The fourth is Flower's
own ``flower-supernode`` too, but whatever answers its tasks is the device owner's choice: its
``PATH`` leads Flower's SuperExec to a ``flwr-clientapp`` that runs Flower's ClientApp runtime
with :mod:`tests.hostile_app.client` in place of the project's ClientApp (see
``tests/hostile_app/__main__.py``). Every lie it tells must be refused, clipped or dropped and
counted, while the honest nodes' training goes on and the model stays finite and improves.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from fedbuff_ops.launcher import LocalFederation, RunningFederation, free_port, start_federation
from tests.chaos import events, submit
from tests.conftest import ROOT
from tests.hostile_app.outcome import HOSTILE_RUN_CONFIG, check_every_lie_was_refused_clipped_or_dropped

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def start_hostile_supernode(running: RunningFederation, bin_dir) -> None:
    """A real SuperNode whose ClientApp processes are the hostile app; stopped with the federation."""
    bin_dir.mkdir()
    wrapper = bin_dir / "flwr-clientapp"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.hostile_app "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    env = {
        **running.env,
        "PATH": f"{bin_dir}{os.pathsep}{running.env['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), running.env.get("PYTHONPATH", "")])),
    }
    running.group.start(
        "hostile-supernode",
        [
            running.binaries["flower-supernode"],
            "--insecure",
            "--superlink",
            f"127.0.0.1:{running.port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            'partition-id=0 num-partitions=1 device-tier="high"',
        ],
        env,
        running.federation.logs / "supernode-hostile.log",
    )


def test_a_hostile_client_app_beside_honest_nodes_is_refused_clipped_and_counted(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    config = " ".join(f"{k}={json.dumps(v)}" for k, v in HOSTILE_RUN_CONFIG.items())
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=3,
        tiers=["high"],
        run_config=f"{config} metrics-port=0 write-plots=false checkpoint-every=0",
    )
    with start_federation(federation, out=sys.stdout) as running:
        start_hostile_supernode(running, tmp_path / "hostile-bin")
        run = submit(running, tmp_path / "run.log")
        assert run.wait(timeout=800) == 0, (tmp_path / "run.log").read_text()[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    found = events(run_dir)
    liar = check_every_lie_was_refused_clipped_or_dropped(summary, found)
    assert summary["server_steps"] == HOSTILE_RUN_CONFIG["max-server-steps"]
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    honest_partitions = {e.get("partition") for e in found if e["event"] == "update" and e["node"] != liar}
    assert honest_partitions == {0, 1, 2}  # all three honest nodes kept contributing
    with np.load(run_dir / "checkpoint.npz") as checkpoint:
        assert all(np.isfinite(checkpoint[k]).all() for k in checkpoint.files if k.startswith("arr_"))
    # the liar's app loaded and answered every task itself: no load failure, no exception
    assert not {"client-load-failed", "client-raised", "client-crashed"} & set(summary["errors_by_reason"])
