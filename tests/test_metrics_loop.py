"""The exporter fed by the real asynchronous loop (over the in-process FakeGrid) agrees with
the loop's own books, and the run history it wrote next to it plots."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.constant import ErrorCode

from server_app.events import Fanout
from server_app.metrics import OUTCOMES, TIERS, MetricsConfig, MetricsExporter
from server_app.plots import write_plots
from tests.fakes import FakeGrid, error_reply, half_step, train_reply
from tests.test_loop import make_loop

pytestmark = pytest.mark.usefixtures("task_identity")

TIER_OF = {1: "high", 2: "mid", 3: "low"}


def respond(msg):
    node = msg.metadata.dst_node_id
    if node == 9:
        return error_reply(msg, ErrorCode.MESSAGE_UNAVAILABLE)
    if node == 4:
        return train_reply(msg, lambda arrays: [np.full_like(a, np.nan) for a in arrays], tier="mid")
    return train_reply(msg, half_step, tier=TIER_OF[node])


def test_exporter_matches_the_loop_books(tmp_path):
    exporter = MetricsExporter(MetricsConfig(port=0))
    loop = make_loop(tmp_path, FakeGrid([1, 2, 3, 4, 9], respond), concurrency=5, max_server_steps=6)
    loop.events = Fanout([loop.events, exporter])
    loop.run()
    stats = loop.stats

    def value(name, **labels):
        return exporter.registry.get_sample_value(name, labels)

    assert value("fl_model_version") == loop.strategy.version == value("fl_server_steps_total")
    assert value("fl_eval_accuracy_ratio") == loop.evaluations[-1].accuracy
    assert sum(value("fl_tasks_dispatched_total", device_tier=t) for t in TIERS) == stats.dispatched
    assert sum(value("fl_tasks_in_flight", device_tier=t) for t in TIERS) == len(loop.tasks)
    assert sum(value("fl_connected_nodes", device_tier=t) for t in TIERS) == len(loop.nodes.online)
    for tier in ("high", "mid", "low"):
        assert value("fl_updates_total", outcome="accepted", device_tier=tier) == stats.accepted_by_tier[tier]
    assert value("fl_invalid_updates_total", reason="non-finite") == stats.rejected["non-finite"] > 0
    assert (
        sum(value("fl_stragglers_total", reason="ttl", device_tier=t) for t in TIERS) == stats.errors["ttl-expired"] > 0
    )
    replies = sum(value("fl_updates_total", outcome=o, device_tier=t) for o in OUTCOMES for t in TIERS)
    assert replies == stats.accepted + stats.refused + sum(stats.errors.values())
    assert value("fl_round_trip_seconds_count", device_tier="high") > 0

    loop.events.sinks[0].close()
    assert write_plots(tmp_path)
