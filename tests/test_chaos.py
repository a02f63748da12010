"""Chaos: what real deployments throw at a federation, on real Flower processes on localhost.

Each test starts a real SuperLink and SuperNodes (``fedbuff_ops.launcher.start_federation``),
breaks something on purpose (SIGKILL, SIGSTOP, a broken client), and asserts on the run
folder: the final state and the counters. The network cut runs across Linux network
namespaces (tests/netns.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedbuff_ops.launcher import (
    CONNECTION,
    LocalFederation,
    ProcessGroup,
    find_binary,
    free_port,
    start_federation,
    write_connection,
)
from tests import netns
from tests.chaos import (
    buffer_fill,
    end_run,
    events,
    nodes_of_tier,
    pending,
    sample,
    scrape,
    serverapp_pids,
    signal_node,
    signal_node_apps,
    step_versions,
    submit,
    wait_for,
)
from tests.conftest import ROOT, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

QUIET = "metrics-enabled=false write-plots=false"
BAD_REPLY_REASONS = ("non-finite", "shape", "dtype", "array-count", "norm", "oversize")


def test_a_killed_serverapp_resumes_from_its_last_good_checkpoint_without_double_counting(
    tmp_path, no_leftover_processes
):
    run_dir = tmp_path / "run"
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=3,
        tiers=["high"],
        run_config=f"buffer-size=2 concurrency=3 checkpoint-every=1 eval-every=2 max-server-steps=40 {QUIET}",
    )
    with start_federation(federation, out=sys.stdout) as running:
        first = submit(running, tmp_path / "first.log")

        def mid_buffer_after_two_checkpoints() -> bool:
            found = events(run_dir)
            return len(step_versions(found)) >= 2 and buffer_fill(found) > 0

        # the fill lasts from one update to the next, so look often
        wait_for(mid_buffer_after_two_checkpoints, 600, "version 2 and a part-filled buffer", poll=0.05)
        (pid,) = serverapp_pids()
        os.kill(pid, signal.SIGKILL)
        first.kill()  # `flwr run --stream` would wait for a run that never finishes
        first.wait()
        before_crash = events(run_dir)
        crashed_at = step_versions(before_crash)[-1]
        with np.load(run_dir / "checkpoint.prev.npz") as previous:
            resumed_version = int(previous["version"])
        # The newest checkpoint is damaged as a crash mid-copy would leave it: cut in half.
        latest = run_dir / "checkpoint.npz"
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

        target = resumed_version + 2
        second = submit(running, tmp_path / "second.log", f'resume-from="{run_dir}" max-server-steps={target}')
        assert second.wait(timeout=600) == 0
        output = (tmp_path / "second.log").read_text()

    assert "checkpoint.npz" in output and ("unreadable" in output or "SHA-256" in output)
    assert f"checkpoint.prev.npz (version {resumed_version})" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["server_steps"] == target
    after = events(run_dir)[len(before_crash) :]
    (resume,) = [e for e in after if e["event"] == "resume"]
    assert resume["version"] == resumed_version
    assert step_versions(after) == list(range(resumed_version + 1, target + 1))
    # no double counting: the checkpoint's accepted updates plus those accepted since
    accepted_since = sum(1 for e in after if e["event"] == "update" and e["outcome"] == "accepted")
    assert summary["updates_accepted"] == resume["accepted"] + accepted_since
    with np.load(run_dir / "checkpoint.npz") as checkpoint:
        assert int(checkpoint["version"]) == target
    assert crashed_at > resumed_version  # the steps after the last good checkpoint were redone


def test_killing_the_slow_tier_and_broken_clients_leave_training_going(tmp_path, no_leftover_processes):
    """SIGKILL both low-tier SuperNodes mid-task while two clients send every kind of bad reply."""
    run_dir, port = tmp_path / "run", free_port()
    # the broken clients (mid) walk through client_app.faults.CYCLE from their partition ids, 0 and 4:
    # four replies each cover all eight kinds
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=6,
        tiers=["mid", "high", "high", "low", "mid", "low"],
        node_overrides={0: 'test-fault="cycle"', 4: 'test-fault="cycle"'},
        run_config=(
            "buffer-size=2 concurrency=4 tasks-per-node=2 local-steps=5 eval-every=2 "
            "max-server-steps=1000 max-wall-seconds=900 error-backoff-seconds=1.0 "
            f"error-backoff-max-seconds=4.0 metrics-port={port} write-plots=false"
        ),
    )
    with start_federation(federation, out=sys.stdout) as running:
        run = submit(running, tmp_path / "run.log")

        def both_low_nodes_busy() -> set[int] | None:
            found = events(run_dir)
            low = nodes_of_tier(found, "low")
            return low if len(low) == 2 and all(pending(found, n) for n in low) else None

        low = wait_for(both_low_nodes_busy, 400, "both low-tier nodes to contribute and hold a task")
        killed_at_version = step_versions(events(run_dir))[-1]
        for index in (3, 5):
            signal_node(running, index, signal.SIGKILL)

        def first_gone(found: list[dict]) -> dict[int, float]:
            """When each low node was first called gone: retired (a drop-out) or left (went offline)."""
            gone: dict[int, float] = {}
            for e in found:
                if e["event"] == "node" and e["state"] in ("retired", "left") and e["node"] in low:
                    gone.setdefault(e["node"], e["time"])
            return gone

        def low_errors(found: list[dict]) -> list[dict]:
            return [e for e in found if e["event"] == "error" and e["node"] in low]

        def tier_gone() -> dict | None:
            # A reply already at the SuperLink when the SIGKILL hit is still pulled as an update, so
            # a node may only ever "leave", without a drop-out: wait for both nodes gone, none of
            # their tasks in flight, and the drop-out counter agreeing with the error events.
            found = events(run_dir)
            metrics = scrape(port)
            connected = sample(metrics, "fl_connected_nodes", device_tier="low")
            dropped = sample(metrics, "fl_dropouts_total", reason="node-unavailable", device_tier="low")
            settled = (
                connected == 0
                and len(first_gone(found)) == 2
                and not any(pending(found, n) for n in low)
                and dropped == len(low_errors(found)) > 0
            )
            return metrics if settled else None

        metrics = wait_for(tier_gone, 240, "the low tier's drop-outs and fl_connected_nodes{low} == 0")

        def every_fault_seen_three_more_steps_and_in_flight_back() -> bool:
            found = events(run_dir)
            refused = {e["reason"] for e in found if e["event"] in ("invalid", "error")}
            gone = first_gone(found)
            # in flight returns to the target (4) once the whole tier is gone
            refilled = len(gone) == 2 and any(
                e["event"] == "dispatch" and e["time"] > max(gone.values()) and e["in_flight"] == 4 for e in found
            )
            return (
                step_versions(found)[-1] >= killed_at_version + 3
                and refilled
                and refused >= {*BAD_REPLY_REASONS, "client-raised"}
            )

        wait_for(
            every_fault_seen_three_more_steps_and_in_flight_back,
            300,
            "three more server steps without the low tier, in flight back at 4, every kind of bad reply",
        )
        end_run(run)
        found = events(run_dir)

    # the slow tier: its lost tasks failed as drop-outs, both nodes went, nothing accepted since
    dropouts = low_errors(found)
    assert dropouts and all(e["reason"] == "node-unavailable" for e in dropouts), dropouts
    # a reply already on its way when the SIGKILL hit may still land; nothing after its node went
    gone = first_gone(found)
    low_updates = [e for e in found if e["event"] == "update" and e["tier"] == "low"]
    assert not any(e["time"] > gone[e["node"]] for e in low_updates)
    assert sample(metrics, "fl_updates_total", outcome="accepted", device_tier="low") == len(low_updates)
    # the broken clients: every kind refused for its reason, their raise counted, both backed off
    invalid = Counter(e["reason"] for e in found if e["event"] == "invalid")
    assert all(invalid[reason] >= 1 for reason in BAD_REPLY_REASONS), invalid
    assert any(e["event"] == "error" and e["reason"] == "client-raised" for e in found)
    backed_off = {e["node"] for e in found if e["event"] == "node" and e["state"] == "backed-off"}
    assert len(backed_off) == 2
    assert sample(metrics, "fl_node_backoffs_total", device_tier="unknown") >= 2
    # ...and none of it reached the model: only good nodes' updates were taken, the model is finite
    assert not backed_off & {e["node"] for e in found if e["event"] == "update"}
    with np.load(run_dir / "checkpoint.npz") as checkpoint:  # written on SIGTERM, at the last step
        assert int(checkpoint["version"]) == step_versions(found)[-1]
        assert all(np.isfinite(checkpoint[k]).all() for k in checkpoint.files if k.startswith("arr_"))
    evaluations = [e["accuracy"] for e in found if e["event"] == "eval"]
    assert evaluations[-1] > evaluations[0] + 0.2


def test_a_node_stopped_past_the_ttl_is_a_straggler_then_contributes_again(tmp_path, no_leftover_processes):
    """SIGSTOP a node's SuperExec and ClientApp (training hangs) past the TTL, then SIGCONT them.

    The SuperNode daemon itself keeps sending heartbeats, so the SuperLink never calls the node
    gone and the TTL alone decides; that leaves the TTL room for a busy machine.
    """
    run_dir, port = tmp_path / "run", free_port()
    federation = LocalFederation(
        app_dir=ROOT,
        run_dir=run_dir,
        num_nodes=3,
        tiers=["high", "high", "mid"],
        run_config=(
            "buffer-size=2 concurrency=3 local-steps=5 eval-every=5 task-ttl-seconds=45 "
            f"max-server-steps=1000 max-wall-seconds=900 metrics-port={port} write-plots=false"
        ),
    )
    with start_federation(federation, out=sys.stdout) as running:
        run = submit(running, tmp_path / "run.log")

        def mid_node_busy() -> int | None:
            found = events(run_dir)
            mid = nodes_of_tier(found, "mid")
            return next((n for n in mid if pending(found, n)), None)

        mid = wait_for(mid_node_busy, 400, "the mid-tier node to contribute and hold a task")
        seen = len(events(run_dir))
        signal_node_apps(running, 2, signal.SIGSTOP)
        try:
            wait_for(
                lambda: any(
                    e["event"] == "error" and e["node"] == mid and e["reason"] == "ttl-expired"
                    for e in events(run_dir)[seen:]
                ),
                90,
                "the stopped node's task to expire",
            )
        finally:
            signal_node_apps(running, 2, signal.SIGCONT)
        resumed_at = events(run_dir)[-1]["time"]
        try:
            wait_for(
                lambda: any(
                    e["event"] == "update" and e["node"] == mid and e["time"] > resumed_at for e in events(run_dir)
                ),
                300,
                "an update from the node after SIGCONT",
            )
        except AssertionError as err:  # say what the node did instead
            since = [e for e in events(run_dir) if e.get("node") == mid and e["time"] >= resumed_at - 60]
            log = running.federation.logs / "supernode-2.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"{err}\nnode {mid} since SIGCONT-60s: {since}\n{log.name}:\n{tail}") from None
        metrics = scrape(port)
        found = events(run_dir)
        end_run(run)

    assert sample(metrics, "fl_stragglers_total", reason="ttl", device_tier="mid") >= 1
    mine = [e for e in found if e.get("node") == mid]
    assert {e["reason"] for e in mine if e["event"] == "error"} == {"ttl-expired"}  # never called gone
    assert not any(e["event"] == "node" and e["state"] == "retired" for e in mine)
    # the reply it finished after SIGCONT was refused by the SuperLink (expired): each of the
    # node's tasks ended once at most, as an expiry or as one update
    ended = sum(1 for e in mine if e["event"] in ("update", "invalid", "error"))
    assert ended <= sum(1 for e in mine if e["event"] == "dispatch")


def test_a_node_cut_off_the_network_rejoins_and_contributes_again(tmp_path, no_leftover_processes):
    """Three namespaces on one switch; node-1's cable is pulled for 20 s, then put back."""
    reason = netns.missing_requirements()
    if reason is not None:
        unavailable(f"the network-cut test: {reason}")
    net, group = netns.Network(), ProcessGroup()
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "PATH": path, "PYTHONUNBUFFERED": "1"}
    try:
        net.open()
        link = net.add_host("superlink")
        nodes = [net.add_host(f"node-{i}") for i in range(2)]
        address = f"{link.address}:8000"
        group.start(
            "superlink",
            link.exec_argv(
                [
                    find_binary("flower-superlink"),
                    "--insecure",
                    "--host",
                    link.address,
                    "--port",
                    "8000",
                    "--disable-runtime-dependency-installation",
                ]
            ),
            env,
            logs / "superlink.log",
        )
        health = link.exec_argv(
            [sys.executable, "-c", f"import urllib.request as u; u.urlopen('http://{address}/health')"]
        )
        wait_for(
            lambda: subprocess.run(health, capture_output=True, timeout=10).returncode == 0,
            60,
            "the SuperLink in its namespace",
        )
        for i, host in enumerate(nodes):
            group.start(
                host.name,
                host.exec_argv(
                    [
                        find_binary("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "9094",
                        "--node-config",
                        f'partition-id={i} num-partitions=2 device-tier="high"',
                    ]
                ),
                env,
                logs / f"{host.name}.log",
            )
        write_connection(tmp_path / "flwr-home", 0)
        config = tmp_path / "flwr-home" / "config.toml"
        config.write_text(config.read_text().replace("127.0.0.1:0", address))
        run = group.start(
            "flwr-run",
            link.exec_argv(
                [
                    find_binary("flwr"),
                    "run",
                    str(ROOT),
                    CONNECTION,
                    "--stream",
                    "--run-config",
                    f'run-dir="{run_dir}" buffer-size=2 concurrency=2 local-steps=5 eval-every=5 max-server-steps=1000 '
                    f"max-wall-seconds=600 metrics-enabled=false write-plots=false",
                ]
            ),
            env,
            logs / "run.log",
        )
        cut = int(
            wait_for(
                lambda: re.search(r"SuperNode ID: (\d+)", (logs / "node-1.log").read_text()), 60, "node-1's id"
            ).group(1)
        )
        wait_for(
            lambda: (
                cut in {e["node"] for e in events(run_dir) if e["event"] == "update"} and pending(events(run_dir), cut)
            ),
            400,
            "node-1 to contribute and hold a task",
        )
        net.unplug("node-1")
        time.sleep(20)  # short of the ~40 s after which the SuperLink would call the node gone
        net.plug("node-1")
        plugged_at = events(run_dir)[-1]["time"]
        wait_for(
            lambda: any(
                e["event"] == "update" and e["node"] == cut and e["time"] > plugged_at for e in events(run_dir)
            ),
            240,
            "an update from node-1 after the cable is back",
        )
        found = events(run_dir)
        assert run.poll() is None, (logs / "run.log").read_text()[-3000:]
        end_run(run)
    finally:
        group.stop_all()
        net.close()
    assert not net.leftovers()

    steps = step_versions(found)
    assert steps == list(range(1, len(steps) + 1))  # every version once, in order
    mine = [e for e in found if e.get("node") == cut]
    assert not any(e["event"] == "node" and e["state"] == "retired" for e in mine)
    ended = sum(1 for e in mine if e["event"] in ("update", "invalid", "error"))
    assert ended <= sum(1 for e in mine if e["event"] == "dispatch")  # no task answered twice
    assert not any(e["event"] == "invalid" and e["reason"] == "unknown-task" for e in found)
