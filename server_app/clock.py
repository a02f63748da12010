"""The loop's clock: when a reply counts as arrived, and what time it is then.

A deployment runs on the wall clock: a reply is applied when the Grid hands it over. In
simulation the loop can run on a virtual clock instead (``virtual-clock=true``,
docs/simulation.md): each task's duration comes from the device model, deterministic from the
seed, the node's partition and its task number, and replies are applied in order of virtual
arrival, whatever order the simulation engine computes them in. The loop calls the same
methods on both, so strategies, ClientApp training and metrics are the deployment's own.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flwr.app import Message

from fedbuff.device_model import DeviceModel


@dataclass(frozen=True)
class Arrival:
    """A reply the loop applies now: at clock time ``at``; ``expired`` when its task's
    (virtual) duration ran past the TTL, so it counts as a ``ttl-expired`` drop-out."""

    reply: Message
    at: float
    expired: bool = False


class WallClock:
    """Seconds since the run started; replies are applied in the order they arrive."""

    # Replies pulled together arrived together: the loop applies them all, then refills the
    # freed slots with the newest model.
    refills_each_reply = False

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._arrived: deque[Message] = deque()

    def now(self) -> float:
        return time.monotonic() - self._started

    def tier_of(self, node_id: int) -> str | None:
        """The node's device tier where the clock knows it (None: trust the reply's)."""
        return None

    def times(self, node_id: int) -> bool:
        """Whether the clock can time a task of ``node_id`` (the loop sends others nothing)."""
        return True

    def rank(self, node_id: int) -> int:
        """Where ``node_id`` comes among nodes never used yet (the loop's least-recently-used order)."""
        return node_id

    def dispatched(self, message_id: str, node_id: int, sent_at: float, batches: int | None = None) -> None:
        """A task went out at clock time ``sent_at`` (``batches``: its planned local steps)."""

    def reach(self, at: float) -> bool:
        """Whether clock time ``at`` has come (a strategy's timer is due)."""
        return self.now() >= at

    def arrived(self, replies: Iterable[Message]) -> None:
        """Replies the Grid handed over."""
        self._arrived.extend(replies)

    def waiting(self, message_ids: Iterable[str]) -> list[str]:
        """The tasks among ``message_ids`` whose reply has not come from the Grid yet."""
        return list(message_ids)

    def next(self) -> Arrival | None:
        """The next reply to apply, if one may be applied now."""
        return Arrival(self._arrived.popleft(), self.now()) if self._arrived else None

    def forget(self, message_id: str) -> None:
        """A task written off: never wait for it."""


@dataclass(frozen=True)
class VirtualNode:
    """What the virtual clock knows of a node: its partition, tier and batches per task."""

    partition: int
    tier: str
    batches: int


class VirtualClock:
    """Virtual seconds since the run started; a reply is applied once every task that arrives
    earlier in virtual time has been applied (ties: in dispatch order).

    A task's virtual duration is the device model's ``task_seconds`` for the node's tier and
    batches (its own training time is not measured: it would make the run depend on the
    machine), paused while the node is offline; past ``ttl_seconds`` it is a drop-out at
    ``sent + ttl``. Tasks compute in parallel in real time.
    """

    # Each reply arrives at its own virtual time: the slot it frees is refilled at that time,
    # before a later reply is applied.
    refills_each_reply = True

    def __init__(
        self, model: DeviceModel, nodes: Mapping[int, VirtualNode], ttl_seconds: float, payload_bytes: int
    ) -> None:
        self._model = model
        self._nodes = dict(nodes)
        self._ttl = ttl_seconds
        self._payload = payload_bytes
        self._now = 0.0
        self._tasks_of: dict[int, int] = {}
        self._order = itertools.count()
        self._schedule: list[tuple[float, int, str, bool]] = []  # (arrival, order, message id, expired)
        self._replies: dict[str, Message] = {}
        self._forgotten: set[str] = set()

    @property
    def nodes(self) -> Mapping[int, VirtualNode]:
        return self._nodes

    def now(self) -> float:
        return self._now

    def tier_of(self, node_id: int) -> str | None:
        node = self._nodes.get(node_id)
        return node.tier if node else None

    def times(self, node_id: int) -> bool:
        return node_id in self._nodes

    def rank(self, node_id: int) -> int:
        """By partition, not by the engine's random node ids: the same seed chooses the same clients."""
        node = self._nodes.get(node_id)
        return node.partition if node else node_id

    def duration(self, node_id: int, task: int, start: float, batches: int | None = None) -> float:
        """Virtual seconds task number ``task`` of ``node_id`` takes when it starts at ``start``
        and trains ``batches`` (default: the node's batches per task under the run config)."""
        node = self._nodes[node_id]
        clock = self._model.for_node(node.partition, node.tier)
        busy = clock.task_seconds(task, 0.0, node.batches if batches is None else batches, self._payload)
        return clock.availability.finish_time(start, busy) - start

    def dispatched(self, message_id: str, node_id: int, sent_at: float, batches: int | None = None) -> None:
        if node_id not in self._nodes:
            raise KeyError(f"node {node_id} was not probed; the virtual clock has no device for it")
        task = self._tasks_of[node_id] = self._tasks_of.get(node_id, -1) + 1
        seconds = self.duration(node_id, task, sent_at, batches)
        expired = seconds > self._ttl
        arrival = sent_at + (self._ttl if expired else seconds)
        heapq.heappush(self._schedule, (arrival, next(self._order), message_id, expired))

    def arrived(self, replies: Iterable[Message]) -> None:
        for reply in replies:
            self._replies[reply.metadata.reply_to_message_id] = reply

    def waiting(self, message_ids: Iterable[str]) -> list[str]:
        return [m for m in message_ids if m not in self._replies]

    def reach(self, at: float) -> bool:
        """Advance to ``at`` unless a task arrives earlier (that arrival comes first; a tie too)."""
        if at <= self._now:
            return True
        self._drop_forgotten()
        if self._schedule and self._schedule[0][0] <= at:
            return False
        self._now = at
        return True

    def _drop_forgotten(self) -> None:
        while self._schedule and self._schedule[0][2] in self._forgotten:
            self._forgotten.discard(heapq.heappop(self._schedule)[2])

    def next(self) -> Arrival | None:
        self._drop_forgotten()
        if not self._schedule or self._schedule[0][2] not in self._replies:
            return None
        arrival, _, message_id, expired = heapq.heappop(self._schedule)
        self._now = max(self._now, arrival)
        return Arrival(self._replies.pop(message_id), self._now, expired)

    def forget(self, message_id: str) -> None:
        self._forgotten.add(message_id)
        self._replies.pop(message_id, None)


Clock = WallClock | VirtualClock
