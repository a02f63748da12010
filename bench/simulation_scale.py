"""Scale in Flower's simulation engine (Ray): server steps per minute against the number of clients.

The project's ServerApp (FedBuff, K = 10) drives virtual SuperNodes at concurrency
``min(100, clients)`` for a fixed wall time on this machine's cores (one CPU per virtual
client, so Ray runs as many ClientApps at once as there are cores). Server steps per
minute are counted from the run history between the first and the last step, so Ray's
start-up and the first dispatch are left out.

The virtual clients run the empty ClientApp of ``bench/floor_app`` (driver "ours"): the
digits data set (1,437 training examples) cannot be cut into 1,000 Dirichlet partitions of
at least one example each (flwr-datasets gives up after 10 attempts), so this suite
measures the server loop and the engine, not training.

Run: .venv/bin/python -m bench.simulation_scale [--quick] [--clients 100,300,1000] [--seconds 90]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.federation import BenchRun, RunResult, run
from bench.figures import figure_line, save_figure
from bench.history import step_times
from bench.report import markdown_table
from fedbuff_ops.launcher import LaunchError
from server_app.events import EventKind

FLOOR_APP = Path(__file__).resolve().parent / "floor_app"
BUFFER_SIZE = 10
MAX_CONCURRENCY = 100


def steps_per_minute(times: list[float]) -> float | None:
    """Steps per minute between the first and the last step; ``None`` with fewer than two."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0]) * 60


def run_with_retry(spec: BenchRun) -> RunResult | None:
    """One retry: Ray gives its raylet a hard-coded 30 s to start, which a busy 2-core machine misses."""
    for attempt in (1, 2):
        try:
            return run(spec)
        except LaunchError as err:
            print(f"[bench]   attempt {attempt} failed: {err}", file=sys.stderr, flush=True)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 and 1000 clients, 45 s each")
    parser.add_argument("--clients", default="100,300,1000")
    parser.add_argument("--seconds", type=float, default=90.0, help="training wall time per run")
    args = parser.parse_args()
    clients = [100, 1000] if args.quick else [int(c) for c in args.clients.split(",")]
    seconds = 45.0 if args.quick else args.seconds
    rows, rates = [], {}
    for n in clients:
        concurrency = min(MAX_CONCURRENCY, n)
        spec = BenchRun(
            n,
            f'driver="ours" concurrency={concurrency} buffer-size={BUFFER_SIZE} '
            f"max-server-steps=1000000 max-wall-seconds={seconds}",
            tiers=["real"],
            simulation=True,
            app_dir=FLOOR_APP,
            label=f"simulation {n} clients",
        )
        result = run_with_retry(spec)
        if result is None:
            rows.append([n, concurrency, "—", "—", "Ray did not start (twice)", "—"])
            continue
        times = step_times(result.events)
        updates = sum(1 for e in result.events if e.get("event") == EventKind.UPDATE)
        rate = rates[n] = steps_per_minute(times)
        rows.append(
            [
                n,
                concurrency,
                len(times),
                updates,
                "n/a" if rate is None else f"{rate:.1f}",
                "n/a" if rate is None else f"{rate * BUFFER_SIZE:.0f}",
            ]
        )
    print(
        f"{os.cpu_count()} cores, one CPU per virtual client, FedBuff K = {BUFFER_SIZE}, "
        f"{seconds:.0f} s of training per run.\n"
    )
    print(
        markdown_table(
            [
                "virtual clients",
                "concurrency",
                "server steps",
                "updates received",
                "server steps per minute",
                "updates per minute",
            ],
            rows,
        )
    )
    known = [n for n in clients if rates.get(n)]
    if known:

        def draw(axes) -> None:
            axes.plot(known, [rates[n] for n in known], "o-")
            axes.set_xscale("log")
            axes.set_xlabel("virtual clients")
            axes.set_ylabel("server steps per minute")
            axes.set_ylim(bottom=0)

        print(
            "\n"
            + figure_line(
                save_figure("simulation_scale", draw, f"FedBuff K = {BUFFER_SIZE} in Ray"),
                "server steps per minute against the number of virtual clients",
            )
        )
    if len(known) >= 2:
        first, last = known[0], known[-1]
        print(
            f"\nScaling: {last / first:.0f}× the clients gives {rates[last] / rates[first]:.2f}× the "
            "server steps per minute (1.00× would be flat: the loop's cost does not grow with the "
            "number of idle clients)."
        )
    print(
        "\nWhat limits it: Ray runs one virtual ClientApp per core, so on 2 cores updates arrive at "
        "the rate two workers turn messages around, whatever the concurrency; the server loop shares "
        "those two cores with them. Why more idle clients cost throughput was not profiled here; "
        "candidates are the engine's per-node state (most of the 1,000 nodes get their first message "
        "within the run) and the loop's least-recently-used node choice, which sorts all nodes at "
        "each dispatch."
    )


if __name__ == "__main__":
    sys.exit(main())
