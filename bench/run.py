"""``make bench``: run the benchmark suites and rewrite BENCHMARKS.md with their tables.

Each section records the exact command, the date, the machine (cores, RAM, CPU model) and
the commit, so a number can always be traced to what produced it. Ratios are measured
within one run; absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "secagg-cost": ("Secure aggregation cost (server add, client masking) vs plaintext",
                    ["bench/secagg_cost.py"], ["bench/secagg_cost.py", "--sizes", "100000,1000000"]),
    "privacy-tradeoff": ("Accuracy vs user-level ε on digits (real local federation, 3 nodes)",
                         ["bench/privacy_tradeoff.py"], ["bench/privacy_tradeoff.py", "--sigmas", "0,1"]),
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    return f"{os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB RAM, {cpu}, Python {platform.python_version()}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return (result.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs (minutes)")
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only these suites")
    args = parser.parse_args()
    sections = [f"# Benchmarks\n\nWritten by `make bench{' ARGS=--quick' if args.quick else ''}` "
                f"({'quick' if args.quick else 'full'} form). Machine: {machine()}. Commit: {commit()}.\n"]
    for name in args.only or list(SUITES):
        title, full, quick = SUITES[name]
        argv = [sys.executable, *(quick if args.quick else full)]
        print(f"[bench] {name}: {' '.join(argv[1:])}", flush=True)
        started = datetime.now(timezone.utc)
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return result.returncode
        print(result.stdout, flush=True)
        sections.append(f"## {title}\n\nCommand: `python {' '.join(argv[1:])}` — {started:%Y-%m-%d %H:%M} UTC\n\n"
                        f"{result.stdout.strip()}\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(sections), encoding="utf-8")
    print("[bench] wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
