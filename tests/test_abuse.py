"""What a hostile client reports about itself cannot wreck the model: bounds, clips and drops.

The reproduction this guards against: with ``example-weight="linear"`` and the default
``buffer-normalization="count"``, one client of a buffer of 3 claiming ``num-examples = 10**15``
with an ordinary delta moved every weight of the model to 1.7e12 in one server step.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedbuff.settings import RunSettings
from server_app.events import Fanout
from server_app.flower_fedavg import CountingGrid
from server_app.loop import AsyncLoop
from server_app.metrics import MetricsExporter
from server_app.records import RunRecorder
from server_app.stats import RunStats
from strategies import ClientUpdate, FedBuff, StrategyOptions, build_strategy
from tests.fakes import FakeGrid, distance_accuracy, error_reply, half_step, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros(4, np.float32)]
LINEAR = {"example_weight": "linear", "buffer_normalization": "count", "buffer_size": 3, "concurrency": 4}
NODES = [1, 2, 3, 4]  # three honest nodes fill a buffer of 3 without the liar


def make_loop(tmp_path, grid, **overrides):
    settings = RunSettings(
        **{"max_server_steps": 4, "eval_every": 1, "error_backoff_seconds": 0.0, "max_wall_seconds": 60.0, **overrides}
    )
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    exporter = MetricsExporter()
    loop = AsyncLoop(
        grid,
        strategy,
        settings,
        distance_accuracy,
        events=Fanout([RunRecorder(tmp_path), exporter]),
        max_num_examples=1437,
    )  # the digits training split, as the ServerApp would pass it
    return loop, exporter


def liar(node: int, respond):
    """Every node answers ``half_step`` with 100 examples, except ``node``, which answers ``respond(msg)``."""

    def answer(msg):
        if msg.metadata.dst_node_id == node:
            return respond(msg)
        return train_reply(msg, half_step, num_examples=100)

    return answer


def sample(exporter, name, **labels):
    return exporter.registry.get_sample_value(name, labels or None)


def events(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


# -- num-examples: refused above the bound, clipped below it ----------------------------------


def test_the_reproduction_one_client_claiming_10_to_the_15_examples_is_refused(tmp_path):
    grid = FakeGrid(NODES, liar(3, lambda msg: train_reply(msg, half_step, num_examples=10**15)))
    loop, exporter = make_loop(tmp_path, grid, **LINEAR)
    loop.run()
    assert loop.strategy.version == 4  # the honest nodes trained on
    assert loop.stats.rejected["num-examples"] >= 1
    assert sample(exporter, "fl_invalid_updates_total", reason="num-examples") >= 1
    # half_step moves every weight half-way to 1.0: the model stays in [0, 1], never near 1.7e12
    assert np.all(np.abs(loop.strategy.model[0]) <= 1.0)


def test_the_reproduction_without_validation_is_clipped_to_ten_typical_clients():
    """Even a claim that reached the strategy (no validation at all) weighs at most
    ``max-example-weight`` typical clients: the step is bounded, not 10**13 times a delta."""
    strategy = FedBuff(
        [np.zeros(4, np.float32)], StrategyOptions(**{k: v for k, v in LINEAR.items() if k != "concurrency"})
    )
    delta = [np.full(4, 0.1, np.float32)]
    receipts = [
        strategy.receive(ClientUpdate(1, delta, 100, 0)),
        strategy.receive(ClientUpdate(2, delta, 100, 0)),
        strategy.receive(ClientUpdate(3, delta, 10**15, 0)),
    ]
    assert [r.weight_clipped for r in receipts] == [False, False, True]
    assert receipts[2].weight == 10.0 and receipts[2].stepped
    # (1 + 1 + 10) / 3 · 0.1, subtracted: the liar counts as ten clients, no more
    np.testing.assert_allclose(strategy.model[0], -0.4, rtol=1e-6)


def test_a_claim_within_the_bound_is_accepted_with_its_weight_clipped_and_counted(tmp_path):
    grid = FakeGrid(NODES, liar(3, lambda msg: train_reply(msg, half_step, num_examples=1437)))
    loop, exporter = make_loop(tmp_path, grid, **LINEAR)
    loop.run()
    clipped = [e for e in events(tmp_path) if e["event"] == "update" and e.get("weight_clipped")]
    assert clipped and all(e["weight"] <= 10.0 for e in clipped)
    assert loop.stats.clipped["example-weight"] == len(clipped)
    assert sample(exporter, "fl_example_weight_clips_total") == len(clipped)
    assert loop.stats.summary()["clipped"] == {"example-weight": len(clipped)}
    assert not loop.stats.rejected  # within the bound: used, only not believed in full


@pytest.mark.parametrize("count", [0, -5, 2.5, [100]])
def test_a_count_that_is_not_a_positive_int_is_refused(tmp_path, count):
    grid = FakeGrid(NODES, liar(3, lambda msg: train_reply(msg, half_step, num_examples=count)))
    loop, _ = make_loop(tmp_path, grid, **LINEAR)
    loop.run()
    assert loop.stats.rejected["num-examples"] >= 1


# -- optional fields: dropped and counted, never observed ------------------------------------


def lying_fields(msg: Message) -> Message:
    dispatched = msg.content.array_records["arrays"].to_numpy_ndarrays()
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(half_step(dispatched)),
                "metrics": MetricRecord(
                    {"num-examples": 100, "train-seconds": math.nan, "train-loss": math.inf, "dp-epsilon": -1.0}
                ),
                "device": MetricRecord({"device-tier": 3.0}),  # the right name, the wrong record type
            }
        ),
        reply_to=msg,
    )


def test_invalid_optional_fields_are_dropped_and_counted_and_the_update_still_used(tmp_path):
    loop, exporter = make_loop(tmp_path, FakeGrid(NODES, liar(3, lying_fields)))
    loop.run()
    lies = [e for e in events(tmp_path) if e["event"] == "update" and e.get("dropped_fields")]
    assert lies and all(e["outcome"] == "accepted" for e in lies)
    assert all(set(e["dropped_fields"]) == {"train-seconds", "train-loss", "dp-epsilon", "device"} for e in lies)
    assert all("train_seconds" not in e and "dp_epsilon" not in e for e in lies)
    for field in ("train-seconds", "train-loss", "dp-epsilon", "device"):
        assert loop.stats.dropped_fields[field] == len(lies)
        assert sample(exporter, "fl_reply_fields_dropped_total", field=field) == len(lies)
    values = [s.value for metric in exporter.registry.collect() for s in metric.samples]
    assert all(math.isfinite(v) for v in values)  # no series poisoned
    assert sample(exporter, "fl_client_dp_epsilon", device_tier="unknown") == 0  # no negative ε shown


# -- the other strategies that take a claimed count -------------------------------------------


class RoundGrid:
    """What Flower's FedAvg sees through ``send_and_receive``: one reply per message."""

    def __init__(self, respond):
        self.respond = respond

    def send_and_receive(self, messages, *, timeout=None):
        return [self.respond(m) for m in messages]


def test_flowers_fedavg_never_sees_a_reply_above_the_bound(tmp_path):
    def respond(msg):
        if msg.metadata.dst_node_id == 3:
            return train_reply(msg, lambda a: a, num_examples=10**15)
        if msg.metadata.dst_node_id == 4:
            return error_reply(msg, ErrorCode.CLIENT_APP_CRASHED)
        return train_reply(msg, lambda a: a, num_examples=200)

    stats = RunStats()
    grid = CountingGrid(RoundGrid(respond), stats, RunRecorder(tmp_path), 0.0, max_examples=1437)
    content = RecordDict({"arrays": ArrayRecord(INITIAL), "config": ConfigRecord({})})
    messages = []
    for node in (1, 2, 3, 4):
        message = Message(content, dst_node_id=node, message_type="train")
        message.metadata.__dict__["_message_id"] = str(node)
        messages.append(message)
    passed = grid.send_and_receive(messages)
    assert sorted(m.metadata.src_node_id for m in passed if not m.has_error()) == [1, 2]
    assert sum(m.has_error() for m in passed) == 1  # errors still reach FedAvg, which counts them
    assert stats.rejected["num-examples"] == 1
