"""Fixed-point ring arithmetic (strategies/ring.py): properties the masked buffer relies on."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies.chunked import CHUNK
from strategies.ring import (
    SIGNED_LIMIT,
    MaskedBuffer,
    RingCodec,
    RingOverflowError,
    from_wire,
    quantize_weight,
    ring_sub,
    to_signed,
    to_wire,
    weighted_add,
    wire_view,
    zeros,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

codecs = st.builds(
    RingCodec,
    scale_bits=st.integers(8, 30),
    clip=st.sampled_from([0.5, 1.0, 4.0, 8.0]),
    max_weight=st.sampled_from([1, 16, 1024, 65536]),
    max_summands=st.sampled_from([1, 4, 16, 64]),
    weight_scale=st.sampled_from([1, 16, 1024]),
)
shapes_strategy = st.lists(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), min_size=1, max_size=3)


def random_arrays(rng: np.random.Generator, shapes, clip: float) -> list[np.ndarray]:
    return [rng.uniform(-clip, clip, size=s).astype(np.float32) for s in shapes]


def random_masks(rng: np.random.Generator, count: int, length: int) -> list[np.ndarray]:
    return [rng.integers(0, 2**64, size=length, dtype=np.uint64, endpoint=False) for _ in range(count)]


@PROPERTY
@given(codec=codecs, shapes=shapes_strategy, seed=st.integers(0, 2**32 - 1))
def test_encode_decode_round_trip_within_half_a_step(codec, shapes, seed):
    arrays = random_arrays(np.random.default_rng(seed), shapes, codec.clip)
    vector = codec.encode(arrays)
    assert vector.dtype == np.uint64 and vector.size == sum(a.size for a in arrays)
    decoded = codec.decode(vector, [a.shape for a in arrays])
    step = 2.0**-codec.scale_bits
    for original, back in zip(arrays, decoded, strict=True):
        assert back.shape == original.shape
        assert np.all(np.abs(back - original.astype(np.float64)) <= step / 2 + 1e-12)


@PROPERTY
@given(values=hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)))
def test_values_beyond_clip_are_clipped_and_negatives_are_twos_complement(values):
    codec = RingCodec(scale_bits=16, clip=2.0)
    vector = codec.encode([values])
    decoded = codec.decode(vector, [values.shape])[0]
    expected = np.clip(values.astype(np.float64), -2.0, 2.0)
    assert np.all(np.abs(decoded - expected) <= 2.0**-17 + 1e-12)
    negative = expected < -(2.0**-17)
    assert np.all(vector[negative] >= np.uint64(2**63))  # top bit set: two's complement
    assert codec.clipped_count([values]) == int(np.count_nonzero(np.abs(values) > 2.0))


@PROPERTY
@given(codec=codecs, shapes=shapes_strategy, count=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_masked_weighted_sum_minus_weighted_masks_is_weighted_sum(codec, shapes, count, seed):
    count = min(count, codec.max_summands)
    rng = np.random.default_rng(seed)
    updates = [random_arrays(rng, shapes, codec.clip) for _ in range(count)]
    weights = [int(w) for w in rng.integers(0, codec.max_weight, size=count, endpoint=True)]
    length = sum(math.prod(s) for s in shapes)
    masks = random_masks(rng, count, length)

    masked_sum, mask_sum = zeros(length), zeros(length)
    for update, weight, mask in zip(updates, weights, masks, strict=True):
        masked = codec.encode(update)
        weighted_add(masked, mask, 1)  # x + m
        weighted_add(masked_sum, masked, weight)  # Σ w (x + m)
        weighted_add(mask_sum, mask, weight)  # Σ w m (what the mask service returns)
    plain = ring_sub(masked_sum, mask_sum)

    total_weight = sum(weights)
    assert codec.overflow_count(plain, total_weight) == 0
    decoded = codec.decode(plain, shapes, codec.weight_scale)
    tolerance = total_weight * 2.0 ** -(codec.scale_bits + 1) / codec.weight_scale + 1e-9
    for index, shape in enumerate(shapes):
        expected = sum(w * u[index].astype(np.float64) for w, u in zip(weights, updates)) / codec.weight_scale
        assert decoded[index].shape == tuple(shape)
        assert np.all(np.abs(decoded[index] - expected) <= tolerance)


@PROPERTY
@given(count=st.integers(2, 8), length=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_accumulation_is_order_invariant_bit_for_bit(count, length, seed):
    rng = np.random.default_rng(seed)
    vectors = random_masks(rng, count, length)
    weights = [int(w) for w in rng.integers(0, 2**40, size=count)]
    forward, backward = zeros(length), zeros(length)
    for vector, weight in zip(vectors, weights):
        weighted_add(forward, vector, weight)
    for index in rng.permutation(count):
        weighted_add(backward, vectors[index], weights[index])
    assert np.array_equal(forward, backward)


@PROPERTY
@given(injected=st.lists(st.integers(1, 2**60), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_unclipped_contribution_is_detected_as_overflow(injected, seed):
    """A vector past the clip bound (a client that did not clip) cannot pass as an honest sum."""
    codec = RingCodec(scale_bits=20, clip=1.0, max_weight=4, max_summands=8)
    rng = np.random.default_rng(seed)
    length = 6
    masked_sum, mask_sum = zeros(length), zeros(length)
    for extra in injected:
        raw = codec.encode([rng.uniform(-1, 1, size=length)])
        raw[0] = np.uint64(codec.coordinate_bound + extra)  # beyond any clipped value
        mask = random_masks(rng, 1, length)[0]
        weighted_add(raw, mask, 1)
        weighted_add(masked_sum, raw, 1)
        weighted_add(mask_sum, mask, 1)
    plain = ring_sub(masked_sum, mask_sum)
    assert codec.overflow_count(plain, len(injected)) >= 1


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(2, 6))
def test_wrong_mask_sum_is_detected(seed, count):
    """Subtracting a mask sum that does not match (wrong key, wrong weights) shows as overflow."""
    codec = RingCodec()
    rng = np.random.default_rng(seed)
    length = 64
    masks = random_masks(rng, count, length)
    masked_sum = zeros(length)
    for mask in masks:
        vector = codec.encode([rng.uniform(-1, 1, size=length)])
        weighted_add(vector, mask, 1)
        weighted_add(masked_sum, vector, 3)
    wrong = zeros(length)
    for mask in masks:
        weighted_add(wrong, mask, 2)  # the weights the server claimed are not the ones it applied
    assert codec.overflow_count(ring_sub(masked_sum, wrong), 3 * count) > length // 2


def test_sum_at_the_edge_of_headroom_decodes_exactly():
    """The largest honest buffer still decodes: every summand at ±clip with max weight."""
    codec = RingCodec(scale_bits=24, clip=8.0, max_weight=2**18, max_summands=2**10)
    assert codec.worst_case() == 2**55 and codec.headroom_ok()
    tight = RingCodec(scale_bits=32, clip=4.0, max_weight=2**18, max_summands=2**10)
    assert tight.worst_case() == 2**62 and tight.headroom_bits() == pytest.approx(1.0)
    for value in (4.0, -4.0):
        vector = tight.encode([np.full(3, value)])
        acc = zeros(3)
        for _ in range(tight.max_summands):
            weighted_add(acc, vector, tight.max_weight)
        assert tight.overflow_count(acc, tight.max_total_weight) == 0
        assert np.all(to_signed(acc) == np.int64(np.sign(value)) * 2**62)
        back = tight.decode(acc, [(3,)], tight.weight_scale)[0]
        assert np.all(back == value * tight.max_total_weight / tight.weight_scale)


@pytest.mark.parametrize(
    ("kwargs", "knob"),
    [
        ({"scale_bits": 40}, "scale_bits"),
        ({"clip": 1e9}, "clip"),
        ({"max_weight": 2**40}, "max_weight"),
        ({"max_summands": 2**30}, "max_summands"),
    ],
)
def test_headroom_exceeded_is_refused_naming_the_knobs(kwargs, knob):
    with pytest.raises(ValueError, match="headroom") as err:
        RingCodec(**kwargs)
    message = str(err.value)
    assert knob in message and "2^63" in message
    assert "secagg-scale-bits" in message or "secagg-clip" in message


def test_headroom_exceeded_past_max_summands_is_refused_by_the_buffer_and_the_check():
    codec = RingCodec(scale_bits=8, clip=1.0, max_weight=2, max_summands=2)
    buffer = MaskedBuffer(codec, [(2,)])
    for client in range(2):
        buffer.add(
            client,
            codec.encode([np.ones(2)]),
            weight=2,
            ephemeral_public=bytes([client]) * 32,
            signature=b"s",
            node_key_fingerprint="f",
        )
    with pytest.raises(RingOverflowError, match="max_summands"):
        buffer.add(
            9,
            codec.encode([np.ones(2)]),
            weight=1,
            ephemeral_public=b"\x09" * 32,
            signature=b"s",
            node_key_fingerprint="f",
        )
    with pytest.raises(RingOverflowError, match="2\\^63"):
        codec.overflow_count(zeros(2), 2**62)


def test_invalid_codecs_are_refused():
    for kwargs in (
        {"scale_bits": -1},
        {"scale_bits": 63},
        {"clip": 0.0},
        {"clip": float("nan")},
        {"max_weight": 0},
        {"max_summands": 0},
        {"weight_scale": 0},
    ):
        with pytest.raises(ValueError):
            RingCodec(**kwargs)
    with pytest.raises(TypeError):
        RingCodec(max_weight=1.5)


def test_non_finite_values_are_refused():
    codec = RingCodec()
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite"):
            codec.encode([np.array([0.0, bad], dtype=np.float32)])


@PROPERTY
@given(weight=st.floats(0.0, 1.0), scale=st.sampled_from([1, 7, 1024, 65536]))
def test_quantize_weight_rounds_into_range(weight, scale):
    q = quantize_weight(weight, scale)
    assert isinstance(q, int) and 0 <= q <= scale
    assert abs(q / scale - weight) <= 0.5 / scale + 1e-12


def test_quantize_weight_bounds():
    assert quantize_weight(0.0, 1024) == 0 and quantize_weight(1.0, 1024) == 1024
    assert quantize_weight(1 / math.sqrt(2), 65536) == 46341
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            quantize_weight(bad, 1024)
    with pytest.raises(ValueError):
        quantize_weight(0.5, 0)
    assert quantize_weight(3.0, 1024, max_weight=4096) == 3072  # an example × staleness weight > 1
    with pytest.raises(ValueError, match="max_weight"):
        quantize_weight(5.0, 1024, max_weight=4096)
    codec = RingCodec(weight_scale=1024, max_weight=2048)
    assert codec.quantize_weight(2.0) == 2048


def test_weighted_add_wraps_without_warnings_and_checks_types():
    acc = np.full(4, np.uint64(2**64 - 1))
    vector = np.full(4, np.uint64(2**63 + 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weighted_add(acc, vector, 3)
        weighted_add(acc, vector, np.uint64(2**64 - 1))
        ring_sub(zeros(4), acc)
    expected = (2**64 - 1 + 3 * (2**63 + 5) + (2**64 - 1) * (2**63 + 5)) % 2**64
    assert np.all(acc == np.uint64(expected))
    with pytest.raises(TypeError):
        weighted_add(acc, vector, 1.5)
    with pytest.raises(ValueError):
        weighted_add(acc, vector, -1)
    with pytest.raises(TypeError):
        weighted_add(acc, vector.astype(np.int64), 1)
    with pytest.raises(ValueError):
        weighted_add(acc, zeros(3), 1)


def test_wire_format():
    vector = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    data = to_wire(vector)
    assert data[:8] == b"\0" * 8 and data[8:16] == b"\x01" + b"\0" * 7  # little-endian
    assert np.array_equal(from_wire(data, 4), vector)
    assert bytes(wire_view(vector)) == data and from_wire(memoryview(data)).dtype == np.uint64
    assert bytes(wire_view(vector.astype(">u8").astype(np.uint64))) == data
    with pytest.raises(ValueError):
        from_wire(b"\0" * 7)
    with pytest.raises(ValueError):
        from_wire(data, 3)


def test_masked_buffer_matches_plain_weighted_sum():
    codec = RingCodec(scale_bits=20, clip=4.0, max_weight=2048, max_summands=8, weight_scale=1024)
    shapes = [(2, 3), (4,)]
    rng = np.random.default_rng(7)
    buffer = MaskedBuffer(codec, shapes)
    masks, expected, floats = [], [np.zeros(s) for s in shapes], []
    for client in range(5):
        update = random_arrays(rng, shapes, 1.0)
        weight = (1 + client) ** -0.5
        q = codec.quantize_weight(weight)
        mask = random_masks(rng, 1, 10)[0]
        masked = codec.encode(update)
        weighted_add(masked, mask, 1)
        contribution = buffer.add(
            client, masked, weight=q, ephemeral_public=bytes([client]) * 32, signature=b"sig", node_key_fingerprint="ab"
        )
        assert contribution.weight == q and contribution.ephemeral_public == bytes([client]) * 32
        masks.append((mask, q))
        floats.append(weight)
        for e, u in zip(expected, update):
            e += q / codec.weight_scale * u
    assert len(buffer) == 5 and buffer.holds(3) and not buffer.holds(5)
    assert buffer.total_weight == pytest.approx(sum(floats), abs=5 * 0.5 / 1024)
    with pytest.raises(ValueError, match="already contributed"):
        buffer.add(3, zeros(10), weight=1, ephemeral_public=b"\xff" * 32, signature=b"", node_key_fingerprint="")
    with pytest.raises(ValueError, match="already in the buffer"):
        buffer.add(9, zeros(10), weight=1, ephemeral_public=b"\x01" * 32, signature=b"", node_key_fingerprint="")
    with pytest.raises(ValueError, match="max_weight"):
        buffer.add(9, zeros(10), weight=2049, ephemeral_public=b"\xfe" * 32, signature=b"", node_key_fingerprint="")
    with pytest.raises(ValueError, match="shape"):
        buffer.add(9, zeros(11), weight=1, ephemeral_public=b"\xfe" * 32, signature=b"", node_key_fingerprint="")
    mask_sum = zeros(10)
    for mask, q in masks:
        weighted_add(mask_sum, mask, q)
    flushed = buffer.flush(mask_sum)
    assert flushed.count == 5 and flushed.overflow == 0
    for got, want in zip(flushed.total, expected):
        assert np.allclose(got, want, atol=5 * 2.0**-21)
    assert len(buffer) == 0 and buffer.contributions == []
    with pytest.raises(ValueError, match="empty"):
        buffer.flush(mask_sum)


def test_signed_limit_constant():
    assert SIGNED_LIMIT == 2**63


# -- the one-pass paths equal the whole-array arithmetic they replace ---------------------------

# sizes around the slice length, so every path crosses slice boundaries mid-array
SLICED_SHAPES = [(CHUNK - 3,), (5, 7), (CHUNK + 11,), (1,)]


def whole_array_encode(codec: RingCodec, arrays) -> np.ndarray:
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    np.clip(flat, -codec.clip, codec.clip, out=flat)
    return np.rint(flat * float(1 << codec.scale_bits)).astype(np.int64).view(np.uint64)


def test_encode_add_is_one_pass_of_encode_then_a_weighted_add():
    codec = RingCodec(scale_bits=20, clip=1.0, max_example_weight=8, max_weight=1024, weight_scale=256)
    rng = np.random.default_rng(11)
    arrays = [rng.normal(0, 0.7, size=s).astype(np.float32) for s in SLICED_SHAPES]
    n = sum(a.size for a in arrays)
    expected = whole_array_encode(codec, arrays)
    assert np.array_equal(codec.encode(arrays), expected)
    mask = random_masks(rng, 1, n)[0]
    acc = mask.copy()
    clipped = codec.encode_add(arrays, acc, 5)
    with np.errstate(over="ignore"):
        assert np.array_equal(acc, mask + expected * np.uint64(5))
    assert clipped == codec.clipped_count(arrays) > 0
    with pytest.raises(ValueError, match="coordinates"):
        codec.encode_add(arrays, zeros(n + 1))
    poisoned = [a.copy() for a in arrays]
    poisoned[2][CHUNK + 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        codec.encode(poisoned)


def test_sliced_weighted_add_overflow_count_and_decode_match_whole_arrays():
    codec = RingCodec(scale_bits=16, clip=2.0, max_weight=4096, max_summands=4, weight_scale=1000)
    rng = np.random.default_rng(12)
    n = 2 * CHUNK + 17
    acc, vector = random_masks(rng, 2, n)
    expected = acc.copy()
    with np.errstate(over="ignore"):
        expected += vector * np.uint64(4095)
    assert np.array_equal(weighted_add(acc, vector, 4095), expected)
    # an honest sum sits inside the bound; coordinates just outside it, on both sides, are counted
    total_weight = 3000
    bound = codec.sum_bound(total_weight)
    signed = rng.integers(-bound, bound + 1, size=n, dtype=np.int64)
    signed[[0, CHUNK, n - 1]] = [bound, -bound, bound]
    assert codec.overflow_count(signed.view(np.uint64), total_weight) == 0
    signed[[1, CHUNK + 1, n - 2]] = [bound + 1, -bound - 1, np.iinfo(np.int64).min]
    assert codec.overflow_count(signed.view(np.uint64), total_weight) == 3
    decoded = codec.decode(signed.view(np.uint64), [(n,)], codec.weight_scale)[0]
    assert np.array_equal(decoded, signed.astype(np.float64) / float(1 << 16) / 1000.0)
    in_place = codec.decode_in_place(signed.copy().view(np.uint64), [(n - 17,), (17,)], codec.weight_scale)
    assert np.array_equal(np.concatenate([a.ravel() for a in in_place]), decoded)


def test_a_flush_subtracts_and_decodes_in_place_and_allocates_no_full_size_array():
    codec = RingCodec(max_summands=4)
    n = 4 * CHUNK
    buffer = MaskedBuffer(codec, [(n,)])
    rng = np.random.default_rng(13)
    masks = random_masks(rng, 2, n)
    for client, mask in enumerate(masks):
        masked = mask.copy()
        codec.encode_add([np.full(n, 0.25, np.float32)], masked)
        buffer.add(
            client,
            masked,
            weight=codec.weight_scale,
            ephemeral_public=bytes([client]) * 32,
            signature=b"s",
            node_key_fingerprint="ab",
        )
    mask_sum = zeros(n)
    for mask in masks:
        weighted_add(mask_sum, mask, codec.weight_scale)
    tracemalloc.start()
    flushed = buffer.flush(mask_sum)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert flushed.overflow == 0 and np.allclose(flushed.total[0], 0.5)
    assert peak < 4 * 8 * CHUNK  # a few slices: the float64 result is the ring sum's memory
