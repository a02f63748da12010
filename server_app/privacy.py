"""User-level privacy accounting for the buffer: Opacus' RDP accountant, one step per flush.

Each flush of a FedBuff buffer is one Gaussian mechanism on the set of users: every user
contributes at most one clipped delta to a buffer (FedBuff holds a second update of a fast
client back for the next buffer), the sum has L2 sensitivity ≤ C, and the noise on it has std
``σ_eff·C`` (see :mod:`strategies.dp`). ``n`` flushes are the adaptive composition of ``n``
such mechanisms; RDP composes them exactly and Opacus converts to (ε, δ).

**Sampling assumption: no amplification (``sample_rate = 1.0``) by default.** Privacy
amplification by subsampling needs every user to be in a step with a fixed probability ``q``,
independently of everything else, by a coin flip the adversary does not see (Poisson
sampling). Asynchronous arrival is nothing like that: who lands in a buffer depends on who is
fast, who is online and who was dispatched, not on a coin; a fast client lands in nearly every
buffer (it is re-dispatched the moment it replies), and the server that fills buffers sees and
controls the arrivals. The worst-case user is therefore in every flush, and each flush is
accounted at ``q = 1``. Pass ``sample_rate < 1`` only if clients are really Poisson-sampled per
flush with that rate, by a process the server cannot bias — this code base does not do that.

**Distributed noise.** When each client adds a share ``N(0, (σ·C)²/K_min)``, a flush with
``k ≥ K_min`` contributions of weight 1 carries noise std ``σ·C·√(k/K_min) ≥ σ·C`` while the
sensitivity stays ``C``: its effective noise multiplier is ``σ·√(k/K_min) ≥ σ``, so accounting
every flush at σ is conservative. Staleness weights scale the shares too; pass the flush's
``strategies.dp.flush_noise_multiplier(...)`` to :meth:`UserLevelAccountant.step` and a flush
whose weights thin the noise is charged what it really costs (capped at σ, never credited
more).

**Adaptive σ and the budget stop.** Per-flush noise multipliers that depend on the run
(stale weights) and stopping when ε reaches a budget are a privacy filter; for Gaussian
mechanisms RDP composition stays valid under such adaptivity (Feldman & Zrnic, "Individual
privacy accounting via a Rényi filter", NeurIPS 2021).

Importing this module imports Opacus (~1.5 s, once per ServerApp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from opacus.accountants import RDPAccountant

History = list[tuple[float, float, int]]


class UserLevelAccountant:
    """ε of user-level DP over a run: Opacus' :class:`RDPAccountant`, one step per flush.

    ``noise_multiplier`` is the configured σ (``user-dp-noise-multiplier``), used for steps
    that do not say otherwise and for the look-ahead of :meth:`steps_until`; ``delta`` is
    ``user-dp-delta``; ``sample_rate`` is 1.0 unless clients are Poisson-sampled (module
    docstring: asynchronous arrival is not subsampling).
    """

    def __init__(self, noise_multiplier: float, delta: float, sample_rate: float = 1.0) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"user-dp-noise-multiplier must be finite and > 0, got {noise_multiplier!r}")
        if not 0 < delta < 1:
            raise ValueError(f"user-dp-delta must be in (0, 1), got {delta!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sample_rate = float(sample_rate)
        self._accountant = RDPAccountant()

    # -- composition --------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Flushes accounted so far."""
        return sum(n for _, _, n in self._accountant.history)

    @property
    def history(self) -> History:
        """Opacus' history: ``(noise_multiplier, sample_rate, steps)`` runs, oldest first."""
        return [tuple(entry) for entry in self._accountant.history]

    def step(self, noise_multiplier: float | None = None, num_steps: int = 1) -> None:
        """Account ``num_steps`` flushes at ``noise_multiplier`` (default: the configured σ).

        ``math.inf`` (a flush that carried no weight) costs nothing and is not recorded.
        """
        sigma = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        if math.isnan(sigma) or sigma <= 0:
            raise ValueError(f"noise multiplier of a flush must be > 0, got {noise_multiplier!r}")
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if math.isinf(sigma):
            return
        for _ in range(num_steps):
            self._accountant.step(noise_multiplier=sigma, sample_rate=self.sample_rate)

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (default ``user-dp-delta``); 0.0 before the first flush."""
        return float(self._accountant.get_epsilon(delta=self.delta if delta is None else delta))

    def epsilon_after(self, extra_steps: int, noise_multiplier: float | None = None) -> float:
        """ε after ``extra_steps`` more flushes at ``noise_multiplier`` (default σ); no change here."""
        scratch = RDPAccountant()
        scratch.history = _extended(
            self.history,
            self.noise_multiplier if noise_multiplier is None else float(noise_multiplier),
            self.sample_rate,
            extra_steps,
        )
        return float(scratch.get_epsilon(delta=self.delta))

    # -- the budget ---------------------------------------------------------------------------

    def steps_until(self, eps_budget: float, noise_multiplier: float | None = None) -> int | None:
        """How many more flushes at σ keep ε ≤ ``eps_budget``: 0 means stop now.

        ``None`` when ``eps_budget`` is 0 (no budget). Exact for the accountant as it will be:
        the look-ahead extends the history the way :meth:`step` would.
        """
        if eps_budget <= 0:
            return None
        if self.epsilon() > eps_budget or self.epsilon_after(1, noise_multiplier) > eps_budget:
            return 0
        low, high = 1, 2  # ε(low) ≤ budget; find high with ε(high) > budget
        while self.epsilon_after(high, noise_multiplier) <= eps_budget:
            low, high = high, high * 2
            if high > 1 << 40:
                raise ValueError(f"user-dp-epsilon-budget {eps_budget} is never reached at this noise")
        while high - low > 1:
            mid = (low + high) // 2
            if self.epsilon_after(mid, noise_multiplier) <= eps_budget:
                low = mid
            else:
                high = mid
        return low

    def budget_exhausted(self, eps_budget: float, noise_multiplier: float | None = None) -> bool:
        """True when one more flush at σ (or ``noise_multiplier``) would take ε past the budget.

        Check it before applying a flush (with that flush's effective σ) or after each flush
        (with the configured σ) and stop the run when it is True; a budget of 0 never stops.
        """
        if eps_budget <= 0:
            return False
        return self.epsilon_after(1, noise_multiplier) > eps_budget

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Flat, JSON- and ConfigRecord-friendly state (lists of floats / ints, no tuples)."""
        history = self.history
        return {
            "noise-multiplier": self.noise_multiplier,
            "delta": self.delta,
            "sample-rate": self.sample_rate,
            "history-noise-multiplier": [float(s) for s, _, _ in history],
            "history-sample-rate": [float(q) for _, q, _ in history],
            "history-steps": [int(n) for _, _, n in history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the configured σ, δ and sample rate are checked to match."""
        for key, mine in (
            ("noise-multiplier", self.noise_multiplier),
            ("delta", self.delta),
            ("sample-rate", self.sample_rate),
        ):
            if key in state and float(state[key]) != mine:
                raise ValueError(f"accountant state has {key}={state[key]!r}, this run has {mine!r}")
        sigmas = [float(s) for s in state["history-noise-multiplier"]]
        rates = [float(q) for q in state["history-sample-rate"]]
        counts = [int(n) for n in state["history-steps"]]
        if not len(sigmas) == len(rates) == len(counts):
            raise ValueError("accountant state: history lists differ in length")
        if any(s <= 0 or not 0 < q <= 1 or n < 0 for s, q, n in zip(sigmas, rates, counts)):
            raise ValueError("accountant state: history entry out of range")
        self._accountant.history = list(zip(sigmas, rates, counts))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> UserLevelAccountant:
        accountant = cls(float(state["noise-multiplier"]), float(state["delta"]), float(state["sample-rate"]))
        accountant.load_state_dict(state)
        return accountant


def _extended(history: History, sigma: float, rate: float, steps: int) -> History:
    """``history`` after ``steps`` calls of ``RDPAccountant.step(sigma, rate)`` (same merging)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    out = list(history)
    if steps == 0 or math.isinf(sigma):
        return out
    if out and out[-1][0] == sigma and out[-1][1] == rate:
        out[-1] = (sigma, rate, out[-1][2] + steps)
    else:
        out.append((sigma, rate, steps))
    return out


class PrivacyBudget:
    """The ServerApp's side of user-level DP: accounts each flush and stops at the ε budget.

    :meth:`release` is the gate :class:`strategies.dp.FlushPrivacy` calls before a flush is
    applied; once it refuses, :meth:`stop_reason` tells the loop to stop.
    """

    def __init__(
        self, noise_multiplier: float, delta: float, budget: float, on_epsilon: Callable[[float], None]
    ) -> None:
        self.accountant = UserLevelAccountant(noise_multiplier, delta)
        self.budget = budget
        self._on_epsilon = on_epsilon
        self._exhausted: str | None = None

    def release(self, noise_multiplier: float) -> bool:
        """Account one flush at ``noise_multiplier``; False (and stop) if it would exceed the budget."""
        if self.accountant.budget_exhausted(self.budget, noise_multiplier):
            self._exhausted = (
                f"user-dp-epsilon-budget ({self.budget}) reached: ε={self.accountant.epsilon():.3f} "
                f"after {self.accountant.steps} flushes"
            )
            return False
        self.accountant.step(noise_multiplier)
        self._on_epsilon(self.accountant.epsilon())
        return True

    def stop_reason(self) -> str | None:
        """Why the run must stop for privacy, or None."""
        return self._exhausted
