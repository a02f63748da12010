"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022), FLSim semantics."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from strategies.base import Arrays, AsyncStrategy, ClientUpdate, Outcome, Receipt
from strategies.buffer import WeightedSumBuffer
from strategies.server_opt import ServerSGD, ServerSGDConfig
from strategies.weights import EXAMPLE_WEIGHTS, STALENESS_WEIGHTS, example_weight, staleness_weight


@dataclass(frozen=True)
class FedBuffConfig:
    """Knobs of FedBuff; each maps to a ``[tool.flwr.app.config]`` key of the same name.

    The buffer is divided by ``K`` (the paper's Algorithm 1 and FLSim), not by ``Σw``:
    dividing by ``Σw`` would cancel staleness down-weighting whenever a whole buffer is
    equally stale, so stale buffers would move the model as far as fresh ones.
    """

    buffer_size: int = 3
    staleness_weight: str = "polynomial"
    staleness_exponent: float = 0.5
    example_weight: str = "equal"
    max_staleness: int = 0  # 0: no limit; otherwise updates with τ > max_staleness are dropped
    server: ServerSGDConfig = ServerSGDConfig()

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"buffer-size must be >= 1, got {self.buffer_size}")
        if self.staleness_weight not in STALENESS_WEIGHTS:
            raise ValueError(
                f"staleness-weight must be one of {STALENESS_WEIGHTS}, got {self.staleness_weight!r}"
            )
        if not self.staleness_exponent >= 0:
            raise ValueError(f"staleness-exponent must be >= 0, got {self.staleness_exponent}")
        if self.example_weight not in EXAMPLE_WEIGHTS:
            raise ValueError(
                f"example-weight must be one of {EXAMPLE_WEIGHTS}, got {self.example_weight!r}"
            )
        if self.max_staleness < 0:
            raise ValueError(f"max-staleness must be >= 0 (0 = no limit), got {self.max_staleness}")


class FedBuff(AsyncStrategy):
    """Accumulate ``s(τ)·e(n)·Δ`` until K updates, then step the server optimizer on ``Σ/K``.

    At most one update per client per buffer: a fast client's second update waits in
    the next buffer (itself a running sum) instead of being thrown away; only when
    ``max_pending_buffers`` buffers already hold that client is it refused as a duplicate.
    """

    max_pending_buffers = 4

    def __init__(self, initial: Arrays, config: FedBuffConfig) -> None:
        super().__init__(initial)
        self.config = config
        self._buffers: deque[WeightedSumBuffer] = deque([WeightedSumBuffer()])
        self._optimizer = ServerSGD(config.server)

    @property
    def buffer_fill(self) -> int:
        """How many updates wait in the buffer that flushes next."""
        return len(self._buffers[0])

    def weight(self, update: ClientUpdate) -> float:
        """The weight this update gets in the buffer."""
        return staleness_weight(
            self.config.staleness_weight, update.staleness, self.config.staleness_exponent
        ) * example_weight(self.config.example_weight, update.num_examples)

    def receive(self, update: ClientUpdate) -> Receipt:
        if self.config.max_staleness and update.staleness > self.config.max_staleness:
            return Receipt(Outcome.STALE)
        buffer = next((b for b in self._buffers if not b.holds(update.client_id)), None)
        if buffer is None:
            if len(self._buffers) >= self.max_pending_buffers:
                return Receipt(Outcome.DUPLICATE)
            buffer = WeightedSumBuffer()
            self._buffers.append(buffer)
        weight = self.weight(update)
        buffer.add(update.client_id, update.delta, weight)
        if len(self._buffers[0]) < self.config.buffer_size:
            return Receipt(Outcome.ACCEPTED, weight=weight)
        total, count, _ = self._buffers.popleft().flush()
        if not self._buffers:
            self._buffers.append(WeightedSumBuffer())
        pseudo_gradient = [s / count for s in total]
        self._commit(self._optimizer.step(self.model, pseudo_gradient))
        return Receipt(Outcome.ACCEPTED, weight=weight, stepped=True)
