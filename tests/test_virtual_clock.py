"""The virtual clock: the strategy sees replies in order of virtual arrival, with the staleness
the device model's schedule implies, whatever order the simulation engine computes them in."""

import json

import numpy as np
import pytest
from flwr.app import Message

from fedbuff import protocol
from fedbuff.device_model import DeviceModel, Jitter
from fedbuff.settings import RunSettings, SettingsError
from fedbuff.task import load_task
from fedbuff_ops.launcher import planned_tiers
from server_app.clock import VirtualClock, VirtualNode
from server_app.loop import AsyncLoop
from server_app.records import RunRecorder
from server_app.virtual import VirtualClockError, batches_per_task, virtual_clock
from strategies import build_strategy
from tests.fakes import FakeGrid, distance_accuracy, half_step, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros(4, np.float32)]
# node id -> (partition, tier); one batch of one second, tier ratios 1 : 2 : 4
NODES = {301: VirtualNode(2, "low", 1), 101: VirtualNode(0, "high", 1), 201: VirtualNode(1, "mid", 1)}
DEVICES = DeviceModel({"high": 1.0, "mid": 2.0, "low": 4.0}, step_seconds=1.0)


class ScrambledGrid(FakeGrid):
    """Answers one task per pull, the most recently pushed first: the opposite of the order in
    which the tasks would finish on any device."""

    def pull_messages(self, message_ids):
        wanted = [m for m in message_ids if m in self._pending]
        return super().pull_messages(wanted[-1:])


def run_virtual(tmp_path, devices=DEVICES, nodes=NODES, **overrides):
    settings = RunSettings(
        **{
            "concurrency": 3,
            "buffer_size": 1,
            "max_server_steps": 7,
            "eval_every": 1,
            "virtual_clock": True,
            **overrides,
        }
    )
    grid = ScrambledGrid(list(nodes), lambda msg: train_reply(msg, half_step, tier="real"))
    clock = VirtualClock(devices, nodes, settings.task_ttl_seconds, payload_bytes=16)
    loop = AsyncLoop(
        grid,
        build_strategy(settings, INITIAL, settings.concurrency),
        settings,
        distance_accuracy,
        events=RunRecorder(tmp_path),
        clock=clock,
    )
    loop.run()
    loop.events.close()
    return loop, [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_replies_are_applied_in_virtual_arrival_order_with_the_schedules_staleness(tmp_path):
    loop, events = run_virtual(tmp_path)
    updates = [(e["tier"], e["staleness"], e["time"]) for e in events if e["event"] == "update"]
    # high takes 1 s, mid 2 s, low 4 s; K = 1, so every update is a server step; at a tie the
    # task dispatched first is applied first, and a freed slot is refilled at once:
    # t=1 high(v0) -> v1, resend high; t=2 mid(v0), high(v1) -> v3; t=3 high(v3);
    # t=4 low(v0), mid(v2), high(v4)
    assert updates == [
        ("high", 0, 1.0),
        ("mid", 1, 2.0),
        ("high", 1, 2.0),
        ("high", 0, 3.0),
        ("low", 4, 4.0),
        ("mid", 3, 4.0),
        ("high", 2, 4.0),
    ]
    assert loop.clock.now() == 4.0
    assert [e["round_trip"] for e in events if e["event"] == "update"] == [1.0, 2.0, 1.0, 1.0, 4.0, 2.0, 1.0]
    dispatches = [(e["time"], e["tier"]) for e in events if e["event"] == "dispatch"]
    assert dispatches[:4] == [(0.0, "high"), (0.0, "mid"), (0.0, "low"), (1.0, "high")]


def test_a_task_the_device_model_makes_outlast_its_ttl_is_a_ttl_drop_in_virtual_time(tmp_path):
    loop, events = run_virtual(tmp_path, task_ttl_seconds=3.0, max_server_steps=6)
    errors = [(e["tier"], e["reason"], e["time"]) for e in events if e["event"] == "error"]
    assert errors and errors[0] == ("low", "ttl-expired", 3.0)
    assert {tier for tier, _, _ in errors} == {"low"}
    assert loop.stats.accepted_by_tier["low"] == 0 and loop.stats.accepted_by_tier["high"] > 0


def test_the_same_seed_gives_the_same_model_bytes_and_history(tmp_path):
    jittery = DeviceModel({"high": 1.0, "mid": 2.0, "low": 4.0}, 1.0, Jitter.parse("lognormal"), seed=7)
    runs = [run_virtual(tmp_path / str(i), devices=jittery, max_server_steps=12) for i in range(2)]
    (a, events_a), (b, events_b) = runs
    assert [x.tobytes() for x in a.strategy.model] == [x.tobytes() for x in b.strategy.model]
    strip = [{k: v for k, v in e.items() if k != "aggregate_seconds"} for e in events_a]
    assert strip == [{k: v for k, v in e.items() if k != "aggregate_seconds"} for e in events_b]
    assert len({e["time"] for e in events_a if e["event"] == "update"}) > 6  # jitter: few ties


def test_batches_per_task_count_as_the_trainer_counts_them():
    settings = RunSettings(batch_size=32, local_epochs=2)
    assert batches_per_task(settings, 100) == 8
    assert batches_per_task(RunSettings(batch_size=32, local_steps=5), 100) == 4
    assert batches_per_task(RunSettings(batch_size=32, local_steps=3), 100) == 3


def test_flowers_own_fedavg_cannot_run_on_the_virtual_clock():
    with pytest.raises(SettingsError, match="virtual-clock"):
        RunSettings(strategy="flower-fedavg", virtual_clock=True)


class QueryGrid:
    """Answers the virtual clock's partition query for each node in ``partitions`` (None: silent)."""

    def __init__(self, partitions):
        self.partitions = partitions

    def get_node_ids(self):
        return list(self.partitions)

    def send_and_receive(self, messages, timeout):
        replies = []
        for msg in messages:
            partition = self.partitions[msg.metadata.dst_node_id]
            if partition is None:
                continue
            config = {"partition-id": partition, "num-partitions": 3}
            reply = Message(protocol.identity_content(config, 100 + 10 * partition), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies


def test_the_clock_gives_each_node_the_tier_and_batches_of_its_partition_and_silent_nodes_no_work():
    settings = RunSettings(tier_mix="high=0.34,mid=0.33,low=0.33", local_epochs=1, batch_size=32)
    task = load_task("digits", {"partitioner": "iid"})
    clock = virtual_clock(QueryGrid({11: 2, 12: 0, 13: None}), settings, task, INITIAL, timeout=5.0)
    tiers = planned_tiers(3, 'tier-mix="high=0.34,mid=0.33,low=0.33" partitioner="iid"')
    # the batches come from the example count each node says it holds
    assert clock.nodes == {
        11: VirtualNode(2, tiers[2], batches_per_task(settings, 120)),
        12: VirtualNode(0, tiers[0], batches_per_task(settings, 100)),
    }
    assert clock.times(11) and not clock.times(13)
    # the duration is the device model's: ratio × batches × emulated-step-seconds, no jitter
    ratio = settings.speed_ratios()[tiers[2]]
    assert clock.duration(11, 0, 0.0) == pytest.approx(ratio * clock.nodes[11].batches * settings.emulated_step_seconds)


def test_a_federation_whose_nodes_all_stay_silent_is_refused_in_one_line():
    with pytest.raises(VirtualClockError, match="none of the 1 node"):
        virtual_clock(QueryGrid({11: None}), RunSettings(), load_task("digits", {}), INITIAL, timeout=1.0)
