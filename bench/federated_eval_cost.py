"""What federated evaluation costs training, and how far it lands from central evaluation.

Two runs of the default task (digits, six SuperNodes of tiers low / mid / high, FedBuff), run
alternately ``--repeats`` times: one with federated evaluation every ``eval-every`` = 5 server
steps on a third of the nodes (``federated-eval="on"``: beside central evaluation, so both are
measured on the same model versions), one without (``federated-eval="off"``).

- Updates per minute: accepted updates between the first and the last, per minute of the
  run's own clock (the trainers' start-up is left out). Goal: with evaluation ≤ 10 % fewer.
- The gap: for every version evaluated both ways, federated accuracy (a third of the nodes,
  each on its own share of the held-out split) minus central accuracy (the whole split).

Run: .venv/bin/python -m bench.federated_eval_cost [--repeats 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence

from bench.federation import BenchRun, RunResult, check_configs, run

MODES = ("on", "off")


def config(mode: str, steps: int) -> str:
    return f'max-server-steps={steps} eval-every=5 federated-eval="{mode}" federated-eval-fraction=0.34'


def updates_per_minute(result: RunResult) -> float | None:
    """Accepted updates per minute between the first accepted update and the last."""
    times = [
        float(e["time"])  # type: ignore[arg-type]
        for e in result.events
        if e.get("event") == "update" and e.get("outcome") == "accepted"
    ]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return 60.0 * (len(times) - 1) / (times[-1] - times[0])


def accuracy_gaps(result: RunResult) -> list[float]:
    """Federated minus central accuracy, for each version evaluated both ways."""
    central = {e["version"]: e.get("accuracy") for e in result.events if e.get("event") == "eval"}
    gaps = []
    for event in result.events:
        if event.get("event") != "federated-eval":
            continue
        metrics = event.get("metrics")
        federated = metrics.get("accuracy") if isinstance(metrics, dict) else None
        reference = central.get(event["version"])
        if isinstance(federated, float) and isinstance(reference, float):
            gaps.append(federated - reference)
    return gaps


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    check_configs(config(mode, args.steps) for mode in MODES)
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    gaps: list[float] = []
    for repeat in range(args.repeats):
        for mode in MODES:
            spec = BenchRun(nodes=6, config=config(mode, args.steps), label=f"federated-eval={mode} #{repeat + 1}")
            result = run(spec)
            rate = updates_per_minute(result)
            if rate is not None:
                rates[mode].append(rate)
            if mode == "on":
                gaps += accuracy_gaps(result)
            print(
                f"[bench]   -> {rate and round(rate, 1)} updates/min (load {result.load:.1f})",
                file=sys.stderr,
                flush=True,
            )
    print("| federated evaluation | updates per minute (each run) | median |\n|---|---|---|")
    for mode in MODES:
        each = ", ".join(f"{r:.1f}" for r in rates[mode])
        print(f"| {mode} | {each} | {statistics.median(rates[mode]):.1f} |")
    fewer = 1 - statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"updates per minute with evaluation: {100 * fewer:.1f} % fewer (goal <= 10 %)")
    if gaps:
        print(
            f"federated - central accuracy over {len(gaps)} versions: mean {statistics.mean(gaps):+.3f}, "
            f"mean |gap| {statistics.mean(abs(g) for g in gaps):.3f}, largest |gap| {max(abs(g) for g in gaps):.3f}"
        )


if __name__ == "__main__":
    main()
