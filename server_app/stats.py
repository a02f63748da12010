"""Counters of one run, the source of the progress lines and of the run summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedbuff.settings import DEVICE_TIERS

TIER_LABELS = (*DEVICE_TIERS, "real")


def tier_label(reported: object) -> str:
    """Map a client-reported tier (any record value, or None) onto the server-side allow-list."""
    return reported if isinstance(reported, str) and reported in TIER_LABELS else "unknown"


def largest_gap(accuracy_by_tier: Mapping[str, float]) -> float | None:
    """Largest accuracy difference between two tiers (``None`` with fewer than two)."""
    if len(accuracy_by_tier) < 2:
        return None
    return max(accuracy_by_tier.values()) - min(accuracy_by_tier.values())


@dataclass
class RunStats:
    """What happened to every task the loop dispatched."""

    dispatched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted_by_tier: Counter[str] = field(default_factory=Counter)
    staleness: Counter[int] = field(default_factory=Counter)
    dropped_fields: Counter[str] = field(default_factory=Counter)  # reported fields dropped, by name
    clipped: Counter[str] = field(default_factory=Counter)  # values cut to a bound ("example-weight")
    refused_steps: Counter[str] = field(default_factory=Counter)  # server steps the step guard refused
    round_trip_sum: float = 0.0
    replies: int = 0

    @property
    def accepted(self) -> int:
        return self.outcomes["accepted"]

    @property
    def refused(self) -> int:
        """Replies that did not enter a buffer: invalid, stale or duplicate."""
        return sum(self.rejected.values()) + self.outcomes["stale"] + self.outcomes["duplicate"]

    def staleness_mean(self) -> float:
        total = sum(self.staleness.values())
        return sum(t * c for t, c in self.staleness.items()) / total if total else 0.0

    def staleness_max(self) -> int:
        return max(self.staleness, default=0)

    def participation_by_tier(self) -> dict[str, float]:
        """Each tier's share of the accepted updates (the fairness report's participation)."""
        total = sum(self.accepted_by_tier.values())
        return {t: round(n / total, 4) for t, n in sorted(self.accepted_by_tier.items())} if total else {}

    def summary(self) -> dict[str, object]:
        return {
            "tasks_dispatched": self.dispatched,
            "updates_accepted": self.accepted,
            "updates_refused": self.refused,
            "outcomes": dict(self.outcomes),
            "rejected_by_reason": dict(self.rejected),
            "errors_by_reason": dict(self.errors),
            "accepted_by_tier": dict(self.accepted_by_tier),
            "participation_by_tier": self.participation_by_tier(),
            "staleness_mean": round(self.staleness_mean(), 3),
            "staleness_max": self.staleness_max(),
            "staleness_histogram": {str(k): v for k, v in sorted(self.staleness.items())},
            "dropped_fields": dict(self.dropped_fields),
            "clipped": dict(self.clipped),
            "refused_steps": dict(self.refused_steps),
            "round_trip_mean_seconds": round(self.round_trip_sum / self.replies, 3) if self.replies else None,
        }
