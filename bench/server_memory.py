"""Server peak memory against the buffer size K, each K measured in its own process.

A child process imports the server, records its resident memory (the baseline), then runs
the real loop and FedBuff over an in-process Grid (``bench.echo_grid``) for two buffers'
worth of updates and reports its peak resident memory (``VmHWM``). What the run added
above the baseline is expressed in model copies (4 bytes per float32 parameter).
Goal: flat in K (the buffer is a running sum, never a list of updates) and within 3 copies.

Counted: the strategy's model, the canned reply (stands for one pulled reply), the
deserialised update, the running sum, the dispatch payload, temporaries. Not counted: the
ServerApp's evaluation model (torch), which does not depend on K either.

Run: .venv/bin/python -m bench.server_memory [--quick] [--parameters 10000000] [--ks 1,10,100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.figures import figure_line, save_figure
from bench.report import markdown_table

GOAL_COPIES = 3.0
FLAT_TOLERANCE = 1.10  # "flat in K": the largest K's peak within 10% of the smallest K's


@dataclass(frozen=True)
class MemoryResult:
    """One child's numbers, in KiB (as /proc reports them)."""

    baseline_kib: int
    peak_kib: int
    updates: int

    def copies(self, parameters: int) -> float:
        """Peak above baseline, in float32 model copies."""
        return (self.peak_kib - self.baseline_kib) * 1024 / (4 * parameters)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(parameters: int, buffer_size: int) -> MemoryResult:
    """Runs in the child process: baseline after imports, then the loop, then the peak."""
    from bench.aggregation_cost import NoEvents
    from bench.echo_grid import EchoGrid, canned_reply, echo_settings, model_of, serverapp_identity
    from server_app.loop import AsyncLoop
    from strategies import build_strategy

    baseline = status_kib("VmRSS")
    nodes = max(buffer_size, 10)  # one update per client per buffer: K needs ≥ K clients
    updates = 2 * max(buffer_size, 10)
    settings = echo_settings(buffer_size, nodes, updates)
    strategy = build_strategy(settings, model_of(parameters), nodes)  # the strategy keeps its own copy
    grid = EchoGrid(range(1, nodes + 1), canned_reply(model_of(parameters)))
    loop = AsyncLoop(grid, strategy, settings, lambda arrays: {}, NoEvents())
    with serverapp_identity():
        loop.run()
    return MemoryResult(baseline, status_kib("VmHWM"), loop.stats.accepted)


def measure(parameters: int, buffer_size: int) -> MemoryResult:
    """Run :func:`child` in a fresh interpreter, so each K starts from the same empty heap."""
    argv = [
        sys.executable,
        "-m",
        "bench.server_memory",
        "--child",
        "--parameters",
        str(parameters),
        "--ks",
        str(buffer_size),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return MemoryResult(**json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M parameters instead of 10M")
    parser.add_argument("--parameters", type=int, default=10_000_000)
    parser.add_argument("--ks", default="1,10,100", help="buffer sizes K")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parameters = 1_000_000 if args.quick else args.parameters
    ks = [int(k) for k in args.ks.split(",")]
    if args.child:
        print(json.dumps(vars(child(parameters, ks[0]))))
        return
    rows, copies = [], []
    model_mib = 4 * parameters / 2**20
    for k in ks:
        print(f"[bench]   K = {k}, {parameters:,} parameters", file=sys.stderr, flush=True)
        result = measure(parameters, k)
        copies.append(result.copies(parameters))
        rows.append(
            [
                k,
                result.updates,
                f"{result.baseline_kib / 1024:.0f} MiB",
                f"{result.peak_kib / 1024:.0f} MiB",
                f"{(result.peak_kib - result.baseline_kib) / 1024:.0f} MiB",
                f"{copies[-1]:.2f}",
            ]
        )
    print(f"Model: {parameters:,} float32 parameters = {model_mib:.1f} MiB per copy.\n")
    print(markdown_table(["K", "updates", "RSS after imports", "peak RSS", "peak − baseline", "model copies"], rows))

    def draw(axes) -> None:
        axes.plot(ks, copies, "o-", label="peak above the baseline")
        axes.axhline(GOAL_COPIES, color="grey", linestyle=":", label=f"goal: {GOAL_COPIES:g} copies")
        axes.set_xscale("log")
        axes.set_xlabel("buffer size K")
        axes.set_ylabel("float32 model copies")
        axes.set_ylim(bottom=0)

    plot = save_figure("server_memory", draw, f"server peak memory, {parameters:,} parameters")
    flat = max(copies) <= FLAT_TOLERANCE * min(copies) + 0.25
    within = max(copies) <= GOAL_COPIES
    print(
        f"\nGoal: flat in K and within {GOAL_COPIES:g} model copies. Where we stand: "
        f"{'flat' if flat else 'NOT flat'} in K (from {min(copies):.2f} to {max(copies):.2f} copies); "
        + (
            "within 3 copies: met."
            if within
            else f"within 3 copies: missed by {max(copies) - GOAL_COPIES:.2f} copies "
            f"({max(copies) / GOAL_COPIES:.2f}× the goal)."
        )
    )
    print("\n" + figure_line(plot, "peak memory in model copies against K"))
    print(
        "\nWhat the peak holds, at a server step: the pulled reply's bytes (the delta is read as a view "
        "of them), the current model, its serialised dispatch payload, the float64 running sum (two "
        "copies) and the new model: six copies with no temporaries at all. Three would need a float32 "
        "sum, an in-place model update and dropping the old payload before the step; what is above "
        "six is the C allocator's slack (freed blocks it has not yet returned to the system)."
    )


if __name__ == "__main__":
    main()
