"""A buffer that only ever adds: the shape secure aggregation needs.

Why: docs/architecture.md, "Secure aggregation".
"""

from __future__ import annotations

from strategies.base import Arrays
from strategies.chunked import add_scaled, scaled_copy


class WeightedSumBuffer:
    """Running weighted sum of client deltas; never stores an individual update.

    Memory is one float64 model copy whatever the buffer size, and the only operation on an
    update is ``sum += weight * delta`` — which a masked ring vector supports too. The sum is
    float64 (K float32 deltas add up without rounding drift) and updated in place, slice by
    slice, so an update costs no full-size temporary; ``delta`` itself is only read.
    """

    def __init__(self) -> None:
        self._sum: Arrays | None = None
        self._contributors: set[int] = set()
        self._weights: list[float] = []

    def __len__(self) -> int:
        return len(self._contributors)

    @property
    def total_weight(self) -> float:
        """Σ w_i over the updates in the buffer."""
        return sum(self._weights)

    @property
    def weights(self) -> list[float]:
        """The weight each update got (user-level DP needs the largest and Σw²)."""
        return list(self._weights)

    def holds(self, client_id: int) -> bool:
        """Whether ``client_id`` already contributed to this buffer."""
        return client_id in self._contributors

    def add(self, client_id: int, delta: Arrays, weight: float) -> None:
        """Add ``weight * delta``; a client contributes at most once per buffer."""
        if client_id in self._contributors:
            raise ValueError(f"client {client_id} already contributed to this buffer")
        if self._sum is None:
            self._sum = [scaled_copy(d, weight) for d in delta]
        else:
            for acc, d in zip(self._sum, delta, strict=True):
                add_scaled(acc, d, weight)
        self._contributors.add(client_id)
        self._weights.append(weight)

    def merge(self, other: WeightedSumBuffer) -> None:
        """Add ``other``'s sum and contributors into this buffer and empty ``other`` (FedCompass
        merges the general buffer into a group's); they must not share a client."""
        if self._contributors & other._contributors:
            raise ValueError("buffers to merge share a client")
        if other._sum is not None:
            if self._sum is None:
                self._sum = other._sum
            else:
                for acc, d in zip(self._sum, other._sum, strict=True):
                    acc += d
        self._contributors |= other._contributors
        self._weights += other._weights
        other._sum, other._contributors, other._weights = None, set(), []

    def flush(self) -> tuple[Arrays, int, float]:
        """Return ``(weighted_sum, count, total_weight)`` and empty the buffer."""
        if self._sum is None:
            raise ValueError("cannot flush an empty buffer")
        result = (self._sum, len(self._contributors), self.total_weight)
        self._sum, self._contributors, self._weights = None, set(), []
        return result
