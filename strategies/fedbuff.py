"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022), FLSim semantics."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from strategies.base import Arrays, AsyncStrategy, ClientUpdate, Outcome, Receipt
from strategies.buffer import WeightedSumBuffer
from strategies.server_opt import ServerOptimizer, server_optimizer
from strategies.weights import example_weight, staleness_limit, staleness_weight

if TYPE_CHECKING:
    from strategies.options import StrategyOptions

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

    def __init__(self, initial: Arrays, options: StrategyOptions) -> None:
        super().__init__(initial)
        self.options = options
        self._staleness_weight = staleness_weight(options)
        self._example_weight = example_weight(options)
        self._optimizer = server_optimizer(options)
        self._buffers: deque[WeightedSumBuffer] = deque([WeightedSumBuffer()])

    @property
    def buffer_fill(self) -> int:
        """How many updates wait in the buffer that flushes next."""
        return len(self._buffers[0])

    @property
    def optimizer(self) -> ServerOptimizer:
        """The server optimizer (its ``state_dict`` belongs in a checkpoint)."""
        return self._optimizer

    def receive(self, update: ClientUpdate) -> Receipt:
        factor = staleness_limit(self.options, update.staleness)
        if factor is None:
            return Receipt(Outcome.STALE)
        buffer = next((b for b in self._buffers if not b.holds(update.client_id)), None)
        if buffer is None:
            if len(self._buffers) >= self.max_pending_buffers:
                return Receipt(Outcome.DUPLICATE)
            buffer = WeightedSumBuffer()
            self._buffers.append(buffer)
        weight = (
            factor
            * self._staleness_weight(update.staleness)
            * self._example_weight(update.num_examples)
        )
        buffer.add(update.client_id, update.delta, weight)
        if len(self._buffers[0]) < self.options.buffer_size:
            return Receipt(Outcome.ACCEPTED, weight=weight)
        self._step()
        return Receipt(Outcome.ACCEPTED, weight=weight, stepped=True)

    def flush(self) -> bool:
        """Step on the head buffer now, however full; ``False`` if it is empty.

        The synchronous barrier needs it when a round ends with fewer than K updates
        (a drop-out): the round's survivors are averaged over their own count.
        """
        if not len(self._buffers[0]):
            return False
        self._step()
        return True

    def _step(self) -> None:
        total, count, total_weight = self._buffers.popleft().flush()
        if not self._buffers:
            self._buffers.append(WeightedSumBuffer())
        if self.options.buffer_normalization == "count":
            scale = 1.0 / count
        else:
            scale = 1.0 / total_weight if total_weight > 0 else 0.0
        self._commit(self._optimizer.step(self.model, [s * scale for s in total]))
