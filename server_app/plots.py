"""End-of-run plots from a run folder's ``metrics.jsonl`` (the loop's event history).

``write_plots(run_dir)`` writes PNGs under ``run_dir/plots/`` and returns their paths:

- ``accuracy_vs_time.png``: central eval accuracy (and loss) against wall time; a run without
  central evaluation draws its federated evaluations instead;
- ``staleness_histogram.png``: staleness of accepted updates (and of refused ones);
- ``participation_by_tier.png``: each tier's share of accepted updates, next to its share
  of dispatched tasks;
- ``round_trip_by_tier.png``: round-trip time distribution per tier;
- ``accuracy_by_tier.png``: only when ``eval`` events carry ``accuracy_by_tier``
  (a ``{tier: accuracy}`` mapping; federated: ``metrics_by_tier``), per-tier accuracy against wall time, with the
  largest gap between tiers (``accuracy_gap``) as a dashed line.

A plot with no data is skipped, malformed lines are ignored, and a missing history
yields no plots. matplotlib is imported lazily and only through its object API with the
Agg canvas: no pyplot global state, no display needed, safe in a ServerApp thread.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_app.events import EventKind

log = logging.getLogger(__name__)

TIER_ORDER = ("high", "mid", "low", "real", "unknown")
PLOTS_DIR = "plots"


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Each JSON object line of ``path``; blank or malformed lines are skipped."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                yield record


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _tiers(present: set[str]) -> list[str]:
    return [t for t in TIER_ORDER if t in present] + sorted(present - set(TIER_ORDER))


@dataclass
class RunHistory:
    """What the plots draw, gathered from one pass over the event history."""

    evals: list[tuple[float, float, float | None]] = field(default_factory=list)  # (time, accuracy, loss)
    tier_evals: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    gaps: list[tuple[float, float]] = field(default_factory=list)
    staleness: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    accepted: Counter[str] = field(default_factory=Counter)
    dispatched: Counter[str] = field(default_factory=Counter)
    round_trips: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    central: bool = False  # central evaluations seen: federated ones are not drawn then

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one event; kinds and fields the plots do not use are ignored."""
        kind, time = record["event"], _number(record.get("time"))
        tier = str(record.get("tier", "unknown"))
        if kind == EventKind.EVAL:
            self._add_eval(record, time)
        elif kind == EventKind.FEDERATED_EVAL and not self.central:
            self._add_federated(record, time)
        elif kind == EventKind.UPDATE:
            outcome = str(record.get("outcome", ""))
            tau = _number(record.get("staleness"))
            if tau is not None:
                self.staleness["accepted" if outcome == "accepted" else "refused"][int(tau)] += 1
            if outcome == "accepted":
                self.accepted[tier] += 1
            if (rt := _number(record.get("round_trip"))) is not None:
                self.round_trips[tier].append(rt)
        elif kind == EventKind.INVALID:
            if (rt := _number(record.get("round_trip"))) is not None:
                self.round_trips[tier].append(rt)
        elif kind == EventKind.DISPATCH:
            self.dispatched[tier] += 1

    def _add_federated(self, record: Mapping[str, Any], time: float | None) -> None:
        """A federated evaluation, drawn where a run without central data has nothing else."""
        metrics, by_tier = record.get("metrics"), record.get("metrics_by_tier")
        if not isinstance(metrics, dict) or (accuracy := _number(metrics.get("accuracy"))) is None or time is None:
            return
        self.evals.append((time, accuracy, _number(metrics.get("loss"))))
        if isinstance(by_tier, dict):
            for name, values in by_tier.items():
                if isinstance(values, dict) and (number := _number(values.get("accuracy"))) is not None:
                    self.tier_evals[str(name)].append((time, number))

    def _add_eval(self, record: Mapping[str, Any], time: float | None) -> None:
        accuracy = _number(record.get("accuracy"))
        if time is None or accuracy is None:
            return
        if not self.central:  # central evaluation wins over any federated points drawn so far
            self.central = True
            self.evals.clear()
            self.tier_evals.clear()
        self.evals.append((time, accuracy, _number(record.get("loss"))))
        by_tier = record.get("accuracy_by_tier")
        if isinstance(by_tier, dict):
            for name, value in by_tier.items():
                if (number := _number(value)) is not None:
                    self.tier_evals[str(name)].append((time, number))
        if (gap := _number(record.get("accuracy_gap"))) is not None:
            self.gaps.append((time, gap))


def write_plots(run_dir: str | Path) -> list[Path]:
    """Write the run's PNG plots under ``run_dir/plots``; return the files written."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    history = RunHistory()
    for record in read_events(path):
        history.add(record)
    if not (history.evals or history.staleness or history.accepted or history.round_trips):
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is heavy
    from matplotlib.figure import Figure

    out_dir = run_dir / PLOTS_DIR
    written: list[Path] = []
    figures = [
        ("accuracy_vs_time.png", history.evals, _accuracy_vs_time),
        ("staleness_histogram.png", history.staleness, _staleness_histogram),
        ("participation_by_tier.png", history.accepted, _participation_by_tier),
        ("round_trip_by_tier.png", history.round_trips, _round_trip_by_tier),
        ("accuracy_by_tier.png", history.tier_evals, _accuracy_by_tier),
    ]
    for name, data, draw in figures:
        if not data:
            continue
        fig = Figure(figsize=(7, 4))
        draw(fig.add_subplot(), history)
        out_dir.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        written.append(out_dir / name)
    log.info("wrote %d plots under %s", len(written), out_dir)
    return written


def _accuracy_vs_time(ax: Any, history: RunHistory) -> None:
    evals = history.evals
    ax.plot([t for t, _, _ in evals], [a for _, a, _ in evals], marker="o", color="tab:blue", label="accuracy")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    losses = [(t, loss) for t, _, loss in evals if loss is not None]
    if losses:
        ax2 = ax.twinx()
        ax2.plot(
            [t for t, _ in losses], [v for _, v in losses], color="tab:red", alpha=0.6, linestyle="--", label="loss"
        )
        ax2.set_ylabel("loss")
        handles, labels = ax.get_legend_handles_labels()
        handles2, labels2 = ax2.get_legend_handles_labels()
        ax.legend(handles + handles2, labels + labels2, loc="center right")
    ax.set_title("Central evaluation vs wall time")


def _staleness_histogram(ax: Any, history: RunHistory) -> None:
    staleness = history.staleness
    taus = sorted(set().union(*staleness.values()))
    width = 0.4 if len(staleness) > 1 else 0.8
    for i, (label, counts) in enumerate(sorted(staleness.items())):
        offset = (i - (len(staleness) - 1) / 2) * width
        ax.bar([t + offset for t in taus], [counts[t] for t in taus], width=width, label=label)
    ax.set_xlabel("staleness (model versions)")
    ax.set_ylabel("updates")
    ax.set_xticks(taus)
    ax.legend()
    ax.set_title("Staleness on arrival")


def _participation_by_tier(ax: Any, history: RunHistory) -> None:
    accepted, dispatched = history.accepted, history.dispatched
    tiers = _tiers(set(accepted) | set(dispatched))
    total_accepted, total_dispatched = sum(accepted.values()), sum(dispatched.values())
    xs = range(len(tiers))
    ax.bar(
        [x - 0.2 for x in xs],
        [accepted[t] / total_accepted for t in tiers],
        width=0.4,
        label=f"accepted updates ({total_accepted})",
    )
    if total_dispatched:
        ax.bar(
            [x + 0.2 for x in xs],
            [dispatched[t] / total_dispatched for t in tiers],
            width=0.4,
            label=f"dispatched tasks ({total_dispatched})",
            alpha=0.6,
        )
    ax.set_xticks(list(xs), tiers)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Participation by device tier")


def _round_trip_by_tier(ax: Any, history: RunHistory) -> None:
    round_trips = history.round_trips
    tiers = _tiers(set(round_trips))
    ax.boxplot([round_trips[t] for t in tiers])
    ax.set_xticks(range(1, len(tiers) + 1), [f"{t}\n(n={len(round_trips[t])})" for t in tiers])
    ax.set_ylabel("round trip (s)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Round-trip time by device tier")


def _accuracy_by_tier(ax: Any, history: RunHistory) -> None:
    for tier in _tiers(set(history.tier_evals)):
        points = history.tier_evals[tier]
        ax.plot([t for t, _ in points], [a for _, a in points], marker=".", label=tier)
    if history.gaps:
        gaps = history.gaps
        ax.plot([t for t, _ in gaps], [g for _, g in gaps], color="black", linestyle="--", label="largest gap")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy by device tier")
