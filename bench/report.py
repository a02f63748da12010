"""BENCHMARKS.md: the machine and commit a number came from, tables, and the file itself.

Kept apart from the suites so that ``bench/run.py`` can rewrite the file from any subset
of suites and the tests can check the layout without running a benchmark.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Section:
    """One suite's part of BENCHMARKS.md: what produced it, when, and what it printed."""

    title: str
    command: str
    form: str  # "quick form" or "full form"
    started: datetime
    machine: str
    commit: str
    body: str

    def render(self) -> str:
        return (
            f"## {self.title}\n\n"
            f"Command: `{self.command}` ({self.form}) — {self.started:%Y-%m-%d %H:%M} UTC. "
            f"Machine: {self.machine}. Commit: {self.commit}.\n\n"
            f"{self.body.strip()}\n"
        )


def render_benchmarks(preamble: str, sections: Sequence[str]) -> str:
    """The whole file: a title, the preamble, then each rendered section in order."""
    parts = [f"# Benchmarks\n\n{preamble.strip()}\n", *sections]
    return "\n".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``a/b`` as ``1.23×``, or ``n/a`` when either side is missing or zero."""
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}×"


def machine() -> str:
    """Cores, RAM, CPU model, Python version, and the 1-minute load average right now.

    The load says how busy a shared machine was when a suite started: on 2 cores, a load
    of 10 means every process got a fraction of a core and absolute times stretch with it.
    """
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return (
        f"{os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB RAM, {cpu}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )


OUTPUTS = ("BENCHMARKS.md", "bench/results")  # written by the benchmarks: not a change to the code measured


def commit(root: Path) -> str:
    """The short commit hash of ``root``, flagged when code (not benchmark output) is uncommitted."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", *(f":!{p}" for p in OUTPUTS)],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    return (result.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.strip() else "")
