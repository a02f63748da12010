"""FedCompass: FedBuff's buffers, filled and flushed by arrival group (Li et al., ICLR 2024).

The scheduling (local steps, groups, the timer) is :class:`strategies.compass.CompassScheduler`;
this module owns the buffers: one per open group plus the general buffer of late updates,
merged into the next group aggregation. Each aggregation is a FedBuff flush (weights
``s(τ)·e(n)``, ÷ count or ÷ Σw, the server optimizer, DP and the step guard), so the masked
variant only swaps the buffer type, exactly as :class:`strategies.secure_fedbuff.SecureFedBuff` does.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import TYPE_CHECKING

from strategies.base import Arrays, ClientUpdate, Outcome, Receipt, StepOutcome
from strategies.buffer import WeightedSumBuffer
from strategies.compass import CompassScheduler
from strategies.fedbuff import FedBuff
from strategies.ring import RingOverflowError
from strategies.secure_fedbuff import SecureFedBuff
from strategies.weights import staleness_limit

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions


class FedCompass(FedBuff):
    """Aggregate each arrival group, with whatever waits in the general buffer, in one step.

    An on-time update goes into its group's buffer; a late one into the general buffer. At
    most one update per client per aggregation (user-level DP's sensitivity needs it): an
    update whose client already waits in a general buffer goes into the next general buffer
    (FedBuff's rule for a client's second update), up to ``max_pending_buffers``, else
    DUPLICATE. A group closes when all its members are back or its timer runs out
    (:meth:`tick`); its buffer and the head general buffer are flushed together. A group
    whose members all came back late or failed aggregates nothing; the general buffer waits.

    Staleness is the loop's ``version_now − version_at_dispatch`` at arrival; APPFL counts it
    at the group's aggregation, which differs only when another group aggregates while this
    one's members wait. APPFL mixes ``w ← (1 − Σα_i)·w + Σα_i·w_i`` with ``α_i = α·s(τ_i)/N``;
    with ``buffer-normalization = "count"`` and server SGD that is our step with
    ``server-lr = α·k/N`` for a group of k (its gradient-based mode, exactly).
    """

    def __init__(self, initial: Arrays, options: StrategyOptions, privacy: FlushPrivacy | None = None) -> None:
        super().__init__(initial, options, privacy)
        self.scheduler: CompassScheduler = CompassScheduler(
            options.compass_min_steps,
            options.compass_max_steps,
            options.compass_speed_momentum,
            options.compass_latest_time_factor,
        )
        self._groups: dict[int, WeightedSumBuffer] = {}
        self._general: deque[WeightedSumBuffer] = deque()

    @property
    def buffer_fill(self) -> int:
        """Updates accepted and not yet aggregated, in every group buffer and the general buffer."""
        return sum(len(b) for b in self._groups.values()) + sum(len(b) for b in self._general)

    def _load_optimizer_state(self, state: dict[str, object]) -> None:
        super()._load_optimizer_state(state)
        self._groups, self._general = {}, deque()

    def receive(self, update: ClientUpdate) -> Receipt:
        """Place the update as the scheduler says (its task's return was reported first)."""
        placement = self.scheduler.placement(update.client_id)
        receipt = self._place(update, placement.group)
        if placement.group is not None and self.scheduler.complete(placement.group):
            return dataclasses.replace(receipt, step=self._close(placement.group))
        return receipt

    def tick(self, now: float) -> list[StepOutcome]:
        """Close the groups due at ``now`` (complete, or past their latest arrival time)."""
        return [self._close(group_id) for group_id in self.scheduler.due(now)]

    def _place(self, update: ClientUpdate, group_id: int | None) -> Receipt:
        factor = staleness_limit(self.options, update.staleness)
        if factor is None:
            return Receipt(Outcome.STALE)
        waiting = any(b.holds(update.client_id) for b in self._general)
        if group_id is not None and not waiting:
            buffer: WeightedSumBuffer | None = self._groups.setdefault(group_id, self._new_buffer())
        else:
            buffer = self._free_buffer(self._general, update.client_id)
        if buffer is None:
            return Receipt(Outcome.DUPLICATE)
        weight, clipped = self._weigh(update, factor)
        if not self._add(buffer, update, weight):
            return Receipt(Outcome.STALE, weight_clipped=clipped)
        return Receipt(Outcome.ACCEPTED, weight=weight, weight_clipped=clipped)

    def _close(self, group_id: int) -> StepOutcome:
        """Close the group and flush its buffer merged with the head general buffer."""
        closing = self.scheduler.close(group_id)
        buffer = self._groups.pop(group_id, None)
        if closing.arrived == 0:
            return StepOutcome(False, group=closing)
        if buffer is None:  # every on-time update went to the general buffer or was refused
            buffer = self._new_buffer()
        if self._general:
            try:
                buffer.merge(self._general[0])
                self._general.popleft()
            except RingOverflowError:  # past the ring codec's max_summands: the general buffer waits
                pass
        if not len(buffer):
            return StepOutcome(False, group=closing)
        return dataclasses.replace(self._flush(buffer), group=closing)


class SecureFedCompass(SecureFedBuff, FedCompass):
    """FedCompass over masked ring vectors: a group and the general buffer are one unmask request.

    The mask service refuses a set smaller than its K_min: a group aggregation with fewer
    contributions is dropped (``unmask-refused``), so K_min must not exceed the smallest group.
    """
