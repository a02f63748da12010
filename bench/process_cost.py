"""CPU seconds per update and peak memory of everything a benchmark run starts, trainers included.

Every process of the run inherits a marker in its environment (:func:`marked`). While the run
goes, a sampler thread reads ``/proc`` every ``SAMPLE_SECONDS``:

- the CPU of the process tree: for each live marked process, its own CPU plus that of the
  children it has reaped (``utime + stime + cutime + cstime``), so the per-message ClientApps
  that their SuperExec reaped still count, and the detached warm trainers count while alive;
- each ``flwr-clientapp`` and trainer process's peak RSS (``VmHWM``).

It also tails the run's ``metrics.jsonl``: the CPU reading taken when every node has replied
once (start-up, torch imports and data loading are behind) and the one at the last update give
the steady-state **CPU seconds per update**.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server_app.events import EventKind

SAMPLE_SECONDS = 0.2  # a /proc scan costs ~10 ms: sampling must not become the load
MARKER_ENV = "FEDBUFF_BENCH_RUN"
KINDS = {b"flwr-clientapp": "clientapp", b"client_app.trainer": "trainer"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessCost:
    """Steady-state CPU per update (``None`` until two readings), peak RSS (MB) per process kind."""

    updates: int = 0
    cpu_per_update: float | None = None
    peak_rss_mb: dict[str, list[float]] = field(default_factory=dict)


def _tree(marker: bytes) -> Iterator[tuple[Path, bytes]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                yield entry, (entry / "cmdline").read_bytes()
        except OSError:
            continue


def _cpu_seconds(entry: Path) -> float:
    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime


def _peak_rss_mb(entry: Path) -> float:
    for line in (entry / "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Sampler:
    def __init__(self, marker: bytes, metrics: Path, nodes: int) -> None:
        self.marker, self.metrics, self.nodes = marker, metrics, nodes
        self.peaks: dict[int, tuple[str, float]] = {}
        self.seen: set[object] = set()
        self.updates = 0
        self.first: tuple[int, float] | None = None  # (updates, cpu) once every node replied
        self.last: tuple[int, float] | None = None
        self._offset = 0

    def sample(self) -> None:
        cpu = 0.0
        for entry, cmdline in _tree(self.marker):
            try:
                cpu += _cpu_seconds(entry)
                kind = next((k for m, k in KINDS.items() if m in cmdline), None)
                if kind is not None:
                    pid = int(entry.name)
                    self.peaks[pid] = (kind, max(self.peaks.get(pid, (kind, 0.0))[1], _peak_rss_mb(entry)))
            except (OSError, ValueError, IndexError):
                continue
        if self._new_updates():
            if self.first is None and len(self.seen) >= self.nodes:
                self.first = (self.updates, cpu)
            elif self.first is not None:
                self.last = (self.updates, cpu)

    def _new_updates(self) -> bool:
        try:
            with open(self.metrics, encoding="utf-8") as history:
                history.seek(self._offset)
                text = history.read()
        except OSError:
            return False
        complete = text[: text.rfind("\n") + 1]
        self._offset += len(complete.encode())
        found = False
        for line in complete.splitlines():
            event = json.loads(line)
            if event.get("event") == EventKind.UPDATE:
                self.updates += 1
                self.seen.add(event.get("node"))
                found = True
        return found


@contextmanager
def marked() -> Iterator[bytes]:
    """Put a fresh marker in this process's environment (inherited by all it starts)."""
    value = uuid.uuid4().hex
    previous = os.environ.get(MARKER_ENV)
    os.environ[MARKER_ENV] = value
    try:
        yield f"{MARKER_ENV}={value}".encode()
    finally:
        if previous is None:
            os.environ.pop(MARKER_ENV, None)
        else:
            os.environ[MARKER_ENV] = previous


@contextmanager
def measured(metrics: Path, nodes: int) -> Iterator[ProcessCost]:
    """Measure the run started inside the block (its history is ``metrics``); filled at exit."""
    cost = ProcessCost()
    stop = threading.Event()
    with marked() as marker:
        sampler = _Sampler(marker, metrics, nodes)

        def loop() -> None:
            while not stop.wait(SAMPLE_SECONDS):
                sampler.sample()

        thread = threading.Thread(target=loop, name="process-cost", daemon=True)
        thread.start()
        try:
            yield cost
        finally:
            stop.set()
            thread.join()
    cost.updates = sampler.updates
    if sampler.first and sampler.last and sampler.last[0] > sampler.first[0]:
        cost.cpu_per_update = (sampler.last[1] - sampler.first[1]) / (sampler.last[0] - sampler.first[0])
    for kind, peak in sampler.peaks.values():
        cost.peak_rss_mb.setdefault(kind, []).append(peak)
