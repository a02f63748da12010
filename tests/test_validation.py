"""Reply validation: each malformed reply is refused with its reason."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from client_app.faults import CYCLE, InjectedFault, inject
from server_app.validation import Rejection, ValidUpdate, update_byte_limit, validate_reply

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
    [("nan", "non-finite"), ("inf", "non-finite"), ("shape", "shape"), ("dtype", "dtype"),
     ("extra-array", "array-count"), ("huge-norm", "norm"), ("oversize", "oversize")],
)
def test_every_test_fault_of_the_client_is_refused_for_its_reason(fault, reason):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    broken = inject(fault, good(), context)
    checked = validate_reply(reply(broken), TEMPLATE, max_update_norm=10.0,
                             max_bytes=update_byte_limit(0, TEMPLATE))
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


def test_arrays_whose_bytes_do_not_hold_their_header_shape_are_refused():
    content = reply(good())
    array = content["arrays"]["0"]
    array.data = array.data[:-4]  # one float32 short of the shape its .npy header promises
    checked = validate_reply(content, TEMPLATE, max_update_norm=10.0)
    assert isinstance(checked, Rejection) and checked.reason == "dtype"
