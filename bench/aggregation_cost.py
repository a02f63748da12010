"""Server CPU time per accepted update against the physical floor, measured in the same run.

Ours: the real loop (``server_app.loop.AsyncLoop``) and FedBuff on an in-process Grid
(``bench.echo_grid``): read the reply's arrays, validate (shapes, finite values, norm), weight,
add to the buffer, step the server optimizer every K updates and serialise the new model for
dispatch — everything but the network. The floor: read the same reply's arrays and add them
to a float32 sum with one numpy add, measured two ways: reading them as zero-copy views of
their bytes (as ours does: the physical floor, which the goal is judged against) and with
Flower's ``to_numpy_ndarrays``, which copies them out. Goal: ours ≤ 2× the physical floor.

CPU time is ``time.process_time`` (all threads of this process); each size is repeated and
the median taken, because the machine is shared.

Run: .venv/bin/python -m bench.aggregation_cost [--quick] [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from bench.echo_grid import EchoGrid, canned_reply, echo_settings, model_of, serverapp_identity
from bench.figures import figure_line, save_figure
from bench.report import markdown_table
from fedbuff import protocol
from server_app.loop import AsyncLoop
from server_app.validation import array_views
from strategies import build_strategy

GOAL = 2.0
ArrayReader = Callable[[ArrayRecord], list[np.ndarray]]
BUFFER_SIZE = 10


class NoEvents:
    """The loop's event sink, discarded (the run folder is not what is measured)."""

    def event(self, kind: str, **fields: object) -> None:
        return None


def ours_per_update(parameters: int, updates: int) -> float:
    """CPU seconds per accepted update through the loop and FedBuff (K = 10, concurrency 10)."""
    model = model_of(parameters)
    settings = echo_settings(BUFFER_SIZE, BUFFER_SIZE, updates)
    strategy = build_strategy(settings, model, settings.concurrency)
    grid = EchoGrid(range(1, BUFFER_SIZE + 1), canned_reply(model))
    loop = AsyncLoop(grid, strategy, settings, lambda arrays: {}, NoEvents())
    with serverapp_identity():
        started = time.process_time()
        loop.run()
        seconds = time.process_time() - started
    return seconds / max(1, loop.stats.accepted)


def floor_per_update(reply: RecordDict, parameters: int, updates: int, read: ArrayReader) -> float:
    """CPU seconds per update to read the reply's arrays with ``read`` and add them to a float32 sum."""
    total = [np.zeros(a.shape, np.float32) for a in model_of(parameters)]
    started = time.process_time()
    for _ in range(updates):
        for acc, delta in zip(total, read(reply[protocol.ARRAYS])):  # type: ignore[arg-type]
            np.add(acc, delta, out=acc)
    return (time.process_time() - started) / updates


FLOORS: dict[str, ArrayReader] = {
    "physical floor: zero-copy read + one add": array_views,
    "Flower's deserialiser + one add": ArrayRecord.to_numpy_ndarrays,
}


def updates_for(parameters: int) -> int:
    """Enough updates for several server steps without spending minutes on the 10M model."""
    return 200 if parameters <= 100_000 else 50 if parameters <= 1_000_000 else 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k and 1M parameters, 3 repeats")
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 3 if args.quick else args.repeat
    rows = []
    worst = 0.0
    medians: dict[str, list[float]] = {name: [] for name in ["ours", *FLOORS]}
    for parameters in sizes:
        updates = updates_for(parameters)
        reply = canned_reply(model_of(parameters))
        seconds: dict[str, list[float]] = {name: [] for name in medians}
        for attempt in range(repeat):
            print(f"[bench]   {parameters:,} parameters, repeat {attempt + 1}/{repeat}", file=sys.stderr, flush=True)
            for name, read in FLOORS.items():
                seconds[name].append(floor_per_update(reply, parameters, updates, read))
            seconds["ours"].append(ours_per_update(parameters, updates))
        for name, values in seconds.items():
            medians[name].append(statistics.median(values))
        ours_s, physical, flower = (medians[name][-1] for name in medians)
        worst = max(worst, ours_s / physical)
        rows.append(
            [
                f"{parameters:,}",
                updates,
                f"{physical * 1e3:.3f} ms",
                f"{flower * 1e3:.3f} ms",
                f"{ours_s * 1e3:.3f} ms",
                f"{ours_s / physical:.2f}×",
                f"{ours_s / flower:.2f}×",
                "met" if ours_s / physical <= GOAL else "missed",
            ]
        )
    print(
        markdown_table(
            [
                "parameters",
                "updates per repeat",
                *FLOORS,
                "ours: loop + FedBuff (K = 10)",
                "ours ÷ physical floor",
                "ours ÷ Flower's deserialiser",
                f"goal ≤ {GOAL:g}×",
            ],
            rows,
        )
    )
    verdict = "met" if worst <= GOAL else f"missed by {worst / GOAL:.2f}× at the worst size"
    print(
        f"\nGoal: server CPU time per accepted update ≤ {GOAL:g}× the physical floor. Where we stand: "
        f"{verdict} (worst ratio {worst:.2f}×). Medians of {repeat} repeats; CPU time, not wall time."
    )
    print(
        "\n"
        + figure_line(
            save_figure(
                "aggregation_cost", lambda axes: cost_plot(axes, sizes, medians), "server CPU time per accepted update"
            ),
            "CPU time per accepted update against the model size, ours and both floors",
        )
    )
    print(
        "\nWhat ours pays beyond the floor: an L2 norm over the update (one float32 pass, which also "
        "catches NaN/Inf), the weighted add into a float64 running sum, the loop's per-update "
        "bookkeeping, and, amortised over K updates, the server optimizer step and the dispatch "
        "payload (the new model serialised once per version). About 35 µs of ours per update is the "
        "in-process Grid itself building each reply Message, which stands in for the transport. "
        "At 100k parameters these fixed costs (Flower Message objects, validation and bookkeeping in "
        "Python, ~0.15 ms) are most of ours; from 1M on the float64 add and the norm pass dominate. "
        "Like the physical floor, it reads the "
        "reply's arrays as read-only views of their bytes; Flower's deserialiser copies them out."
    )


def cost_plot(axes, sizes: list[int], medians: dict[str, list[float]]) -> None:
    """Milliseconds per update against parameters, log-log, one line per measurement."""
    for name, values in medians.items():
        axes.plot(sizes, [v * 1e3 for v in values], "o-", label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("model parameters")
    axes.set_ylabel("CPU ms per update")


if __name__ == "__main__":
    main()
