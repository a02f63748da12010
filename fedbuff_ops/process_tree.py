"""The processes below a process, found by parent pid in /proc, and signalled safely later.

Flower's SuperLink and SuperNodes start their SuperExec in a new session, and the SuperExec
starts ``flwr-serverapp`` / ``flwr-clientapp``: signalling our children's process groups does not
reach them. Taking the tree before the stop lets the launcher end them as well, instead of
waiting for them to notice that their SuperLink is gone. Where /proc is missing (macOS) the tree
is empty and only the process groups are signalled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A pid with its start time (clock ticks since boot), so a reused pid is never signalled."""

    pid: int
    started: int

    def alive(self) -> bool:
        """Whether this very process (not a later one with its pid) still runs and is no zombie."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] == self.started and stat[1] != "Z"

    def signal(self, sig: int) -> None:
        """Send ``sig`` if this process still runs; a process already gone is fine."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)


def descendants(roots: Iterable[int]) -> list[ProcessId]:
    """Every live process below ``roots`` (children first found, grandchildren after)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in PROC.glob("[0-9]*") if PROC.is_dir() else ():
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found: list[ProcessId] = []
    frontier = list(roots)
    while frontier:
        below = [pid for parent in frontier for pid in children.get(parent, ())]
        found.extend(ProcessId(pid, started[pid]) for pid in below)
        frontier = below
    return found


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid`` from /proc/<pid>/stat, None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name, field 2, is in parentheses and may hold blanks: split after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])
