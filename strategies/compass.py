"""FedCompass's scheduler (Li et al., ICLR 2024, as APPFL implements it): arrival groups.

Each node gets between ``q_min`` and ``q_max`` local steps so that the members of a group
arrive at about the same time; a group's timer (``latest-time-factor`` × its expected
duration) closes it, and a member arriving after that is late: its update waits in the
general buffer for the next group aggregation. Members that arrived on time wait (no new
task) until their group closes, then all start from the new model. Pure: every decision
takes the loop's ``now``; the buffers themselves are :mod:`strategies.fedcompass`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from strategies.scheduling import SpeedEstimate, TaskPlan, TaskScheduler, clamp_steps

COMPLETE = "complete"  # every member came back
TIMER = "timer"  # the group's latest arrival time passed
CLOSE_REASONS = (COMPLETE, TIMER)


@dataclass
class Group:
    """One arrival group. ``expected`` / ``latest`` are None for a probe group (its members'
    speeds are unknown) until its first member comes back; ``completed_at``: when its last
    pending member came back."""

    pending: set[int] = field(default_factory=set)
    arrived: list[int] = field(default_factory=list)
    expected: float | None = None
    latest: float | None = None
    completed_at: float | None = None
    closed: bool = False


@dataclass(frozen=True)
class Placement:
    """Where a returned node's update goes: its group's buffer (``group``) or, when late or
    ungrouped, the general buffer (``group`` None)."""

    group: int | None


@dataclass(frozen=True)
class GroupClose:
    """A group the scheduler closed: why, how many members came back on time, how many are late."""

    group: int
    reason: str
    arrived: int
    late: int


class CompassScheduler(TaskScheduler):
    """Assign steps and groups at dispatch, place updates at return, close groups when due.

    A node with no speed estimate yet gets ``q_max`` and joins the open probe group; the
    first member to come back sets the probe group's expected arrival (its own return) and
    timer (its start + factor × its round trip). So the first tasks of a run form one group,
    and with equal speeds every later group is the whole cohort (FedBuff with K = group size).
    """

    def __init__(self, q_min: int, q_max: int, momentum: float, latest_time_factor: float) -> None:
        if not 1 <= q_min <= q_max:
            raise ValueError(f"need 1 <= q_min <= q_max, got {q_min} and {q_max}")
        if not (math.isfinite(latest_time_factor) and latest_time_factor >= 1):
            raise ValueError(f"latest_time_factor must be finite and >= 1, got {latest_time_factor}")
        self.q_min, self.q_max, self.factor = q_min, q_max, latest_time_factor
        self.speeds = SpeedEstimate(momentum)
        self.groups: dict[int, Group] = {}
        self._next_group = 0
        self._group_of: dict[int, int] = {}  # node → the group its task in flight belongs to
        self._held: set[int] = set()  # came back on time; waiting for their group to close
        self._placed: dict[int, Placement] = {}

    # -- the seam -------------------------------------------------------------------------

    def plan(self, node_id: int, now: float) -> TaskPlan:
        speed = self.speeds.get(node_id)
        if speed is None or speed <= 0:
            group_id = next((g for g, group in self._open() if group.expected is None), None)
            if group_id is None:
                group_id = self._new_group(None, None)
            steps = self.q_max
        else:
            group_id, steps = self._join(speed, now) or self._create(speed, now)
        self.groups[group_id].pending.add(node_id)
        self._group_of[node_id] = group_id
        return TaskPlan(steps)

    def returned(self, node_id: int, now: float, started: float, steps: int | None, trained: bool) -> None:
        if trained and steps:
            self.speeds.observe(node_id, max(now - started, 0.0), steps)
        group_id = self._group_of.pop(node_id, None)
        group = self.groups.get(group_id) if group_id is not None else None
        if group is None:
            self._placed[node_id] = Placement(None)
            return
        group.pending.discard(node_id)
        if trained and not group.closed:
            if group.latest is None:  # the probe group's first member back sets its timer
                group.expected, group.latest = now, started + self.factor * max(now - started, 0.0)
            on_time = now <= group.latest
        else:
            on_time = False
        if on_time:
            group.arrived.append(node_id)
            self._held.add(node_id)
        self._placed[node_id] = Placement(group_id if on_time else None)
        if not group.pending:
            if group.closed:
                del self.groups[group_id]  # type: ignore[arg-type]
            elif group.completed_at is None:
                group.completed_at = now

    def may_dispatch(self, node_id: int) -> bool:
        return node_id not in self._held

    def order(self, node_ids: list[int]) -> list[int]:
        """Fastest first (APPFL's order when a group's members get their next groups); untimed last."""
        return sorted(node_ids, key=lambda n: (self.speeds.get(n) is None, self.speeds.get(n) or 0.0))

    def next_due(self) -> float | None:
        return min((self._due_at(group) for _, group in self._open()), default=None)

    # -- what the strategy asks -----------------------------------------------------------

    def placement(self, node_id: int) -> Placement:
        """Where the update of the task :meth:`returned` just reported goes (asked once)."""
        return self._placed.pop(node_id, Placement(None))

    def complete(self, group_id: int) -> bool:
        """Whether every member of ``group_id`` came back (so it closes now)."""
        group = self.groups.get(group_id)
        return group is not None and not group.closed and group.completed_at is not None

    def due(self, now: float) -> list[int]:
        """The open groups to close at ``now``: complete, or past their latest arrival time."""
        return [g for g, group in self._open() if self._due_at(group) <= now]

    def close(self, group_id: int) -> GroupClose:
        """Close ``group_id``: its on-time members may have tasks again; its pending ones are late."""
        group = self.groups[group_id]
        reason = COMPLETE if group.completed_at is not None else TIMER
        group.closed = True
        self._held.difference_update(group.arrived)
        closing = GroupClose(group_id, reason, len(group.arrived), len(group.pending))
        if not group.pending:
            del self.groups[group_id]
        return closing

    # -- group formation (APPFL's _join_group / _create_group) ------------------------------

    def _open(self) -> list[tuple[int, Group]]:
        return [(g, group) for g, group in self.groups.items() if not group.closed]

    def _due_at(self, group: Group) -> float:
        if group.completed_at is not None:
            return group.completed_at
        return math.inf if group.latest is None else group.latest

    def _new_group(self, expected: float | None, latest: float | None) -> int:
        group_id = self._next_group
        self._next_group += 1
        self.groups[group_id] = Group(expected=expected, latest=latest)
        return group_id

    def _join(self, speed: float, now: float) -> tuple[int, int] | None:
        """The open group this node reaches with the most steps within ``[q_min, q_max]``."""
        best: tuple[int, int] | None = None
        for group_id, group in self._open():
            if group.expected is None:
                continue
            steps = math.floor((group.expected - now) / speed)
            if self.q_min <= steps <= self.q_max and (best is None or steps >= best[1]):
                best = (group_id, steps)
        return best

    def _create(self, speed: float, now: float) -> tuple[int, int]:
        """A new group, timed to arrive just after an open one's timer (as its fastest member
        would after ``q_max`` more steps) where that fits within ``q_max``; else ``q_max`` steps."""
        steps = -1
        for _, group in self._open():
            if group.latest is None or now >= group.latest:
                continue
            members = [*group.pending, *group.arrived]
            fastest = min((s for m in members if (s := self.speeds.get(m)) is not None), default=speed)
            candidate = math.floor((group.latest + fastest * self.q_max - now) / speed)
            if candidate <= self.q_max:
                steps = max(steps, candidate)
        steps = self.q_max if steps < 0 else clamp_steps(steps, self.q_min, self.q_max)
        duration = steps * speed
        return self._new_group(now + duration, now + self.factor * duration), steps
