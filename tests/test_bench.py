"""The benchmark code's logic that BENCHMARKS.md relies on (no timing is asserted here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bench.federation import RunResult
from bench.history import (
    Reached,
    mean_group_size,
    median_or_none,
    read_events,
    round_trips,
    step_times,
    steps_by_tier,
    time_to_target,
)
from bench.report import Section, markdown_table, ratio, render_benchmarks
from bench.run import SUITES, existing_sections, merge
from bench.server_memory import MemoryResult
from bench.simulation_scale import steps_per_minute
from bench.time_to_accuracy import Outcome, Scenario, comparison_table, outcome
from bench.update_overhead import warm_round_trips

HISTORY = [
    {"event": "eval", "version": 0, "accuracy": 0.1, "time": 0.0},
    {"event": "dispatch", "node": 1, "time": 0.1},
    {"event": "update", "node": 1, "round_trip": 4.0, "time": 4.1},
    {"event": "update", "node": 2, "round_trip": 5.0, "time": 5.1},
    {"event": "step", "version": 1, "time": 5.2},
    {"event": "eval", "version": 1, "accuracy": 0.6, "time": 5.3},
    {"event": "update", "node": 1, "round_trip": 3.0, "time": 7.5},
    {"event": "step", "version": 2, "time": 7.6},
    {"event": "eval", "version": 2, "accuracy": 0.85, "time": 7.7},
    {"event": "update", "node": 3, "round_trip": 6.0, "time": 9.0},
    {"event": "eval", "version": 3, "accuracy": 0.9, "time": 9.1},
]


def test_time_to_target_is_the_first_eval_at_or_above_it_with_the_trips_so_far():
    assert time_to_target(HISTORY, 0.85) == Reached(seconds=7.7, version=2, trips=3)
    assert time_to_target(HISTORY, 0.6) == Reached(seconds=5.3, version=1, trips=2)
    assert time_to_target(HISTORY, 0.1) == Reached(seconds=0.0, version=0, trips=0)
    assert time_to_target(HISTORY, 0.95) is None


def test_read_events_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in HISTORY[:3]) + '\n{"event": "upd', encoding="utf-8")
    assert read_events(path) == HISTORY[:3]


def test_round_trips_and_step_times_read_only_their_events():
    assert round_trips(HISTORY) == [4.0, 5.0, 3.0, 6.0]
    assert step_times(HISTORY) == [5.2, 7.6]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0, 1.0, 2.0], 2.0),
        ([3.0, None, 1.0], 3.0),  # a failed seed counts as infinitely slow, not as missing
        ([None, None, 1.0], None),  # most seeds failed: not reached
        ([1.0, None], None),
        ([1.0, 3.0], 2.0),
        ([], None),
    ],
)
def test_median_over_seeds_counts_a_miss_as_infinitely_slow(values, expected):
    assert median_or_none(values) == expected


def test_markdown_table_and_ratio():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"
    assert ratio(6.0, 2.0) == "3.00×"
    assert ratio(None, 2.0) == ratio(1.0, None) == ratio(1.0, 0.0) == "n/a"


def section(title: str, body: str) -> str:
    return Section(
        title,
        "python -m bench.x --quick",
        "quick form",
        datetime(2026, 11, 29, 14, 5, tzinfo=UTC),
        "2 cores, 24 GiB RAM, CPU, Python 3.11.7",
        "abc1234",
        body,
    ).render()


def test_a_section_records_command_form_date_machine_and_commit():
    text = section("T", "| a |\n")
    assert text.startswith("## T\n\nCommand: `python -m bench.x --quick` (quick form) — 2026-11-29 14:05 UTC. ")
    assert "Machine: 2 cores, 24 GiB RAM, CPU, Python 3.11.7. Commit: abc1234." in text
    assert text.endswith("| a |\n")


def test_rerunning_one_suite_keeps_the_other_sections_in_suite_order():
    titles = [suite.title for suite in SUITES.values()]
    old = render_benchmarks(
        "preamble",
        [
            section(titles[2], "old two"),
            section(titles[0], "old zero"),
            section("a suite that no longer exists", "gone"),
        ],
    )
    assert list(existing_sections(old)) == [titles[2], titles[0], "a suite that no longer exists"]
    merged = merge(old, {titles[2]: section(titles[2], "new two"), titles[1]: section(titles[1], "new one")})
    text = render_benchmarks("preamble", merged)
    assert [line[3:] for line in text.splitlines() if line.startswith("## ")] == titles[:3]
    assert "old zero" in text and "new one" in text and "new two" in text
    assert "old two" not in text and "gone" not in text
    assert text.startswith("# Benchmarks\n\npreamble\n")


def test_warm_round_trips_drop_each_nodes_first_reply():
    assert warm_round_trips(HISTORY) == [3.0]


def test_steps_per_minute_counts_intervals_between_steps():
    assert steps_per_minute([10.0, 20.0, 40.0]) == pytest.approx(4.0)
    assert steps_per_minute([10.0]) is None


def test_memory_is_expressed_in_float32_model_copies():
    result = MemoryResult(baseline_kib=1000, peak_kib=1000 + 3 * 4 * 1_000_000 // 1024, updates=20)
    assert result.copies(1_000_000) == pytest.approx(3.0, rel=1e-3)


def test_flower_fedavg_runs_fixed_rounds_and_the_others_stop_at_the_target():
    scenario = Scenario(target=0.8, fedavg_rounds=8)
    assert "max-server-steps=8 " in scenario.config("flower-fedavg", 1)
    assert "target-accuracy=0.8" in scenario.config("fedbuff", 2) and "seed=2" in scenario.config("fedbuff", 2)
    assert "task=" not in scenario.config("fedbuff", 1)
    fashion = Scenario(dataset="fashion-mnist").config("sync", 1)
    assert 'task="fashion-mnist" partitioner="dirichlet"' in fashion


def test_a_strategy_variant_is_the_strategy_with_one_more_knob():
    scenario = Scenario()
    cold, queued = scenario.config("flower-fedavg/per-message", 1), scenario.config("fedbuff/queued", 1)
    assert 'strategy="flower-fedavg"' in cold and cold.endswith("warm-trainer=false")
    assert 'strategy="fedbuff"' in queued and queued.endswith("tasks-per-node=2")
    assert "tasks-per-node" not in scenario.config("fedbuff", 1)


def test_comparison_table_states_the_goal_against_flower_fedavg():
    fedbuff = Outcome("fedbuff", [Reached(10.0, 5, 20), Reached(12.0, 6, 24), None], [], [1.0, 2.0, 3.0])
    fedavg = Outcome("flower-fedavg", [Reached(40.0, 4, 24), Reached(30.0, 3, 18), Reached(50.0, 5, 30)], [])
    sync = Outcome("sync", [Reached(35.0, 4, 24)] * 3, [])
    text = comparison_table(Scenario(), {"fedbuff": fedbuff, "sync": sync, "flower-fedavg": fedavg})
    assert "| fedbuff | 2/3 | 12 s | 24 | 3.33× | 1.00× | 10 s / 20 (load 1), 12 s / 24 (load 2), — (load 3) |" in text
    assert "Where we stand: 3.33× — met." in text
    assert "| sync | 3/3 | 35 s | 24 | 1.14× | 1.00× | 35 s / 24, 35 s / 24, 35 s / 24 |" in text
    slow = Outcome("fedbuff", [Reached(20.0, 5, 20)], [])
    assert "missed: 2.00× of the 3× asked" in comparison_table(Scenario(), {"fedbuff": slow, "flower-fedavg": fedavg})


@pytest.mark.parametrize("buffer_size", [1, 10])
def test_the_echo_grid_drives_the_real_loop_through_every_update(buffer_size):
    from bench.server_memory import child

    result = child(parameters=1_000, buffer_size=buffer_size)
    assert result.updates == 2 * max(buffer_size, 10)  # every update accepted, none stale or duplicate
    assert result.peak_kib >= result.baseline_kib


def test_outcome_scores_each_seed_and_keeps_the_first_seeds_curve():
    runs = [RunResult({}, HISTORY, load=3.5), RunResult({}, HISTORY[:6], load=1.0)]
    scored = outcome("fedbuff", runs, 0.85)
    assert scored.reached == [Reached(7.7, 2, 3), None]
    assert scored.curve == [(0.0, 0.1), (5.3, 0.6), (7.7, 0.85), (9.1, 0.9)]
    assert scored.loads == [3.5, 1.0]


def test_device_speed_rows_compare_fedbuff_with_flower_fedavg_at_each_training_time(monkeypatch):
    import bench.time_to_accuracy as tta

    seen = []

    def fake_runs(scenario, strategies, seeds):
        seen.append((scenario.step_seconds, tuple(strategies), tuple(seeds)))
        fedbuff_seconds = 20.0 if scenario.step_seconds < 0.1 else 30.0
        return {
            "fedbuff": Outcome("fedbuff", [Reached(fedbuff_seconds, 5, 15)], [], [2.0]),
            "flower-fedavg": Outcome("flower-fedavg", [Reached(40.0, 4, 24)], [], [3.0]),
        }

    monkeypatch.setattr(tta, "run_strategies", fake_runs)
    table, speedups = tta.device_speed_table(Scenario(), 1, [0.05, 0.25])
    assert speedups == [2.0, pytest.approx(4 / 3)]
    assert seen == [(0.05, ("fedbuff", "flower-fedavg"), (1,)), (0.25, ("fedbuff", "flower-fedavg"), (1,))]
    assert "| 0.05 s | 0.46 s | 20 s | 40 s | 2.00× | 2 / 3 |" in table
    assert "| 0.25 s | 2.30 s | 30 s | 40 s | 1.33× | 2 / 3 |" in table
    assert "emulated-step-seconds=0.25" in Scenario(step_seconds=0.25).config("fedbuff", 1)
    assert "emulated-step-seconds" not in Scenario().config("fedbuff", 1)


def load_result(events, rss=(100.0,) * 9, nodes=50, accepted=6):
    from bench.load import LoadResult, Samples

    samples = Samples(
        serverapp_rss_mb=[(float(i), mb) for i, mb in enumerate(rss)], total_rss_mb=[2048.0], health_ok=9, series=[120]
    )
    return LoadResult(
        nodes, 1.0, {"updates_accepted": accepted, "rejected_by_reason": {}, "errors_by_reason": {}}, events, samples
    )


def test_the_load_suite_balances_every_dispatched_task():
    from bench.load import report

    dispatched = [{"event": "dispatch"}] * 5
    ended = [{"event": "update"}, {"event": "update"}, {"event": "invalid"}, {"event": "error"}]
    balanced = load_result([*dispatched, *ended, {"event": "stop", "in_flight": 1}])
    assert balanced.lost == 0 and balanced.in_flight_at_stop == 1
    short = load_result([*dispatched, *ended[:2], {"event": "stop", "in_flight": 1}])
    assert short.lost == 2
    text = report([balanced, load_result([*dispatched[:4], *ended], nodes=6, accepted=3)])
    assert "Nothing lost: met" in text and "6.0 with 50 SuperNodes against 3.0 with 6 (2.00×)" in text
    assert "Nothing lost: missed" in report([short])


def test_the_load_suite_calls_a_growing_serverapp_a_miss():
    from bench.load import report

    assert load_result([], rss=(100.0,) * 9).rss_growth() == 1.0
    growing = load_result([], rss=(100.0, 100.0, 100.0, 150, 150, 150, 200.0, 200.0, 200.0))
    assert growing.rss_growth() == 2.0
    assert "2.00× — missed" in report([growing])


def test_steps_by_tier_leaves_out_each_nodes_untimed_first_task():
    events = [
        {"event": "dispatch", "node": 1, "tier": "unknown", "local_steps": 10},
        {"event": "dispatch", "node": 2, "tier": "unknown", "local_steps": 10},
        {"event": "dispatch", "node": 3, "tier": "high"},  # no plan: the run config's steps
        {"event": "dispatch", "node": 1, "tier": "low", "local_steps": 2},
        {"event": "dispatch", "node": 1, "tier": "low", "local_steps": 3},
        {"event": "dispatch", "node": 2, "tier": "high", "local_steps": 10},
    ]
    assert steps_by_tier(events) == {"high": 10.0, "low": 2.5}


def test_group_size_counts_the_closes_that_aggregated_something():
    closes = [{"event": "group-close", "arrived": n, "late": 0} for n in (4, 0, 2)]
    assert mean_group_size([*closes, {"event": "step", "version": 1}]) == 3.0
    assert mean_group_size(HISTORY) is None


def test_the_scheduled_strategies_goal_has_three_parts_each_met_or_missed():
    from bench.paper_scale import Cell, scheduled_goal_rows

    fedbuff = Cell(1000.0, 20.0, 9.0, {"high": 0.70, "low": 0.72})
    good = Cell(900.0, 15.0, 3.0, {"high": 0.71, "low": 0.72})
    assert [row[2:] for row in scheduled_goal_rows(100, "fedcompass", good, fedbuff)] == [
        ["0.75×", "≤ 0.8×", "met"],
        ["3.0 vs 9.0", "lower", "met"],
        ["low +0.000", "≥ 0 in every tier", "met"],
    ]
    bad = Cell(None, None, 12.0, {"high": 0.69})
    rows = scheduled_goal_rows(6, "fedcompass", bad, fedbuff, "wall-clock")
    assert rows[0][1] == "fedcompass / FedBuff wall-clock"
    assert [row[-1] for row in rows] == ["missed"] * 3  # not reached; staler; a tier not measured


def test_paper_scale_gives_every_strategy_the_same_work_or_the_scheduled_range():
    from bench.compass_local import config as local_config
    from bench.federation import check_configs
    from bench.paper_scale import COMPUTE_AWARE, Q_MAX, Q_MIN, STRATEGIES, config

    check_configs(config(s, c, 1, 60.0) for s in STRATEGIES for c in (100, 1000))
    check_configs(local_config(s, 1, 0.0) for s in ("fedbuff", "fedcompass", COMPUTE_AWARE, "sync"))
    aware = config(COMPUTE_AWARE, 100, 1, 60.0)
    assert 'strategy="fedbuff" compute-aware=true' in aware
    assert f"local-steps={Q_MAX} compass-min-steps={Q_MIN} compass-max-steps={Q_MAX}" in aware
    assert "compute-aware=false" in config("fedcompass", 100, 1, 60.0)
