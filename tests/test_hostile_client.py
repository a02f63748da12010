"""The hostile ClientApp, rehearsed in process: every lie it tells is refused, clipped or dropped.

The same app runs on a real SuperNode in tests/test_e2e_hostile.py; here it answers a FakeGrid
beside honest in-process clients (real training on real partitions), so the account of every
lie is checked in seconds with the loop, validation and strategy the ServerApp uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedbuff.settings import RunSettings
from server_app.loop import AsyncLoop
from server_app.records import RunRecorder
from strategies import build_strategy
from tests.fakes import FakeGrid
from tests.honest import HonestClients
from tests.hostile_app import client
from tests.hostile_app.outcome import HOSTILE_RUN_CONFIG, check_every_lie_was_refused_clipped_or_dropped

pytestmark = pytest.mark.usefixtures("task_identity")

LIAR = 4


def test_every_lie_of_the_hostile_client_app_is_refused_clipped_or_dropped_and_training_goes_on(tmp_path):
    settings = RunSettings.from_run_config(HOSTILE_RUN_CONFIG)
    honest = HonestClients(settings, num_nodes=3)
    context = Context(run_id=1, node_id=LIAR, node_config={}, state=RecordDict(), run_config={})

    def respond(msg):
        return client.train(msg, context) if msg.metadata.dst_node_id == LIAR else honest(msg)

    strategy = build_strategy(settings, honest.initial(), settings.concurrency)
    loop = AsyncLoop(
        FakeGrid([*honest.node_ids, LIAR], respond),
        strategy,
        settings,
        honest.evaluator(),
        RunRecorder(tmp_path),
        max_num_examples=honest.task.central_data().max_examples,
    )
    loop.run()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert check_every_lie_was_refused_clipped_or_dropped(loop.stats.summary(), events) == LIAR
    assert strategy.version == settings.max_server_steps
    assert all(np.isfinite(a).all() for a in strategy.model)
    assert loop.evaluations[-1].accuracy > loop.evaluations[0].accuracy + 0.2
