"""What each task carries, decided per node from what the server measured of it.

The seam between the loop and a scheduler (docs/architecture.md, "Compute-aware scheduling"):
the loop asks :meth:`TaskScheduler.plan` at every dispatch and reports every task's end with
:meth:`TaskScheduler.returned`. Pure: the loop owns time and passes its clock's ``now`` in, so
the same decisions run on the wall clock and on the virtual clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskPlan:
    """What one task carries beyond the model: ``local_steps`` (None: the run's own
    ``local-steps`` / ``local-epochs``, the same for every task)."""

    local_steps: int | None = None


class SpeedEstimate:
    """Seconds per local step of each node: a moving average of ``round trip / steps``.

    FedCompass's estimate (as APPFL implements it): ``t ← (1 − m)·t + m·sample``, so with the
    paper's ``m = 0.9`` the newest sample dominates and a node that slows down is noticed at once.
    The first sample is taken as it is.
    """

    def __init__(self, momentum: float) -> None:
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self._seconds: dict[int, float] = {}

    def observe(self, node_id: int, seconds: float, steps: int) -> float:
        """Fold one task's ``seconds`` for ``steps`` local steps in; the new estimate."""
        if steps < 1 or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"need steps >= 1 and finite seconds >= 0, got {steps} and {seconds}")
        sample = seconds / steps
        old = self._seconds.get(node_id)
        self._seconds[node_id] = sample if old is None else (1 - self.momentum) * old + self.momentum * sample
        return self._seconds[node_id]

    def get(self, node_id: int) -> float | None:
        """The node's seconds per step, None before its first finished task."""
        return self._seconds.get(node_id)

    def fastest(self) -> float | None:
        """The smallest seconds per step of any node seen so far."""
        return min(self._seconds.values(), default=None)


class TaskScheduler:
    """Every task the same: no per-task plan (the default of every strategy)."""

    def plan(self, node_id: int, now: float) -> TaskPlan:
        """What the task about to go to ``node_id`` at clock time ``now`` carries."""
        return TaskPlan()

    def returned(self, node_id: int, now: float, started: float, steps: int | None, trained: bool) -> None:
        """A task of ``node_id`` planned at ``started`` with ``steps`` ended at ``now``;
        ``trained``: it brought a valid update (otherwise it failed, expired or was refused)."""

    def may_dispatch(self, node_id: int) -> bool:
        """Whether ``node_id`` may get a task now (a scheduler may hold a node back)."""
        return True

    def order(self, node_ids: list[int]) -> list[int]:
        """The order in which the nodes about to get tasks are planned."""
        return node_ids

    def next_due(self) -> float | None:
        """The earliest clock time at which the strategy has a timed decision to make (None: none)."""
        return None


def clamp_steps(steps: int, q_min: int, q_max: int) -> int:
    """``steps`` within ``[q_min, q_max]``."""
    return max(q_min, min(q_max, steps))


class ComputeAwareScheduler(TaskScheduler):
    """Compute-aware FedBuff: each node gets the steps it finishes in the time the fastest
    node needs for ``q_max``: ``⌊q_max·t_fastest / t_node⌋`` within ``[q_min, q_max]``.

    A node not timed yet gets ``q_max``. ``t`` is :class:`SpeedEstimate`'s seconds per step,
    measured by the server (round trip / steps), never claimed by the client.
    """

    def __init__(self, q_min: int, q_max: int, momentum: float) -> None:
        if not 1 <= q_min <= q_max:
            raise ValueError(f"need 1 <= q_min <= q_max, got {q_min} and {q_max}")
        self.q_min, self.q_max = q_min, q_max
        self.speeds = SpeedEstimate(momentum)

    def plan(self, node_id: int, now: float) -> TaskPlan:
        own, fastest = self.speeds.get(node_id), self.speeds.fastest()
        if own is None or fastest is None or own <= 0:
            return TaskPlan(self.q_max)
        return TaskPlan(clamp_steps(math.floor(self.q_max * fastest / own), self.q_min, self.q_max))

    def returned(self, node_id: int, now: float, started: float, steps: int | None, trained: bool) -> None:
        if trained and steps:
            self.speeds.observe(node_id, max(now - started, 0.0), steps)
