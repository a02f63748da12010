"""User-level differential privacy for the buffer: clipping and Gaussian noise (docs/privacy.md, section 3).

Pure numpy and the standard library: no Flower, no torch, no Opacus. The accountant that turns
the noise below into an ε lives in ``server_app/privacy.py``; sample-level DP-SGD in
``client_app/dp_sgd.py``. docs/privacy.md is the user-facing description.

The mechanism, per flush of a FedBuff buffer with contributions ``i = 1..k`` and weights
``w_i`` (staleness × example weight, ``0 ≤ w_i ≤ 1`` under user-level DP):

1. **Clip (client, before masking).** ``Δ̃_i = Δ_i · min(1, C / ‖Δ_i‖₂)``
   (:func:`clip_by_l2`). ``C`` is ``user-dp-clip``. Under zero-out adjacency (one user's
   delta replaced by zero) the weighted sum ``S = Σ w_i·Δ̃_i`` has L2 sensitivity
   ``max_i w_i · C ≤ C``.
2. **Noise**, σ = ``user-dp-noise-multiplier``:

   - ``central``: the server adds ``N(0, (σ·C)²·I)`` to ``S`` once per flush, before the
     division by K (:func:`add_central_noise`, std :func:`central_noise_std`). Effective noise
     multiplier of the flush ``σ_eff = σ·C / (max_i w_i·C) = σ / max_i w_i ≥ σ``.
   - ``distributed``: every client adds its own share ``N(0, s²·I)`` with
     ``s = σ·C / √K_min`` to its clipped delta, before encoding and masking
     (:func:`add_noise_share`, std :func:`distributed_share_std`). The server weights each
     (masked) vector by ``w_i``, so the noise in ``S`` is ``Σ w_i·n_i ~ N(0, s²·Σ w_i² · I)``
     and ``σ_eff = s·√(Σ w_i²) / (max_i w_i · C) = σ · √(Σ w_i²) / (√K_min · max_i w_i)``.
     With equal weights and ``k ≥ K_min`` contributions that is ``σ·√(k / K_min) ≥ σ``: any
     K_min shares together carry at least the full variance ``(σ·C)²``. Staleness weights
     below 1 shrink the noise more than the signal of the heaviest contribution, so
     ``σ_eff`` can fall below σ; :func:`flush_noise_multiplier` gives the value to account.

3. **Average.** ``g = (S + noise) / K`` (``buffer-normalization = "count"``) or ``/ Σ w_i``
   (``"weight"``). Both divisions are post-processing. The noise in the averaged
   pseudo-gradient ``g`` has, per coordinate, the std :func:`averaged_noise_std`:

   - central: ``σ·C / K`` (count), ``σ·C / Σw`` (weight);
   - distributed: ``σ·C·√(Σ w_i²) / (√K_min · K)`` (count), ``… / Σw`` (weight); with
     k = K equal weights: ``σ·C / √(K·K_min)``, i.e. exactly the central ``σ·C / K`` when
     ``K_min = K``, and more noise than central when ``K_min < K``.

Random numbers come from a ``numpy.random.Generator`` passed in. In a deployment it must be
seeded from the OS (``numpy.random.default_rng()`` with no seed): noise from a seed the
server can guess (the run seed, the model version, a partition id) can be subtracted again.
PCG64 is not a cryptographic generator and the floating-point noise is not hardened against
Mironov's (2012) precision attacks: adequate for research, not a certified implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.errors import SettingsError

Arrays = list[np.ndarray]

USER_DP_MODES = ("central", "distributed")


# -- clipping ---------------------------------------------------------------------------------


def l2_norm(arrays: Iterable[np.ndarray]) -> float:
    """Global L2 norm of a list of arrays, accumulated in float64."""
    total = 0.0
    for array in arrays:
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_by_l2(arrays: Sequence[np.ndarray], bound: float) -> tuple[Arrays, float]:
    """Scale ``arrays`` (one update, all layers together) so that its L2 norm is ``≤ bound``.

    Returns ``(clipped, original_norm)``. An update already within the bound comes back
    unchanged (as copies, same dtype); a longer one is multiplied by ``bound / norm``, so its
    direction is kept. The result's norm, computed in float64 from the returned (possibly
    float32) values, never exceeds ``bound`` and never exceeds the original norm: rounding to
    the storage dtype is corrected for. Non-finite values cannot be clipped and raise.
    """
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip bound must be a finite number > 0, got {bound!r}")
    originals = [np.asarray(a) for a in arrays]
    norm = l2_norm(originals)
    if not math.isfinite(norm):
        raise ValueError("cannot clip an update with non-finite values")
    if norm <= bound:
        return [a.copy() for a in originals], norm
    factor = bound / norm
    for _ in range(64):  # rounding to float32 may overshoot by ~1e-7 relative; shrink until not
        clipped = [_scaled(a, factor) for a in originals]
        clipped_norm = l2_norm(clipped)
        if clipped_norm <= bound:
            return clipped, norm
        factor *= (bound / clipped_norm) * (1.0 - 2.0**-22)
    raise ArithmeticError("clipping did not converge")  # pragma: no cover - unreachable


def _scaled(array: np.ndarray, factor: float) -> np.ndarray:
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float64)
    return (array.astype(np.float64) * factor).astype(dtype)


# -- noise ------------------------------------------------------------------------------------


def central_noise_std(noise_multiplier: float, clip: float) -> float:
    """Std of the noise the server adds to a buffer's weighted SUM: ``σ·C``."""
    _check_noise_args(noise_multiplier, clip)
    return noise_multiplier * clip


def distributed_share_std(noise_multiplier: float, clip: float, k_min: int) -> float:
    """Std of one client's noise share: ``σ·C / √K_min``.

    The shares of any ``K_min`` clients (weight 1) add up to ``N(0, (σ·C)²)`` per coordinate,
    the central noise; more contributions add more.
    """
    _check_noise_args(noise_multiplier, clip)
    if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 1:
        raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
    return noise_multiplier * clip / math.sqrt(k_min)


def gaussian_noise(shapes: Iterable[tuple[int, ...]], std: float, rng: np.random.Generator) -> Arrays:
    """Independent ``N(0, std²)`` float64 arrays of the given shapes."""
    _check_std(std)
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator")
    return [rng.standard_normal(size=shape) * std for shape in shapes]


def add_central_noise(sum_arrays: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> Arrays:
    """Server side, once per flush: ``S + N(0, std²·I)`` on the buffer's weighted sum.

    Call it on the SUM, before dividing by K (or Σw), with ``std = central_noise_std(σ, C)``.
    Returns new float64 arrays; the input is not modified.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in sum_arrays]
    noise = gaussian_noise([a.shape for a in arrays], std, rng)
    return [a + n for a, n in zip(arrays, noise, strict=True)]


def add_noise_share(arrays: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> Arrays:
    """Client side (distributed mode): ``Δ̃ + N(0, std²·I)``, after clipping, before encoding.

    ``std = distributed_share_std(σ, C, K_min)``. Keeps each array's floating dtype (float32
    for model deltas); the input is not modified.
    """
    originals = [np.asarray(a) for a in arrays]
    noise = gaussian_noise([a.shape for a in originals], std, rng)
    out = []
    for array, part in zip(originals, noise, strict=True):
        dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float64)
        out.append((array.astype(np.float64) + part).astype(dtype))
    return out


def flush_noise_multiplier(mode: str, noise_multiplier: float, weights: Sequence[float], k_min: int = 1) -> float:
    """Effective noise multiplier of one flush, the value to hand the accountant.

    ``weights`` are the weights the server really applied to the flush's contributions (after
    quantisation, with secure aggregation). Sensitivity is ``max w_i·C``; the noise std in the
    weighted sum is ``σ·C`` (central) or ``σ·C·√(Σ w_i²)/√K_min`` (distributed), so

    - central: ``σ / max w_i``
    - distributed: ``σ·√(Σ w_i²) / (√K_min·max w_i)``

    The result is capped at σ: a flush is never credited with more privacy than configured,
    so ε does not improve because updates happened to be stale, and with weights ≤ 1 and
    ``k ≥ K_min`` equal weights the accountant sees exactly σ. A flush whose weights are all 0
    releases nothing about any user: ``math.inf`` (the accountant skips it).
    """
    _check_mode(mode)
    _check_noise_args(noise_multiplier, 1.0)
    ws = np.asarray(list(weights), dtype=np.float64)
    if ws.size == 0 or not np.all(np.isfinite(ws)) or np.any(ws < 0):
        raise ValueError("weights must be a non-empty sequence of finite numbers >= 0")
    heaviest = float(ws.max())
    if heaviest == 0.0:
        return math.inf
    if mode == "central":
        effective = noise_multiplier / heaviest
    else:
        effective = noise_multiplier * math.sqrt(float(np.dot(ws, ws)) / k_min) / heaviest
    return min(noise_multiplier, effective)


def averaged_noise_std(
    mode: str,
    noise_multiplier: float,
    clip: float,
    weights: Sequence[float],
    *,
    buffer_size: int,
    k_min: int = 1,
    normalization: str = "count",
) -> float:
    """Per-coordinate std of the noise in the averaged pseudo-gradient the optimizer steps on.

    ``count``: the sum is divided by ``buffer_size`` (K; FedBuff divides by the number of
    contributions actually flushed, which is K except for a forced early flush — pass that
    count); ``weight``: by ``Σ w_i``.
    """
    _check_mode(mode)
    ws = np.asarray(list(weights), dtype=np.float64)
    if mode == "central":
        in_sum = central_noise_std(noise_multiplier, clip)
    else:
        in_sum = distributed_share_std(noise_multiplier, clip, k_min) * math.sqrt(float(np.dot(ws, ws)))
    if normalization == "count":
        return in_sum / buffer_size
    if normalization == "weight":
        total = float(ws.sum())
        return in_sum / total if total > 0 else 0.0
    raise ValueError(f"buffer-normalization must be 'count' or 'weight', got {normalization!r}")


def _check_noise_args(noise_multiplier: float, clip: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip bound must be finite and > 0, got {clip!r}")


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {std!r}")


def _check_mode(mode: str) -> None:
    if mode not in USER_DP_MODES:
        raise ValueError(f"user-dp-mode must be one of {USER_DP_MODES}, got {mode!r}")


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UserDPOptions:
    """The user-level DP knobs; field ``a_b`` is the run-config key ``a-b``.

    - ``user_dp``: switch.
    - ``user_dp_clip``: C, the L2 bound on each client's delta.
    - ``user_dp_noise_multiplier``: σ; noise std on a buffer's sum is σ·C.
    - ``user_dp_mode``: ``central`` (server adds noise at flush) or ``distributed`` (each
      client adds a share σ·C/√K_min).
    - ``user_dp_k_min``: K_min of the distributed shares; 0 means the strategy's flush size
      (``buffer-size`` for fedbuff, ``concurrency`` for sync). The run settings resolve it
      once (``RunSettings.dp_k_min``), for the clients' shares and the server's accountant.
    - ``user_dp_delta``: δ of the reported (ε, δ).
    - ``user_dp_epsilon_budget``: stop the run before ε would exceed it; 0: no stop.
    """

    user_dp: bool = False
    user_dp_clip: float = 1.0
    user_dp_noise_multiplier: float = 1.0
    user_dp_mode: str = "central"
    user_dp_k_min: int = 0
    user_dp_delta: float = 1e-5
    user_dp_epsilon_budget: float = 0.0

    def __post_init__(self) -> None:
        check_user_dp_values(self)

    def central_std(self) -> float:
        """The std σ·C the server adds to a buffer's sum (0.0 in distributed mode)."""
        if self.user_dp_mode != "central":
            return 0.0
        return central_noise_std(self.user_dp_noise_multiplier, self.user_dp_clip)


def _fail(key: str, requirement: str, value: object) -> None:
    raise SettingsError(f"{key} must be {requirement}, got {value!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_user_dp_values(options: Any) -> None:
    """Check the ``user_dp_*`` attributes of ``options`` on their own (types and ranges)."""
    if not isinstance(options.user_dp, bool):
        _fail("user-dp", "a boolean", options.user_dp)
    clip = options.user_dp_clip
    if not (_number(clip) and math.isfinite(clip) and clip > 0):
        _fail("user-dp-clip", "a finite number > 0", clip)
    sigma = options.user_dp_noise_multiplier
    if not (_number(sigma) and math.isfinite(sigma) and sigma >= 0):
        _fail("user-dp-noise-multiplier", "a finite number >= 0", sigma)
    if options.user_dp and sigma == 0:
        _fail("user-dp-noise-multiplier", "> 0 when user-dp is on (0 gives no privacy)", sigma)
    if options.user_dp_mode not in USER_DP_MODES:
        _fail("user-dp-mode", f"one of {USER_DP_MODES}", options.user_dp_mode)
    k_min = options.user_dp_k_min
    if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 0:
        _fail("user-dp-k-min", "an integer >= 0 (0: the flush size)", k_min)
    delta = options.user_dp_delta
    if not (_number(delta) and 0 < delta < 1):
        _fail("user-dp-delta", "in (0, 1)", delta)
    budget = options.user_dp_epsilon_budget
    if not (_number(budget) and math.isfinite(budget) and budget >= 0):
        _fail("user-dp-epsilon-budget", "a finite number >= 0 (0: no stop)", budget)


def check_user_dp(settings: Any) -> None:
    """Check user-level DP against the rest of a run's settings (call once at start-up).

    ``settings`` needs the ``user_dp_*`` attributes plus ``strategy``, ``example_weight``,
    ``flush_size`` (how many updates fill one flush: ``strategies.registry.flush_size``) and
    ``dp_k_min`` (K_min in effect); ``secagg`` / ``secagg_clip`` are checked when present. A
    no-op when ``user_dp`` is off. The values on their own are :func:`check_user_dp_values`'
    (:class:`UserDPOptions` runs it). Raises :class:`SettingsError` naming the key.
    """
    if not settings.user_dp:
        return
    from strategies.registry import spec_of, with_capability  # the registry builds FedBuff, which imports this

    if not spec_of(settings.strategy).user_dp:
        names = " or ".join(repr(name) for name in with_capability("user_dp"))
        _fail("strategy", f"{names} with user-dp (noise is added per buffer flush)", settings.strategy)
    if settings.example_weight != "equal":
        _fail(
            "example-weight",
            "'equal' with user-dp: other example weights exceed 1 for large clients, "
            "so the clip bound would no longer bound a client's contribution",
            settings.example_weight,
        )
    k_min = settings.dp_k_min
    if k_min > settings.flush_size:
        _fail(
            "user-dp-k-min",
            f"<= the {settings.flush_size} updates that fill one {settings.strategy} flush "
            "(buffer-size for fedbuff, concurrency for sync and fedcompass)",
            settings.user_dp_k_min,
        )
    if settings.user_dp_mode == "distributed" and getattr(settings, "secagg", False):
        share = distributed_share_std(settings.user_dp_noise_multiplier, settings.user_dp_clip, k_min)
        needed = settings.user_dp_clip + 10.0 * share
        if settings.secagg_clip < needed:
            _fail(
                "secagg-clip",
                f">= user-dp-clip + 10 × noise-share std = {needed:.4g} with distributed user-dp, "
                "so the fixed-point codec never clips the noise",
                settings.secagg_clip,
            )


class FlushPrivacy:
    """User-level DP at a FedBuff flush: account the flush, then (central mode) add noise.

    ``release(σ_f)`` is the accountant's gate, injected by the ServerApp: it returns False
    when releasing one more flush at effective noise multiplier σ_f would exceed the ε
    budget; the buffer is then dropped unreleased. ``rng`` is never the run's seed: a
    server that can recompute the noise can remove it.
    """

    def __init__(
        self,
        options: UserDPOptions,
        k_min: int,
        release: Callable[[float], bool],
        rng: np.random.Generator | None = None,
    ) -> None:
        """``k_min`` is the K_min the clients sized their shares with (``RunSettings.dp_k_min``)."""
        self.options = options
        self.k_min = k_min
        self._release = release
        self._rng = rng or np.random.default_rng()

    def averaged_std(self, weights: Sequence[float], count: int, normalization: str) -> float:
        """Per-coordinate noise std in this flush's averaged pseudo-gradient (:func:`averaged_noise_std`)."""
        return averaged_noise_std(
            self.options.user_dp_mode,
            self.options.user_dp_noise_multiplier,
            self.options.user_dp_clip,
            weights,
            buffer_size=count,
            k_min=self.k_min,
            normalization=normalization,
        )

    def privatize(self, total: Sequence[np.ndarray], weights: Sequence[float]) -> Arrays | None:
        """The noised weighted sum of one flush, or None if the budget forbids releasing it."""
        sigma = flush_noise_multiplier(
            self.options.user_dp_mode, self.options.user_dp_noise_multiplier, weights, self.k_min
        )
        if not self._release(sigma):
            return None
        if self.options.user_dp_mode == "central":
            return add_central_noise(total, self.options.central_std(), self._rng)
        return list(total)
