"""Fuzzed reply validation: whatever a client sends, the validators never raise, and what they
accept matches the model exactly (count, shapes, dtype, finite values, the bytes as sent).

Replies are built from Flower's own record types (what a ClientApp can put on the wire):
missing, extra and mistyped records; arrays of any dtype, shape, serialisation type and byte
content (well-formed .npy payloads, cut or padded ones, random bytes); metrics and config
values of every type Flower allows. Half the replies start from an honest one and are then
broken in one or more places, so that the accepting path is exercised as hard as the refusing one.
"""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server_app.reply_fields import DROPPED_FIELDS, MAX_TEXT_CHARS, OPTIONAL_METRICS
from server_app.validation import (
    EPHEMERAL_KEY_BYTES,
    MAX_SIGNATURE_BYTES,
    REJECTION_REASONS,
    Rejection,
    ValidUpdate,
    validate_masked_reply,
    validate_reply,
)

TEMPLATE = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
LENGTH = 10  # a masked ring vector of this model
MAX_NORM, MAX_EXAMPLES, MAX_BYTES = 50.0, 1000, 4096
INT64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.sampled_from(["arrays", "metrics", "device", "secagg", "config", "0", ""]) | st.text(max_size=8)
METRIC_NAMES = st.sampled_from(["num-examples", *OPTIONAL_METRICS]) | st.text(max_size=12)
DEVICE_NAMES = st.sampled_from(["device-tier", "device-kind", "partition-id", "num-partitions"]) | st.text(max_size=8)
DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i4", "<u8", ">u8", "|b1", "<c8", "|u1"])

metric_values = st.one_of(INT64, st.floats(), st.lists(INT64, max_size=3), st.lists(st.floats(), max_size=3))
config_values = st.one_of(
    INT64,
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=40),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.booleans(), max_size=3),
)


def npy(values: np.ndarray) -> Array:
    return Array(values)


@st.composite
def arrays(draw, like: np.ndarray | None = None) -> Array:
    """One Array: a real .npy payload (maybe shaped like ``like``), then maybe damaged, or raw junk."""
    kind = draw(st.sampled_from(["npy", "npy", "damaged", "raw"]))
    if kind == "raw":
        return Array(
            dtype=draw(st.text(max_size=6)),
            shape=tuple(draw(st.lists(INT64, max_size=3))),
            stype=draw(st.sampled_from(["numpy.ndarray", "torch", ""])),
            data=draw(st.binary(max_size=200)),
        )
    if like is not None and draw(st.booleans()):
        dtype, shape = np.dtype(draw(st.sampled_from(["<f4", "<f4", ">f4", "<f8"]))), like.shape
    else:
        dtype, shape = np.dtype(draw(DTYPES)), draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    values = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()):
        values = np.asfortranarray(values)
    array = npy(values)
    if kind == "damaged":  # bytes added after the data, cut off, or spliced in; or another stype
        damage = draw(st.sampled_from(["pad", "cut", "splice", "stype"]))
        if damage == "pad":
            array.data += draw(st.binary(min_size=1, max_size=16))
        elif damage == "stype":
            array.stype = draw(st.sampled_from(["torch", "numpy", ""]))
        else:
            cut = draw(st.integers(0, len(array.data)))
            array.data = array.data[:cut] + (draw(st.binary(max_size=16)) if damage == "splice" else b"")
    return array


@st.composite
def array_records(draw) -> ArrayRecord:
    if draw(st.booleans()):  # shaped like the model, array by array (maybe one too many or few)
        count = len(TEMPLATE) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        items = [draw(arrays(TEMPLATE[i] if i < len(TEMPLATE) else None)) for i in range(max(count, 0))]
        # a masked vector of the model, now and then
        if draw(st.integers(0, 4)) == 0:
            items = [npy(draw(hnp.arrays(np.uint64, (LENGTH,))))]
    else:
        items = draw(st.lists(arrays(), max_size=4))
    return ArrayRecord({str(i): item for i, item in enumerate(items)})


@st.composite
def metric_records(draw) -> MetricRecord:
    values = draw(st.dictionaries(METRIC_NAMES, metric_values, max_size=6))
    if draw(st.booleans()):
        values["num-examples"] = draw(st.integers(-2, 2 * MAX_EXAMPLES) | INT64)
    return MetricRecord(values)


def config_records(names=NAMES) -> st.SearchStrategy[ConfigRecord]:
    return st.dictionaries(names, config_values, max_size=5).map(ConfigRecord)


@st.composite
def envelopes(draw) -> ConfigRecord:
    honest = {
        "ephemeral-public": draw(st.binary(min_size=EPHEMERAL_KEY_BYTES, max_size=EPHEMERAL_KEY_BYTES)),
        "signature": draw(st.binary(min_size=1, max_size=MAX_SIGNATURE_BYTES)),
        "node-key-fingerprint": draw(st.text(max_size=64)),
    }
    honest.update(draw(st.dictionaries(st.sampled_from(list(honest)), config_values, max_size=2)))
    return ConfigRecord(honest)


records = st.one_of(array_records(), metric_records(), config_records(), envelopes(), config_records(DEVICE_NAMES))


@st.composite
def honest_arrays(draw) -> ArrayRecord:
    """A delta of the model or (now and then) a masked vector of it, as the project's ClientApp sends."""
    if draw(st.integers(0, 3)) == 0:
        return ArrayRecord([draw(hnp.arrays(np.uint64, (LENGTH,)))])
    finite = st.floats(-5, 5, width=32)
    return ArrayRecord([draw(hnp.arrays(np.float32, t.shape, elements=finite)) for t in TEMPLATE])


@st.composite
def broken(draw, content: dict[str, object]) -> dict[str, object]:
    """``content`` with one thing changed: a record gone or replaced, an array or a metric swapped,
    bytes appended to an array's payload, a record added."""
    name = draw(st.sampled_from(sorted(content) or ["arrays"]))
    change = draw(st.sampled_from(["drop", "replace", "array", "pad", "metric", "extra"]))
    if change == "drop":
        content.pop(name, None)
    elif change == "replace":
        content[name] = draw(records)
    elif change == "array" and isinstance(content.get("arrays"), ArrayRecord):
        record = content["arrays"]
        index = draw(st.integers(0, max(len(record), 1) - 1))
        record[str(index)] = draw(arrays(TEMPLATE[index] if index < len(TEMPLATE) else None))
    elif change == "pad" and isinstance(content.get("arrays"), ArrayRecord) and len(content["arrays"]):
        array = content["arrays"][draw(st.sampled_from(list(content["arrays"])))]
        array.data += draw(st.binary(min_size=1, max_size=64))  # a payload hidden after the data
    elif change == "metric" and isinstance(content.get("metrics"), MetricRecord):
        content["metrics"][draw(METRIC_NAMES)] = draw(metric_values)
    else:
        content[draw(NAMES)] = draw(records)
    return content


@st.composite
def replies(draw) -> RecordDict:
    """An honest reply broken in 0 to 3 places, or records drawn at random."""
    if draw(st.booleans()):
        return RecordDict(draw(st.dictionaries(NAMES, records, max_size=4)))
    content: dict[str, object] = {
        "arrays": draw(honest_arrays()),
        "metrics": MetricRecord({"num-examples": draw(st.integers(1, MAX_EXAMPLES)), "train-loss": 0.5}),
        "device": ConfigRecord({"device-tier": "low", "partition-id": 0, "num-partitions": 2}),
        "secagg": draw(envelopes()),
    }
    for _ in range(draw(st.integers(0, 3))):
        content = draw(broken(content))
    return RecordDict(content)


def sent_arrays(content: RecordDict) -> list[np.ndarray]:
    """What the client sent, each payload through ``np.load`` (no pickles), which must have read
    every byte: ``np.load`` itself ignores bytes after the data."""
    sent = []
    for array in content["arrays"].values():
        stream = BytesIO(array.data)
        sent.append(np.load(stream, allow_pickle=False))
        assert stream.tell() == len(array.data), "bytes after the array's data were accepted"
    return sent


def check_common(checked: ValidUpdate | Rejection, content: RecordDict) -> None:
    assert isinstance(checked, ValidUpdate | Rejection)
    if isinstance(checked, Rejection):
        assert checked.reason in REJECTION_REASONS and checked.detail
        return
    assert sum(len(a.data) for r in content.values() if isinstance(r, ArrayRecord) for a in r.values()) <= MAX_BYTES
    assert type(checked.num_examples) is int and 1 <= checked.num_examples <= MAX_EXAMPLES
    assert checked.num_examples == content["metrics"]["num-examples"]
    for name, value in checked.metrics.items():
        assert OPTIONAL_METRICS[name].holds(value) and math.isfinite(value)
    for value in checked.device.values():
        assert (isinstance(value, str) and len(value) <= MAX_TEXT_CHARS) or type(value) is int
    assert set(checked.dropped) <= set(DROPPED_FIELDS)
    sent = sent_arrays(content)
    assert len(sent) == len(checked.delta)
    for got, want in zip(checked.delta, sent, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and not got.flags.writeable
        assert np.array_equal(got, want, equal_nan=True)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(replies())
def test_validate_reply_never_raises_and_accepts_only_exactly_the_models_layout(content):
    checked = validate_reply(content, TEMPLATE, MAX_NORM, max_bytes=MAX_BYTES, max_num_examples=MAX_EXAMPLES)
    check_common(checked, content)
    event(f"validate_reply: {checked.reason if isinstance(checked, Rejection) else 'accepted'}")
    if isinstance(checked, ValidUpdate):
        assert len(checked.delta) == len(TEMPLATE) and checked.mask is None
        for got, want in zip(checked.delta, TEMPLATE, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.isfinite(got).all()
        assert checked.norm is not None and checked.norm <= MAX_NORM
        # the norm is summed in float32 slices: squares below ~1e-45 underflow to 0
        assert math.isclose(
            checked.norm,
            math.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in checked.delta)),
            rel_tol=1e-5,
            abs_tol=1e-15,
        )


@FUZZ
@given(replies())
def test_validate_masked_reply_never_raises_and_accepts_only_one_ring_vector_of_the_model(content):
    checked = validate_masked_reply(content, LENGTH, max_bytes=MAX_BYTES, max_num_examples=MAX_EXAMPLES)
    check_common(checked, content)
    event(f"validate_masked_reply: {checked.reason if isinstance(checked, Rejection) else 'accepted'}")
    if isinstance(checked, ValidUpdate):
        (vector,) = checked.delta
        assert vector.dtype == np.uint64 and vector.shape == (LENGTH,) and checked.norm is None
        mask = checked.mask
        assert mask is not None and len(mask.ephemeral_public) == EPHEMERAL_KEY_BYTES
        assert isinstance(mask.signature, bytes) and 0 < len(mask.signature) <= MAX_SIGNATURE_BYTES
        envelope = content["secagg"]
        assert (mask.ephemeral_public, mask.signature, mask.node_key_fingerprint) == (
            envelope["ephemeral-public"],
            envelope["signature"],
            envelope["node-key-fingerprint"],
        )
        assert isinstance(mask.node_key_fingerprint, str)
