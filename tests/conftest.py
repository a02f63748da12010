"""Shared fixtures: a private FLWR_HOME and a check that no Flower process outlives a test."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose requirement this machine lacks; under ``CI=true`` that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true never skips)")
    pytest.skip(reason)


FLOWER_PROCESS_MARKERS = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "flwr-simulation",
    "mask_service",
    "client_app.trainer",
)


def flower_processes(marker: str) -> dict[int, str]:
    """Live processes (not zombies) running a Flower binary with ``marker`` in their environment.

    The marker is an environment variable the test set, inherited by everything it
    starts, so processes of other tests or sessions on the machine are never counted.
    """
    found = {}
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z" or not any(m in cmdline for m in FLOWER_PROCESS_MARKERS):
                continue
            if needle in (entry / "environ").read_bytes():
                found[int(entry.name)] = cmdline.strip()
        except OSError:
            continue
    return found


def pytest_configure(config: pytest.Config) -> None:
    """Data splits cached in a folder of the tests' own, shared by the workers, never ~/.cache."""
    cache = Path(tempfile.gettempdir()) / f"fedbuff-tests-{os.getuid()}" / "partitions"
    os.environ.setdefault("FEDBUFF_CACHE_DIR", str(cache))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests first: they run for minutes, so started early they overlap each other
    and the quick unit tests fill the workers' tails (make test's wall time, not its result)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(autouse=True)
def flwr_home(tmp_path, monkeypatch):
    """Flower keeps connections and caches under FLWR_HOME: never the user's ~/.flwr."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    return home


@pytest.fixture(autouse=True)
def trainer_dir(monkeypatch):
    """Warm trainers' sockets in a private directory of this test's own (short: a Unix socket
    path has ~100 bytes, which pytest's tmp_path can exceed)."""
    directory = tempfile.mkdtemp(prefix="fbt-")
    monkeypatch.setenv("FEDBUFF_TRAINER_DIR", directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def no_leftover_processes(request, monkeypatch):
    """Fail the test if a Flower process it started is still alive 10 s after it ends.

    A test that starts Flower processes must be marked ``e2e`` (``make test-fast`` skips them).
    """
    if request.node.get_closest_marker("e2e") is None:
        pytest.fail(f"{request.node.nodeid} starts Flower processes: mark it (or its module) e2e")
    marker = f"FEDBUFF_TEST_RUN={uuid.uuid4().hex}"
    monkeypatch.setenv("FEDBUFF_TEST_RUN", marker.split("=", 1)[1])
    yield
    deadline = time.monotonic() + 10
    while (leftover := flower_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in leftover:  # do not poison later tests
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    assert not leftover, f"processes left behind: {leftover}"


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps messages with the identity of the running task; play a ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
