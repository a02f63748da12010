"""The loop's event stream: one schema for the run history and the metrics exporter.

Every event is ``sink.event(kind, **fields)``; ``time`` (seconds since the run started)
is always present, ``tier`` is always a server-side label (``stats.TIER_LABELS`` or
``unknown``), never a client-supplied string. Kinds and their other fields:

- ``dispatch``: node, tier, version, bytes (model payload), in_flight
- ``update``: node, tier, outcome (accepted | stale | duplicate), staleness, weight,
  round_trip, train_seconds, bytes, norm (absent under secure aggregation), buffer_fill,
  device_kind, dp_epsilon (the client's DP-SGD ε so far, when DP-SGD is on), partition and
  partitions (the node's partition id and count, when it reports them)
- ``invalid``: node, tier, reason (``validation.REJECTION_REASONS``), round_trip (no node,
  tier or round_trip for ``unknown-task``: a reply to no task in flight)
- ``error``: node, tier, reason (``loop.ERROR_REASONS`` values or ``lost``)
- ``step``: version, in_flight, accepted, refused, staleness_mean, aggregate_seconds
- ``eval``: version, loss, accuracy; accuracy_by_tier (``{tier: accuracy}`` on each tier's
  own held-out data) and accuracy_gap (largest difference, null with one tier) once tiers are known
- ``node``: node, tier, state (admitted | left | retired | backed-off), online
- ``privacy``: epsilon, delta (user-level DP spent so far, after each released flush)
- ``resume``: version, accepted, discarded_buffered, abandoned_in_flight (a resumed run)
- ``flush-failed``: reason (``unmask-refused``, ``ring-overflow``, …): a full buffer was dropped
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EventSink(Protocol):
    """Anything that consumes loop events (the run recorder, the metrics exporter)."""

    def event(self, kind: str, **fields: object) -> None: ...


class Fanout:
    """Sends each event to several sinks, in order."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def event(self, kind: str, **fields: object) -> None:
        for sink in self.sinks:
            sink.event(kind, **fields)
