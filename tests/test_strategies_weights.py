"""Staleness and example weights: hand-computed values and properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import StrategyOptions
from strategies.weights import (
    EXAMPLE_WEIGHTS,
    STALENESS_WEIGHTS,
    example_weight,
    staleness_limit,
    staleness_weight,
)


def s(tau, **options):
    return staleness_weight(StrategyOptions(**options))(tau)


def e(n, **options):
    return example_weight(StrategyOptions(**options))(n)


@pytest.mark.parametrize(
    ("tau", "exponent", "expected"),
    [(0, 0.5, 1.0), (1, 0.5, 1 / math.sqrt(2)), (3, 0.5, 0.5), (8, 0.5, 1 / 3), (4, 1.0, 0.2), (9, 0.0, 1.0)],
)
def test_polynomial_is_one_over_one_plus_tau_to_the_a(tau, exponent, expected):
    weight = s(tau, staleness_weight="polynomial", staleness_exponent=exponent)
    assert weight == pytest.approx(expected)


@pytest.mark.parametrize(
    ("tau", "slope", "cutoff", "expected"),
    [
        (0, 10.0, 4, 1.0),
        (4, 10.0, 4, 1.0),
        (5, 10.0, 4, 1 / 11),
        (6, 10.0, 4, 1 / 21),
        (6, 0.5, 2, 1 / 3),
        (100, 0.0, 2, 1.0),
    ],
)
def test_hinge_is_one_up_to_b_then_one_over_a_times_excess_plus_one(tau, slope, cutoff, expected):
    weight = s(tau, staleness_weight="hinge", staleness_hinge_slope=slope, staleness_cutoff=cutoff)
    assert weight == pytest.approx(expected)


@pytest.mark.parametrize(("tau", "expected"), [(0, 1.0), (3, 1.0), (4, 0.0), (50, 0.0)])
def test_threshold_is_one_up_to_the_cutoff_then_zero(tau, expected):
    assert s(tau, staleness_weight="threshold", staleness_cutoff=3) == expected


def test_constant_staleness_weight_ignores_staleness():
    assert s(0, staleness_weight="constant") == s(10**6, staleness_weight="constant") == 1.0


@pytest.mark.parametrize(
    ("rule", "n", "reference", "expected"),
    [
        ("equal", 1, 100.0, 1.0),
        ("equal", 10**6, 100.0, 1.0),
        ("linear", 50, 100.0, 0.5),
        ("linear", 300, 100.0, 3.0),
        ("sqrt", 400, 100.0, 2.0),
        ("sqrt", 25, 100.0, 0.5),
        ("log", 9, 99.0, 0.5),
        ("log", 999, 99.0, 1.5),
    ],  # log10(1+n)/log10(1+ref)
)
def test_example_weights_are_one_at_the_reference_count(rule, n, reference, expected):
    assert e(n, example_weight=rule, example_reference=reference) == pytest.approx(expected)
    assert e(int(reference), example_weight=rule, example_reference=reference) == pytest.approx(1.0)


def test_weights_refuse_negative_staleness_and_empty_clients():
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        s(-1)
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        e(0)


def test_staleness_limit_drops_or_down_weights_past_max_staleness():
    unlimited = StrategyOptions(max_staleness=0)
    drop = StrategyOptions(max_staleness=3)
    down = StrategyOptions(max_staleness=3, stale_policy="down-weight", stale_factor=0.2)
    assert staleness_limit(unlimited, 10**9) == 1.0
    assert (staleness_limit(drop, 3), staleness_limit(drop, 4)) == (1.0, None)
    assert (staleness_limit(down, 3), staleness_limit(down, 4)) == (1.0, 0.2)


finite_non_negative = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(
    name=st.sampled_from(sorted(STALENESS_WEIGHTS)),
    tau=st.integers(min_value=0, max_value=10**12),
    exponent=finite_non_negative,
    slope=finite_non_negative,
    cutoff=st.integers(min_value=0, max_value=10**6),
)
def test_staleness_weights_are_finite_and_in_zero_one(name, tau, exponent, slope, cutoff):
    options = StrategyOptions(
        staleness_weight=name, staleness_exponent=exponent, staleness_hinge_slope=slope, staleness_cutoff=cutoff
    )
    weight = staleness_weight(options)(tau)
    assert math.isfinite(weight) and 0.0 <= weight <= 1.0


@given(
    name=st.sampled_from(sorted(EXAMPLE_WEIGHTS)),
    n=st.integers(min_value=1, max_value=10**12),
    reference=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
)
def test_example_weights_are_finite_and_non_negative(name, n, reference):
    weight = example_weight(StrategyOptions(example_weight=name, example_reference=reference))(n)
    assert math.isfinite(weight) and weight >= 0.0
