"""What the task API costs a node: CPU and wall time per training task on the warm path, this
checkout against another one (e.g. the commit before the task API), on the same built-in task.

Each checkout runs in a fresh interpreter of its own (``PYTHONPATH`` = the checkout) and trains
``--tasks`` tasks of the default run (digits, one epoch of batches of 32, no tier emulation)
through its own ``client_app.task.train_task`` with the in-memory data source the warm trainer
uses, after ``--warmup`` tasks that load the data and are not counted. The two run alternately,
``--repeats`` times each, so drifts of a shared machine fall on both; medians are reported.

Goal (the task API issue): CPU per update within 2 % of the built-in path before it.

Run: .venv/bin/python -m bench.task_api_cost --before-commit e6242cc [--tasks 200] (a temporary
git worktree of that commit), or --before /path/to/another/checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the checkout under test: only names both sides of the change share, and the data
# source the warm trainer of that checkout uses (MemoryPartition before the API, MemoryData after).
_MEASURE = r"""
import json, sys, time
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from client_app import task as node_task
from fedbuff import protocol

tasks, warmup = int(sys.argv[1]), int(sys.argv[2])
source = (getattr(node_task, "MemoryData", None) or getattr(node_task, "MemoryPartition"))()
config = {"emulated-step-seconds": 0.0}
node = {"partition-id": 1, "num-partitions": 6, "device-tier": "real"}
context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=config)

def content(model, version):
    config = ConfigRecord({protocol.SERVER_VERSION: version})
    return RecordDict({protocol.ARRAYS: ArrayRecord(model), protocol.CONFIG: config})

from fedbuff.model import ModelSpec, build_model, get_weights

model = get_weights(build_model(64, 42, ModelSpec()))  # digits' MLP, the same in both checkouts
for version in range(warmup + tasks):
    if version == warmup:
        cpu, wall = time.process_time(), time.perf_counter()
    reply = node_task.train_task(content(model, version), context, source)
    delta = reply.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    model = [m - d for m, d in zip(model, delta)]
print(json.dumps({"cpu": (time.process_time() - cpu) / tasks, "wall": (time.perf_counter() - wall) / tasks}))
"""


def measure(checkout: Path, tasks: int, warmup: int) -> dict[str, float]:
    """CPU and wall seconds per task of one checkout, in a fresh single-threaded interpreter."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "FEDBUFF_CACHE_DIR": ""}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tasks), str(warmup)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"[bench] {checkout} failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def checkout_of(path: Path | None, commit: str | None) -> Iterator[Path]:
    """``path``, or a temporary git worktree of ``commit`` (removed after)."""
    if path is not None:
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="fedbuff-before-") as parent:
        tree = Path(parent) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), str(commit)], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def compare(old: Path, tasks: int, warmup: int, repeats: int) -> dict[str, list[dict[str, float]]]:
    """Both checkouts, alternately, ``repeats`` times each."""
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for repeat in range(repeats):
        for name, checkout in (("before", old), ("after", ROOT)):
            runs[name].append(measure(checkout, tasks, warmup))
            print(f"[bench] {name} #{repeat + 1}: {runs[name][-1]}", file=sys.stderr, flush=True)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    before = parser.add_mutually_exclusive_group(required=True)
    before.add_argument("--before", type=Path, help="the checkout to compare with")
    before.add_argument("--before-commit", help="a commit of this repository to compare with (checked out for the run)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with checkout_of(args.before, args.before_commit) as old:
        runs = compare(old, args.tasks, args.warmup, args.repeats)
    print(f"load average at the start: {load:.2f}; before: {args.before or args.before_commit}, after: this checkout")
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("cpu", "wall")} for name, rs in runs.items()}
    print("| path | CPU ms per task | wall ms per task |\n|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {1000 * m['cpu']:.2f} | {1000 * m['wall']:.2f} |")
    ratio = medians["after"]["cpu"] / medians["before"]["cpu"]
    verdict = "met" if ratio <= 1.02 else "missed"
    print(f"CPU per task after / before: {ratio:.3f} (goal <= 1.02: {verdict})")


if __name__ == "__main__":
    main()
