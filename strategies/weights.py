"""Staleness and example weights of asynchronous aggregation (FedBuff / FLSim, FedAsync).

Every weight is finite and non-negative for staleness ``τ >= 0`` and ``n >= 1`` examples
(given validated options), so weighting only ever scales an update down or up, never
flips its sign or turns it into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strategies.options import StrategyOptions

StalenessWeight = Callable[[int], float]
ExampleWeight = Callable[[int], float]


def constant(staleness: int) -> float:
    """1 whatever the staleness (the synchronous baseline)."""
    _check_staleness(staleness)
    return 1.0


def polynomial(staleness: int, exponent: float) -> float:
    """``(1 + τ)^-a``: FedBuff's choice (a = 0.5) and FedAsync's "Poly"."""
    _check_staleness(staleness)
    return (1.0 + staleness) ** -exponent


def hinge(staleness: int, slope: float, cutoff: int) -> float:
    """1 up to ``τ = b``, then ``1 / (a·(τ − b) + 1)`` (FedAsync's "Hinge"; a: slope, b: cutoff)."""
    _check_staleness(staleness)
    return 1.0 if staleness <= cutoff else 1.0 / (slope * (staleness - cutoff) + 1.0)


def threshold(staleness: int, cutoff: int) -> float:
    """1 up to ``τ = cutoff``, then 0 (FLSim's threshold with ``value_after_cutoff = 0``)."""
    _check_staleness(staleness)
    return 1.0 if staleness <= cutoff else 0.0


def equal(num_examples: int) -> float:
    """1 for every client (the FedBuff paper's default)."""
    _check_examples(num_examples)
    return 1.0


def linear(num_examples: int, reference: float) -> float:
    """``n / n_ref``: FedAvg's example weighting."""
    _check_examples(num_examples)
    return num_examples / reference


def sqrt(num_examples: int, reference: float) -> float:
    """``√n / √n_ref``."""
    _check_examples(num_examples)
    return math.sqrt(num_examples) / math.sqrt(reference)


def log(num_examples: int, reference: float) -> float:
    """``log(1 + n) / log(1 + n_ref)`` (FLSim's ``log10(1 + n)``; the base cancels)."""
    _check_examples(num_examples)
    return math.log1p(num_examples) / math.log1p(reference)


STALENESS_WEIGHTS: Mapping[str, Callable[[StrategyOptions], StalenessWeight]] = MappingProxyType(
    {
        "constant": lambda options: constant,
        "polynomial": lambda options: partial(polynomial, exponent=options.staleness_exponent),
        "hinge": lambda options: partial(hinge, slope=options.staleness_hinge_slope, cutoff=options.staleness_cutoff),
        "threshold": lambda options: partial(threshold, cutoff=options.staleness_cutoff),
    }
)

# FLSim divides each example weight by its value at a reference count (its
# ``avg_num_examples``) so that a typical client keeps weight ≈ 1: with ÷K
# normalisation the server step size then does not depend on the rule chosen.
EXAMPLE_WEIGHTS: Mapping[str, Callable[[StrategyOptions], ExampleWeight]] = MappingProxyType(
    {
        "equal": lambda options: equal,
        "linear": lambda options: partial(linear, reference=options.example_reference),
        "sqrt": lambda options: partial(sqrt, reference=options.example_reference),
        "log": lambda options: partial(log, reference=options.example_reference),
    }
)


def staleness_weight(options: StrategyOptions) -> StalenessWeight:
    """The staleness weight ``s(τ)`` that ``options`` select."""
    return STALENESS_WEIGHTS[options.staleness_weight](options)


def example_weight(options: StrategyOptions) -> ExampleWeight:
    """The example weight ``e(n)`` that ``options`` select."""
    return EXAMPLE_WEIGHTS[options.example_weight](options)


def clip_weight(weight: float, maximum: float) -> tuple[float, bool]:
    """``(min(weight, maximum), whether it was cut)``: an example weight no client can exceed."""
    return (maximum, True) if weight > maximum else (weight, False)


STALE_POLICIES = ("drop", "down-weight")


def staleness_limit(options: StrategyOptions, staleness: int) -> float | None:
    """Extra factor from ``max-staleness``: None means drop the update.

    Within the limit (or with no limit, ``max-staleness = 0``) the factor is 1. Past it,
    ``stale-policy = "drop"`` refuses the update and ``"down-weight"`` keeps it with its
    weight multiplied by ``stale-factor``.
    """
    if not options.max_staleness or staleness <= options.max_staleness:
        return 1.0
    return options.stale_factor if options.stale_policy == "down-weight" else None


def _check_staleness(staleness: int) -> None:
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")


def _check_examples(num_examples: int) -> None:
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
