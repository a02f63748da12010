"""What a finished run's ``metrics.jsonl`` says about time to accuracy.

The loop (and the Flower-FedAvg baseline) write one JSON event per line with ``time`` in
seconds since training started (``server_app.events``). A benchmark reads them back here
instead of trusting a run's own stop condition, so every strategy is scored the same way.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from server_app.events import EventKind


@dataclass(frozen=True)
class Reached:
    """When a run first evaluated at or above the target: seconds, model version, client trips.

    ``trips`` counts every train reply that arrived up to that moment (accepted, stale or
    duplicate alike): each one is a round trip a client paid for.
    """

    seconds: float
    version: int
    trips: int


def read_events(path: Path) -> list[dict[str, object]]:
    """All events of a ``metrics.jsonl``, in file order; a torn last line is skipped."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def time_to_target(events: Iterable[dict[str, object]], target: float) -> Reached | None:
    """The first ``eval`` event with accuracy ≥ ``target``, or ``None`` if the run never got there."""
    trips = 0
    for event in events:
        kind = event.get("event")
        if kind == EventKind.UPDATE:
            trips += 1
        elif kind == EventKind.EVAL and float(event.get("accuracy", -1.0)) >= target:  # type: ignore[arg-type]
            return Reached(float(event["time"]), int(event["version"]), trips)  # type: ignore[arg-type]
    return None


def round_trips(events: Iterable[dict[str, object]]) -> list[float]:
    """Round-trip seconds of every reply that carried an update."""
    return [
        float(e["round_trip"])
        for e in events  # type: ignore[arg-type]
        if e.get("event") == EventKind.UPDATE and "round_trip" in e
    ]


def step_times(events: Iterable[dict[str, object]]) -> list[float]:
    """Times (seconds since start) of every server step."""
    return [float(e["time"]) for e in events if e.get("event") == EventKind.STEP]  # type: ignore[arg-type]


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median over seeds, counting a run that never reached the target as infinitely slow.

    ``None`` (not reached) when that median is infinite, i.e. unless more than half of the
    runs got there: a median over the successful seeds only would flatter a strategy that
    usually fails.
    """
    if not values:
        return None
    middle = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(middle) else float(middle)


def steps_by_tier(events: Iterable[dict[str, object]]) -> dict[str, float]:
    """Mean local steps the scheduler assigned per tier to tasks planned from a measured speed:
    the ``dispatch`` events that carry ``local_steps``, less each node's first (the server has
    not timed it yet, so it gets Q_max whatever its tier)."""
    steps: dict[str, list[int]] = defaultdict(list)
    seen: set[object] = set()
    for event in events:
        if event.get("event") != EventKind.DISPATCH or "local_steps" not in event:
            continue
        if event.get("node") in seen:
            steps[str(event.get("tier", "unknown"))].append(int(event["local_steps"]))  # type: ignore[call-overload]
        seen.add(event.get("node"))
    return {tier: statistics.fmean(values) for tier, values in sorted(steps.items())}


def mean_group_size(events: Iterable[dict[str, object]]) -> float | None:
    """Mean on-time members of the ``group-close`` events that aggregated something (None: none)."""
    sizes = [
        int(e["arrived"])  # type: ignore[call-overload]
        for e in events
        if e.get("event") == EventKind.GROUP_CLOSE and int(e["arrived"]) > 0  # type: ignore[call-overload]
    ]
    return statistics.fmean(sizes) if sizes else None
