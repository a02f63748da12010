"""Compute-aware scheduling: the speed estimate, FedCompass's groups and timer, its equivalence
with FedBuff, and the loop handing each task its planned local steps (no federation)."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbuff import protocol
from fedbuff.settings import RunSettings
from server_app.clock import VirtualClock, VirtualNode
from server_app.loop import AsyncLoop
from server_app.records import RunRecorder
from strategies import ClientUpdate, FedBuff, Outcome, StrategyOptions, build_strategy
from strategies.compass import COMPLETE, TIMER, CompassScheduler
from strategies.errors import SettingsError
from strategies.fedcompass import FedCompass
from strategies.scheduling import ComputeAwareScheduler, SpeedEstimate
from tests.fakes import FakeGrid, distance_accuracy, half_step, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

INITIAL = [np.zeros(3, np.float32)]
OPTIONS = StrategyOptions(strategy="fedcompass", compass_min_steps=2, compass_max_steps=10)


def update(node, value, staleness=0):
    return ClientUpdate(node, [np.full(3, value, np.float32)], 10, staleness)


def back(strategy, node, now, started, steps, value, staleness=0):
    """One task of ``node`` returns at ``now`` with a valid update, as the loop reports it."""
    strategy.scheduler.returned(node, now, started, steps, trained=True)
    return strategy.receive(update(node, value, staleness))


# -- the speed estimate -------------------------------------------------------------------


def test_the_speed_estimate_converges_on_scripted_timings():
    speeds = SpeedEstimate(momentum=0.9)
    for seconds in (40.0, 12.0, 10.0, 10.5, 9.5, 10.0, 10.0):  # 10 steps each: ~1 s per step
        estimate = speeds.observe(7, seconds, 10)
    assert estimate == pytest.approx(1.0, abs=0.01)
    assert speeds.get(8) is None and speeds.fastest() == estimate
    # the newest sample weighs 0.9 (APPFL's speed_momentum): a node that slows down shows at once
    assert speeds.observe(7, 30.0, 10) == pytest.approx(0.1 * estimate + 0.9 * 3.0)


@given(
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=30),
    st.integers(1, 50),
    st.integers(0, 50),
    st.floats(0.0, 1e4),
)
def test_assignments_stay_within_q_min_and_q_max(seconds_per_step, q_min, extra, now):
    q_max = q_min + extra
    compass = CompassScheduler(q_min, q_max, momentum=0.9, latest_time_factor=1.5)
    aware = ComputeAwareScheduler(q_min, q_max, momentum=0.9)
    for node, speed in enumerate(seconds_per_step):
        for scheduler in (compass, aware):
            steps = scheduler.plan(node, now).local_steps
            assert steps is not None and q_min <= steps <= q_max
            scheduler.returned(node, now + speed * steps, now, steps, trained=True)
            again = scheduler.plan(node, now + speed * steps).local_steps
            assert again is not None and q_min <= again <= q_max


def test_compute_aware_fedbuff_gives_a_slow_node_proportionally_fewer_steps():
    scheduler = ComputeAwareScheduler(2, 10, momentum=0.9)
    assert scheduler.plan(1, 0.0).local_steps == scheduler.plan(2, 0.0).local_steps == 10  # untimed
    scheduler.returned(1, 10.0, 0.0, 10, trained=True)  # 1 s per step
    scheduler.returned(2, 40.0, 0.0, 10, trained=True)  # 4 s per step
    assert scheduler.plan(1, 40.0).local_steps == 10
    assert scheduler.plan(2, 40.0).local_steps == 2  # ⌊10·1/4⌋ = 2: done when the fast one is
    scheduler.returned(3, 5.0, 0.0, 10, trained=False)  # a failed task is no speed sample
    assert scheduler.speeds.get(3) is None
    strategy = build_strategy(StrategyOptions(compute_aware=True), INITIAL, 3)
    assert isinstance(strategy, FedBuff) and isinstance(strategy.scheduler, ComputeAwareScheduler)


# -- groups, the timer and the general buffer ------------------------------------------------


def test_a_fast_and_a_slow_node_get_steps_that_bring_them_back_together():
    scheduler = CompassScheduler(2, 10, momentum=0.9, latest_time_factor=1.5)
    for node in (1, 2):
        assert scheduler.plan(node, 0.0).local_steps == 10  # speeds unknown: Q_max, one probe group
    scheduler.returned(1, 10.0, 0.0, 10, trained=True)  # 1 s per step
    scheduler.returned(2, 14.0, 0.0, 10, trained=True)  # 1.4 s per step: on time (timer at 15 s)
    (group,) = scheduler.due(14.0)
    assert scheduler.close(group).reason == COMPLETE
    fast, slow = (scheduler.plan(n, 14.0).local_steps for n in scheduler.order([2, 1]))
    assert fast == 10 and slow == 7  # ⌊10 s / 1.4 s⌋: both expected back at t = 24
    assert len(scheduler.groups) == 1


def test_the_timer_closes_a_group_whose_member_is_late_and_the_late_update_joins_the_next_aggregation():
    strategy = FedCompass(INITIAL, OPTIONS)
    scheduler = strategy.scheduler
    for node in (1, 2):
        scheduler.plan(node, 0.0)
    assert back(strategy, 1, 10.0, 0.0, 10, 1.0).outcome is Outcome.ACCEPTED  # sets the timer: 15 s
    assert not scheduler.may_dispatch(1)  # on time: it waits for its group
    assert scheduler.next_due() == 15.0 and strategy.tick(14.9) == []
    (closed,) = strategy.tick(15.0)
    assert closed.stepped and closed.group is not None
    assert (closed.group.reason, closed.group.arrived, closed.group.late) == (TIMER, 1, 1)
    np.testing.assert_allclose(strategy.model[0], -1.0)  # the model moved by node 1's delta alone
    assert scheduler.may_dispatch(1)
    # node 1 starts again; node 2 comes back late: its update waits in the general buffer
    scheduler.plan(1, 15.0)
    late = back(strategy, 2, 30.0, 0.0, 10, 3.0, staleness=1)
    assert late.outcome is Outcome.ACCEPTED and not late.stepped and strategy.buffer_fill == 1
    assert scheduler.may_dispatch(2)  # a late node is not held
    # node 1's group completes: one step on its update and the late one together
    step = back(strategy, 1, 25.0, 15.0, 10, 1.0).step
    assert step is not None and step.stepped and step.group is not None and step.group.reason == COMPLETE
    weight = (1 + 1) ** -0.5  # polynomial staleness weight of the late update (τ = 1)
    np.testing.assert_allclose(strategy.model[0], -1.0 - (1.0 + weight * 3.0) / 2, rtol=1e-6)
    assert strategy.buffer_fill == 0


def test_one_update_per_client_per_aggregation_a_second_waits_in_the_next_general_buffer():
    strategy = FedCompass(INITIAL, OPTIONS)
    scheduler = strategy.scheduler
    for node in (1, 2):
        scheduler.plan(node, 0.0)
    back(strategy, 1, 10.0, 0.0, 10, 1.0)
    strategy.tick(15.0)  # node 2 is late from now on
    scheduler.plan(1, 15.0)
    back(strategy, 2, 20.0, 0.0, 10, 2.0)  # general buffer
    scheduler.plan(2, 20.0)
    back(strategy, 2, 23.0, 20.0, 2, 4.0)  # on time in its new group, but it waits already
    assert strategy.buffer_fill == 2
    step = back(strategy, 1, 25.0, 15.0, 10, 1.0).step  # node 1's group: node 2's first update only
    assert step is not None and step.stepped and strategy.buffer_fill == 1


def test_with_equal_speeds_fedcompass_is_fedbuff_with_k_the_group_size():
    nodes, rounds = (1, 2, 3, 4), 4
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(rounds, len(nodes), 3)).astype(np.float32)
    options = dict(server_optimizer="adam", server_lr=0.1, compass_min_steps=2, compass_max_steps=10)
    compass = FedCompass(INITIAL, StrategyOptions(strategy="fedcompass", **options))
    fedbuff = FedBuff(INITIAL, StrategyOptions(strategy="fedbuff", buffer_size=len(nodes), **options))
    now = 0.0
    for r in range(rounds):
        steps = [compass.scheduler.plan(n, now).local_steps for n in compass.scheduler.order(list(nodes))]
        assert steps == [10] * len(nodes)  # one group, Q_max each
        for i, node in enumerate(nodes):
            compass.scheduler.returned(node, now + 10.0, now, 10, trained=True)
            a = compass.receive(ClientUpdate(node, [deltas[r, i]], 10, 0))
            b = fedbuff.receive(ClientUpdate(node, [deltas[r, i]], 10, 0))
            assert a.stepped == b.stepped == (i == len(nodes) - 1)
        np.testing.assert_allclose(compass.model[0], fedbuff.model[0], rtol=1e-6)
        now += 10.0
    assert compass.version == fedbuff.version == rounds


# -- the knobs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compass_min_steps": 0}, "compass-min-steps must be >= 1, got 0"),
        ({"compass_min_steps": 5, "compass_max_steps": 4}, r"compass-max-steps must be >= compass-min-steps \(5\)"),
        ({"compass_speed_momentum": 0.0}, r"compass-speed-momentum must be in \(0, 1\], got 0.0"),
        ({"compass_latest_time_factor": 0.5}, "compass-latest-time-factor must be >= 1, got 0.5"),
        ({"compass_max_steps": 2.5}, "compass-max-steps must be int"),
        ({"compute_aware": True, "strategy": "fedasync"}, r"compute-aware must be false unless strategy"),
        ({"strategy": "fedcompass", "tasks_per_node": 2}, "tasks-per-node must be 1 with fedcompass"),
        ({"compute_aware": True, "tasks_per_node": 2}, "tasks-per-node must be 1 with fedcompass or compute-aware"),
    ],
)
def test_bad_scheduling_knobs_fail_in_one_line_naming_the_key(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        RunSettings(**kwargs)


def test_the_knobs_default_to_the_papers_values():
    settings = RunSettings.from_run_config({"strategy": "fedcompass"})
    assert (settings.compass_min_steps, settings.compass_max_steps) == (20, 100)
    assert (settings.compass_speed_momentum, settings.compass_latest_time_factor) == (0.9, 1.5)
    assert (settings.staleness_weight, settings.staleness_exponent) == ("polynomial", 0.5)
    assert RunSettings(strategy="fedcompass", user_dp=True, user_dp_mode="central").flush_size == 6


# -- the task config ------------------------------------------------------------------------


def test_a_planned_local_steps_reaches_the_trainer_across_as_many_epochs_as_it_takes():
    from client_app.task import _planned

    assert protocol.task_local_steps({}) is None
    assert protocol.task_local_steps({protocol.LOCAL_STEPS: 7}) == 7
    with pytest.raises(ValueError, match="local-steps must be an integer >= 1"):
        protocol.task_local_steps({protocol.LOCAL_STEPS: 0})
    settings = RunSettings(local_epochs=1, local_steps=0, batch_size=32)
    assert _planned(settings, None, 100) is settings
    planned = _planned(settings, 9, 100)  # 4 batches an epoch: 3 epochs, capped at 9 batches
    assert (planned.local_steps, planned.local_epochs) == (9, 3)


def make_loop(tmp_path, grid, clock=None, **overrides):
    settings = RunSettings(
        **{
            "strategy": "fedcompass",
            "concurrency": 3,
            "max_server_steps": 4,
            "eval_every": 1,
            "compass_min_steps": 2,
            "compass_max_steps": 10,
            **overrides,
        }
    )
    strategy = build_strategy(settings, INITIAL, settings.concurrency)
    return AsyncLoop(grid, strategy, settings, distance_accuracy, events=RunRecorder(tmp_path), clock=clock)


def dispatched_steps(grid):
    return [(m.metadata.dst_node_id, m.content.config_records["config"].get("local-steps")) for m in grid.pushed]


def test_the_loop_puts_each_nodes_planned_local_steps_into_its_task_config(tmp_path):
    grid = FakeGrid([1, 2, 3], lambda msg: train_reply(msg, half_step))
    loop = make_loop(tmp_path, grid)
    assert loop.run().startswith("max-server-steps")
    steps = dispatched_steps(grid)
    assert steps[:3] == [(1, 10), (2, 10), (3, 10)]  # untimed: Q_max
    assert all(2 <= s <= 10 for _, s in steps)
    # a plain fedbuff run plans nothing: its tasks carry the run config's steps
    plain = FakeGrid([1, 2, 3], lambda msg: train_reply(msg, half_step))
    make_loop(tmp_path / "plain", plain, strategy="fedbuff").run()
    assert {s for _, s in dispatched_steps(plain)} == {None}


def test_on_the_virtual_clock_a_slow_tier_gets_fewer_steps_and_its_group_closes_by_the_timer(tmp_path):
    settings = RunSettings(emulated_step_seconds=1.0)
    nodes = {1: VirtualNode(0, "high", 10), 2: VirtualNode(1, "high", 10), 3: VirtualNode(2, "low", 10)}
    clock = VirtualClock(settings.device_model(), nodes, ttl_seconds=1e6, payload_bytes=0)
    grid = FakeGrid(nodes, lambda msg: train_reply(msg, half_step))
    loop = make_loop(tmp_path, grid, clock=clock, max_server_steps=14, emulated_step_seconds=1.0)
    loop.run()
    loop.events.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    closes = [e for e in events if e["event"] == "group-close"]
    assert closes[0]["reason"] == TIMER and closes[0]["late"] == 1  # the low tier misses the probe group
    by_node = {}
    for node, steps in dispatched_steps(grid)[3:]:
        by_node.setdefault(node, []).append(steps)
    assert min(by_node[1]) > max(by_node[3])  # the low tier (9.2× slower) is given less work
    assert all(e.get("local_steps") for e in events if e["event"] == "dispatch")
