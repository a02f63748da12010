"""Which SuperNodes may receive work: online, not retired, not backed off, least recently used first."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from flwr.serverapp import Grid

log = logging.getLogger(__name__)


class NodePool:
    """Tracks online nodes through ``grid.get_node_ids()`` and retires unreachable ones.

    A node that answered NODE_UNAVAILABLE is skipped for ``retire_seconds``; if it is
    still (or again) online after that, it is admitted afresh. A node whose replies keep
    failing (client errors, invalid updates) is backed off exponentially: after its n-th
    failure in a row it gets no work for ``backoff_seconds × 2^(n-1)`` (at most
    ``backoff_max_seconds``), so a broken or hostile client cannot flood the server.
    """

    def __init__(
        self,
        grid: Grid,
        on_change: Callable[[int, str, int], None] = lambda node_id, state, online: None,
        refresh_seconds: float = 2.0,
        retire_seconds: float = 30.0,
        backoff_seconds: float = 0.0,
        backoff_max_seconds: float = 300.0,
    ) -> None:
        self._grid = grid
        self._on_change = on_change
        self._refresh_seconds = refresh_seconds
        self._retire_seconds = retire_seconds
        self._backoff_seconds = backoff_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._online: set[int] = set()
        self._known: set[int] = set()  # admitted: online and not retired
        self._retired_until: dict[int, float] = {}
        self._last_used: dict[int, float] = {}
        self._failures: dict[int, int] = {}  # failed replies in a row
        self._backed_off_until: dict[int, float] = {}
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

    def failed(self, node_id: int, now: float) -> float:
        """Record a failed reply of ``node_id``; return the back-off it now serves (0: none)."""
        if not self._backoff_seconds:
            return 0.0
        failures = self._failures[node_id] = self._failures.get(node_id, 0) + 1
        seconds = min(self._backoff_seconds * 2.0 ** min(failures - 1, 62), self._backoff_max_seconds)
        self._backed_off_until[node_id] = now + seconds
        log.warning(
            "node %d backed off for %.0f s after %d failed repl%s in a row",
            node_id,
            seconds,
            failures,
            "y" if failures == 1 else "ies",
        )
        self._on_change(node_id, "backed-off", len(self._online))
        return seconds

    def succeeded(self, node_id: int) -> None:
        """``node_id`` sent a good update: its failure streak is over."""
        self._failures.pop(node_id, None)
        self._backed_off_until.pop(node_id, None)

    def candidates(self, load: Counter[int], per_node: int, now: float) -> list[int]:
        """Eligible nodes with spare capacity, least recently dispatched first."""
        eligible = [n for n in self._known if load[n] < per_node and self._backed_off_until.get(n, 0.0) <= now]
        return sorted(eligible, key=lambda n: (self._last_used.get(n, 0.0), n))

    def mark_used(self, node_id: int, now: float) -> None:
        """Record a dispatch to ``node_id`` (for least-recently-used ordering)."""
        self._last_used[node_id] = now
