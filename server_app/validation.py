"""Checks a train reply before it may touch the model; every refusal has a named reason."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, MetricRecord, RecordDict
from flwr.common.constant import SType

from fedbuff import protocol
from fedbuff.protocol import NUM_EXAMPLES
from server_app.reply_fields import reported_fields
from strategies.base import MaskEnvelope
from strategies.chunked import sum_of_squares

RecordT = TypeVar("RecordT", ArrayRecord, ConfigRecord, MetricRecord)

REJECTION_REASONS = (
    "oversize",  # the reply's arrays exceed the byte limit; refused before deserialising them
    "missing-field",
    "array-count",
    "shape",
    "dtype",
    "non-finite",
    "norm",
    "num-examples",  # not a positive int, or above the run's bound (num_examples_limit)
    "encoding",  # the arrays' bytes are not one well-formed .npy payload each (header, length, stype)
    "mask-envelope",
    "refused",  # well-formed, but the strategy would not take it (e.g. a replayed mask)
    "mask-refused",  # the mask service's Check refused the contribution (its reason is in the detail)
    "mask-service-unavailable",  # the mask service could not be asked; fail closed
    "unknown-task",  # a reply to no task in flight: a replay, a duplicate, or a task of a crashed server
)
EPHEMERAL_KEY_BYTES = 32  # X25519
MAX_SIGNATURE_BYTES = 256
AUTO_LIMIT_SLACK_BYTES = 64 * 1024  # serialisation headers and the small records beside the arrays
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# bytes of the header-length field, by format version (looked up with tuple(bytes), a tuple[int, ...])
NPY_LENGTH_WIDTHS: dict[tuple[int, ...], int] = {(1, 0): 2, (2, 0): 4}
NPY_PREFIX_BYTES = 8  # magic string (6) and version (2)


def num_examples_limit(configured: int, train_rows: int | None = None) -> int:
    """The largest ``num-examples`` a reply may claim: ``max-num-examples``, lowered to the size
    of the training split when the server holds it (``train_rows``).

    Every partition is a subset of that split, so no honest client can hold more; a larger
    claim is a lie about the one number that weights the update.
    """
    return min(configured, train_rows) if train_rows else configured


def update_byte_limit(configured: int, model: list[np.ndarray]) -> int:
    """The largest reply the server deserialises: ``max-update-bytes``, or with 0 twice the
    model's bytes plus 64 KiB (a masked uint64 vector of a float32 model fits, nothing much more).

    Flower 1.41 streams arrays in chunks, so its transport puts no bound on a reply's size:
    this is the explicit one.
    """
    return configured or 2 * sum(int(a.nbytes) for a in model) + AUTO_LIMIT_SLACK_BYTES


@dataclass(frozen=True)
class ValidUpdate:
    """The parts of a reply the server uses, after validation.

    ``delta`` holds read-only views of the reply's bytes. With secure aggregation it is one
    masked ring vector, ``mask`` says how to unmask it, and ``norm`` is ``None``: the server
    cannot see it.
    """

    delta: list[np.ndarray]
    num_examples: int
    norm: float | None
    metrics: dict[str, float]
    device: dict[str, str | int]
    mask: MaskEnvelope | None = None
    dropped: tuple[str, ...] = ()  # optional fields that broke their rule (reply_fields.DROPPED_FIELDS)


@dataclass(frozen=True)
class Rejection:
    """Why a reply was refused: ``reason`` is one of :data:`REJECTION_REASONS`."""

    reason: str
    detail: str


def validate_reply(
    content: RecordDict,
    template: list[np.ndarray],
    max_update_norm: float,
    max_bytes: int | None = None,
    max_num_examples: int | None = None,
) -> ValidUpdate | Rejection:
    """Validate a plaintext train reply against the model's layout.

    ``max_update_norm`` 0 disables the norm bound; ``max_bytes`` None the size bound;
    ``max_num_examples`` None leaves ``num-examples`` bounded only below (by 1).
    """
    arrays = _common(content, max_bytes, max_num_examples)
    if isinstance(arrays, Rejection):
        return arrays
    delta, num_examples = arrays
    if len(delta) != len(template):
        return Rejection("array-count", f"expected {len(template)} arrays, got {len(delta)}")
    for i, (got, want) in enumerate(zip(delta, template)):
        if got.shape != want.shape:
            return Rejection("shape", f"array {i}: expected {want.shape}, got {got.shape}")
        if got.dtype != want.dtype:
            return Rejection("dtype", f"array {i}: expected {want.dtype}, got {got.dtype}")
    norm = math.sqrt(sum(sum_of_squares(d) for d in delta))
    if not math.isfinite(norm) and (bad := _first_non_finite(delta)) is not None:
        return Rejection("non-finite", f"array {bad} holds NaN or Inf")
    if max_update_norm and not norm <= max_update_norm:
        return Rejection("norm", f"update L2 norm {norm:.3g} exceeds max-update-norm {max_update_norm}")
    return _valid(content, delta, num_examples, norm)


def validate_masked_reply(
    content: RecordDict, length: int, max_bytes: int | None = None, max_num_examples: int | None = None
) -> ValidUpdate | Rejection:
    """Validate a secure-aggregation reply: one uint64 ring vector of ``length`` plus its envelope.

    Finite values and the norm cannot be checked on a masked vector; the client's clipping,
    the codec's overflow check and the step guard at flush stand in for them.
    """
    arrays = _common(content, max_bytes, max_num_examples)
    if isinstance(arrays, Rejection):
        return arrays
    delta, num_examples = arrays
    if len(delta) != 1:
        return Rejection("array-count", f"expected 1 masked vector, got {len(delta)} arrays")
    if delta[0].dtype != np.uint64:
        return Rejection("dtype", f"masked vector must be uint64, got {delta[0].dtype}")
    if delta[0].shape != (length,):
        return Rejection("shape", f"masked vector: expected ({length},), got {delta[0].shape}")
    envelope: Mapping[str, ConfigRecordValues] = _record(content, protocol.SECAGG, ConfigRecord) or {}
    public, signature = envelope.get(protocol.EPHEMERAL_PUBLIC), envelope.get(protocol.SIGNATURE)
    fingerprint = envelope.get(protocol.NODE_KEY_FINGERPRINT)
    # bytes(32) would be 32 zero bytes: the types are checked, not converted
    if not (isinstance(public, bytes) and isinstance(signature, bytes) and isinstance(fingerprint, str)):
        return Rejection(
            "mask-envelope",
            "ConfigRecord 'secagg' needs ephemeral-public and signature (bytes) and node-key-fingerprint (str)",
        )
    if len(public) != EPHEMERAL_KEY_BYTES or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        return Rejection("mask-envelope", "ephemeral key or signature has the wrong size")
    mask = MaskEnvelope(ephemeral_public=public, signature=signature, node_key_fingerprint=fingerprint)
    return _valid(content, delta, num_examples, None, mask)


def _first_non_finite(delta: list[np.ndarray]) -> int | None:
    """The index of the first array holding a NaN or an Inf, if any.

    Only called once the norm came out non-finite: a NaN or Inf always makes it so, and the
    full-size boolean mask this needs is then paid on refused updates alone.
    """
    return next((i for i, d in enumerate(delta) if not np.isfinite(d).all()), None)


def _common(
    content: RecordDict, max_bytes: int | None, max_num_examples: int | None
) -> tuple[list[np.ndarray], int] | Rejection:
    """The checks both reply kinds share: size, required records, decodable arrays, example count."""
    if max_bytes is not None:
        size = sum(
            len(array.data)
            for record in content.values()
            if isinstance(record, ArrayRecord)
            for array in record.values()
        )
        if size > max_bytes:
            return Rejection("oversize", f"reply arrays hold {size} bytes, the limit is {max_bytes} (max-update-bytes)")
    arrays = _record(content, protocol.ARRAYS, ArrayRecord)
    metrics = _record(content, protocol.METRICS, MetricRecord)
    if arrays is None or metrics is None or NUM_EXAMPLES not in metrics:
        return Rejection(
            "missing-field",
            f"reply needs ArrayRecord {protocol.ARRAYS!r} and MetricRecord {protocol.METRICS!r} with {NUM_EXAMPLES}",
        )
    try:
        delta = array_views(arrays)
    except Exception as err:  # a malformed array payload is the sender's problem, not ours
        return Rejection("encoding", f"arrays do not deserialise: {err}")
    num_examples = metrics[NUM_EXAMPLES]
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        return Rejection("num-examples", f"num-examples must be a positive int, got {num_examples!r}")
    if max_num_examples is not None and num_examples > max_num_examples:
        return Rejection(
            "num-examples",
            f"num-examples {num_examples} is above the bound {max_num_examples} "
            "(max-num-examples, or the training split's size)",
        )
    return delta, num_examples


def array_views(record: ArrayRecord) -> list[np.ndarray]:
    """Every array of ``record``, in order, as a read-only view of the bytes it arrived in."""
    return [_read_only_view(array) for array in record.values()]


def _read_only_view(array: Array) -> np.ndarray:
    """The array as a read-only view of the .npy bytes it arrived in, header checked as np.load does.

    ``Array.numpy()`` copies every update out of its bytes; the server only ever reads a delta,
    so a view saves a full pass over each update and a model copy of peak memory. The payload
    must be exactly the header plus the data it announces: bytes after the data (which
    ``np.load`` ignores) could smuggle anything past the size the header claims.
    """
    if array.stype != SType.NUMPY:
        raise TypeError(f"unsupported serialisation {array.stype!r}")
    header = array.data[: _npy_header_size(array.data)]
    shape, fortran_order, dtype = _npy_layout(header)
    count = math.prod(shape)
    extra = len(array.data) - len(header) - count * dtype.itemsize
    if extra != 0:
        raise ValueError(f"{abs(extra)} bytes {'after' if extra > 0 else 'missing from'} the array's data")
    values = np.frombuffer(array.data, dtype=dtype, count=count, offset=len(header))
    return values.reshape(shape, order="F" if fortran_order else "C")


def _npy_header_size(data: bytes) -> int:
    """Bytes before a .npy file's data: magic string, version, header length, header."""
    width = NPY_LENGTH_WIDTHS.get(tuple(data[6:8]))
    if width is None or len(data) < NPY_PREFIX_BYTES + width:
        raise ValueError("not a .npy array of format version 1.0 or 2.0")
    return NPY_PREFIX_BYTES + width + int.from_bytes(data[NPY_PREFIX_BYTES : NPY_PREFIX_BYTES + width], "little")


@functools.lru_cache(maxsize=256)
def _npy_layout(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of a .npy header, parsed by numpy (no pickles).

    Cached: every update of a run repeats the model's few headers, and numpy parses each
    one with ``ast.literal_eval``, a fixed cost as large as validating a 100k-parameter delta.
    """
    stream = BytesIO(header)
    version = np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = NPY_HEADER_READERS[version](stream)
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need pickle)")
    return shape, fortran_order, dtype


def _valid(
    content: RecordDict,
    delta: list[np.ndarray],
    num_examples: int,
    norm: float | None,
    mask: MaskEnvelope | None = None,
) -> ValidUpdate:
    reported = reported_fields(content)
    return ValidUpdate(
        delta=delta,
        num_examples=num_examples,
        norm=norm,
        metrics=reported.metrics,
        device=reported.device,
        mask=mask,
        dropped=reported.dropped,
    )


def _record(content: RecordDict, key: str, kind: type[RecordT]) -> RecordT | None:
    """The record under ``key`` if it is a ``kind``, else None.

    Same answer as ``content.array_records.get(key)`` and its siblings, which build a new
    typed view of the whole RecordDict on every access (a cost paid several times per reply).
    """
    record = content.get(key)
    return record if isinstance(record, kind) else None
