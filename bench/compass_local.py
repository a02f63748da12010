"""Compute-aware scheduling in a real local federation: FedBuff, FedCompass, compute-aware
FedBuff and sync on the warm path, wall-clock and client trips to a target accuracy.

Issue 21's second benchmark. Six SuperNodes (tiers low/mid/high round-robin, emulated with
``tier-speed-ratios`` 9.2 : 3.3 : 1), the warm trainer, digits, concurrency 6. FedBuff and sync
train ``Q_MAX`` local steps per task on every node; FedCompass and compute-aware FedBuff assign
``Q_MIN``–``Q_MAX`` from the round trips the server measured (which include Flower's
per-message floor, so on this path the scheduler sees the tiers closer together than their
emulated ratios). Scored from each run's history like ``bench.time_to_accuracy``; medians of
the seeds, seeds outermost (a busy spell on the shared machine hits all strategies of a seed
alike). The goal marked is the virtual-clock suite's (``bench.paper_scale``), in wall-clock.

Run: .venv/bin/python -m bench.compass_local [--quick] [--seeds 1,2,3] [--step-seconds 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.federation import BenchRun, RunResult, check_configs, run
from bench.history import mean_group_size, median_or_none, steps_by_tier, time_to_target
from bench.paper_scale import COMPUTE_AWARE, SCHEDULED, Cell, median_by_tier, scheduled_goal_rows
from bench.report import markdown_table, ratio

STRATEGIES = ("fedbuff", "fedcompass", COMPUTE_AWARE, "sync")
NODES = 6
BUFFER_SIZE = 3
TARGET = 0.8
Q_MIN, Q_MAX = 2, 10
MAX_WALL_SECONDS = 600.0


def config(strategy: str, seed: int, step_seconds: float) -> str:
    """One run's config: every strategy stops at the target (or the wall limit)."""
    name = strategy.removesuffix("/compute-aware")
    return " ".join(
        filter(
            None,
            [
                f'strategy="{name}" compute-aware={str(strategy == COMPUTE_AWARE).lower()} seed={seed}',
                f"concurrency={NODES} buffer-size={BUFFER_SIZE} max-server-steps=100000 eval-every=1",
                f"target-accuracy={TARGET} max-wall-seconds={MAX_WALL_SECONDS:g}",
                f"local-epochs={Q_MAX} local-steps={Q_MAX} compass-min-steps={Q_MIN} compass-max-steps={Q_MAX}",
                f"emulated-step-seconds={step_seconds:g}" if step_seconds else "",
            ],
        )
    )


@dataclass(frozen=True)
class Runs:
    """One strategy's runs, one per seed, and what the table shows of them."""

    strategy: str
    results: list[RunResult]

    def cell(self) -> Cell:
        reached = [time_to_target(r.events, TARGET) for r in self.results]
        return Cell(
            median_or_none([float(r.trips) if r else None for r in reached]),
            median_or_none([r.seconds if r else None for r in reached]),
            statistics.median(_staleness(r) for r in self.results) if self.results else None,
            median_by_tier([_by_tier(r, "accuracy_by_tier") for r in self.results]),
        )

    def row(self) -> list[object]:
        cell = self.cell()
        reached = [time_to_target(r.events, TARGET) for r in self.results]
        groups = [g for r in self.results if (g := mean_group_size(r.events)) is not None]
        return [
            self.strategy,
            f"{sum(r is not None for r in reached)}/{len(reached)}",
            "not reached" if cell.seconds is None else f"{cell.seconds:.0f} s",
            "not reached" if cell.trips is None else f"{cell.trips:.0f}",
            "—" if cell.staleness is None else f"{cell.staleness:.2f}",
            _tiers(median_by_tier([_by_tier(r, "participation_by_tier") for r in self.results]), ".2f"),
            _tiers(median_by_tier([steps_by_tier(r.events) for r in self.results]), ".1f"),
            f"{statistics.median(groups):.1f}" if groups else "—",
            ", ".join(
                ("—" if r is None else f"{r.seconds:.0f} s / {r.trips}") + f" (load {res.load:.0f})"
                for r, res in zip(reached, self.results)
            ),
        ]


def _staleness(result: RunResult) -> float:
    return float(result.summary.get("staleness_mean", 0.0))  # type: ignore[arg-type]


def _by_tier(result: RunResult, key: str) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(result.summary.get(key) or {}).items()}  # type: ignore[call-overload]


def _tiers(values: dict[str, float], fmt: str) -> str:
    return " / ".join(f"{tier} {format(v, fmt)}" for tier, v in values.items()) or "—"


def run_all(strategies: Sequence[str], seeds: Sequence[int], step_seconds: float) -> dict[str, Runs]:
    """Every strategy on every seed, seeds outermost."""
    runs = {s: Runs(s, []) for s in strategies}
    for seed in seeds:
        for strategy in strategies:
            result = run(BenchRun(NODES, config(strategy, seed, step_seconds), label=f"{strategy} seed {seed}"))
            runs[strategy].results.append(result)
            reached = time_to_target(result.events, TARGET)
            print(f"[bench]     -> {reached or 'target not reached'} (load {result.load:.1f})", file=sys.stderr)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed (unless --seeds)")
    parser.add_argument("--seeds", help="comma-separated seeds (default 1,2,3; 1 with --quick)")
    parser.add_argument(
        "--step-seconds", type=float, default=0.0, help="emulated seconds per batch on the high tier (0: 0.05)"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3")).split(",")]
    check_configs(BenchRun(NODES, config(s, seed, args.step_seconds)).run_config for s in STRATEGIES for seed in seeds)
    print(
        f"Real local federation, warm trainer: {NODES} SuperNodes, tiers low/mid/high (round-robin, 9.2 : 3.3 : 1), "
        f"digits, concurrency {NODES}, FedBuff K = {BUFFER_SIZE}, target accuracy {TARGET}, evaluation after every "
        f"server step. FedBuff and sync: {Q_MAX} local steps per task; FedCompass and compute-aware FedBuff: "
        f"{Q_MIN}–{Q_MAX} from the measured round trips. Seeds {seeds}, medians"
        + (" (quick form: one seed, a check that the suite runs, not the measurement)" if len(seeds) == 1 else "")
        + ".\n"
    )
    runs = run_all(STRATEGIES, seeds, args.step_seconds)
    print(
        markdown_table(
            [
                "strategy",
                "seeds reaching target",
                "median wall-clock to target",
                "median client trips",
                "staleness mean",
                "participation by tier",
                "local steps by tier",
                "group size",
                "per seed: seconds / trips (load average at start)",
            ],
            [r.row() for r in runs.values()],
        )
    )
    cells = {name: r.cell() for name, r in runs.items()}
    fedbuff = cells["fedbuff"]
    goals = [row for s in SCHEDULED for row in scheduled_goal_rows(NODES, s, cells[s], fedbuff, "wall-clock")]
    goals.append([NODES, "sync / FedBuff wall-clock", ratio(cells["sync"].seconds, fedbuff.seconds), "—", "—"])
    print()
    print(markdown_table(["nodes", "ratio", "measured", "goal", "met"], goals))


if __name__ == "__main__":
    main()
