"""Per-update overhead: what a client update costs beyond its training, and where it goes.

Round trip (push → reply pulled), updates per second per node, CPU seconds per update (the
whole process tree, trainers included, in steady state: ``bench.process_cost``) and the peak RSS
of the per-message ``flwr-clientapp`` process, in a real local federation (SuperLink + 3
SuperNodes of tier ``real``), for three ClientApps under the project's loop (FedBuff, K = 1):

- empty: ``bench/floor_app``'s ClientApp (Flower and numpy, a zero update): Flower's floor;
- per-message: the project's ClientApp with ``warm-trainer=false`` (torch imported, the model
  trained, in every message's process) — what every update cost before the warm trainer;
- warm: the project's ClientApp as shipped, forwarding to the node's warm trainer;

each with one task per node and with a second one queued behind it (``tasks-per-node=2``).
One local SGD step, no tier emulation; the first reply of each node is dropped (it starts the
trainer and loads the partition). A bare push/pull driver with the empty ClientApp checks that
our loop itself adds nothing (≤ 5 %).

Goals: the warm ClientApp within 1.1× of the empty one on round trip and CPU per update; its
per-message RSS ≤ 120 MB; the default configuration ≥ 1.4× the floor's unqueued update rate.

Cold start: a fresh interpreter importing what a per-message process imports (the thin ClientApp
vs the empty one), and what a trainer imports once per run.

Run: .venv/bin/python -m bench.update_overhead [--quick] [--repeats 3] [--replies 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.federation import ROOT, BenchRun, RunResult, run
from bench.figures import figure_line, save_figure
from bench.history import round_trips
from bench.report import markdown_table
from fedbuff.settings import RunSettings

FLOOR_APP = Path(__file__).resolve().parent / "floor_app"
NODES = 3
LOOP_GOAL = 0.05
WARM_GOAL = 1.1
RSS_GOAL_MB = 120.0
RATE_GOAL = 1.4
COLD_START_GOAL_SECONDS = 0.5
DEFAULT_TASKS = RunSettings().tasks_per_node  # the default configuration's queue depth
ONE_STEP = "local-steps=1 emulated-step-seconds=0 eval-every=1000000"
# what a trainer does at start besides its imports: load the run's data and its own partition's rows
TRAINER_DATA = (
    "from fedbuff import run_data; from fedbuff.settings import RunSettings; s = RunSettings(); "
    "run_data.client_rows(s, run_data.load(s), 0, 4)"
)
IMPORTS = {
    "empty ClientApp (flwr, numpy)": ("import floor_app.client", FLOOR_APP),
    "our ClientApp, every message (thin: flwr, numpy, settings, protocol)": ("import client_app.app", ROOT),
    "our ClientApp per message without the trainer (+ torch)": ("import client_app.app, fedbuff.model", ROOT),
    "the warm trainer's start, once per node and run (+ torch, the data, its split kept on disk)": (
        f"import client_app.trainer, client_app.task, fedbuff.model; {TRAINER_DATA}",
        ROOT,
    ),
    "the same, the split computed (the first trainer on a machine: + datasets, flwr-datasets)": (
        f"import os; os.environ['FEDBUFF_CACHE_DIR'] = ''; import client_app.trainer, client_app.task, "
        f"fedbuff.model; {TRAINER_DATA}",
        ROOT,
    ),
}


@dataclass
class Samples:
    """What the runs of one driver measured."""

    overhead: list[float] = field(default_factory=list)  # round trip minus training, seconds
    rates: list[float] = field(default_factory=list)  # updates per second per node, per run
    cpu: list[float] = field(default_factory=list)  # CPU seconds per update, per run
    rss: list[float] = field(default_factory=list)  # peak RSS of each flwr-clientapp process, MB
    trainer_rss: list[float] = field(default_factory=list)


def drivers(replies: int) -> dict[str, BenchRun]:
    """Every way of running the same number of replies; the key names the row."""
    common = f"max-server-steps={replies}"
    runs = {
        "bare push/pull + empty ClientApp, 1 task per node": BenchRun(
            NODES,
            f'driver="floor" concurrency={NODES} {common}',
            tiers=["real"],
            app_dir=FLOOR_APP,
            label="floor",
            measure=True,
        )
    }
    for queued in (1, 2):
        loop = f"buffer-size=1 concurrency={NODES * queued} tasks-per-node={queued} {common}"
        tasks = f"{queued} task{'s' if queued > 1 else ''} per node"
        runs[f"empty ClientApp, {tasks}"] = BenchRun(
            NODES, f'driver="ours" {loop}', tiers=["real"], app_dir=FLOOR_APP, label="empty", measure=True
        )
        runs[f"per-message ClientApp, {tasks}"] = BenchRun(
            NODES, f"warm-trainer=false {ONE_STEP} {loop}", tiers=["real"], label="per-message", measure=True
        )
        runs[f"warm ClientApp, {tasks}"] = BenchRun(
            NODES, f"{ONE_STEP} {loop}", tiers=["real"], label="warm", measure=True
        )
    return runs


def after_first_reply(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """Update events after each node's first reply (the first one builds the node's partition)."""
    seen: set[object] = set()
    kept = []
    for event in events:
        if event.get("event") != "update":
            continue
        if event.get("node") in seen:
            kept.append(event)
        seen.add(event.get("node"))
    return kept


def warm_round_trips(events: list[dict[str, object]]) -> list[float]:
    """Round trips after each node's first reply."""
    return round_trips(after_first_reply(events))


def record(samples: Samples, result: RunResult) -> None:
    kept = after_first_reply(result.events)
    samples.overhead += [
        float(e["round_trip"]) - float(e.get("train_seconds", 0.0))  # type: ignore[arg-type]
        for e in kept
        if "round_trip" in e
    ]
    times = [float(e["time"]) for e in kept]  # type: ignore[arg-type]
    if len(times) > 1:
        samples.rates.append((len(times) - 1) / (times[-1] - times[0]) / NODES)
    if result.cost is not None:
        if result.cost.cpu_per_update is not None:
            samples.cpu.append(result.cost.cpu_per_update)
        samples.rss += result.cost.peak_rss_mb.get("clientapp", [])
        samples.trainer_rss += result.cost.peak_rss_mb.get("trainer", [])


def _median(values: list[float], unit: str = "", digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f}{unit}" if values else "–"


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b) if a and b else float("nan")


def round_trip_table(repeats: int, replies: int) -> str:
    runs = drivers(replies)
    samples = {name: Samples() for name in runs}
    loads: list[float] = []
    for attempt in range(repeats):
        for name, spec in runs.items():
            print(f"[bench]   round {attempt + 1}/{repeats}", file=sys.stderr, flush=True)
            result = run(spec)
            loads.append(result.load)
            record(samples[name], result)
    rows = [
        [
            name,
            len(s.overhead),
            _median(s.overhead, " s"),
            _median(s.rates, "", 3),
            _median(s.cpu, " s"),
            _median(s.rss, " MB", 0),
            _median(s.trainer_rss, " MB", 0),
        ]
        for name, s in samples.items()
    ]
    return (
        markdown_table(
            [
                "ClientApp, tasks per node",
                "round trips",
                "median round trip − training",
                "updates/s per node",
                "CPU s per update",
                "peak RSS per message process",
                "peak RSS of the trainer",
            ],
            rows,
        )
        + "\n\n"
        + verdicts(samples)
        + f"\n\n{repeats} interleaved run(s) per driver, {NODES} SuperNodes, "
        f"{replies} replies each, first reply per node dropped; load average at the runs' starts "
        f"{min(loads):.1f}–{max(loads):.1f}.\n\n"
        + figure_line(
            save_figure(
                "update_overhead",
                lambda axes: overhead_box(axes, samples),
                "round trip minus training of one update, per driver",
            ),
            "every round trip minus training of each driver",
        )
    )


def verdicts(samples: dict[str, Samples]) -> str:
    """Each goal with the ratio measured in these runs."""
    floor = samples["bare push/pull + empty ClientApp, 1 task per node"]
    empty = samples["empty ClientApp, 1 task per node"]
    warm = samples["warm ClientApp, 1 task per node"]
    loop = _ratio(empty.overhead, floor.overhead) - 1
    trip, cpu = _ratio(warm.overhead, empty.overhead), _ratio(warm.cpu, empty.cpu)
    rss = max(warm.rss) if warm.rss else float("nan")
    default = samples[f"warm ClientApp, {DEFAULT_TASKS} task{'s' if DEFAULT_TASKS > 1 else ''} per node"]
    rate = _ratio(default.rates, empty.rates)

    def mark(ok: bool) -> str:
        return "met" if ok else "missed"

    return "\n".join(
        [
            f"- Our loop vs the bare driver (empty ClientApp): {100 * loop:+.1f}% on round trip − training "
            f"(goal ≤ {100 * LOOP_GOAL:.0f}%: {mark(loop <= LOOP_GOAL)}).",
            f"- Warm vs empty ClientApp, one task per node: round trip − training {trip:.2f}×, CPU per update "
            f"{cpu:.2f}× (goal ≤ {WARM_GOAL}×: {mark(trip <= WARM_GOAL)} / {mark(cpu <= WARM_GOAL)}).",
            f"- Peak RSS of a per-message process on the warm path: at most {rss:.0f} MB "
            f"(goal ≤ {RSS_GOAL_MB:.0f} MB: {mark(rss <= RSS_GOAL_MB)}).",
            f"- The default ({DEFAULT_TASKS} task(s) per node, warm): {rate:.2f}× the empty ClientApp's unqueued "
            f"update rate (goal ≥ {RATE_GOAL}×: {mark(rate >= RATE_GOAL)}).",
        ]
    )


def overhead_box(axes, samples: dict[str, Samples]) -> None:
    """One box per driver, its round trips minus training as points beside it."""
    names = [n for n in samples if samples[n].overhead]
    axes.boxplot([samples[n].overhead for n in names], orientation="horizontal", showfliers=False)
    for row, name in enumerate(names, start=1):
        values = samples[name].overhead
        axes.plot(values, [row] * len(values), "o", markersize=2, alpha=0.4, color="tab:blue")
    axes.set_yticks(range(1, len(names) + 1), names, fontsize=6)
    axes.set_xlabel("seconds, push → reply pulled, minus training")


def import_seconds(statement: str, cwd: Path) -> float:
    """Wall time of a fresh interpreter that runs ``statement`` (Python start included)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=cwd, check=True)
    return time.perf_counter() - started


def cold_start_table(repeats: int) -> str:
    seconds: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(repeats):
        for name, (statement, cwd) in IMPORTS.items():
            seconds[name].append(import_seconds(statement, cwd))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    empty = next(iter(medians.values()))
    rows = [[name, f"`{IMPORTS[name][0]}`", f"{m:.2f} s", f"{m - empty:+.2f} s"] for name, m in medians.items()]
    extra = medians["our ClientApp, every message (thin: flwr, numpy, settings, protocol)"] - empty
    verdict = (
        "met"
        if extra <= COLD_START_GOAL_SECONDS
        else f"missed by {extra - COLD_START_GOAL_SECONDS:.2f} s ({extra / COLD_START_GOAL_SECONDS:.1f}× the allowance)"
    )
    return (
        markdown_table(["ClientApp process", "imports", "median (Python start included)", "vs empty"], rows)
        + f"\n\nGoal: our ClientApp's start costs ≤ {COLD_START_GOAL_SECONDS} s more than an empty "
        f"ClientApp's, every message. Where we stand: {extra:+.2f} s — {verdict}. "
        f"Median of {repeats} fresh interpreters each."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per driver, 18 replies each")
    parser.add_argument("--repeats", type=int, default=3, help="runs per driver (interleaved)")
    parser.add_argument("--replies", type=int, default=30, help="replies per run")
    args = parser.parse_args()
    repeats, replies = (1, 18) if args.quick else (args.repeats, args.replies)
    print("### Round trip, CPU and memory of one update\n")
    print(round_trip_table(repeats, replies))
    print(
        "\nWhat limits it: Flower itself. A SuperNode sleeps 3 s whenever a pull finds no task "
        "(hard-coded), its SuperExec polls every `FLWR_SUPEREXEC_TASK_POLL_INTERVAL`, and every message "
        "starts a fresh `flwr-clientapp` process (Python, Flower's imports, the FAB's hash check). The warm "
        "trainer removes what was ours (torch, the model, the partition, per message); a queued task "
        "removes the idle poll."
    )
    print("\n### ClientApp cold start\n")
    print(cold_start_table(3 if args.quick else 7))
    print(
        "\nWhat limits it: Flower's own imports (`flwr.app`, `flwr.clientapp`) in every message's "
        "process; torch and the data are imported once per node and run, by the trainer."
    )


if __name__ == "__main__":
    main()
