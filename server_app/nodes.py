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
        rank: Callable[[int], int] | None = None,
    ) -> None:
        """``rank`` orders the nodes never used yet (default: by node id)."""
        self._grid = grid
        self._on_change = on_change
        self._refresh_seconds = refresh_seconds
        self._retire_seconds = retire_seconds
        self._backoff_seconds = backoff_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._online: set[int] = set()
        self._known: set[int] = set()  # admitted: online and not retired
        self._retired_until: dict[int, float] = {}
        # Admitted nodes, least recently dispatched first: never-used ones (by rank), then in
        # order of use. A dict keeps insertion order, so a dispatch is O(1), not a sort of all nodes.
        self._by_use: dict[int, None] = {}
        self._failures: dict[int, int] = {}  # failed replies in a row
        self._backed_off_until: dict[int, float] = {}
        self._next_refresh = 0.0
        self._rank = rank or (lambda node_id: node_id)

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
        new = sorted(admitted - self._known, key=self._rank)
        for node_id in new:
            log.info("node %d admitted (%d online)", node_id, len(self._online))
            self._on_change(node_id, "admitted", len(self._online))
        for node_id in sorted(self._known - self._online):
            log.info("node %d left (%d online)", node_id, len(self._online))
            self._on_change(node_id, "left", len(self._online))
        unused = [n for n in new if n not in self._by_use]
        self._by_use = {**dict.fromkeys(unused), **self._by_use}  # a newcomer waits least
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

    def candidates(
        self,
        load: Counter[int],
        per_node: int,
        now: float,
        limit: int | None = None,
        usable: Callable[[int], bool] = lambda node_id: True,
    ) -> list[int]:
        """Eligible nodes with spare capacity (and ``usable``), least recently dispatched first;
        at most ``limit``. The walk stops at the limit: the cost is not a sort of every node."""
        found: list[int] = []
        for node_id in self._by_use:
            if limit is not None and len(found) >= limit:
                break
            if (
                node_id in self._known
                and load[node_id] < per_node
                and self._backed_off_until.get(node_id, 0.0) <= now
                and usable(node_id)
            ):
                found.append(node_id)
        return found

    def mark_used(self, node_id: int) -> None:
        """Record a dispatch to ``node_id``: it goes to the back of the least-recently-used order."""
        self._by_use.pop(node_id, None)
        self._by_use[node_id] = None
