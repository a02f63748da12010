"""The asynchronous loop's decisions: staleness, validation, error codes, stop reasons."""

import json
from collections import Counter

import numpy as np
import pytest
from flwr.common.constant import ErrorCode

from fedbuff.settings import RunSettings, SettingsError
from fedbuff.task import Metric
from server_app.events import shape_errors
from server_app.loop import AsyncLoop, Target
from server_app.nodes import NodePool
from server_app.records import RunRecorder
from strategies import build_strategy
from tests.fakes import FakeGrid, distance_accuracy, error_reply, half_step, one_node_errs, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros(4, np.float32)]


def make_loop(tmp_path, grid, **overrides):
    settings = RunSettings(**{"concurrency": 3, "buffer_size": 2, "max_server_steps": 5, "eval_every": 1, **overrides})
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    recorder = RunRecorder(tmp_path)
    return AsyncLoop(grid, strategy, settings, distance_accuracy, events=recorder)


def test_runs_to_max_server_steps_and_computes_staleness_on_the_server(tmp_path):
    grid = FakeGrid([1, 2, 3], lambda msg: train_reply(msg, half_step))
    loop = make_loop(tmp_path, grid)
    reason = loop.run()
    assert reason.startswith("max-server-steps")
    assert loop.strategy.version == 5
    assert loop.evaluations[-1].accuracy > loop.evaluations[0].accuracy
    # three tasks go out at version 0 but K = 2: the third one arrives one version late
    assert loop.stats.staleness_max() >= 1
    assert loop.stats.accepted == 10


def test_every_dispatched_task_ends_answered_or_counted_in_flight_at_the_stop(tmp_path):
    def respond(msg):
        if msg.metadata.dst_node_id == 4:
            return train_reply(msg, lambda arrays: [a[:-1] for a in arrays])
        if msg.metadata.dst_node_id == 9:
            return error_reply(msg, ErrorCode.CLIENT_APP_CRASHED)
        return train_reply(msg, half_step)

    loop = make_loop(tmp_path, FakeGrid([1, 2, 3, 4, 9], respond), concurrency=5)
    loop.run()
    loop.events.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = Counter(e["event"] for e in events)
    (stop,) = [e for e in events if e["event"] == "stop"]
    assert stop["reason"].startswith("max-server-steps") and stop["in_flight"] == len(loop.tasks) > 0
    assert kinds["invalid"] and kinds["error"]
    assert kinds["dispatch"] == kinds["update"] + kinds["invalid"] + kinds["error"] + stop["in_flight"]
    # and every event has its kind's shape (server_app/events.py)
    problems = [p for e in events for p in shape_errors(e["event"], {k: v for k, v in e.items() if k != "event"})]
    assert not problems, problems


def test_malformed_updates_are_counted_and_never_touch_the_model(tmp_path):
    def respond(msg):
        if msg.metadata.dst_node_id == 3:
            return train_reply(msg, lambda arrays: [np.full_like(a, np.nan) for a in arrays])
        if msg.metadata.dst_node_id == 4:
            return train_reply(msg, lambda arrays: [a[:-1] for a in arrays])
        return train_reply(msg, half_step)

    loop = make_loop(tmp_path, FakeGrid([1, 2, 3, 4], respond), concurrency=4)
    loop.run()
    assert loop.stats.rejected["non-finite"] > 0
    assert loop.stats.rejected["shape"] > 0
    assert np.isfinite(loop.strategy.model[0]).all()
    assert loop.strategy.version == 5  # training went on with the good nodes


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ErrorCode.MESSAGE_UNAVAILABLE, "ttl-expired"),
        (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "client-raised"),
        (ErrorCode.CLIENT_APP_CRASHED, "client-crashed"),
    ],
)
def test_error_replies_are_counted_by_reason_and_survived(tmp_path, code, reason):
    loop = make_loop(tmp_path, FakeGrid([1, 2, 9], one_node_errs(9, code)))
    loop.run()
    assert loop.stats.errors[reason] > 0
    assert loop.strategy.version == 5


def test_an_unavailable_node_is_retired_and_not_sent_more_work(tmp_path):
    grid = FakeGrid([1, 2, 9], one_node_errs(9, ErrorCode.NODE_UNAVAILABLE))
    loop = make_loop(tmp_path, grid)
    loop.run()
    assert loop.stats.errors["node-unavailable"] == 1
    assert Counter(m.metadata.dst_node_id for m in grid.pushed)[9] == 1


def test_stops_at_target_accuracy_and_says_so(tmp_path):
    grid = FakeGrid([1, 2, 3], lambda msg: train_reply(msg, half_step))
    loop = make_loop(tmp_path, grid, max_server_steps=100, target_accuracy=0.7)
    reason = loop.run()
    assert reason.startswith("target-accuracy 0.7")
    assert loop.evaluations[-1].accuracy >= 0.7
    assert loop.strategy.version < 100


def test_a_target_on_a_lower_is_better_metric_stops_the_run(tmp_path):
    """A loss-like target: the run stops once the metric falls to the value, as the task says."""
    settings = RunSettings(
        concurrency=3, buffer_size=2, max_server_steps=100, eval_every=1, target_metric="distance", target_value=0.1
    )
    target = Target.of(settings, [Metric("distance", higher_is_better=False)])
    assert target == Target("distance", 0.1, higher_is_better=False)

    def distance(arrays):
        return {"distance": float(np.abs(arrays[0] - 1.0).mean())}

    grid = FakeGrid([1, 2, 3], lambda msg: train_reply(msg, half_step))
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    loop = AsyncLoop(grid, strategy, settings, distance, events=RunRecorder(tmp_path), target=target)
    reason = loop.run()
    assert reason.startswith("target distance <= 0.1 reached at version")
    assert loop.evaluations[-1].metrics["distance"] <= 0.1 < loop.evaluations[-2].metrics["distance"]
    assert loop.strategy.version < 100


def test_a_target_names_a_metric_of_the_task_and_only_one_target_at_a_time():
    with pytest.raises(
        SettingsError, match=r"target-metric: the task has no metric 'f1'; it evaluates \['accuracy', 'loss'\]"
    ):
        Target.of(RunSettings(target_metric="f1", target_value=0.9))
    with pytest.raises(SettingsError, match="target-metric must be empty when target-accuracy is set"):
        RunSettings(target_metric="loss", target_accuracy=0.8)
    assert Target.of(RunSettings()) is None
    assert Target.of(RunSettings(target_metric="loss", target_value=0.5)) == Target("loss", 0.5, False)


def test_stops_at_wall_time_when_no_node_ever_answers(tmp_path):
    loop = make_loop(tmp_path, FakeGrid([1, 2], lambda msg: None), max_wall_seconds=0.5)
    assert loop.run().startswith("max-wall-seconds")
    assert loop.strategy.version == 0


def test_new_nodes_are_admitted_while_running(tmp_path):
    grid = FakeGrid([1], lambda msg: train_reply(msg, half_step))
    loop = make_loop(tmp_path, grid, max_server_steps=3)
    loop.nodes._refresh_seconds = 0.0  # see every change of the node list at once
    original = grid.respond

    def respond_and_grow(msg):
        grid.node_ids = [1, 2]
        return original(msg)

    grid.respond = respond_and_grow
    loop.run()
    assert {m.metadata.dst_node_id for m in grid.pushed} == {1, 2}


def test_sync_barrier_waits_for_the_whole_round_and_steps_on_survivors(tmp_path):
    grid = FakeGrid([1, 2, 9], one_node_errs(9, ErrorCode.CLIENT_APP_RAISED_EXCEPTION))
    # no back-off: the failing node is sent its task in every round
    loop = make_loop(tmp_path, grid, strategy="sync", max_server_steps=3, error_backoff_seconds=0.0)
    loop.run()
    assert loop.strategy.version == 3
    assert loop.stats.staleness_max() == 0  # nobody ever trains on an old model
    versions = Counter(int(m.content.config_records["config"]["server-version"]) for m in grid.pushed)
    assert versions == {0: 3, 1: 3, 2: 3}  # one task per node per round, all from one model


def test_a_node_that_keeps_failing_is_backed_off_exponentially(tmp_path):
    grid = FakeGrid([1, 2, 9], one_node_errs(9, ErrorCode.CLIENT_APP_RAISED_EXCEPTION))
    loop = make_loop(tmp_path, grid, max_server_steps=40, error_backoff_seconds=0.2, error_backoff_max_seconds=60.0)
    loop.run()
    sent_to_flooder = Counter(m.metadata.dst_node_id for m in grid.pushed)[9]
    # without a back-off node 9 would get a task at every dispatch; 0.2, 0.4, 0.8 s ... leaves few
    assert 1 <= sent_to_flooder <= 5
    assert loop.stats.errors["client-raised"] == sent_to_flooder
    assert loop.strategy.version == 40


def test_a_backed_off_node_contributes_again_once_it_sends_good_updates(tmp_path):
    failures = Counter()

    def respond(msg):
        node = msg.metadata.dst_node_id
        if node == 9 and failures[node] < 2:
            failures[node] += 1
            return train_reply(msg, lambda arrays: [np.full_like(a, np.nan) for a in arrays])
        return train_reply(msg, half_step, tier="low" if node == 9 else "high")

    grid = FakeGrid([1, 2, 9], respond)
    loop = make_loop(tmp_path, grid, max_server_steps=100_000, max_wall_seconds=1.0, error_backoff_seconds=0.05)
    loop.run()
    assert loop.stats.rejected["non-finite"] == 2
    assert loop.stats.accepted_by_tier["low"] >= 1


def test_node_pool_backs_off_exponentially_up_to_the_cap_and_forgives_a_good_update():
    pool = NodePool(FakeGrid([1, 9], lambda msg: None), backoff_seconds=1.0, backoff_max_seconds=3.0)
    pool.refresh(0.0)
    assert [pool.failed(9, 0.0) for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert pool.candidates(Counter(), 1, now=2.9) == [1]
    assert pool.candidates(Counter(), 1, now=3.0) == [1, 9]
    pool.succeeded(9)
    assert pool.failed(9, 10.0) == 1.0  # a new streak starts from the base again


def test_a_replayed_reply_is_refused_and_counted_once(tmp_path):
    answered = []

    def respond(msg):
        reply = train_reply(msg, half_step)
        answered.append(reply)
        return reply

    grid = FakeGrid([1, 2, 3], respond)
    original_pull = grid.pull_messages

    def pull_with_replay(message_ids):
        replies = original_pull(message_ids)
        return replies + answered[:1] if replies else replies  # the first reply, again and again

    grid.pull_messages = pull_with_replay
    loop = make_loop(tmp_path, grid, max_server_steps=5)
    loop.run()
    assert loop.stats.rejected["unknown-task"] >= 1
    assert loop.stats.accepted == 10  # the replay never entered a buffer


def test_an_event_off_its_shape_is_named():
    assert shape_errors("stop", {"time": 1.0, "reason": "x", "in_flight": 0}) == []
    assert shape_errors("stop", {"time": 1.0, "reason": "x"}) == ["stop: missing in_flight"]
    assert shape_errors(
        "dispatch", {"time": 0.0, "node": 1, "tier": "high", "version": 0, "bytes": 8, "in_flight": 1, "colour": "red"}
    ) == ["dispatch: unexpected colour"]
    assert shape_errors("rumour", {}) == ["unknown event kind 'rumour'"]
