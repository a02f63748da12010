"""End to end: real flower-superlink and flower-supernode processes on localhost.

These are the slow tests (about a minute each); everything they start is stopped.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedbuff_ops.launcher import LocalFederation, run_local
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_fedbuff_trains_a_real_local_federation(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=4,
        tiers=["low", "mid", "high", "high"],
        node_overrides={3: 'test-fault="nan"'},  # a broken client: every reply holds a NaN
        run_config="max-server-steps=8 buffer-size=2 concurrency=4 eval-every=4",
    )
    summary = run_local(federation, out=sys.stdout)

    assert summary["server_steps"] == 8
    assert summary["stop_reason"].startswith("max-server-steps")
    assert summary["final_accuracy"] >= summary["initial_accuracy"] + 0.2
    assert summary["staleness_max"] > 0
    assert summary["accepted_by_tier"].get("low", 0) >= 1, "the slow node never contributed"
    assert summary["rejected_by_reason"].get("non-finite", 0) >= 1
    assert "real" not in summary["accepted_by_tier"]  # the NaN node never got in

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["version"] for e in events if e["event"] == "step"] == list(range(1, 9))
    assert json.loads((run_dir / "config.json").read_text())["max-server-steps"] == 8
    with np.load(run_dir / "checkpoint.npz") as checkpoint:
        assert int(checkpoint["version"]) == 8
        assert all(np.isfinite(checkpoint[k]).all() for k in checkpoint.files)


@pytest.mark.parametrize(("strategy", "steps"), [("fedasync", 6), ("sync", 3), ("flower-fedavg", 3)])
def test_every_strategy_improves_the_model_in_a_real_local_federation(tmp_path, no_leftover_processes, strategy, steps):
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=tmp_path / "run",
        num_nodes=3,
        tiers=["high"],
        run_config=f'strategy="{strategy}" max-server-steps={steps} concurrency=3 eval-every={steps}',
    )
    summary = run_local(federation, out=sys.stdout)
    assert summary["strategy"] == strategy
    assert summary["server_steps"] == steps
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.1
    if strategy != "fedasync":
        assert summary["staleness_max"] == 0  # a barrier: every update is fresh


def test_the_same_apps_run_in_flowers_simulation_engine(tmp_path, no_leftover_processes):
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=tmp_path / "run",
        num_nodes=3,
        simulation=True,
        run_config="max-server-steps=3 buffer-size=2 concurrency=3 eval-every=3",
    )
    summary = run_local(federation, out=sys.stdout)
    assert summary["server_steps"] == 3
    assert summary["final_accuracy"] > summary["initial_accuracy"]


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process_the_launcher_started(tmp_path, no_leftover_processes):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedbuff_ops.cli",
            "local",
            "--nodes",
            "2",
            "-c",
            "buffer-size=1 local-steps=2",
            "--runs-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell without job control starts `&` jobs with SIGINT ignored, and Python keeps an
        # inherited SIG_IGN (no KeyboardInterrupt): the launcher must get Ctrl-C as a terminal
        # gives it, whoever started pytest.
        preexec_fn=_sigint_as_from_a_terminal,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the run is really going: its first server step
        if re.search(r"step +\d+ \|", line):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130
    assert "interrupted" in rest


def test_secure_aggregation_trains_with_only_masked_updates_on_the_wire(tmp_path, no_leftover_processes):
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=3,
        tiers=["high", "mid", "high"],
        secagg=True,
        run_config="max-server-steps=4 buffer-size=2 concurrency=3 eval-every=4 metrics-port=0",
    )
    summary = run_local(federation, out=sys.stdout)
    assert summary["server_steps"] == 4
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.2
    assert not summary["errors_by_reason"] and not summary["rejected_by_reason"]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [e for e in events if e["event"] == "update"]
    assert updates and all("norm" not in e for e in updates)  # the server never saw a plaintext delta
    assert (run_dir / "secagg" / "service").is_dir()  # the service's key and used-mask log


def test_user_level_dp_with_secure_aggregation_and_dp_sgd_stops_at_the_budget(tmp_path, no_leftover_processes):
    from server_app.privacy import UserLevelAccountant

    sigma, delta, flushes = 0.8, 1e-5, 3
    budget = UserLevelAccountant(sigma, delta).epsilon_after(flushes) * 1.0001
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=3,
        tiers=["high"],
        secagg=True,
        run_config=(
            'user-dp=true user-dp-mode="distributed" user-dp-clip=1.0 user-dp-k-min=2 '
            f"user-dp-noise-multiplier={sigma} user-dp-epsilon-budget={budget} secagg-clip=32.0 "
            'staleness-weight="constant" dp-sgd=true dp-noise-multiplier=0.5 '
            "max-server-steps=20 buffer-size=2 concurrency=3 eval-every=10 metrics-port=0"
        ),
    )
    summary = run_local(federation, out=sys.stdout)
    # distributed shares from K_min = 2 equal weights give each flush exactly σ
    assert summary["stop_reason"].startswith("user-dp-epsilon-budget")
    assert summary["server_steps"] == flushes
    assert summary["user_dp_epsilon"] == pytest.approx(UserLevelAccountant(sigma, delta).epsilon_after(flushes))
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    client_eps = [e["dp_epsilon"] for e in events if e["event"] == "update"]
    assert client_eps and all(0 < eps < float("inf") for eps in client_eps)
    assert max(client_eps) > min(client_eps)  # a node's ε grows across its messages


def test_secure_aggregation_keeps_training_and_flushing_when_a_node_is_killed(tmp_path, no_leftover_processes):
    """One SuperNode is SIGKILLed after the first step of a masked run: its unreported mask is never
    asked for, so every later buffer still unmasks and the run reaches its last step, learning.

    Masked == plaintext arithmetic is checked exactly in tests/test_secure_fedbuff.py; comparing
    the final accuracy of two asynchronous runs here would only measure who arrived when."""
    import os
    import threading

    from tests.conftest import flower_processes

    marker = f"FEDBUFF_TEST_RUN={os.environ['FEDBUFF_TEST_RUN']}"
    killed: list[int] = []

    def kill_node_3_after_the_first_step() -> None:
        history = tmp_path / "secure" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if history.exists() and '"event": "step"' in history.read_text():
                for pid, cmd in flower_processes(marker).items():
                    if "flower-supernode" in cmd and "partition-id=3 " in cmd:
                        os.killpg(pid, 9)  # the SuperNode and the ClientApp it runs
                        killed.append(pid)
            time.sleep(0.5)

    killer = threading.Thread(target=kill_node_3_after_the_first_step, daemon=True)
    killer.start()
    secure = run_local(
        LocalFederation(
            app_dir=ROOT,
            run_dir=tmp_path / "secure",
            num_nodes=4,
            tiers=["high"],
            secagg=True,
            run_config="max-server-steps=6 buffer-size=2 concurrency=4 eval-every=6 metrics-port=0 "
            'staleness-weight="constant"',
        ),
        out=sys.stdout,
    )
    killer.join(timeout=5)

    assert killed, "the node was never killed"
    assert secure["server_steps"] == 6
    assert secure["final_accuracy"] > secure["initial_accuracy"] + 0.2
    assert not any(reason.startswith(("unmask", "ring")) for reason in secure["errors_by_reason"])


def test_a_200_client_simulation_runs_on_the_virtual_clock_with_its_tiers(tmp_path, no_leftover_processes):
    """Flower's simulation engine, 200 virtual nodes at concurrency 100 on the device model's
    clock: fast tiers contribute more updates, per-tier accuracy is reported, time is virtual.
    (That one seed gives the same model bytes twice is tests/test_virtual_clock.py's.)"""
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=200,
        simulation=True,
        run_config=(
            'virtual-clock=true concurrency=100 buffer-size=10 max-server-steps=20 eval-every=10 partitioner="iid" '
            'local-steps=2 tier-mix="high=0.2,mid=0.3,low=0.5" task-jitter="lognormal" write-plots=false '
            "metrics-port=0"
        ),
    )
    summary = run_local(federation, out=sys.stdout)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["server_steps"] == 20
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    # 200 updates at concurrency 100 take less virtual time than most low-tier round trips:
    # per node, high (1×) contributes more than mid (3.3×), mid more than low (9.2×)
    accepted = summary["accepted_by_tier"]
    assert set(accepted) <= {"high", "mid", "low"}
    assert accepted["high"] / 40 > accepted.get("mid", 0) / 60 > accepted.get("low", 0) / 100
    assert set(summary["accuracy_by_tier"]) == set(accepted)
    updates = [e for e in events if e["event"] == "update"]
    assert [e["time"] for e in updates] == sorted(e["time"] for e in updates)  # virtual arrival order
    assert summary["virtual_seconds"] == pytest.approx(max(e["time"] for e in events), abs=0.01)
    with np.load(run_dir / "checkpoint.npz") as checkpoint:
        assert int(checkpoint["version"]) == 20


@pytest.mark.parametrize(
    ("scheduling", "steps"), [('strategy="fedcompass"', 8), ('strategy="fedbuff" compute-aware=true', 12)]
)
def test_compute_aware_scheduling_gives_the_slow_tier_fewer_steps_in_a_real_local_federation(
    tmp_path, no_leftover_processes, scheduling, steps
):
    """FedCompass and compute-aware FedBuff on real SuperNodes: the server times each node's
    round trips and, once it has, plans the low tier (9.2× slower per step) fewer local steps
    than the high tier; every task carries its plan and the run still learns.

    0.5 s per emulated step makes a step's time, not Flower's per-message floor (seconds),
    what the round trips measure. The server steps are enough for the low tier's first task
    (3 steps, ~14 s) to come back and the node to be planned again."""
    q_min, q_max = 1, 3
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=4,
        tiers=["low", "mid", "high", "high"],
        run_config=(
            f"{scheduling} compass-min-steps={q_min} compass-max-steps={q_max} buffer-size=2 concurrency=4 "
            f"max-server-steps={steps} eval-every={steps} emulated-step-seconds=0.5 write-plots=false metrics-port=0"
        ),
    )
    summary = run_local(federation, out=sys.stdout)
    assert summary["server_steps"] == steps
    assert summary["final_accuracy"] > summary["initial_accuracy"] + 0.1

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dispatches = [e for e in events if e["event"] == "dispatch"]
    assert all(q_min <= e["local_steps"] <= q_max for e in dispatches)
    first = {}
    for e in dispatches:
        first.setdefault(e["node"], e)
    assert {e["local_steps"] for e in first.values()} == {q_max}  # no speed known yet: Q_max
    timed: dict[str, list[int]] = {}  # a node's later tasks: planned from its measured speed
    for e in dispatches:
        if e is not first[e["node"]]:
            timed.setdefault(e["tier"], []).append(e["local_steps"])
    assert timed.get("low") and timed.get("high"), f"the low tier was never planned from its speed: {timed}"
    assert np.mean(timed["low"]) < np.mean(timed["high"]), timed
    if "fedcompass" in scheduling:
        closes = [e for e in events if e["event"] == "group-close"]
        assert closes and {e["reason"] for e in closes} <= {"complete", "timer"}
