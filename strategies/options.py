"""Every strategy knob in one flat, validated dataclass.

Field ``a_b`` is the run-config key ``a-b``; the run settings inherit these fields, so
each knob has one name, one default and one check from pyproject.toml to the strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from strategies.errors import SettingsError
from strategies.fedbuff import BUFFER_NORMALIZATIONS
from strategies.registry import COMPUTE_AWARE, REGISTRY
from strategies.server_opt import SERVER_OPTIMIZERS
from strategies.weights import EXAMPLE_WEIGHTS, STALE_POLICIES, STALENESS_WEIGHTS


@dataclass(frozen=True)
class StrategyOptions:
    """Knobs of the aggregation strategies, checked at construction (:class:`SettingsError`)."""

    # which strategy: fedbuff, fedasync, sync (FedBuff with K = concurrency), fedcompass, flower-fedavg
    strategy: str = "fedbuff"
    # FedBuff: K, the updates per server step; "count" divides the buffer by K, "weight" by Σw
    buffer_size: int = 3
    buffer_normalization: str = "count"
    # staleness weight s(τ): constant, polynomial (1+τ)^-a, hinge, threshold
    staleness_weight: str = "polynomial"
    staleness_exponent: float = 0.5  # a of polynomial
    staleness_hinge_slope: float = 10.0  # a of hinge: 1/(a(τ-b)+1) past b
    staleness_cutoff: int = 4  # b of hinge; threshold weighs τ > cutoff 0
    # example weight e(n): equal, linear, sqrt, log; each is 1 at n = example-reference.
    # n is the client's claim: e(n) is cut to max-example-weight (ten typical clients)
    example_weight: str = "equal"
    example_reference: float = 100.0
    max_example_weight: float = 10.0
    # τ > max-staleness (0: no limit) is dropped, or kept with weight × stale-factor
    max_staleness: int = 0
    stale_policy: str = "drop"
    stale_factor: float = 0.1
    # server optimizer on the pseudo-gradient: sgd, adam, yogi, adagrad (Reddi et al. 2021)
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.0  # sgd only
    server_beta1: float = 0.9  # adam, yogi, adagrad
    server_beta2: float = 0.99  # adam, yogi
    server_tau: float = 1e-3  # adaptivity ε of adam, yogi, adagrad
    # FedAsync: w ← (1 − α·s(τ))·w + α·s(τ)·w_client
    fedasync_alpha: float = 0.6
    # compute-aware scheduling (strategies.scheduling, strategies.compass; FedCompass, Li et al.
    # ICLR 2024, APPFL's defaults): each task's local steps in [compass-min-steps, compass-max-steps]
    # (Q_min = 0.2·Q_max) from the node's measured seconds per step, a moving average whose newest
    # sample weighs compass-speed-momentum; a group closes compass-latest-time-factor × its
    # expected duration after it started. compute-aware gives FedBuff the same per-node steps.
    compute_aware: bool = False
    compass_min_steps: int = 20
    compass_max_steps: int = 100
    compass_speed_momentum: float = 0.9
    compass_latest_time_factor: float = 1.5
    # step guard: a server step moving the model farther than this (L2) is refused, its
    # buffer dropped (0: off; a non-finite new model is always refused). Honest default
    # digits runs step at most ~1.5, the most aggressive honest settings measured ~13.
    max_step_norm: float = 100.0

    def __post_init__(self) -> None:
        for field in fields(self):  # subclasses (the run settings) are checked too
            kind, value = type(field.default), getattr(self, field.name)
            widened = kind is float and isinstance(value, int)
            if isinstance(value, bool) != (kind is bool) or not (isinstance(value, kind) or widened):
                self._fail(field.name, kind.__name__)
        self._one_of("strategy", tuple(REGISTRY))
        self._at_least("buffer_size", 1)
        self._one_of("buffer_normalization", BUFFER_NORMALIZATIONS)
        self._one_of("staleness_weight", tuple(STALENESS_WEIGHTS))
        self._at_least("staleness_exponent", 0)
        self._at_least("staleness_hinge_slope", 0)
        self._at_least("staleness_cutoff", 0)
        self._one_of("example_weight", tuple(EXAMPLE_WEIGHTS))
        self._at_least("example_reference", 0, strict=True)
        self._at_least("max_example_weight", 0, strict=True)
        self._at_least("max_staleness", 0)
        self._one_of("stale_policy", STALE_POLICIES)
        self._within("stale_factor", "[0, 1]", 0 <= self.stale_factor <= 1)
        self._one_of("server_optimizer", tuple(SERVER_OPTIMIZERS))
        self._at_least("server_lr", 0, strict=True)
        self._within("server_momentum", "[0, 1)", 0 <= self.server_momentum < 1)
        self._within("server_beta1", "[0, 1)", 0 <= self.server_beta1 < 1)
        self._within("server_beta2", "[0, 1)", 0 <= self.server_beta2 < 1)
        self._at_least("server_tau", 0, strict=True)
        self._within("fedasync_alpha", "(0, 1]", 0 < self.fedasync_alpha <= 1)
        self._at_least("max_step_norm", 0)
        self._at_least("compass_min_steps", 1)
        if self.compass_max_steps < self.compass_min_steps:
            self._fail("compass_max_steps", f">= compass-min-steps ({self.compass_min_steps})")
        self._within("compass_speed_momentum", "(0, 1]", 0 < self.compass_speed_momentum <= 1)
        self._at_least("compass_latest_time_factor", 1)
        if self.compute_aware and self.strategy not in COMPUTE_AWARE:
            self._fail("compute_aware", f"false unless strategy is one of {COMPUTE_AWARE}")

    def _fail(self, name: str, requirement: str) -> None:
        key = name.replace("_", "-")
        raise SettingsError(f"{key} must be {requirement}, got {getattr(self, name)!r}")

    def _one_of(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"one of {choices}")

    def _at_least(self, name: str, low: int, strict: bool = False) -> None:
        value = getattr(self, name)
        if not (value > low if strict else value >= low):
            self._fail(name, f"> {low}" if strict else f">= {low}")
        if not math.isfinite(value):
            self._fail(name, "finite")

    def _within(self, name: str, interval: str, ok: bool) -> None:
        if not ok:
            self._fail(name, f"in {interval}")
