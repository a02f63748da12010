"""Paper scale on the virtual clock: FedBuff, FedCompass, compute-aware FedBuff, FedAsync and
synchronous FL at concurrency 100 and 1,000 in Flower's simulation engine, client trips and
virtual time to a target accuracy.

FedBuff's Table 1 (Nguyen et al., 2022) compares client trips to target at concurrency 1,000,
K = 10: synchronous FL needs 3.3× as many as FedBuff, FedAsync 2.5×. Here every run is the
project's own ServerApp, strategies and ClientApp training, on 1,000 virtual clients holding a
Dirichlet (alpha 0.3) split of Fashion-MNIST, their tiers and task durations from the device model
(``virtual-clock=true``, docs/simulation.md; FedScale's lognormal jitter). Synchronous FL samples a
cohort of ``concurrency`` clients per round and waits for all of them. Trips and virtual time
do not depend on this machine's load (the clock is virtual); wall time does.

Every task of FedBuff, FedAsync and sync trains one local epoch of its partition, at most
``Q_MAX`` steps (the same work for every device, what the issue says our strategies do today;
most partitions have at most ``Q_MAX`` batches); FedCompass and compute-aware FedBuff (issue 21)
assign each node between ``Q_MIN`` and ``Q_MAX`` from its measured speed (the paper's range is
1 : 5). Their goal: at most 0.8× FedBuff's virtual time to target, a lower mean
staleness, and no tier's accuracy below FedBuff's. The quick form leaves FedAsync out (its runs
are the longest on the wall); the full form runs all five.

Run: .venv/bin/python -m bench.paper_scale [--quick] [--concurrency 100,1000] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.federation import BenchRun, check_configs
from bench.history import Reached, mean_group_size, median_or_none, steps_by_tier, time_to_target
from bench.report import markdown_table, ratio
from bench.simulation_scale import run_with_retry

CLIENTS = 1000
TARGET = 0.70
BUFFER_SIZE = 10
MAX_TRIPS = 30_000
EVAL_EVERY_TRIPS = 100  # evaluation cadence in client trips, the same for every strategy
DATA = 'task="fashion-mnist" partitioner="dirichlet" dirichlet-alpha=0.3 task-jitter="lognormal"'
# Local steps per task: one epoch capped at Q_MAX, or scheduled within [Q_MIN, Q_MAX]. Ten steps
# at client-lr 0.5 on these Dirichlet(0.3) partitions stall FedBuff near 0.4 accuracy (client drift).
Q_MIN, Q_MAX = 1, 4
COMPUTE_AWARE = "fedbuff/compute-aware"  # FedBuff with compute-aware=true
STRATEGIES = ("fedbuff", "fedcompass", COMPUTE_AWARE, "fedasync", "sync")
QUICK_STRATEGIES = ("fedbuff", "fedcompass", COMPUTE_AWARE, "sync")
SCHEDULED = ("fedcompass", COMPUTE_AWARE)
GOALS = {"sync": 2.5, "fedasync": 2.0}  # trips / FedBuff's trips (published: 3.3×, 2.5×)
VIRTUAL_GOAL = 4.0  # sync's virtual time / FedBuff's
SCHEDULED_VIRTUAL_GOAL = 0.8  # a scheduled strategy's virtual time / FedBuff's, at most


@dataclass(frozen=True)
class Outcome:
    """One run: when it reached the target (None: never), and how long it ran on the wall."""

    reached: Reached | None
    wall_seconds: float
    final_accuracy: float
    staleness_mean: float
    accuracy_by_tier: dict[str, float] = field(default_factory=dict)  # the last evaluation's
    participation_by_tier: dict[str, float] = field(default_factory=dict)  # share of accepted updates
    steps_by_tier: dict[str, float] = field(default_factory=dict)  # mean assigned local steps
    group_size: float | None = None  # FedCompass: mean on-time members per group close


def strategy_config(strategy: str, concurrency: int) -> str:
    """The strategy's knobs, with ~``EVAL_EVERY_TRIPS`` trips between evaluations and
    ``MAX_TRIPS`` trips at most.

    A FedCompass step is one group close, of a size only the run decides: it is evaluated
    after every step (finer than ~``EVAL_EVERY_TRIPS`` trips when its groups are smaller), and
    its step cap assumes groups of at least ``BUFFER_SIZE``."""
    trips_per_step = {"fedbuff": BUFFER_SIZE, COMPUTE_AWARE: BUFFER_SIZE, "fedasync": 1, "sync": concurrency}
    eval_every = 1 if strategy == "fedcompass" else max(1, EVAL_EVERY_TRIPS // trips_per_step[strategy])
    max_steps = max(1, MAX_TRIPS // trips_per_step.get(strategy, BUFFER_SIZE))
    name, compute_aware = strategy.removesuffix("/compute-aware"), strategy == COMPUTE_AWARE
    return (
        f'strategy="{name}" compute-aware={str(compute_aware).lower()} buffer-size={BUFFER_SIZE} '
        f"eval-every={eval_every} max-server-steps={max_steps} local-epochs=1 local-steps={Q_MAX} "
        f"compass-min-steps={Q_MIN} compass-max-steps={Q_MAX}"
    )


def config(strategy: str, concurrency: int, seed: int, wall_limit: float) -> str:
    return (
        f"virtual-clock=true {DATA} concurrency={concurrency} seed={seed} target-accuracy={TARGET} "
        f"max-wall-seconds={wall_limit:g} {strategy_config(strategy, concurrency)}"
    )


def measure(strategy: str, concurrency: int, seed: int, wall_limit: float) -> Outcome | None:
    spec = BenchRun(
        CLIENTS,
        config(strategy, concurrency, seed, wall_limit),
        tiers=["real"],
        simulation=True,
        label=f"{strategy} concurrency {concurrency} seed {seed}",
    )
    started = time.monotonic()
    result = run_with_retry(spec)
    if result is None:
        return None
    summary = result.summary
    return Outcome(
        time_to_target(result.events, TARGET),
        time.monotonic() - started,
        float(summary["final_accuracy"]),  # type: ignore[arg-type]
        float(summary.get("staleness_mean", 0.0)),  # type: ignore[arg-type]
        _floats(summary.get("accuracy_by_tier")),
        _floats(summary.get("participation_by_tier")),
        steps_by_tier(result.events),
        mean_group_size(result.events),
    )


def _floats(mapping: object) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(mapping or {}).items()}  # type: ignore[call-overload]


def median_by_tier(per_run: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each tier's median over the runs that report it."""
    tiers = sorted({tier for values in per_run for tier in values})
    return {tier: statistics.median(v[tier] for v in per_run if tier in v) for tier in tiers}


def _tiers(values: dict[str, float], fmt: str) -> str:
    return " / ".join(f"{tier} {format(v, fmt)}" for tier, v in values.items()) or "—"


def _cell(value: float | None, fmt: str) -> str:
    return "not reached" if value is None else format(value, fmt)


@dataclass(frozen=True)
class Cell:
    """One strategy at one concurrency, medians over its seeds."""

    trips: float | None
    seconds: float | None  # to target: virtual here, wall-clock in bench.compass_local
    staleness: float | None
    accuracy_by_tier: dict[str, float]


def measure_cell(strategy: str, concurrency: int, seeds: Sequence[int], wall_limit: float) -> tuple[Cell, list[object]]:
    """Run every seed; the cell's medians and its row of the results table."""
    outcomes = [measure(strategy, concurrency, seed, wall_limit) for seed in seeds]
    done = [o for o in outcomes if o is not None]
    cell = Cell(
        median_or_none([o.reached.trips if o.reached else None for o in done]),
        median_or_none([o.reached.seconds if o.reached else None for o in done]),
        statistics.median(o.staleness_mean for o in done) if done else None,
        median_by_tier([o.accuracy_by_tier for o in done]),
    )
    groups = [o.group_size for o in done if o.group_size is not None]
    row = [
        concurrency,
        strategy,
        len(done),
        _cell(cell.trips, ".0f"),
        _cell(cell.seconds, ".1f"),
        _cell(median_or_none([o.wall_seconds for o in done]), ".0f"),
        " / ".join(f"{o.final_accuracy:.3f}" for o in done) or "—",
        _cell(cell.staleness, ".1f") if done else "—",
        _tiers(cell.accuracy_by_tier, ".3f"),
        _tiers(median_by_tier([o.participation_by_tier for o in done]), ".3f"),
        _tiers(median_by_tier([o.steps_by_tier for o in done]), ".1f"),
        f"{statistics.median(groups):.1f}" if groups else "—",
    ]
    return cell, row


def scheduled_goal_rows(
    concurrency: int, strategy: str, cell: Cell, fedbuff: Cell, time_name: str = "virtual time"
) -> list[list[object]]:
    """Issue 21's goal for a scheduled strategy, one row per part: time to target, staleness, tiers."""
    time_met = (
        cell.seconds is not None
        and fedbuff.seconds is not None
        and fedbuff.seconds > 0
        and cell.seconds / fedbuff.seconds <= SCHEDULED_VIRTUAL_GOAL
    )
    stale_met = cell.staleness is not None and fedbuff.staleness is not None and cell.staleness < fedbuff.staleness
    gaps = {t: cell.accuracy_by_tier[t] - a for t, a in fedbuff.accuracy_by_tier.items() if t in cell.accuracy_by_tier}
    worst = min(gaps, key=gaps.__getitem__) if gaps else None
    tiers_met = bool(gaps) and len(gaps) == len(fedbuff.accuracy_by_tier) and min(gaps.values()) >= 0
    staleness = (
        "n/a"
        if cell.staleness is None or fedbuff.staleness is None
        else f"{cell.staleness:.1f} vs {fedbuff.staleness:.1f}"
    )
    return [
        [
            concurrency,
            f"{strategy} / FedBuff {time_name}",
            ratio(cell.seconds, fedbuff.seconds),
            f"≤ {SCHEDULED_VIRTUAL_GOAL}×",
            _met(time_met),
        ],
        [concurrency, f"{strategy} vs FedBuff staleness mean", staleness, "lower", _met(stale_met)],
        [
            concurrency,
            f"{strategy} − FedBuff accuracy, worst tier",
            "n/a" if worst is None else f"{worst} {gaps[worst]:+.3f}",
            "≥ 0 in every tier",
            _met(tiers_met),
        ],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="one seed, no FedAsync, at most 8 minutes of wall time per run"
    )
    parser.add_argument("--concurrency", default="100,1000")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--wall-limit", type=float, default=1800.0, help="wall seconds per run at most")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    wall_limit = 480.0 if args.quick else args.wall_limit
    strategies = QUICK_STRATEGIES if args.quick else STRATEGIES
    check_configs(config(s, c, seeds[0], wall_limit) for s in strategies for c in concurrencies)

    started = time.monotonic()
    rows, ratio_rows = [], []
    for concurrency in concurrencies:
        cells: dict[str, Cell] = {}
        for strategy in strategies:
            cells[strategy], row = measure_cell(strategy, concurrency, seeds, wall_limit)
            rows.append(row)
        fedbuff = cells["fedbuff"]
        for strategy, goal in GOALS.items():
            if strategy in cells:
                ratio_rows.append(
                    _ratio_row(concurrency, f"{strategy} / FedBuff trips", cells[strategy].trips, fedbuff.trips, goal)
                )
        ratio_rows.append(
            _ratio_row(concurrency, "sync / FedBuff virtual time", cells["sync"].seconds, fedbuff.seconds, VIRTUAL_GOAL)
        )
        for strategy in SCHEDULED:
            ratio_rows += scheduled_goal_rows(concurrency, strategy, cells[strategy], fedbuff)
        print(f"[bench]   concurrency {concurrency} done", file=sys.stderr, flush=True)

    print(
        f"{CLIENTS} virtual clients, Fashion-MNIST split by Dirichlet alpha 0.3, the default tier mix and speed "
        f"ratios with lognormal jitter, FedBuff K = {BUFFER_SIZE}; every task of FedBuff, FedAsync and sync "
        f"trains one local epoch, at most {Q_MAX} steps, FedCompass and compute-aware FedBuff assign "
        f"{Q_MIN}–{Q_MAX} per node from its measured speed (an untimed node gets {Q_MAX}); target accuracy "
        f"{TARGET} (central evaluation every ~{EVAL_EVERY_TRIPS} trips, FedCompass after every group close); "
        f"{len(seeds)} seed(s) per cell, medians; at most {MAX_TRIPS} trips and {wall_limit:.0f} s of wall "
        "time per run. Trips count every reply that arrived before the target was first reached. Per tier: "
        "accuracy on the tier's own held-out data at the last evaluation, the tier's share of accepted "
        "updates, and the mean local steps of the tasks planned from a measured speed (every node's first "
        "task is untimed: Q_max).\n"
    )
    print(
        markdown_table(
            [
                "concurrency",
                "strategy",
                "runs",
                "client trips to target",
                "virtual s to target",
                "wall s per run",
                "final accuracy",
                "staleness mean",
                "accuracy by tier",
                "participation by tier",
                "local steps by tier",
                "group size",
            ],
            rows,
        )
    )
    print()
    print(markdown_table(["concurrency", "ratio", "measured", "goal", "met"], ratio_rows))
    print(f"\nThe suite took {(time.monotonic() - started) / 60:.0f} min.")


def _met(met: bool) -> str:
    return "met" if met else "missed"


def _ratio_row(concurrency: int, name: str, value: float | None, base: float | None, goal: float) -> list[object]:
    met = value is not None and base is not None and base > 0 and value / base >= goal
    return [concurrency, name, ratio(value, base), f"≥ {goal}×", _met(met)]


if __name__ == "__main__":
    main()
