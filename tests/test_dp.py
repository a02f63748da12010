"""User-level DP building blocks (strategies/dp.py): clipping, Gaussian noise, configuration."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from scipy import stats

from strategies import WeightedSumBuffer
from strategies.dp import (
    add_central_noise,
    add_noise_share,
    averaged_noise_std,
    central_noise_std,
    check_user_dp,
    check_user_dp_values,
    clip_by_l2,
    distributed_share_std,
    flush_noise_multiplier,
    l2_norm,
)
from strategies.errors import SettingsError
from tests.conftest import ROOT

# -- clipping ---------------------------------------------------------------------------------

update = st.lists(
    arrays(
        np.float32,
        array_shapes(min_dims=1, max_dims=2, max_side=6),
        elements=st.floats(-1e4, 1e4, allow_nan=False, width=32),
    ),
    min_size=1,
    max_size=4,
)
bounds = st.floats(1e-2, 1e3, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(arrays_=update, bound=bounds)
def test_clipped_update_is_within_bound_and_keeps_direction(arrays_, bound):
    clipped, norm = clip_by_l2(arrays_, bound)
    assert norm == pytest.approx(l2_norm(arrays_), rel=1e-12)
    assert [c.shape for c in clipped] == [a.shape for a in arrays_]
    assert all(c.dtype == np.float32 for c in clipped)
    after = l2_norm(clipped)
    assert after <= bound  # exactly: rounding to float32 is corrected for
    assert after <= norm  # never increases the norm
    if norm <= bound:  # small updates are left alone
        assert all(np.array_equal(c, a) for c, a in zip(clipped, arrays_))
    else:  # long ones end on the sphere, pointing the same way
        assert after == pytest.approx(bound, rel=1e-5)
        for c, a in zip(clipped, arrays_):
            np.testing.assert_allclose(c, a.astype(np.float64) * (bound / norm), rtol=0, atol=1e-6 * bound)


def test_clip_does_not_modify_its_input_and_refuses_bad_values():
    original = [np.full(4, 3.0, np.float32)]
    clipped, norm = clip_by_l2(original, 1.0)
    assert norm == pytest.approx(6.0) and np.all(original[0] == 3.0)
    assert clipped[0] is not original[0]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="clip bound"):
            clip_by_l2(original, bad)
    with pytest.raises(ValueError, match="non-finite"):
        clip_by_l2([np.array([1.0, np.nan], np.float32)], 1.0)


# -- noise ------------------------------------------------------------------------------------
#
# Variance tests: for N independent N(0, s²) draws x, Σx²/s² ~ χ²(N). We accept when it lies
# in the central 1 − 1e-6 of that distribution, so an unseeded run of a correct implementation
# would fail with probability 1e-6 per test (the seeds make every run identical). With
# N = 200,000 the test has power: a std off by 2 % moves the statistic by ~8,000, about 18
# standard deviations (√(2N) ≈ 632) — beyond the acceptance band of ±~3,100.

ALPHA = 1e-6
N_COORDS = 200_000


def assert_std(samples: np.ndarray, std: float) -> None:
    samples = np.asarray(samples, dtype=np.float64).ravel()
    n = samples.size
    statistic = float(np.sum(samples**2)) / std**2
    low, high = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], df=n)
    assert low <= statistic <= high, f"χ² = {statistic:.1f} outside [{low:.1f}, {high:.1f}] (std {std})"
    # and centred: the mean is N(0, s²/n); |z| > 4.89 has probability 1e-6
    z = float(samples.mean()) / (std / math.sqrt(n))
    assert abs(z) < stats.norm.isf(ALPHA / 2)


def test_the_variance_test_rejects_a_std_two_percent_off():
    """Power check of :func:`assert_std` itself (seeded; deterministic)."""
    draws = np.random.default_rng(11).standard_normal(N_COORDS) * 1.02
    with pytest.raises(AssertionError, match="outside"):
        assert_std(draws, 1.0)


def test_central_noise_has_std_sigma_times_clip_on_the_sum():
    """False-failure probability, were it unseeded: 1e-6 (χ² two-sided) + 1e-6 (mean)."""
    sigma, clip = 1.3, 0.7
    std = central_noise_std(sigma, clip)
    assert std == pytest.approx(0.91)
    total = [np.full((400, 250), 5.0), np.full(N_COORDS - 100_000, -2.0)]
    noisy = add_central_noise(total, std, np.random.default_rng(1))
    assert np.all(total[0] == 5.0)  # input untouched
    assert_std(np.concatenate([(noisy[0] - 5.0).ravel(), noisy[1] + 2.0]), std)


@pytest.mark.parametrize("k_min", [1, 3, 10])
def test_any_k_min_distributed_shares_add_up_to_the_central_noise(k_min):
    """The sum of K_min clients' shares is N(0, (σC)²) per coordinate.

    False-failure probability, were it unseeded: 1e-6 (χ²) + 1e-6 (mean) per parametrisation.
    """
    sigma, clip = 0.8, 2.0
    share = distributed_share_std(sigma, clip, k_min)
    assert share == pytest.approx(sigma * clip / math.sqrt(k_min))
    rng = np.random.default_rng(100 + k_min)
    zero = [np.zeros(N_COORDS, np.float32)]
    summed = np.zeros(N_COORDS)
    for _ in range(k_min):
        noisy = add_noise_share(zero, share, rng)
        assert noisy[0].dtype == np.float32
        summed += noisy[0]
    assert_std(summed, central_noise_std(sigma, clip))


def test_averaged_pseudo_gradient_noise_through_the_real_buffer():
    """Central and distributed noise after FedBuff's Σ w_i·Δ_i / K, with staleness weights.

    False-failure probability, were it unseeded: 4e-6 (two χ² and two mean tests).
    """
    sigma, clip, k, k_min = 1.0, 1.5, 4, 3
    weights = [1.0, 1.0, 0.5, 1 / math.sqrt(3)]  # polynomial staleness weights, τ = 0, 0, 3, 2
    rng = np.random.default_rng(7)
    share = distributed_share_std(sigma, clip, k_min)
    distributed, central = WeightedSumBuffer(), WeightedSumBuffer()
    for client, w in enumerate(weights):  # zero deltas: what is left is the noise
        distributed.add(client, add_noise_share([np.zeros(N_COORDS, np.float32)], share, rng), w)
        central.add(client, [np.zeros(N_COORDS, np.float32)], w)
    total, count, _ = distributed.flush()
    expected = averaged_noise_std("distributed", sigma, clip, weights, buffer_size=count, k_min=k_min)
    assert expected == pytest.approx(sigma * clip * math.sqrt(sum(w * w for w in weights)) / (math.sqrt(k_min) * k))
    assert_std(total[0] / count, expected)
    total, count, _ = central.flush()
    noisy = add_central_noise(total, central_noise_std(sigma, clip), rng)
    expected = averaged_noise_std("central", sigma, clip, weights, buffer_size=count)
    assert expected == pytest.approx(sigma * clip / k)
    assert_std(noisy[0] / count, expected)


def test_averaged_noise_std_closed_forms():
    w = [1.0] * 5
    # k = K = K_min: distributed is exactly central
    assert averaged_noise_std("distributed", 2.0, 1.0, w, buffer_size=5, k_min=5) == pytest.approx(2.0 / 5)
    # K_min < K: more noise than central, σC/√(K·K_min)
    assert averaged_noise_std("distributed", 2.0, 1.0, w, buffer_size=5, k_min=2) == pytest.approx(2.0 / math.sqrt(10))
    assert averaged_noise_std("central", 2.0, 1.0, [0.5, 0.5], buffer_size=2, normalization="weight") == pytest.approx(
        2.0
    )


def test_noise_needs_a_generator_and_a_valid_std():
    with pytest.raises(TypeError, match="Generator"):
        add_central_noise([np.zeros(3)], 1.0, np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        add_central_noise([np.zeros(3)], -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k_min"):
        distributed_share_std(1.0, 1.0, 0)
    assert np.all(add_central_noise([np.ones(3)], 0.0, np.random.default_rng(0))[0] == 1.0)


# -- effective noise multiplier of a flush -------------------------------------------------------


def test_flush_noise_multiplier():
    sigma = 1.2
    assert flush_noise_multiplier("central", sigma, [1.0, 0.3, 0.7]) == sigma
    assert flush_noise_multiplier("central", sigma, [0.5, 0.5]) == sigma  # never credited above σ
    assert flush_noise_multiplier("central", sigma, [2.0]) == pytest.approx(sigma / 2)
    # distributed: k ≥ K_min unit weights carry the full noise
    assert flush_noise_multiplier("distributed", sigma, [1.0] * 3, k_min=3) == sigma
    assert flush_noise_multiplier("distributed", sigma, [1.0] * 5, k_min=3) == sigma
    # fewer than K_min, or stale weights that thin the shares: less than σ, exactly
    assert flush_noise_multiplier("distributed", sigma, [1.0] * 2, k_min=3) == pytest.approx(sigma * math.sqrt(2 / 3))
    w = [1.0, 0.5, 0.25]
    assert flush_noise_multiplier("distributed", sigma, w, k_min=3) == pytest.approx(
        sigma * math.sqrt(sum(x * x for x in w) / 3)
    )
    assert flush_noise_multiplier("distributed", sigma, [0.0, 0.0], k_min=2) == math.inf
    with pytest.raises(ValueError, match="user-dp-mode"):
        flush_noise_multiplier("local", sigma, [1.0])
    with pytest.raises(ValueError, match="weights"):
        flush_noise_multiplier("central", sigma, [])


# -- configuration ----------------------------------------------------------------------------


def settings_like(**overrides):
    base = dict(
        user_dp=True,
        user_dp_clip=1.0,
        user_dp_noise_multiplier=1.0,
        user_dp_mode="central",
        user_dp_k_min=0,
        user_dp_delta=1e-5,
        user_dp_epsilon_budget=0.0,
        strategy="fedbuff",
        flush_size=3,
        example_weight="equal",
        secagg=False,
        secagg_clip=8.0,
    )
    base.update(overrides)
    base.setdefault("dp_k_min", base["user_dp_k_min"] or base["flush_size"])  # as RunSettings resolves it
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(user_dp_clip=0.0), "user-dp-clip"),
        (dict(user_dp_noise_multiplier=-1.0), "user-dp-noise-multiplier"),
        (dict(user_dp_noise_multiplier=0.0), "user-dp-noise-multiplier"),
        (dict(user_dp_mode="local"), "user-dp-mode"),
        (dict(user_dp_k_min=-1), "user-dp-k-min"),
        (dict(user_dp_k_min=4), "user-dp-k-min"),
        (dict(user_dp_delta=1.0), "user-dp-delta"),
        (dict(user_dp_epsilon_budget=-2.0), "user-dp-epsilon-budget"),
        (dict(user_dp="yes"), "user-dp"),
        (dict(strategy="fedasync"), "strategy"),
        (dict(example_weight="linear"), "example-weight"),
        (dict(user_dp_mode="distributed", secagg=True, secagg_clip=2.0), "secagg-clip"),
    ],
)
def test_config_errors_name_the_run_config_key(overrides, key):
    with pytest.raises(SettingsError, match=f"^{key} must be"):
        check_all(settings_like(**overrides))


def check_all(settings) -> None:
    """What the run settings run: the values (UserDPOptions), then the combination."""
    check_user_dp_values(settings)
    check_user_dp(settings)


def test_valid_configs_pass_and_off_means_unchecked_compatibility():
    check_all(settings_like())
    check_all(settings_like(user_dp_mode="distributed", user_dp_k_min=3, secagg=True, secagg_clip=8.0))
    check_all(settings_like(user_dp=False, strategy="fedasync", example_weight="linear", user_dp_noise_multiplier=0.0))


def test_strategies_dp_stays_pure_numpy():
    code = "import sys, strategies.dp; bad = {'torch', 'flwr', 'opacus'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
