"""Reply validation: each malformed reply is refused with its reason."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server_app.validation import Rejection, ValidUpdate, validate_reply

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
