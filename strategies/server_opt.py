"""Server optimizers that apply a pseudo-gradient to the global model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.base import Arrays


@dataclass(frozen=True)
class ServerSGDConfig:
    """SGD on the server: ``v ← μ·v + g``; ``w ← w − lr·v`` (``μ = 0``: plain SGD)."""

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"server-lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"server-momentum must be in [0, 1), got {self.momentum}")


class ServerSGD:
    """Heavy-ball SGD on numpy arrays; ``lr = 1, momentum = 0`` applies the mean delta (FedAvg)."""

    def __init__(self, config: ServerSGDConfig) -> None:
        self.config = config
        self._velocity: Arrays | None = None

    def step(self, model: Arrays, pseudo_gradient: Arrays) -> Arrays:
        """Return the new model; the pseudo-gradient is the mean of ``old - new`` deltas."""
        if self.config.momentum == 0:
            direction = pseudo_gradient
        else:
            if self._velocity is None:
                self._velocity = [np.zeros_like(g, dtype=np.float64) for g in pseudo_gradient]
            for v, g in zip(self._velocity, pseudo_gradient, strict=True):
                v *= self.config.momentum
                v += g
            direction = self._velocity
        return [
            (w.astype(np.float64) - self.config.lr * d).astype(np.float32)
            for w, d in zip(model, direction, strict=True)
        ]
