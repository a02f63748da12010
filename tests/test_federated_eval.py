"""Federated evaluation (server_app/federated_eval.py) in the loop, against a scripted Grid: the
nodes evaluate on their own held-out data, the server averages example-weighted and per tier,
failures are counted and never hold training up, and a target can be reached on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from fedbuff import protocol
from fedbuff.settings import RunSettings, SettingsError
from fedbuff.task import Metric
from server_app.federated_eval import FederatedEvaluator, read_reply
from server_app.loop import AsyncLoop, Target
from server_app.records import RunRecorder
from strategies import build_strategy
from tests.fakes import FakeGrid, error_reply, half_step, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
METRICS = (Metric("accuracy"), Metric("loss", higher_is_better=False))
TIERS = {1: "high", 2: "high", 3: "low", 4: "low"}
HELD_OUT = {1: 10, 2: 30, 3: 20, 4: 40}  # each node's held-out examples


def node_accuracy(node: int, arrays: list[np.ndarray]) -> float:
    """What node ``node`` measures on its own data: closer to the all-ones model is better; the
    low tier's data are harder."""
    closeness = float(max(0.0, 1.0 - np.abs(arrays[0] - 1.0).mean()))
    return closeness - (0.2 if TIERS[node] == "low" else 0.0)


def responder(fail: set[int] = frozenset(), silent: set[int] = frozenset()):
    def respond(msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type != MessageType.EVALUATE:
            return train_reply(msg, half_step, tier=TIERS[node])
        if node in silent:
            return None
        if node in fail:
            return error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
        arrays = msg.content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
        accuracy = node_accuracy(node, arrays)
        content = protocol.evaluation_content(HELD_OUT[node], {"accuracy": accuracy, "loss": 1 - accuracy}, TIERS[node])
        return Message(content, reply_to=msg)

    return respond


def make_loop(tmp_path, grid, fraction=1.0, ttl=120.0, **overrides):
    settings = RunSettings(
        **{
            "concurrency": 4,
            "buffer_size": 2,
            "max_server_steps": 6,
            "eval_every": 2,
            "task_ttl_seconds": ttl,
            **overrides,
        }
    )
    federated = FederatedEvaluator(grid, METRICS, fraction, settings.task_ttl_seconds, max_examples=1000)
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    target = Target.of(settings, METRICS)
    loop = AsyncLoop(
        grid, strategy, settings, lambda arrays: {}, RunRecorder(tmp_path), target=target, federated=federated
    )
    return loop, federated


def events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_the_nodes_evaluate_and_the_server_averages_example_weighted_and_per_tier(tmp_path):
    grid = FakeGrid(TIERS, responder())
    loop, federated = make_loop(tmp_path, grid)
    assert loop.run().startswith("max-server-steps")

    versions = [result.version for result in federated.results]
    assert versions == [0, 2, 4, 6]  # at start, every eval-every steps, and the last model
    last = federated.results[-1]
    assert (last.nodes, last.examples, last.failed) == (4, 100, 0)
    model = loop.strategy.model
    expected = sum(HELD_OUT[n] * node_accuracy(n, model) for n in TIERS) / 100
    assert last.metrics["accuracy"] == pytest.approx(expected)
    high = (10 * node_accuracy(1, model) + 30 * node_accuracy(2, model)) / 40
    assert last.metrics_by_tier["high"]["accuracy"] == pytest.approx(high)
    assert last.metrics_by_tier["low"]["accuracy"] == pytest.approx(high - 0.2)
    # the run reports it: the evaluation of each version, the step lines' source, the history
    assert loop.evaluations[-1].federated == last.metrics
    assert loop.evaluations[-1].accuracy == pytest.approx(expected)
    assert loop.evaluations[-1].tier_accuracy["low"] == pytest.approx(high - 0.2)
    history = [e for e in events(tmp_path) if e["event"] == "federated-eval"]
    assert [e["version"] for e in history] == versions and history[-1]["nodes"] == 4
    assert loop.evaluations[-1].accuracy > loop.evaluations[0].accuracy


def test_a_share_of_the_nodes_is_asked_idle_ones_first():
    grid = FakeGrid(TIERS, responder())
    federated = FederatedEvaluator(grid, METRICS, 0.5, 120.0, max_examples=1000)
    federated.request(3, RecordDict({protocol.ARRAYS: ArrayRecord(INITIAL)}))
    federated.start_due(online={1, 2, 3, 4}, training={1: 1, 2: 1, 4: 2})
    asked = [m.metadata.dst_node_id for m in grid.pushed]
    assert asked == [3, 1]  # half the nodes: the idle one, then the least loaded
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in grid.pushed)
    federated.request(4, RecordDict({protocol.ARRAYS: ArrayRecord(INITIAL)}))
    federated.start_due(online={1, 2, 3, 4}, training={})
    assert len(grid.pushed) == 2  # one evaluation at a time: the next waits for this one's replies
    federated.take(grid.pull_messages(federated.waiting()))
    assert [r.version for r in federated.results] == [3]
    federated.start_due(online={1, 2, 3, 4}, training={})
    assert len(grid.pushed) == 4


def test_a_failing_or_silent_node_is_counted_and_training_goes_on(tmp_path):
    grid = FakeGrid(TIERS, responder(fail={3}, silent={4}))
    loop, federated = make_loop(tmp_path, grid, ttl=0.5, max_server_steps=4)
    assert loop.run().startswith("max-server-steps")
    assert loop.strategy.version == 4  # training never waited for an evaluation
    assert federated.failures["error 2"] >= 1 and federated.failures["late"] >= 1
    for result in federated.results:
        assert (result.nodes, result.failed) == (2, 2)
        assert set(result.metrics_by_tier) == {"high"}
    assert loop.stats.errors == {}  # evaluation failures are not training errors


def test_a_target_is_reached_on_the_federated_metric_when_the_server_holds_no_data(tmp_path):
    grid = FakeGrid(TIERS, responder())
    loop, _ = make_loop(tmp_path, grid, max_server_steps=100, eval_every=1, target_metric="loss", target_value=0.25)
    reason = loop.run()
    assert reason.startswith("target loss <= 0.25 reached at version") and reason.endswith("(federated evaluation)")
    assert loop.strategy.version < 100


@pytest.mark.parametrize(
    ("metrics", "examples", "message"),
    [
        ({"accuracy": 0.5}, 10, "metric 'loss' must be a finite number, got None"),
        ({"accuracy": float("nan"), "loss": 1.0}, 10, "metric 'accuracy' must be a finite number"),
        ({"accuracy": 0.5, "loss": 1.0}, 0, r"num-examples must be an int in \[1, 1000\]"),
        ({"accuracy": 0.5, "loss": 1.0}, 10**6, r"num-examples must be an int in \[1, 1000\]"),
    ],
)
def test_an_evaluate_reply_that_lies_is_refused_naming_what(metrics, examples, message):
    with pytest.raises(ValueError, match=message):
        read_reply(protocol.evaluation_content(examples, metrics, "high"), METRICS, max_examples=1000)


def test_federated_eval_knobs():
    assert RunSettings().federated_eval_on(server_holds_data=False)
    assert not RunSettings().federated_eval_on(server_holds_data=True)
    assert RunSettings(federated_eval="on").federated_eval_on(server_holds_data=True)
    assert not RunSettings(federated_eval="off").federated_eval_on(server_holds_data=False)
    with pytest.raises(SettingsError, match="federated-eval must be one of"):
        RunSettings(federated_eval="sometimes")
    with pytest.raises(SettingsError, match=r"federated-eval-fraction must be in \(0, 1\]"):
        RunSettings(federated_eval_fraction=0.0)
