"""Shared fixtures: a private FLWR_HOME and a check that no Flower process outlives a test."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWER_PROCESS_MARKERS = ("flower-superlink", "flower-supernode", "flower-superexec",
                          "flwr-serverapp", "flwr-clientapp", "flwr-simulation")


def flower_processes() -> dict[int, str]:
    """Live processes (not zombies) whose command line names a Flower binary."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(marker in cmdline for marker in FLOWER_PROCESS_MARKERS):
            found[int(entry.name)] = cmdline.strip()
    return found


@pytest.fixture(autouse=True)
def flwr_home(tmp_path, monkeypatch):
    """Flower keeps connections and caches under FLWR_HOME: never the user's ~/.flwr."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    return home


@pytest.fixture
def no_leftover_processes():
    """Fail the test if a Flower process it started is still alive 10 s after it ends."""
    before = set(flower_processes())
    yield
    deadline = time.monotonic() + 10
    while True:
        leftover = {pid: cmd for pid, cmd in flower_processes().items() if pid not in before}
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid in leftover:  # do not poison later tests
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not leftover, f"processes left behind: {leftover}"
