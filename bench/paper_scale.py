"""Paper scale on the virtual clock: FedBuff, FedAsync and synchronous FL at concurrency 100 and
1,000 in Flower's simulation engine, client trips and virtual time to a target accuracy.

FedBuff's Table 1 (Nguyen et al., 2022) compares client trips to target at concurrency 1,000,
K = 10: synchronous FL needs 3.3× as many as FedBuff, FedAsync 2.5×. Here every run is the
project's own ServerApp, strategies and ClientApp training, on 1,000 virtual clients holding a
Dirichlet (alpha 0.3) split of Fashion-MNIST, their tiers and task durations from the device model
(``virtual-clock=true``, docs/simulation.md; FedScale's lognormal jitter). Synchronous FL samples a
cohort of ``concurrency`` clients per round and waits for all of them. Trips and virtual time
do not depend on this machine's load (the clock is virtual); wall time does.

Run: .venv/bin/python -m bench.paper_scale [--quick] [--concurrency 100,1000] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from bench.federation import BenchRun, check_configs
from bench.history import Reached, median_or_none, time_to_target
from bench.report import markdown_table, ratio
from bench.simulation_scale import run_with_retry

CLIENTS = 1000
TARGET = 0.70
BUFFER_SIZE = 10
MAX_TRIPS = 30_000
EVAL_EVERY_TRIPS = 100  # evaluation cadence in client trips, the same for every strategy
DATA = 'dataset="fashion-mnist" partitioner="dirichlet" dirichlet-alpha=0.3 task-jitter="lognormal"'
STRATEGIES = ("fedbuff", "fedasync", "sync")
GOALS = {"sync": 2.5, "fedasync": 2.0}  # trips / FedBuff's trips (published: 3.3×, 2.5×)
VIRTUAL_GOAL = 4.0  # sync's virtual time / FedBuff's


@dataclass(frozen=True)
class Outcome:
    """One run: when it reached the target (None: never), and how long it ran on the wall."""

    reached: Reached | None
    wall_seconds: float
    final_accuracy: float
    staleness_mean: float


def strategy_config(strategy: str, concurrency: int) -> str:
    """The strategy's knobs, with ~``EVAL_EVERY_TRIPS`` trips between evaluations and
    ``MAX_TRIPS`` trips at most."""
    trips_per_step = {"fedbuff": BUFFER_SIZE, "fedasync": 1, "sync": concurrency}[strategy]
    eval_every = max(1, EVAL_EVERY_TRIPS // trips_per_step)
    return (
        f'strategy="{strategy}" buffer-size={BUFFER_SIZE} eval-every={eval_every} '
        f"max-server-steps={max(1, MAX_TRIPS // trips_per_step)}"
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
    )


def _cell(value: float | None, fmt: str) -> str:
    return "not reached" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, at most 8 minutes of wall time per run")
    parser.add_argument("--concurrency", default="100,1000")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--wall-limit", type=float, default=1800.0, help="wall seconds per run at most")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    wall_limit = 480.0 if args.quick else args.wall_limit
    check_configs(config(s, c, seeds[0], wall_limit) for s in STRATEGIES for c in concurrencies)

    started = time.monotonic()
    rows, ratio_rows = [], []
    for concurrency in concurrencies:
        trips: dict[str, float | None] = {}
        virtual: dict[str, float | None] = {}
        for strategy in STRATEGIES:
            outcomes = [measure(strategy, concurrency, seed, wall_limit) for seed in seeds]
            done = [o for o in outcomes if o is not None]
            trips[strategy] = median_or_none([o.reached.trips if o.reached else None for o in done])
            virtual[strategy] = median_or_none([o.reached.seconds if o.reached else None for o in done])
            wall = median_or_none([o.wall_seconds for o in done])
            rows.append(
                [
                    concurrency,
                    strategy,
                    len(done),
                    _cell(trips[strategy], ".0f"),
                    _cell(virtual[strategy], ".1f"),
                    _cell(wall, ".0f"),
                    " / ".join(f"{o.final_accuracy:.3f}" for o in done) or "—",
                    " / ".join(f"{o.staleness_mean:.1f}" for o in done) or "—",
                ]
            )
        for strategy, goal in GOALS.items():
            ratio_rows.append(
                _ratio_row(concurrency, f"{strategy} / FedBuff trips", trips[strategy], trips["fedbuff"], goal)
            )
        ratio_rows.append(
            _ratio_row(concurrency, "sync / FedBuff virtual time", virtual["sync"], virtual["fedbuff"], VIRTUAL_GOAL)
        )
        print(f"[bench]   concurrency {concurrency} done", file=sys.stderr, flush=True)

    print(
        f"{CLIENTS} virtual clients, Fashion-MNIST split by Dirichlet alpha 0.3, the default tier mix and speed "
        f"ratios with lognormal jitter, FedBuff K = {BUFFER_SIZE}; target accuracy {TARGET} (central evaluation "
        f"every ~{EVAL_EVERY_TRIPS} trips); {len(seeds)} seed(s) per cell, medians; at most {MAX_TRIPS} trips "
        f"and {wall_limit:.0f} s of wall time per run. Trips count every reply that arrived before the target "
        "was first reached.\n"
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
            ],
            rows,
        )
    )
    print()
    print(markdown_table(["concurrency", "ratio", "measured", "goal", "met"], ratio_rows))
    print(f"\nThe suite took {(time.monotonic() - started) / 60:.0f} min.")


def _ratio_row(concurrency: int, name: str, value: float | None, base: float | None, goal: float) -> list[object]:
    met = value is not None and base is not None and base > 0 and value / base >= goal
    return [concurrency, name, ratio(value, base), f"≥ {goal}×", "met" if met else "missed"]


if __name__ == "__main__":
    main()
