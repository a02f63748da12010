"""The launcher's own ``flwr-clientapp`` (Flower's command without the SuperNode daemon's imports)
and ``flwr-simulation`` (Flower's, with a message sweep that asks only nodes with work)."""

from __future__ import annotations

import subprocess
import sys
import threading
from queue import Queue
from types import SimpleNamespace

from fedbuff_ops.launcher import LEAN_CLIENTAPP_ENV, find_binary, lean_clientapp_dir
from fedbuff_ops.simulation_engine import sweep_waiting_nodes
from tests.chaos import wait_for


def test_the_lean_command_is_flowers_own_parser(tmp_path):
    (folder,) = lean_clientapp_dir(tmp_path)
    lean = subprocess.run([f"{folder}/flwr-clientapp", "--help"], capture_output=True, text=True, timeout=60)
    flowers = subprocess.run([find_binary("flwr-clientapp"), "--help"], capture_output=True, text=True, timeout=60)
    assert lean.returncode == flowers.returncode == 0, lean.stderr
    assert lean.stdout.replace("fedbuff", "") == flowers.stdout.replace("fedbuff", "")
    assert "--runtime-api-address" in lean.stdout and "--token" in lean.stdout


def test_it_leaves_out_the_supernode_daemon():
    probe = (
        "import sys; from fedbuff_ops.lean_clientapp import flwr_clientapp_command; flwr_clientapp_command(); "
        "print(sorted(m for m in ('flwr.supernode.cli', 'sqlalchemy', 'alembic') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[]"


def test_it_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(LEAN_CLIENTAPP_ENV, "0")
    assert lean_clientapp_dir(tmp_path) == []
    assert not (tmp_path / "lean-bin").exists()


def test_the_simulation_command_is_flowers_own_parser(tmp_path):
    (folder,) = lean_clientapp_dir(tmp_path)
    ours = subprocess.run([f"{folder}/flwr-simulation", "--help"], capture_output=True, text=True, timeout=60)
    flowers = subprocess.run([find_binary("flwr-simulation"), "--help"], capture_output=True, text=True, timeout=60)
    assert ours.returncode == flowers.returncode == 0, ours.stderr
    assert ours.stdout == flowers.stdout


class FakeLinkState:
    """The parts of Flower's in-memory LinkState the sweep reads, counting who was asked."""

    def __init__(self, messages):
        self.lock = threading.Lock()
        self.message_ins_store = {str(i): m for i, m in enumerate(messages)}
        self.asked = []

    def get_message_ins(self, node_id, limit):
        self.asked.append(node_id)
        found = [m for m in self.message_ins_store.values() if m.metadata.dst_node_id == node_id]
        found = [m for m in found if m.metadata.delivered_at == ""][:limit]
        for m in found:
            m.metadata.delivered_at = "now"
        return found


def message(dst: int, delivered: str = ""):
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, delivered_at=delivered))


def test_the_sweep_asks_only_nodes_with_a_message_waiting_in_flowers_node_order():
    state = FakeLinkState([message(7), message(3), message(3), message(5, delivered="earlier")])
    queue, stop = Queue(), threading.Event()
    nodes = {n: n for n in range(1, 1001)}  # a thousand nodes, two with work
    sweeper = threading.Thread(target=sweep_waiting_nodes, args=(state, queue, nodes, stop), kwargs={"flowers": None})
    sweeper.start()
    wait_for(lambda: queue.qsize() == 3, 10, "the three waiting messages")
    stop.set()
    sweeper.join(5)
    assert [queue.get().metadata.dst_node_id for _ in range(3)] == [3, 7, 3]
    assert set(state.asked) == {3, 7}  # never the 998 idle nodes, nor 5 (its message is out already)


def test_a_state_that_does_not_say_who_waits_gets_flowers_sweep():
    called = []
    sweep_waiting_nodes(object(), Queue(), {}, threading.Event(), flowers=lambda *args: called.append(args))
    assert len(called) == 1
