"""Slice-by-slice arithmetic: the same bits as the whole-array expressions, inputs left alone."""

import math

import numpy as np
import pytest

from strategies.chunked import CHUNK, add_scaled, descend, scaled_copy, sum_of_squares

# Sizes around the slice boundaries: shorter than one slice, exactly one, one over, many plus a rest.
SIZES = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


def float32(size, seed=0):
    return np.random.default_rng(seed).normal(0, 1e-3, size).astype(np.float32)


@pytest.mark.parametrize("size", SIZES)
def test_add_scaled_matches_the_float64_reference_bit_for_bit(size):
    x, y = float32(size, 1), float32(size, 2)
    acc = scaled_copy(x, 0.3)
    add_scaled(acc, y, 1.7)
    reference = np.asarray(x, np.float64) * 0.3 + np.asarray(y, np.float64) * 1.7
    np.testing.assert_array_equal(acc, reference)


def test_add_scaled_keeps_the_shape_and_refuses_another():
    acc = scaled_copy(float32(6).reshape(2, 3), 1.0)
    add_scaled(acc, float32(6, 1).reshape(2, 3), 2.0)
    assert acc.shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        add_scaled(acc, float32(6, 1), 1.0)


@pytest.mark.parametrize("size", SIZES)
def test_descend_matches_the_float64_reference_bit_for_bit(size):
    model, direction = float32(size, 3), float32(size, 4).astype(np.float64)
    expected = (np.asarray(model, np.float64) - 0.5 * direction).astype(np.float32)
    got = descend(model, direction, 0.5)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_inputs_are_only_read():
    x, model, direction = float32(CHUNK + 3), float32(CHUNK + 3, 1), float32(CHUNK + 3, 2).astype(np.float64)
    saved = [x.copy(), model.copy(), direction.copy()]
    acc = scaled_copy(x, 2.0)
    add_scaled(acc, x, 3.0)
    descend(model, direction, 0.1)
    for array, before in zip((x, model, direction), saved):
        np.testing.assert_array_equal(array, before)


@pytest.mark.parametrize("size", SIZES)
def test_sum_of_squares_is_close_to_the_float64_reference(size):
    x = float32(size)
    wide = np.asarray(x, np.float64)
    assert sum_of_squares(x) == pytest.approx(float(np.dot(wide, wide)), rel=1e-6)


def test_sum_of_squares_stays_finite_for_huge_finite_values():
    x = np.full(CHUNK + 5, 1e30, np.float32)  # each square overflows float32, not float64
    assert sum_of_squares(x) == pytest.approx(x.size * float(np.float32(1e30)) ** 2, rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sum_of_squares_of_a_non_finite_value_is_not_finite(bad):
    x = float32(2 * CHUNK)
    x[CHUNK + 1] = bad
    assert not math.isfinite(sum_of_squares(x))
