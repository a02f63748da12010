"""Fixed-point arithmetic in the ring Z_2^64: what a secure-aggregation buffer adds.

The encoding, the weights and overflow are described in docs/secure-aggregation.md, section 4.

A client update (a list of float arrays) becomes one flat ``uint64`` vector: every coordinate
is clipped to ``[-clip, clip]``, scaled by ``2^scale_bits``, rounded, and stored in two's
complement. Addition and multiplication by an integer weight are native ``uint64`` operations,
which wrap modulo 2^64 — exactly the ring the one-time masks live in, so

    Σ w_i·(x_i + m_i) − Σ w_i·m_i  =  Σ w_i·x_i   (mod 2^64)

and the right-hand side decodes (signed) to the weighted sum of the updates as long as it fits
in 63 bits. :class:`RingCodec` refuses, at construction, any configuration where an honest
buffer could exceed that (``max_summands × max_weight × max_example_weight × clip × 2^scale_bits
< 2^63``), and :meth:`RingCodec.overflow_count` checks a decoded sum against the bound implied by
the weights that really went in, so a contribution that was not clipped (or a wrong mask) shows
up as overflow instead of as a silently wrong model.

Staleness weights are applied by the server to masked vectors, so they must be integers:
:func:`quantize_weight` maps ``w ∈ [0, 1]`` to ``round(w·weight_scale)`` and a decoded buffer is
divided by ``weight_scale``.

Pure numpy and the standard library: no Flower, no torch, no cryptography.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.chunked import CHUNK, slices

RING_BITS = 64
SIGNED_LIMIT = 1 << (RING_BITS - 1)  # 2^63: |decoded value| must stay below this
RING_DTYPE = np.dtype(np.uint64)
WIRE_DTYPE = np.dtype("<u8")  # byte order of ring vectors on the wire
DEFAULT_WEIGHT_SCALE = 1 << 16

Shapes = Sequence[tuple[int, ...]]


class RingOverflowError(ArithmeticError):
    """A ring sum left the range that honest, clipped contributions can reach."""


@dataclass(frozen=True)
class RingCodec:
    """Fixed-point encoding of float updates into Z_2^64 with a checked overflow budget.

    - ``scale_bits``: fractional bits; the encoding step is ``2^-scale_bits``.
    - ``clip``: largest ``|x|`` per coordinate; larger values are clipped (not rejected).
    - ``max_weight``: largest integer weight the server may apply to one masked vector
      (a quantised staleness × example weight, see :func:`quantize_weight`).
    - ``max_summands``: most vectors one buffer may add before it is decoded.
    - ``max_example_weight``: largest integer weight a client may apply to its own vector
      before masking (1 when the server applies the whole weight).
    - ``weight_scale``: integer weight that stands for weight 1.0; a decoded sum is divided
      by it.
    """

    scale_bits: int = 24
    clip: float = 8.0
    max_weight: int = 4 * DEFAULT_WEIGHT_SCALE
    max_summands: int = 1024
    max_example_weight: int = 1
    weight_scale: int = DEFAULT_WEIGHT_SCALE

    def __post_init__(self) -> None:
        for name in ("scale_bits", "max_weight", "max_summands", "max_example_weight", "weight_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"RingCodec.{name} must be an integer, got {value!r}")
        if not 0 <= self.scale_bits <= 62:
            raise ValueError(f"scale_bits={self.scale_bits} must be in [0, 62]")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip={self.clip} must be a finite number > 0")
        for name in ("max_weight", "max_summands", "max_example_weight", "weight_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"RingCodec.{name}={getattr(self, name)} must be >= 1")
        if not self.headroom_ok():
            raise ValueError(self._headroom_message())

    # -- budget ---------------------------------------------------------------------------

    @property
    def coordinate_bound(self) -> int:
        """Largest ``|encoded coordinate|``: ``ceil(clip·2^scale_bits)``."""
        return math.ceil(self.clip * (1 << self.scale_bits))

    @property
    def max_total_weight(self) -> int:
        """Largest ``Σ weight·example_weight`` a buffer may reach."""
        return self.max_summands * self.max_weight * self.max_example_weight

    def worst_case(self) -> int:
        """``max_summands × max_weight × max_example_weight × ceil(clip·2^scale_bits)``."""
        return self.max_total_weight * self.coordinate_bound

    def headroom_ok(self) -> bool:
        """Whether the worst honest buffer fits in 63 bits (always true once constructed)."""
        return self.worst_case() < SIGNED_LIMIT

    def headroom_bits(self) -> float:
        """Spare bits between the worst honest buffer and 2^63 (how much a knob can grow)."""
        return RING_BITS - 1 - math.log2(self.worst_case())

    def _headroom_message(self) -> str:
        worst = self.worst_case()
        excess = worst.bit_length() - (RING_BITS - 1)  # halvings needed to get below 2^63
        others = self.max_total_weight
        limit_bits = next(
            (b for b in range(self.scale_bits, -1, -1) if others * math.ceil(self.clip * (1 << b)) < SIGNED_LIMIT),
            None,
        )
        # largest clip (to 6 significant digits, rounded down) that fits
        limit_clip = math.floor((SIGNED_LIMIT - 1) // others / (1 << self.scale_bits) * 1e6) / 1e6
        per_summand = self.max_weight * self.max_example_weight * self.coordinate_bound
        limit_summands = (SIGNED_LIMIT - 1) // per_summand
        limit_weight = (SIGNED_LIMIT - 1) // (self.max_summands * self.max_example_weight * self.coordinate_bound)
        options = []
        if limit_bits is not None:
            options.append(f"scale_bits (secagg-scale-bits) to <= {limit_bits}")
        if limit_clip > 0:
            options.append(f"clip (secagg-clip) to <= {limit_clip:g}")
        if limit_weight >= 1:
            options.append(f"max_weight (secagg-max-weight) to <= {limit_weight}")
        if limit_summands >= 1:
            options.append(f"max_summands (the buffer size bound) to <= {limit_summands}")
        return (
            "ring overflow headroom exceeded: max_summands × max_weight × max_example_weight × "
            f"ceil(clip × 2^scale_bits) = {self.max_summands} × {self.max_weight} × "
            f"{self.max_example_weight} × ceil({self.clip} × 2^{self.scale_bits}) ≈ "
            f"2^{math.log2(worst):.2f} must be < 2^63 ({excess} bit(s) too many). Lower one knob: "
            + ", or ".join(options)
        )

    # -- encoding -------------------------------------------------------------------------

    def encode(self, arrays: Iterable[np.ndarray]) -> np.ndarray:
        """Clip, scale by ``2^scale_bits``, round to nearest and flatten into one uint64 vector.

        Negative values are stored in two's complement. Non-finite values are refused.
        """
        arrays = list(arrays)
        vector = zeros(sum(int(np.size(a)) for a in arrays))
        self.encode_add(arrays, vector)
        return vector

    def encode_add(self, arrays: Iterable[np.ndarray], acc: np.ndarray, weight: int = 1) -> int:
        """``acc += weight·encode(arrays) (mod 2^64)`` in one pass; returns how many coordinates
        were clipped.

        Slice by slice in cache-sized scratch buffers: the float update is read once and
        ``acc`` (a mask, on the client) is read and written once, with no full-size
        temporary. A NaN or an Inf raises ValueError, leaving ``acc`` partly written.
        """
        _check_ring(acc, "accumulator")
        flat_acc = acc.reshape(-1)
        wide = np.empty(min(CHUNK, max(flat_acc.size, 1)), np.float64)
        encoded = np.empty(wide.size, np.int64)
        scale, clipped, offset = float(1 << self.scale_bits), 0, 0
        for array in arrays:
            flat = np.reshape(np.asarray(array), -1)
            if offset + flat.size > flat_acc.size:
                raise ValueError(f"the update has more coordinates than the {flat_acc.size} of the vector")
            for part in slices(flat.size):
                size = part.stop - part.start
                values, ints = wide[:size], encoded[:size]
                values[...] = flat[part]
                if not np.isfinite(values).all():
                    raise ValueError("cannot encode non-finite values (NaN or inf) into the ring")
                clipped += int(np.count_nonzero(values > self.clip)) + int(np.count_nonzero(values < -self.clip))
                np.clip(values, -self.clip, self.clip, out=values)
                values *= scale  # exact: a power of two
                np.rint(values, out=values)
                ints[...] = values
                words = ints.view(RING_DTYPE)
                target = flat_acc[offset + part.start : offset + part.stop]
                with np.errstate(over="ignore"):
                    if weight != 1:
                        np.multiply(words, np.uint64(weight), out=words)
                    np.add(target, words, out=target)
            offset += flat.size
        if offset != flat_acc.size:
            raise ValueError(f"the update has {offset} coordinates, the vector {flat_acc.size}")
        return clipped

    def clipped_count(self, arrays: Iterable[np.ndarray]) -> int:
        """How many coordinates :meth:`encode` would clip (worth a metric on the client)."""
        flat = _flatten(arrays)
        return int(np.count_nonzero(np.abs(flat) > self.clip))

    def decode(self, vector: np.ndarray, shapes: Shapes, weight_scale: int = 1) -> list[np.ndarray]:
        """Signed interpretation of ``vector``, ÷ ``2^scale_bits`` (and ÷ ``weight_scale``), reshaped.

        Returns float64 arrays; pass ``weight_scale=codec.weight_scale`` to decode a buffer
        of quantised-weight sums into weight units.
        """
        # a copy in native order, decoded where it lies: the only new array is the result
        return self.decode_in_place(to_signed(vector).view(RING_DTYPE).copy(), shapes, weight_scale)

    def decode_in_place(self, vector: np.ndarray, shapes: Shapes, weight_scale: int = 1) -> list[np.ndarray]:
        """:meth:`decode` into ``vector``'s own memory: afterwards its bytes are the float64
        result (the ring vector is consumed), so decoding a buffer allocates no second model.

        Slice by slice, each slice's integers are copied to a cache-sized scratch first, then
        divided into the same place; the values are bit-identical to :meth:`decode`'s.
        """
        _check_ring(vector, "vector")
        if not (vector.flags.c_contiguous and vector.flags.writeable):
            raise ValueError("decode_in_place needs a contiguous, writable ring vector")
        total = sum(_size(s) for s in shapes)
        if vector.size != total:
            raise ValueError(f"ring vector has {vector.size} coordinates, shapes need {total}")
        signed, values = vector.reshape(-1).view(np.int64), vector.reshape(-1).view(np.float64)
        scratch = np.empty(min(CHUNK, max(total, 1)), np.int64)
        for part in slices(total):
            ints = scratch[: part.stop - part.start]
            ints[...] = signed[part]
            np.divide(ints, float(1 << self.scale_bits), out=values[part])
            if weight_scale != 1:
                values[part] /= float(weight_scale)
        out, start = [], 0
        for shape in shapes:
            size = _size(shape)
            out.append(values[start : start + size].reshape(shape))
            start += size
        return out

    # -- weights and overflow -------------------------------------------------------------

    def quantize_weight(self, weight: float) -> int:
        """``round(weight·weight_scale)``, refused above ``max_weight``."""
        return quantize_weight(weight, self.weight_scale, self.max_weight)

    def sum_bound(self, total_weight: int) -> int:
        """Largest ``|Σ w_i·x_i|`` per coordinate when ``Σ w_i = total_weight`` (integer weights)."""
        if total_weight < 0:
            raise ValueError(f"total weight {total_weight} must be >= 0")
        return int(total_weight) * self.coordinate_bound

    def overflow_count(self, vector: np.ndarray, total_weight: int) -> int:
        """Coordinates of an unmasked sum outside ``±total_weight·coordinate_bound``.

        ``total_weight`` is ``Σ weight_i·example_weight_i`` over the summands. Honest, clipped
        contributions can never exceed it, so a positive count means a contribution was not
        clipped, was masked with another mask, or the ring wrapped. (Detection of a random
        error is certain up to probability ``bound / 2^63`` per coordinate.) Raises
        ``RingOverflowError`` when the bound itself does not fit in 63 bits: then wrap-around
        cannot be told from a large sum.
        """
        bound = self.sum_bound(total_weight)
        if bound >= SIGNED_LIMIT:
            raise RingOverflowError(
                f"total weight {total_weight} × coordinate bound {self.coordinate_bound} ≥ 2^63: "
                "more weight went into this sum than the codec's headroom allows"
            )
        # v ∈ [−bound, bound] ⇔ (v + bound) mod 2^64 ≤ 2·bound, since 2·bound < 2^64
        flat = to_signed(vector).view(RING_DTYPE).reshape(-1)
        shifted = np.empty(min(CHUNK, flat.size), RING_DTYPE)
        count = 0
        with np.errstate(over="ignore"):
            for part in slices(flat.size):
                window = shifted[: part.stop - part.start]
                np.add(flat[part], np.uint64(bound), out=window)
                count += int(np.count_nonzero(window > np.uint64(2 * bound)))
        return count


def quantize_weight(weight: float, weight_scale: int, max_weight: int | None = None) -> int:
    """Integer weight ``round(weight·weight_scale)`` for the ring.

    Without ``max_weight`` the weight must be in ``[0, 1]`` (a staleness weight) and the
    result is in ``[0, weight_scale]``; with it, any weight whose quantised value is at most
    ``max_weight`` is accepted (a staleness × example weight may exceed 1).
    """
    if isinstance(weight_scale, bool) or not isinstance(weight_scale, (int, np.integer)) or weight_scale < 1:
        raise ValueError(f"weight_scale={weight_scale!r} must be an integer >= 1")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight {weight} must be finite and >= 0")
    if max_weight is None and weight > 1:
        raise ValueError(f"weight {weight} must be in [0, 1]")
    quantized = round(weight * int(weight_scale))
    if max_weight is not None and quantized > max_weight:
        raise ValueError(
            f"weight {weight} quantises to {quantized} > max_weight {max_weight}: "
            "raise secagg-max-weight or lower weight-scale"
        )
    return quantized


def to_signed(vector: np.ndarray) -> np.ndarray:
    """Two's-complement (int64) view of a ring vector."""
    vector = np.asarray(vector)
    if vector.dtype != RING_DTYPE:
        if vector.dtype.kind != "u" or vector.dtype.itemsize != 8:
            raise TypeError(f"ring vectors are uint64, got {vector.dtype}")
        vector = vector.astype(RING_DTYPE)
    return np.ascontiguousarray(vector).view(np.int64)


def zeros(length: int) -> np.ndarray:
    """A zero ring vector (the empty sum)."""
    return np.zeros(int(length), dtype=RING_DTYPE)


def weighted_add(acc: np.ndarray, vector: np.ndarray, weight: int) -> np.ndarray:
    """``acc += weight·vector (mod 2^64)`` in place; returns ``acc``.

    ``weight`` is a non-negative integer below 2^64. The product is taken slice by slice in a
    cache-sized scratch buffer, so no full-size temporary appears and ``vector`` is read once.
    Wrap-around is the point, so numpy's overflow warnings are silenced.
    """
    _check_ring(acc, "accumulator")
    _check_ring(vector, "vector")
    if acc.shape != vector.shape:
        raise ValueError(f"ring vectors differ in shape: {acc.shape} vs {vector.shape}")
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
        raise TypeError(f"ring weights are integers, got {weight!r}")
    if not 0 <= int(weight) < (1 << RING_BITS):
        raise ValueError(f"ring weight {weight} must be in [0, 2^64)")
    flat_acc, flat_vector = acc.reshape(-1), vector.reshape(-1)
    with np.errstate(over="ignore"):
        if int(weight) == 1:
            np.add(acc, vector, out=acc)
            return acc
        factor = np.uint64(weight)
        scratch = np.empty(min(CHUNK, flat_acc.size), RING_DTYPE)
        for part in slices(flat_acc.size):
            product = scratch[: part.stop - part.start]
            np.multiply(flat_vector[part], factor, out=product)
            np.add(flat_acc[part], product, out=flat_acc[part])
    return acc


def ring_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b (mod 2^64)`` as a new vector."""
    _check_ring(a, "left operand")
    _check_ring(b, "right operand")
    with np.errstate(over="ignore"):
        return np.add(a, b)


def ring_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a − b (mod 2^64)`` as a new vector."""
    _check_ring(a, "left operand")
    _check_ring(b, "right operand")
    with np.errstate(over="ignore"):
        return np.subtract(a, b)


def to_wire(vector: np.ndarray) -> bytes:
    """Little-endian bytes of a ring vector."""
    _check_ring(vector, "vector")
    return np.ascontiguousarray(vector, dtype=WIRE_DTYPE).tobytes()


def wire_view(vector: np.ndarray) -> memoryview:
    """The vector's little-endian bytes without a copy where the machine is little-endian."""
    _check_ring(vector, "vector")
    return np.ascontiguousarray(vector, dtype=WIRE_DTYPE).data.cast("B")


def from_wire(data: bytes | memoryview, length: int | None = None) -> np.ndarray:
    """Ring vector from little-endian bytes: a read-only view of ``data`` where the machine is
    little-endian (no copy), a native-order copy elsewhere."""
    if len(data) % 8:
        raise ValueError(f"{len(data)} bytes is not a whole number of uint64 coordinates")
    vector = np.frombuffer(data, dtype=WIRE_DTYPE)
    if vector.dtype != RING_DTYPE:
        vector = vector.astype(RING_DTYPE)
    if length is not None and vector.size != length:
        raise ValueError(f"ring vector has {vector.size} coordinates, expected {length}")
    return vector.view(RING_DTYPE)


# -- a masked buffer ----------------------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    """What the mask service needs about one masked vector in a buffer (never the vector).

    ``signature`` is the node's over the ephemeral key and the context
    (``mask_service.masking.signed_message``); ``weight`` is the integer weight the server
    multiplied the masked vector by.
    """

    ephemeral_public: bytes
    signature: bytes
    node_key_fingerprint: str
    weight: int

    def __post_init__(self) -> None:
        if len(self.ephemeral_public) != 32:
            raise ValueError("ephemeral_public must be 32 bytes (a raw X25519 public key)")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, np.integer)) or self.weight < 0:
            raise ValueError(f"weight {self.weight!r} must be an integer >= 0")


@dataclass(frozen=True)
class RingFlush:
    """A decoded buffer: ``Σ (q_i/weight_scale)·e_i·x_i`` and its bookkeeping.

    ``total`` is float64 in weight units (÷ ``weight_scale``), ``total_weight`` likewise
    ``Σ q_i·e_i / weight_scale``; ``overflow`` counts coordinates outside the honest bound
    (see :meth:`RingCodec.overflow_count`): a flush with ``overflow > 0`` must be discarded.
    """

    total: list[np.ndarray]
    count: int
    total_weight: float
    overflow: int
    integer_weight: int = 0


class MaskedBuffer:
    """Running sum ``Σ q_i·masked_i`` in Z_2^64 plus the contributions needed to unmask it.

    Like :class:`strategies.buffer.WeightedSumBuffer` it never stores an individual update
    (one ring vector whatever the buffer size); unlike it, its sum means nothing until the
    mask service returns ``Σ q_i·m_i`` for exactly :attr:`contributions`.
    """

    def __init__(self, codec: RingCodec, shapes: Shapes) -> None:
        self.codec = codec
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.length = sum(_size(s) for s in self.shapes)
        self._sum: np.ndarray | None = None  # allocated by the first add: an empty buffer holds no vector
        self._clients: set[int] = set()
        self._masks: set[bytes] = set()
        self._contributions: list[Contribution] = []
        self._integer_weight = 0

    def __len__(self) -> int:
        return len(self._contributions)

    def holds(self, client_id: int) -> bool:
        """Whether ``client_id`` already contributed to this buffer."""
        return client_id in self._clients

    @property
    def integer_weight(self) -> int:
        """``Σ q_i·e_i`` over the contributions (integer weight units)."""
        return self._integer_weight

    @property
    def total_weight(self) -> float:
        """``Σ q_i·e_i / weight_scale``."""
        return self._integer_weight / self.codec.weight_scale

    @property
    def weights(self) -> list[float]:
        """The weight each contribution got, as a float (``q_i / weight_scale``)."""
        return [c.weight / self.codec.weight_scale for c in self._contributions]

    @property
    def contributions(self) -> list[Contribution]:
        """The unmask request for this buffer, in the order they were added."""
        return list(self._contributions)

    def add(
        self,
        client_id: int,
        masked: np.ndarray,
        *,
        weight: int,
        ephemeral_public: bytes,
        signature: bytes,
        node_key_fingerprint: str,
        example_weight: int = 1,
    ) -> Contribution:
        """Add ``weight·masked`` in place (``masked`` is only read, slice by slice)."""
        if client_id in self._clients:
            raise ValueError(f"client {client_id} already contributed to this buffer")
        if bytes(ephemeral_public) in self._masks:
            raise ValueError("this mask (ephemeral key) is already in the buffer")
        if len(self._contributions) >= self.codec.max_summands:
            raise RingOverflowError(
                f"buffer already holds max_summands={self.codec.max_summands} vectors; "
                "flush it (or raise the codec's max_summands within its headroom)"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
            raise TypeError(f"ring weight must be an integer, got {weight!r}")
        if not 0 <= weight <= self.codec.max_weight:
            raise ValueError(f"weight {weight} outside [0, max_weight={self.codec.max_weight}]")
        if isinstance(example_weight, bool) or not 0 <= int(example_weight) <= self.codec.max_example_weight:
            raise ValueError(f"example weight {example_weight} outside [0, {self.codec.max_example_weight}]")
        masked = np.asarray(masked)
        _check_ring(masked, "masked vector")
        if masked.shape != (self.length,):
            raise ValueError(f"masked vector has shape {masked.shape}, expected ({self.length},)")
        contribution = Contribution(
            ephemeral_public=bytes(ephemeral_public),
            signature=bytes(signature),
            node_key_fingerprint=str(node_key_fingerprint),
            weight=int(weight),
        )
        if self._sum is None:
            self._sum = zeros(self.length)
        weighted_add(self._sum, masked, int(weight))
        self._clients.add(client_id)
        self._masks.add(contribution.ephemeral_public)
        self._contributions.append(contribution)
        self._integer_weight += int(weight) * int(example_weight)
        return contribution

    def merge(self, other: MaskedBuffer) -> None:
        """Take ``other``'s contributions into this buffer (FedCompass: a group and the general
        buffer are unmasked as one set) and empty ``other``; they must not share a client or mask."""
        if self._clients & other._clients or self._masks & other._masks:
            raise ValueError("buffers to merge share a client or a mask")
        if len(self._contributions) + len(other._contributions) > self.codec.max_summands:
            raise RingOverflowError(f"a merged buffer would hold more than max_summands={self.codec.max_summands}")
        if other._sum is None:  # nothing to take
            return
        if self._sum is None:  # take the other's sum as it lies
            self._sum, other._sum = other._sum, None
        else:
            weighted_add(self._sum, other._sum, 1)
        self._clients |= other._clients
        self._masks |= other._masks
        self._contributions += other._contributions
        self._integer_weight += other._integer_weight
        other.discard()

    def flush(self, mask_sum: np.ndarray) -> RingFlush:
        """Subtract the service's ``Σ q_i·m_i`` from the sum in place, decode, and empty the buffer.

        No full-size array is allocated: the ring sum becomes the plaintext sum where it lies,
        and then the float64 result in the same memory (:meth:`RingCodec.decode_in_place`).
        """
        if self._sum is None:
            raise ValueError("cannot flush an empty buffer")
        mask_sum = np.asarray(mask_sum)
        _check_ring(mask_sum, "mask sum")
        if mask_sum.shape != self._sum.shape:
            raise ValueError(f"mask sum has shape {mask_sum.shape}, expected {self._sum.shape}")
        plain = self._sum
        with np.errstate(over="ignore"):
            np.subtract(plain, mask_sum, out=plain)
        overflow = self.codec.overflow_count(plain, self._integer_weight)
        result = RingFlush(
            total=self.codec.decode_in_place(plain, self.shapes, self.codec.weight_scale),
            count=len(self._contributions),
            total_weight=self.total_weight,
            overflow=overflow,
            integer_weight=self._integer_weight,
        )
        self.discard()
        return result

    def discard(self) -> None:
        """Empty the buffer without decoding (e.g. when the service refused to unmask)."""
        self._sum = None
        self._clients.clear()
        self._masks.clear()
        self._contributions = []
        self._integer_weight = 0


def _flatten(arrays: Iterable[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(parts)  # always a fresh float64 copy


def _size(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def _check_ring(vector: np.ndarray, what: str) -> None:
    if not isinstance(vector, np.ndarray) or vector.dtype != RING_DTYPE:
        raise TypeError(f"{what} must be a numpy uint64 array, got {getattr(vector, 'dtype', type(vector))}")
