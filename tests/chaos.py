"""Helpers of the chaos tests: watch a run folder, signal SuperNodes, find the ServerApp process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from fedbuff_ops.launcher import RunningFederation
from tests.conftest import flower_processes

T = TypeVar("T")


def events(run_dir: Path) -> list[dict]:
    """Every complete line of the run's ``metrics.jsonl`` (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.5) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def submit(running: RunningFederation, log: Path, run_config: str = "") -> subprocess.Popen[bytes]:
    """Start ``flwr run --stream`` in the background, in the federation's process group (stopped
    with it); its output, the ServerApp's log, goes to ``log``."""
    return running.group.start(log.stem, running.run_argv(run_config), running.env, log)


def signal_node(running: RunningFederation, index: int, sig: signal.Signals) -> None:
    """Send ``sig`` to SuperNode ``index`` and everything it started (its SuperExec, ClientApps)."""
    os.killpg(running.supernodes[index].pid, sig)


def signal_node_apps(running: RunningFederation, index: int, sig: signal.Signals) -> None:
    """Send ``sig`` to what SuperNode ``index`` started (its SuperExec and ClientApp), not to the
    SuperNode itself: a device hung in training whose daemon still sends heartbeats."""
    node = running.supernodes[index].pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == node:
            continue
        try:
            pgid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if pgid == node:
                os.kill(int(entry.name), sig)
        except (OSError, ValueError, IndexError):
            continue


def serverapp_pids() -> list[int]:
    """The ``flwr-serverapp`` processes this test started (found through its environment marker)."""
    marker = "FEDBUFF_TEST_RUN=" + os.environ["FEDBUFF_TEST_RUN"]
    return [pid for pid, cmdline in flower_processes(marker).items() if "flwr-serverapp" in cmdline]


def end_run(run: subprocess.Popen[bytes]) -> None:
    """End a run mid-way as ``flwr stop`` would: SIGTERM its ServerApp (Flower's graceful exit),
    wait for it, then stop the ``flwr run`` that streamed it."""
    for pid in serverapp_pids():
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not serverapp_pids(), 60, "the ServerApp to exit after SIGTERM")
    run.kill()
    run.wait()


def step_versions(found: list[dict]) -> list[int]:
    return [e["version"] for e in found if e["event"] == "step"]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """The ServerApp's live metrics: ``(sample name, labels) -> value``; empty while unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def buffer_fill(found: list[dict]) -> int:
    """How many updates the server's buffer holds: the fill the last update left, unless a flush
    (a step, refused or failed, empties the buffer) came after it. Dispatches change nothing."""
    for event in reversed(found):
        if event["event"] in ("step", "step-refused", "flush-failed"):
            return 0
        if event["event"] == "update":
            return int(event.get("buffer_fill", 0))
    return 0


def pending(found: list[dict], node: int) -> bool:
    """Whether ``node`` has a task in flight: every dispatch ends in one update, invalid or error."""
    replies = ("update", "invalid", "error")
    return sum((e["event"] == "dispatch") - (e["event"] in replies) for e in found if e.get("node") == node) > 0


def nodes_of_tier(found: list[dict], tier: str) -> set[int]:
    """Node ids the server has learned (from their replies) to be of ``tier``."""
    return {e["node"] for e in found if e["event"] == "update" and e["tier"] == tier}
