"""FedAsync: mix each client model into the global one (Xie et al., 2019)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from strategies.base import Arrays, AsyncStrategy, ClientUpdate, Outcome, Receipt, StrategyState
from strategies.weights import staleness_limit, staleness_weight

if TYPE_CHECKING:
    from strategies.options import StrategyOptions


class FedAsync(AsyncStrategy):
    """``w ← (1 − β)·w + β·w_client`` with ``β = α·s(τ)``, one server step per update.

    Clients send ``Δ = w_dispatch − w_trained``, so ``w_client = w_dispatch − Δ`` needs
    the model of the dispatch version: the strategy keeps the last ``W`` versions, with
    ``W = max-staleness`` under ``stale-policy = "drop"`` and ``max-staleness +
    max_history`` otherwise (no limit, or down-weighted updates past it, ``β`` then
    times ``stale-factor``). An update older than that is STALE. Memory: ``W + 1`` models.
    Example weights, the buffer and the server optimizer do not apply.
    """

    max_history = 32

    def __init__(self, initial: Arrays, options: StrategyOptions) -> None:
        super().__init__(initial, options.max_step_norm)
        self.options = options
        self._staleness_weight = staleness_weight(options)
        limited = options.max_staleness and options.stale_policy == "drop"
        window = options.max_staleness + (0 if limited else self.max_history)
        self._history: deque[Arrays] = deque([self.model], maxlen=window + 1)

    def load_state_dict(self, state: StrategyState) -> None:
        """Continue from a checkpoint; the mixing history restarts at the restored model."""
        super().load_state_dict(state)
        self._history = deque([self.model], maxlen=self._history.maxlen)

    def receive(self, update: ClientUpdate) -> Receipt:
        factor = staleness_limit(self.options, update.staleness)
        if factor is None or update.staleness >= len(self._history):
            return Receipt(Outcome.STALE)
        beta = self.options.fedasync_alpha * self._staleness_weight(update.staleness) * factor
        dispatched = self._history[-1 - update.staleness]
        step = self._apply(
            [
                (1.0 - beta) * np.asarray(w, dtype=np.float64)
                + beta * (np.asarray(d, dtype=np.float64) - np.asarray(delta, dtype=np.float64))
                for w, d, delta in zip(self.model, dispatched, update.delta, strict=True)
            ]
        )
        if step.stepped:
            self._history.append(self.model)
        return Receipt(Outcome.ACCEPTED, weight=beta, step=step)
