"""Which SuperNodes may receive work: online, not retired, least recently used first."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from flwr.serverapp import Grid

log = logging.getLogger(__name__)


class NodePool:
    """Tracks online nodes through ``grid.get_node_ids()`` and retires unreachable ones.

    A node that answered NODE_UNAVAILABLE is skipped for ``retire_seconds``; if it is
    still (or again) online after that, it is admitted afresh.
    """

    def __init__(
        self,
        grid: Grid,
        on_change: Callable[[int, str, int], None] = lambda node_id, state, online: None,
        refresh_seconds: float = 2.0,
        retire_seconds: float = 30.0,
    ) -> None:
        self._grid = grid
        self._on_change = on_change
        self._refresh_seconds = refresh_seconds
        self._retire_seconds = retire_seconds
        self._online: set[int] = set()
        self._known: set[int] = set()  # admitted: online and not retired
        self._retired_until: dict[int, float] = {}
        self._last_used: dict[int, float] = {}
        self._next_refresh = 0.0

    @property
    def online(self) -> set[int]:
        """Nodes the SuperLink reported online at the last refresh."""
        return set(self._online)

    def refresh(self, now: float) -> None:
        """Re-read the online node list (at most every ``refresh_seconds``)."""
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._refresh_seconds
        self._online = set(self._grid.get_node_ids())
        admitted = {n for n in self._online if self._retired_until.get(n, 0.0) <= now}
        for node_id in sorted(admitted - self._known):
            log.info("node %d admitted (%d online)", node_id, len(self._online))
            self._on_change(node_id, "admitted", len(self._online))
        for node_id in sorted(self._known - self._online):
            log.info("node %d left (%d online)", node_id, len(self._online))
            self._on_change(node_id, "left", len(self._online))
        self._known = admitted

    def retire(self, node_id: int, now: float) -> None:
        """Stop sending to ``node_id`` for a while: it left or cannot be reached."""
        self._retired_until[node_id] = now + self._retire_seconds
        self._known.discard(node_id)
        log.warning("node %d retired (unavailable)", node_id)
        self._on_change(node_id, "retired", len(self._online))

    def candidates(self, load: Counter[int], per_node: int) -> list[int]:
        """Eligible nodes with spare capacity, least recently dispatched first."""
        eligible = [n for n in self._known if load[n] < per_node]
        return sorted(eligible, key=lambda n: (self._last_used.get(n, 0.0), n))

    def mark_used(self, node_id: int, now: float) -> None:
        """Record a dispatch to ``node_id`` (for least-recently-used ordering)."""
        self._last_used[node_id] = now
