"""Whole-model arithmetic in cache-sized slices, so no full-size temporary is ever built.

A float64 temporary the size of a 10M-parameter model is 80 MB: allocating, writing and
reading it back costs more than the arithmetic, and it raises the server's peak memory.
Working through slices of :data:`CHUNK` elements keeps each temporary in the L2 cache.
The sums and steps are bit-identical to the whole-array float64 expressions they replace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

CHUNK = 1 << 16  # elements per slice: a float64 slice is 512 KiB, within one core's L2 cache


def slices(size: int) -> Iterator[slice]:
    """Consecutive slices of at most :data:`CHUNK` elements covering ``range(size)``."""
    return (slice(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK))


def scaled_copy(x: np.ndarray, weight: float) -> np.ndarray:
    """A new float64 array ``weight · x``: one widening copy, then scaled in place."""
    out = np.array(x, dtype=np.float64)
    out *= weight
    return out


def add_scaled(acc: np.ndarray, x: np.ndarray, weight: float) -> None:
    """``acc += weight · x`` in place, the product taken in float64 (``acc`` is float64)."""
    if np.shape(x) != acc.shape:
        raise ValueError(f"cannot add an array of shape {np.shape(x)} to one of shape {acc.shape}")
    flat_acc, flat_x = _flat_view(acc), np.reshape(x, -1)
    wide = np.empty(min(CHUNK, flat_acc.size), np.float64)
    for part in slices(flat_acc.size):
        product = wide[: part.stop - part.start]
        product[...] = flat_x[part]
        product *= weight
        flat_acc[part] += product


def descend(model: np.ndarray, direction: np.ndarray, lr: float = 1.0) -> np.ndarray:
    """The float32 array ``model − lr · direction`` (``direction`` float64), computed in float64
    slice by slice."""
    out = np.empty(np.shape(model), np.float32)
    flat_out, flat_model, flat_direction = _flat_view(out), np.reshape(model, -1), np.reshape(direction, -1)
    wide, step = np.empty((2, min(CHUNK, flat_out.size)), np.float64)
    for part in slices(flat_out.size):
        size = part.stop - part.start
        wide[:size] = flat_model[part]
        np.multiply(flat_direction[part], lr, out=step[:size])
        wide[:size] -= step[:size]
        flat_out[part] = wide[:size]
    return out


def sum_of_squares(x: np.ndarray) -> float:
    """``Σ x²``: one float32 dot product per slice, summed as Python floats.

    One read of ``x`` and no temporary. A slice whose square sum overflows float32 is redone
    in float64, so for float32 input only a NaN or an Inf makes the result non-finite.
    """
    flat = np.reshape(x, -1)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is expected, and handled
        for part in slices(flat.size):
            values = flat[part]
            squares = float(np.dot(values, values))
            if not math.isfinite(squares):
                wide = values.astype(np.float64)
                squares = float(np.dot(wide, wide))
            total += squares
    return total


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ (a − b)²`` in float64, slice by slice (the step guard's norm of ``new − old``).

    Non-finite when either array holds a NaN or an Inf; float32 inputs cannot overflow it.
    """
    if np.shape(a) != np.shape(b):
        raise ValueError(f"cannot compare an array of shape {np.shape(a)} with one of shape {np.shape(b)}")
    flat_a, flat_b = np.reshape(a, -1), np.reshape(b, -1)
    wide = np.empty(min(CHUNK, flat_a.size), np.float64)
    total = 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf is NaN: reported, not raised
        for part in slices(flat_a.size):
            diff = wide[: part.stop - part.start]
            np.subtract(flat_a[part], flat_b[part], out=diff, dtype=np.float64)
            total += float(np.dot(diff, diff))
    return total


def _flat_view(array: np.ndarray) -> np.ndarray:
    """A 1-D view of ``array`` (never a copy: writes through it must land in ``array``)."""
    return array.reshape(-1, copy=False)
