"""The warm node trainer, driven the way the ClientApp drives it (``client_app.warm.train``) but
without Flower's processes: one trainer serves a node's tasks, its socket is private, a crash or
a hang fails the task in hand with a clear error and the next task gets a new trainer, it leaves
when idle and when its SuperExec is gone, and DP-SGD's ε is exactly the in-process path's.

Each test starts real trainer processes (each imports torch): about a minute in all.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from client_app import trainer_protocol as protocol
from client_app import warm
from client_app.app import train_here
from tests.chaos import running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # real trainer processes
FAST = {"local-steps": 2, "emulated-step-seconds": 0.0}
NODE = {"partition-id": 0, "num-partitions": 3, "device-tier": "high"}


HEAVY = (
    "torch",
    "opacus",
    "sklearn",
    "datasets",
    "flwr_datasets",
    "scipy",
    "pandas",
    "matplotlib",
    "client_app.task",
    "fedbuff.model",
    "fedbuff.run_data",
)


def test_the_per_message_clientapp_imports_flower_numpy_and_the_protocol_only():
    """What Flower loads for every message must not import torch, Opacus or the data stack."""
    probe = f"import sys, client_app.app; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.strip()
    assert loaded == "", f"the per-message ClientApp imports {loaded}"


def initial_arrays() -> list[np.ndarray]:
    from fedbuff.model import ModelSpec, build_model, get_weights

    return get_weights(build_model(64, 42, ModelSpec()))


def task(version: int = 0) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(initial_arrays()), "config": ConfigRecord({"server-version": version})})


def node_context(
    run_id: int = 1, node_id: int = 11, run_config: dict | None = None, node_config: dict | None = None
) -> Context:
    return Context(
        run_id=run_id,
        node_id=node_id,
        node_config={**NODE, **(node_config or {})},
        state=RecordDict(),
        run_config={**FAST, **(run_config or {})},
    )


def trainer_pids(directory: str) -> list[int]:
    """Every trainer that said it serves, from the logs in the trainer directory."""
    found = []
    for log in Path(directory).glob("*.log"):
        found += [int(p) for p in re.findall(r"\(pid (\d+)\)", log.read_text())]
    return found


@pytest.fixture
def parent(no_leftover_processes):
    """A stand-in for the SuperExec: the trainers started in a test watch it and leave with it
    (killed first at teardown, so the leftover check then sees the trainers leave too)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def run_task(
    context: Context, parent: subprocess.Popen, ttl: float = 120.0, idle: float = 60.0, version: int = 0
) -> RecordDict:
    return warm.train(task(version), context, idle, deadline=time.time() + ttl, parent_pid=parent.pid)


def test_one_trainer_serves_every_task_of_a_node_and_a_new_run_gets_its_own(parent, trainer_dir):
    context = node_context()
    replies = [run_task(context, parent, version=v) for v in range(3)]
    assert len(set(trainer_pids(trainer_dir))) == 1
    for reply in replies:
        delta = reply.array_records["arrays"].to_numpy_ndarrays()
        assert [d.shape for d in delta] == [a.shape for a in initial_arrays()]
        assert any(np.abs(d).sum() > 0 for d in delta)
        assert reply.metric_records["metrics"]["num-examples"] > 0
    assert context.state.config_records["device-clock"]["tasks"] == 3  # the state came back
    assert "partition" not in context.state.array_records  # the trainer holds it, not the state

    run_task(node_context(run_id=2), parent)  # a second run on the same node
    run_task(node_context(node_id=12, node_config={"partition-id": 1}), parent)  # another node
    assert len(set(trainer_pids(trainer_dir))) == 3


def test_the_trainer_socket_is_private_to_its_user(parent, trainer_dir):
    run_task(node_context(), parent)
    directory = Path(trainer_dir)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (sock,) = directory.glob("*.sock")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    if os.geteuid() != 0:
        pytest.skip("connecting as another user needs root to switch to nobody")
    attempt = subprocess.run(
        ["/usr/bin/python3", "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({str(sock)!r})"],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr


def test_a_trainer_directory_others_can_enter_is_refused(tmp_path, monkeypatch):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    monkeypatch.setenv(warm.TRAINER_DIR_ENV, str(open_dir))
    with pytest.raises(warm.TrainerError, match="mode 0700"):
        warm.trainer_directory()


def test_a_trainer_refuses_another_run_and_a_task_error_keeps_it_serving(parent, trainer_dir):
    context = node_context(node_config={"test-fault": "raise"})
    with pytest.raises(warm.TrainerError, match="InjectedFault"):
        run_task(context, parent)
    run_task(node_context(), parent)  # the same node and run: the trainer survived the failed task
    assert len(set(trainer_pids(trainer_dir))) == 1
    (sock,) = Path(trainer_dir).glob("*.sock")
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(sock))
        protocol.send_request(connection, protocol.TrainRequest(99, 11, FAST, NODE, task(), RecordDict()))
        response = protocol.read_response(connection)
    assert response.content is None and "serves run 1 on node 11, not run 99" in response.error


def test_a_killed_trainer_fails_its_task_and_the_next_task_gets_a_new_one(parent, trainer_dir):
    slow = node_context(run_config={"emulated-step-seconds": 5.0}, node_config={"device-tier": "low"})
    outcome: dict[str, object] = {}

    def attempt() -> None:
        try:
            outcome["reply"] = run_task(slow, parent)
        except warm.TrainerError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=attempt)
    worker.start()
    log = wait_for(lambda: next(Path(trainer_dir).glob("*.log"), None), 120, "the trainer's log")
    wait_for(lambda: "task 1 started" in log.read_text(), 120, "the trainer to start the task")
    (first,) = trainer_pids(trainer_dir)
    os.kill(first, signal.SIGKILL)
    worker.join(60)
    assert "died during the task" in str(outcome.get("error")), outcome
    reply = run_task(node_context(), parent)  # the same node and run: a new trainer
    assert reply.metric_records["metrics"]["num-examples"] > 0
    assert len(set(trainer_pids(trainer_dir))) == 2


def test_a_trainer_that_outlives_the_ttl_is_stopped_and_the_task_fails(parent, trainer_dir):
    run_task(node_context(), parent)  # warm: the partition is loaded
    (pid,) = trainer_pids(trainer_dir)
    slow = node_context(run_config={"emulated-step-seconds": 30.0}, node_config={"device-tier": "low"})
    started = time.monotonic()
    with pytest.raises(warm.TrainerError, match="did not answer within the task's TTL"):
        run_task(slow, parent, ttl=5.0)
    assert time.monotonic() - started < 15
    wait_for(lambda: not running(pid), 10, "the hung trainer to be stopped")


def test_a_trainer_leaves_when_idle_and_when_its_superexec_is_gone(parent, trainer_dir):
    run_task(node_context(), parent, idle=1.0)
    (idle_pid,) = trainer_pids(trainer_dir)
    wait_for(lambda: not running(idle_pid), 30, "the idle trainer to exit")
    assert not list(Path(trainer_dir).glob("*.sock"))  # it removed its socket

    run_task(node_context(run_id=2), parent)
    (orphan,) = set(trainer_pids(trainer_dir)) - {idle_pid}
    parent.kill()
    wait_for(lambda: not running(orphan), 30, "the trainer to exit after its SuperExec")


def test_dp_sgd_epsilon_on_the_warm_path_equals_the_in_process_path(parent):
    dp = {"dp-sgd": True, "dp-noise-multiplier": 1.1, "seed": 3}
    warm_context, cold_context = node_context(run_config=dp), node_context(run_config=dp, node_id=12)
    warm_eps, cold_eps = [], []
    for version in range(3):
        reply = run_task(warm_context, parent, version=version)
        warm_eps.append(reply.metric_records["metrics"]["dp-epsilon"])
        cold_eps.append(train_here(task(version), cold_context).metric_records["metrics"]["dp-epsilon"])
    assert warm_eps == cold_eps
    assert warm_eps[0] < warm_eps[1] < warm_eps[2]  # the accountant composes across messages
    assert (
        warm_context.state.config_records["dp-sgd-accountant"] == cold_context.state.config_records["dp-sgd-accountant"]
    )


def test_a_trainer_on_its_way_out_is_not_connected_to(tmp_path):
    """A killed trainer's listener outlives its task's connection by a moment; a ClientApp that
    connects then must start a new trainer rather than hand its task to the dying one."""
    assert not warm.process_leaving(os.getpid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30, "a zombie")
    assert warm.process_leaving(zombie.pid)
    zombie.wait()
    assert warm.process_leaving(zombie.pid)  # reaped: gone
    me = str(os.getpid())  # alive for kill(0); its stat line comes from tmp_path
    stat_line = me + " (python3 (trainer)) R 1 42 42 0 -1 {flags} 0 0 0 0 1 1 0 0 20 0 3 0\n"
    (tmp_path / me).mkdir()
    (tmp_path / me / "stat").write_text(stat_line.format(flags=0x400140))
    assert not warm.process_leaving(os.getpid(), proc=tmp_path)
    (tmp_path / me / "stat").write_text(stat_line.format(flags=0x400144))  # PF_EXITING set
    assert warm.process_leaving(os.getpid(), proc=tmp_path)
