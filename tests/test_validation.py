"""Reply validation: each malformed reply is refused with its reason."""

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from client_app.faults import CYCLE, InjectedFault, inject
from server_app.validation import Rejection, ValidUpdate, num_examples_limit, update_byte_limit, validate_reply

TEMPLATE = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def reply(arrays, metrics=None, device=True):
    content = {}
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    content["metrics"] = MetricRecord(metrics if metrics is not None else {"num-examples": 10})
    if device:
        content["device"] = ConfigRecord({"device-tier": "low"})
    return RecordDict(content)


def good():
    return [np.ones((3, 2), np.float32), np.ones(2, np.float32)]


def test_a_well_formed_reply_passes():
    checked = validate_reply(reply(good()), TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, ValidUpdate)
    assert checked.num_examples == 10 and checked.device["device-tier"] == "low"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (reply(None), "missing-field"),
        (reply(good(), metrics={"train-loss": 1.0}), "missing-field"),
        (reply(good()[:1]), "array-count"),
        (reply([np.ones((2, 3), np.float32), np.ones(2, np.float32)]), "shape"),
        (reply([np.ones((3, 2), np.float64), np.ones(2, np.float32)]), "dtype"),
        (reply([np.full((3, 2), np.nan, np.float32), np.ones(2, np.float32)]), "non-finite"),
        (reply([np.full((3, 2), np.inf, np.float32), np.ones(2, np.float32)]), "non-finite"),
        (reply([np.full((3, 2), 100, np.float32), np.ones(2, np.float32)]), "norm"),
        (reply(good(), metrics={"num-examples": 0}), "num-examples"),
        (reply(good(), metrics={"num-examples": 2.5}), "num-examples"),
    ],
)
def test_malformed_replies_are_rejected_with_a_reason(content, reason):
    checked = validate_reply(content, TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, Rejection)
    assert checked.reason == reason and checked.detail


def test_norm_bound_zero_disables_the_norm_check():
    big = [np.full((3, 2), 1e6, np.float32), np.ones(2, np.float32)]
    assert isinstance(validate_reply(reply(big), TEMPLATE, max_update_norm=0.0), ValidUpdate)


def test_a_reply_over_the_byte_limit_is_refused_before_it_is_deserialised():
    padded = [*good(), np.zeros(1000, np.float32)]
    checked = validate_reply(reply(padded), TEMPLATE, max_update_norm=10.0, max_bytes=2000)
    assert isinstance(checked, Rejection) and checked.reason == "oversize"
    assert "max-update-bytes" in checked.detail
    assert isinstance(validate_reply(reply(good()), TEMPLATE, 10.0, max_bytes=2000), ValidUpdate)


def test_the_automatic_byte_limit_fits_a_masked_vector_and_little_more():
    model = [np.zeros(100_000, np.float32)]
    limit = update_byte_limit(0, model)
    assert 8 * 100_000 < limit < 4 * 400_000  # the uint64 ring vector fits; four model copies do not
    assert update_byte_limit(1234, model) == 1234


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("nan", "non-finite"),
        ("inf", "non-finite"),
        ("shape", "shape"),
        ("dtype", "dtype"),
        ("extra-array", "array-count"),
        ("huge-norm", "norm"),
        ("oversize", "oversize"),
    ],
)
def test_every_test_fault_of_the_client_is_refused_for_its_reason(fault, reason):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    broken = inject(fault, good(), context)
    checked = validate_reply(reply(broken), TEMPLATE, max_update_norm=10.0, max_bytes=update_byte_limit(0, TEMPLATE))
    assert isinstance(checked, Rejection) and checked.reason == reason


def test_the_cycle_fault_walks_through_every_kind_from_the_partition_id():
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    reasons = []
    for _ in CYCLE:
        try:
            broken = inject("cycle", good(), context)
        except InjectedFault:
            reasons.append("raised")
            continue
        reasons.append(validate_reply(reply(broken), TEMPLATE, 10.0, max_bytes=update_byte_limit(0, TEMPLATE)).reason)
    assert reasons[0] == "shape"  # CYCLE[2]
    assert sorted(set(reasons)) == sorted({"non-finite", "shape", "dtype", "array-count", "norm", "oversize", "raised"})


@pytest.mark.parametrize(("bad", "reason"), [(np.nan, "non-finite"), (np.inf, "non-finite"), (3e38, "norm")])
def test_a_single_bad_value_is_refused_for_its_reason(bad, reason):
    delta = good()
    delta[1][1] = bad  # in the last array, after a clean one
    checked = validate_reply(reply(delta), TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, Rejection) and checked.reason == reason


def test_a_huge_finite_update_has_a_finite_norm():
    big = [np.full((3, 2), 1e30, np.float32), np.ones(2, np.float32)]
    checked = validate_reply(reply(big), TEMPLATE, max_update_norm=0.0)
    assert isinstance(checked, ValidUpdate)
    assert checked.norm == pytest.approx(float(np.float32(1e30)) * 6**0.5)


def test_a_valid_update_reads_the_arrays_it_was_sent_without_copying_them():
    sent = [np.arange(6, dtype=np.float32).reshape(3, 2), np.asfortranarray(np.ones(2, np.float32))]
    checked = validate_reply(reply(sent), TEMPLATE, max_update_norm=0.0)
    assert isinstance(checked, ValidUpdate)
    for got, want in zip(checked.delta, sent):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and not got.flags.writeable  # a view of the reply's bytes


@pytest.mark.parametrize(("cut", "extra"), [(4, b""), (0, b"\0" * 4), (0, b"x"), (0, b"hidden payload")])
def test_arrays_whose_bytes_are_not_exactly_their_header_shape_are_refused(cut, extra):
    content = reply(good())
    array = content["arrays"]["0"]
    # one float32 short of the shape its .npy header promises, or bytes after its data
    array.data = array.data[: len(array.data) - cut] + extra
    checked = validate_reply(content, TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, Rejection) and checked.reason == "encoding"
    assert ("after" if extra else "missing") in checked.detail


def test_an_array_of_another_serialisation_is_refused_as_encoding():
    content = reply(good())
    content["arrays"]["1"].stype = "torch.Tensor"
    checked = validate_reply(content, TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, Rejection) and checked.reason == "encoding"


# -- what a reply reports besides its update ------------------------------------------------


@pytest.mark.parametrize("count", [10**15, 2**62, 1001])
def test_num_examples_above_the_bound_is_refused(count):
    checked = validate_reply(reply(good(), metrics={"num-examples": count}), TEMPLATE, 10.0, max_num_examples=1000)
    assert isinstance(checked, Rejection) and checked.reason == "num-examples" and "1000" in checked.detail
    assert isinstance(
        validate_reply(reply(good(), metrics={"num-examples": 1000}), TEMPLATE, 10.0, max_num_examples=1000),
        ValidUpdate,
    )


def test_the_num_examples_bound_is_the_training_split_when_the_server_holds_it():
    assert num_examples_limit(100_000, train_rows=1437) == 1437
    assert num_examples_limit(500, train_rows=1437) == 500
    assert num_examples_limit(100_000) == 100_000


@pytest.mark.parametrize(
    ("metrics", "dropped"),
    [
        ({"train-seconds": float("nan")}, ("train-seconds",)),
        ({"train-loss": float("inf")}, ("train-loss",)),
        ({"train-loss": -1.0}, ("train-loss",)),
        ({"dp-epsilon": float("nan")}, ("dp-epsilon",)),
        ({"dp-epsilon": -3.0}, ("dp-epsilon",)),
        ({"task-seconds": [1.0, 2.0]}, ("task-seconds",)),
        ({"made-up": 1.0}, ("other",)),
    ],
)
def test_an_invalid_optional_metric_is_dropped_and_named_and_the_update_kept(metrics, dropped):
    checked = validate_reply(
        reply(good(), metrics={"num-examples": 10, "train-seconds": 0.5, **metrics}), TEMPLATE, 10.0
    )
    assert isinstance(checked, ValidUpdate)
    assert checked.dropped == dropped
    assert set(checked.metrics) == {"train-seconds"} - set(dropped)
    assert all(math.isfinite(v) and v >= 0 for v in checked.metrics.values())


@pytest.mark.parametrize(
    "device",
    [
        MetricRecord({"device-tier": 1.0}),  # the right name, the wrong record type
        ArrayRecord([np.zeros(2)]),
        ConfigRecord({"device-tier": b"high"}),
        ConfigRecord({"device-kind": "x" * 1000}),
        ConfigRecord({"partition-id": 3, "num-partitions": 3}),
        ConfigRecord({"partition-id": "0", "num-partitions": 3}),
        ConfigRecord({"partition-id": 0}),
    ],
)
def test_a_device_record_of_the_wrong_type_or_values_is_dropped_and_counted(device):
    content = reply(good(), device=False)
    content["device"] = device
    checked = validate_reply(content, TEMPLATE, 10.0)
    assert isinstance(checked, ValidUpdate) and checked.dropped == ("device",)
    assert "partition-id" not in checked.device
    assert all(isinstance(v, str) and len(v) <= 64 for v in checked.device.values())


def test_an_honest_device_record_is_kept_whole():
    content = reply(good(), device=False)
    content["device"] = ConfigRecord(
        {"device-tier": "low", "device-kind": "cpu", "partition-id": 2, "num-partitions": 3}
    )
    checked = validate_reply(content, TEMPLATE, 10.0)
    assert checked.dropped == () and checked.device == {
        "device-tier": "low",
        "device-kind": "cpu",
        "partition-id": 2,
        "num-partitions": 3,
    }
