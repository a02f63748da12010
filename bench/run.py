"""``make bench``: run the benchmark suites and rewrite BENCHMARKS.md with their tables.

Each section records the exact command, the date, the machine (cores, RAM, CPU model) and
the commit, so a number can always be traced to what produced it. Ratios are measured
within one run; absolute times on shared machines are noisy.

``--only SUITE`` reruns some suites and keeps the other sections of BENCHMARKS.md as they
were (each still says when and on which commit it was measured).

Run: .venv/bin/python bench/run.py [--quick] [--only SUITE ...]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench.report import Section, commit, machine, render_benchmarks  # noqa: E402

PREAMBLE = """\
Written by `make bench` (full form) or `make bench ARGS=--quick` (minutes); `--only SUITE`
reruns one suite and keeps the others. Every section says which command, date, machine and
commit produced it, and whether that was the quick or the full form; its plot is written to
`bench/results/` by the same run. The machines these were measured on have 2 cores and may
be shared with other developers' test runs: absolute times are noisy (each section records
the load average it started under), so comparisons are ratios measured within one run, and
times are medians."""


@dataclass(frozen=True)
class Suite:
    """A benchmark script (a module under bench/) and its full and quick arguments."""

    title: str
    module: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)

    def argv(self, quick: bool, extra: Sequence[str] = ()) -> list[str]:
        return ["-m", f"bench.{self.module}", *(self.quick if quick else self.full), *extra]


SUITES = {
    "time-to-accuracy": Suite(
        "Time to target accuracy: FedBuff, FedAsync, sync and Flower's FedAvg", "time_to_accuracy"
    ),
    "device-speed": Suite(
        "Time to target as devices get slower: FedBuff vs Flower's FedAvg",
        "time_to_accuracy",
        full=("--device-speed", "0.05,0.25"),
        quick=("--quick", "--device-speed", "0.05,0.25"),
    ),
    "update-overhead": Suite(
        "Per-update overhead: the warm trainer vs Flower's floor, ClientApp cold start", "update_overhead"
    ),
    "aggregation-cost": Suite(
        "Server aggregation CPU time per accepted update vs the physical floor", "aggregation_cost"
    ),
    "server-memory": Suite("Server peak memory vs buffer size K", "server_memory"),
    "simulation-scale": Suite("Scale in Flower's simulation engine (Ray)", "simulation_scale"),
    "secagg-cost": Suite(
        "Secure aggregation cost per update, end to end (server) and against a local epoch (client)",
        "secagg_cost",
        quick=("--sizes", "100000,1000000"),
    ),
    "privacy-tradeoff": Suite(
        "Accuracy vs user-level ε on digits (real local federation, 3 nodes)",
        "privacy_tradeoff",
        quick=("--sigmas", "0,1"),
    ),
    "load": Suite("Load: 50 SuperNodes for 10 minutes, nothing lost", "load"),
    "paper-scale": Suite(
        "Paper scale on the virtual clock: FedBuff, FedCompass, compute-aware FedBuff, FedAsync, sync at "
        "concurrency 100 and 1,000",
        "paper_scale",
    ),
    "compass-local": Suite(
        "Compute-aware scheduling in a real local federation: FedBuff, FedCompass, compute-aware FedBuff, sync",
        "compass_local",
    ),
    "rf2-scale": Suite(
        "RF² at scale: the fairness cost of dropping stale updates, tiers independent vs tied to the data", "rf2_scale"
    ),
    "task-api-cost": Suite(
        "The task API's cost on a node: a training task before and after it",
        "task_api_cost",
        full=("--before-commit", "e6242cc"),
        quick=("--before-commit", "e6242cc", "--repeats", "3", "--tasks", "100"),
    ),
    "federated-eval-cost": Suite(
        "Federated evaluation: updates per minute it costs, and its gap to central accuracy",
        "federated_eval_cost",
        quick=("--repeats", "1"),
    ),
    "cnn-example": Suite(
        "A user's own task: the Fashion-MNIST CNN example, FedBuff vs Flower's FedAvg",
        "cnn_example",
        quick=("--seeds", "1"),
    ),
}


def existing_sections(text: str) -> dict[str, str]:
    """The ``## `` sections of a BENCHMARKS.md, keyed by title, each as written."""
    blocks = re.split(r"(?m)^(?=## )", text)
    return {block.splitlines()[0][3:].strip(): block.strip() + "\n" for block in blocks if block.startswith("## ")}


def merge(old_text: str, fresh: dict[str, str]) -> list[str]:
    """Sections in SUITES order: the freshly measured ones, else what the file already held."""
    old = existing_sections(old_text)
    merged = []
    for suite in SUITES.values():
        block = fresh.get(suite.title) or old.get(suite.title)
        if block:
            merged.append(block)
    return merged


def run_suite(suite: Suite, quick: bool, extra: Sequence[str] = ()) -> Section:
    """Run one suite; its stdout (Markdown) becomes the section body."""
    argv = [sys.executable, *suite.argv(quick, extra)]
    command = "python " + shlex.join(argv[1:])
    print(f"[bench] {command}", flush=True)
    started, where, code = datetime.now(UTC), machine(), commit(ROOT)
    result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # progress on stderr
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed with exit code {result.returncode}")
    print(result.stdout, flush=True)
    form = "quick form" if quick else "full form"
    return Section(suite.title, command, form, started, where, code, result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs (minutes)")
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only these suites")
    parser.add_argument(
        "--suite-args",
        default="",
        help="extra arguments for the suite(s), e.g. --only time-to-accuracy "
        "--suite-args='--seeds 1,2' (they appear in the section's command)",
    )
    args = parser.parse_args()
    path = ROOT / "BENCHMARKS.md"
    fresh: dict[str, str] = {}
    failed = []
    for name in args.only or list(SUITES):
        try:
            section = run_suite(SUITES[name], args.quick, shlex.split(args.suite_args))
        except RuntimeError as err:  # the other suites still run; this section keeps its old text
            print(f"[bench] {err}", file=sys.stderr)
            failed.append(name)
            continue
        fresh[section.title] = section.render()
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        # Written after every suite: a long benchmark interrupted later keeps what it measured.
        path.write_text(render_benchmarks(PREAMBLE, merge(old, fresh)), encoding="utf-8")
    print("[bench] wrote BENCHMARKS.md" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
