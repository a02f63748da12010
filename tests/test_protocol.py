"""The task and reply records (fedbuff/protocol.py): one spelling of every key, both ways."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedbuff import protocol
from tests.conftest import ROOT


def test_a_task_carries_its_model_and_version_and_the_extra_config():
    model = [np.arange(3, dtype=np.float32)]
    content = protocol.task_content(model, 7, {protocol.SECAGG_SERVICE_KEY: b"key"})
    config = content.config_records[protocol.CONFIG]
    assert protocol.task_version(config) == 7 and config[protocol.SECAGG_SERVICE_KEY] == b"key"
    np.testing.assert_array_equal(content.array_records[protocol.ARRAYS].to_numpy_ndarrays()[0], model[0])
    assert not protocol.wants_weights(config)


def test_flowers_own_strategies_send_a_round_and_may_ask_for_weights():
    assert protocol.task_version({protocol.SERVER_ROUND: 3}) == 3
    assert protocol.task_version({}) == 0
    assert protocol.wants_weights({protocol.REPLY: protocol.REPLY_WEIGHTS})
    with pytest.raises(TypeError, match="must be a number"):
        protocol.task_version({protocol.SERVER_VERSION: [1, 2]})


def test_a_reply_holds_the_update_its_metrics_its_device_and_the_envelope_when_masked():
    reply = protocol.reply_content(
        [np.zeros(2, np.float32)], {protocol.NUM_EXAMPLES: 5}, {protocol.DEVICE_TIER: "high"}
    )
    assert set(reply) == {protocol.ARRAYS, protocol.METRICS, protocol.DEVICE}
    assert reply.metric_records[protocol.METRICS][protocol.NUM_EXAMPLES] == 5


# keys that mean nothing but the wire format (dp-noise-multiplier is a run-config key too):
# written anywhere but protocol.py, they would drift
WIRE_ONLY = (
    "arrays",
    "server-version",
    "server-round",
    "secagg-service-key",
    "train-seconds",
    "task-seconds",
    "train-loss",
    "ephemeral-public",
    "node-key-fingerprint",
    "clipped-coordinates",
)


def test_no_package_or_benchmark_spells_a_wire_key_itself():
    pattern = re.compile("[\"'](" + "|".join(map(re.escape, WIRE_ONLY)) + ")[\"']")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("server_app", "client_app", "mask_service", "fedbuff", "fedbuff_ops", "strategies", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "protocol.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
