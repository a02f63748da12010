"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022), FLSim semantics."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from strategies.base import Arrays, AsyncStrategy, ClientUpdate, FlushError, Outcome, Receipt
from strategies.buffer import WeightedSumBuffer
from strategies.server_opt import ServerOptimizer, server_optimizer
from strategies.weights import example_weight, staleness_limit, staleness_weight

if TYPE_CHECKING:
    from strategies.dp import FlushPrivacy
    from strategies.options import StrategyOptions

PRIVACY_BUDGET = "privacy-budget"  # flush error: releasing it would exceed the ε budget

BUFFER_NORMALIZATIONS = ("count", "weight")


class FedBuff(AsyncStrategy):
    """Accumulate ``w_i·Δ_i`` until K updates, then step the server optimizer on the buffer.

    ``w_i = e(n_i)·s(τ_i)`` (times ``stale-factor`` past ``max-staleness`` under
    ``stale-policy = "down-weight"``; under ``"drop"`` such updates are STALE).

    The buffer is divided by K by default (``buffer-normalization = "count"``, the paper's
    Algorithm 1 and FLSim). ``"weight"`` divides by ``Σw`` instead, a weighted mean; it
    cancels staleness down-weighting whenever a whole buffer is equally stale, so a stale
    buffer would move the model as far as a fresh one. A buffer whose ``Σw`` is 0 (threshold
    weights) applies a zero pseudo-gradient.

    At most one update per client per buffer: a fast client's second update waits in the
    next buffer (itself a running sum) instead of being thrown away; only when
    ``max_pending_buffers`` buffers already hold that client is it refused as DUPLICATE.
    """

    max_pending_buffers = 4

    def __init__(self, initial: Arrays, options: StrategyOptions, privacy: FlushPrivacy | None = None) -> None:
        super().__init__(initial)
        self.options = options
        self.privacy = privacy
        self._staleness_weight = staleness_weight(options)
        self._example_weight = example_weight(options)
        self._optimizer = server_optimizer(options)
        self._buffers: deque[WeightedSumBuffer] = deque([self._new_buffer()])

    @property
    def buffer_fill(self) -> int:
        """How many updates wait in the buffer that flushes next."""
        return len(self._buffers[0])

    @property
    def optimizer(self) -> ServerOptimizer:
        """The server optimizer (its ``state_dict`` belongs in a checkpoint)."""
        return self._optimizer

    def _restore_optimizer(self, state: dict[str, object]) -> None:
        """Load the server optimizer's state and start from an empty buffer.

        A partly filled buffer is never part of a checkpoint: keeping individual updates
        across a crash would mean storing them, and under secure aggregation their masks
        are single-use, so they could not be unmasked by a restarted server anyway.
        """
        if state:
            self._optimizer.load_state_dict(state)  # type: ignore[arg-type]
        self._buffers = deque([self._new_buffer()])

    def receive(self, update: ClientUpdate) -> Receipt:
        factor = staleness_limit(self.options, update.staleness)
        if factor is None:
            return Receipt(Outcome.STALE)
        buffer = next((b for b in self._buffers if not b.holds(update.client_id)), None)
        if buffer is None:
            if len(self._buffers) >= self.max_pending_buffers:
                return Receipt(Outcome.DUPLICATE)
            buffer = self._new_buffer()
            self._buffers.append(buffer)
        weight = (
            factor
            * self._staleness_weight(update.staleness)
            * self._example_weight(update.num_examples)
        )
        if not self._add(buffer, update, weight):
            return Receipt(Outcome.STALE)
        if len(self._buffers[0]) < self.options.buffer_size:
            return Receipt(Outcome.ACCEPTED, weight=weight)
        failure = self._step()
        return Receipt(Outcome.ACCEPTED, weight=weight, stepped=failure is None, flush_error=failure)

    def flush(self) -> bool:
        """Step on the head buffer now, however full; ``False`` if it is empty or failed.

        The synchronous barrier needs it when a round ends with fewer than K updates
        (a drop-out): the round's survivors are averaged over their own count.
        """
        return bool(len(self._buffers[0])) and self._step() is None

    # -- what a buffer is: overridden by the secure-aggregation variant ---------------------

    def _new_buffer(self) -> WeightedSumBuffer:
        return WeightedSumBuffer()

    def _add(self, buffer: WeightedSumBuffer, update: ClientUpdate, weight: float) -> bool:
        """Add the update with ``weight``; ``False`` if it carries no weight at all."""
        buffer.add(update.client_id, update.delta, weight)
        return True

    def _drain(self, buffer: WeightedSumBuffer) -> tuple[Arrays, int, float]:
        """``(Σ w_i·Δ_i, count, Σ w_i)``; raises :class:`FlushError` if it cannot be read."""
        return buffer.flush()

    def _step(self) -> str | None:
        """Apply the head buffer; the reason if it could not be read (it is then dropped)."""
        buffer = self._buffers.popleft()
        if not self._buffers:
            self._buffers.append(self._new_buffer())
        weights = buffer.weights
        try:
            total, count, total_weight = self._drain(buffer)
        except FlushError as err:
            return err.reason
        if self.privacy is not None:
            released = self.privacy.privatize(total, weights)
            if released is None:
                return PRIVACY_BUDGET
            total = released
        self._commit(self._optimizer.step(self.model, self._normalize(total, count, total_weight)))
        return None

    def _normalize(self, total: Arrays, count: int, total_weight: float) -> Arrays:
        """Divide the drained sum by K or Σw, in place: the strategy owns it and it is dead
        after this flush, so a scaled copy would only add a float64 model to the peak."""
        if self.options.buffer_normalization == "count":
            scale = 1.0 / count
        else:
            scale = 1.0 / total_weight if total_weight > 0 else 0.0
        for s in total:
            s *= scale
        return total
