"""Staleness and example weights of buffered asynchronous aggregation (FedBuff / FLSim)."""

from __future__ import annotations

import math
from collections.abc import Callable

STALENESS_WEIGHTS = ("constant", "polynomial")
EXAMPLE_WEIGHTS = ("equal",)


def staleness_weight(name: str, staleness: int, exponent: float = 0.5) -> float:
    """Down-weight an update computed ``staleness`` versions ago.

    ``polynomial`` is ``1 / (1 + τ)^a`` (FedBuff paper, a = 0.5); ``constant`` is 1.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    rules: dict[str, Callable[[int], float]] = {
        "constant": lambda tau: 1.0,
        "polynomial": lambda tau: 1.0 / math.pow(1.0 + tau, exponent),
    }
    if name not in rules:
        raise ValueError(f"unknown staleness weight {name!r}; choose one of {STALENESS_WEIGHTS}")
    return rules[name](staleness)


def example_weight(name: str, num_examples: int) -> float:
    """Weight an update by how many examples it was trained on (``equal``: 1)."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if name != "equal":
        raise ValueError(f"unknown example weight {name!r}; choose one of {EXAMPLE_WEIGHTS}")
    return 1.0
