"""The mask service's Check: a contribution it would refuse is rejected on arrival, the buffer is kept."""

from __future__ import annotations

from collections import Counter

import grpc
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from mask_service.client import MaskServiceClient
from mask_service.masking import secagg_context, service_mask, sign_contribution
from mask_service.service import build_server
from mask_service.wire import CHECK_METHOD, MaskServiceError, encode_frame
from server_app.metrics import INVALID_REASONS
from server_app.secagg import masked_validator
from server_app.validation import REJECTION_REASONS, Rejection
from strategies import ClientUpdate, FedBuff, Outcome, StrategyOptions
from strategies.ring import Contribution, weighted_add, zeros
from strategies.secure_fedbuff import SecureFedBuff
from tests.test_mask_service import CODEC, CONTEXT, LENGTH, Federation
from tests.test_secagg_support import contribution_of, make_node
from tests.test_secure_fedbuff import initial, unmask_with


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path, nodes=4, k_min=2)
    yield fed
    fed.service.close()


@pytest.fixture
def served(federation):
    """The federation's service behind its gRPC shell, and a client to it."""
    server, port = build_server(federation.service, "127.0.0.1", 0)
    server.start()
    client = MaskServiceClient(f"127.0.0.1:{port}", timeout=30)
    client.wait_ready(10)
    yield client
    client.close()
    server.stop(0)


def refused(reason: str):
    return pytest.raises(MaskServiceError, match=f"^{reason}: ")


def signed_by(c: Contribution, key) -> Contribution:
    """``c`` with its mask signed by ``key`` instead (a forged signature when it is not c's node's)."""
    return Contribution(
        c.ephemeral_public, sign_contribution(key, c.ephemeral_public, CONTEXT), c.node_key_fingerprint, c.weight
    )


# -- the service --------------------------------------------------------------------------------


def test_check_accepts_a_good_contribution_and_burns_nothing(federation):
    service = federation.service
    good = federation.contributions(federation.nodes[:3])
    for c in good:
        service.check(CONTEXT, c, LENGTH)
        service.check(CONTEXT, c)  # length is optional
        service.check(CONTEXT, Contribution(c.ephemeral_public, c.signature, c.node_key_fingerprint.upper(), 0))
    assert service.used_count == 0
    assert service.unmask(CONTEXT, LENGTH, good).shape == (LENGTH,)  # nothing was burnt by the checks
    assert service.used_count == 3
    for c in good:
        with refused("mask-reused"):
            service.check(CONTEXT, c, LENGTH)


def test_check_refuses_what_unmask_would_refuse_with_the_same_reasons(federation, tmp_path):
    service = federation.service
    a, b = federation.contributions(federation.nodes[:2])
    with refused("bad-signature"):  # another registered node's key signed node 0's mask
        service.check(CONTEXT, signed_by(a, federation.nodes[1].key), LENGTH)
    with refused("bad-signature"):  # another registered node claims it
        service.check(
            CONTEXT,
            Contribution(a.ephemeral_public, a.signature, federation.nodes[3].fingerprint, 1),
            LENGTH,
        )
    with refused("bad-signature"):  # signed for another run
        service.check(secagg_context(43, LENGTH), a, LENGTH)
    outsider = make_node(tmp_path / "outsiders", "outsider")
    (stranger,) = federation.contributions([outsider])
    with refused("unknown-node"):
        service.check(CONTEXT, stranger, LENGTH)
    with refused("weight-out-of-range"):
        service.check(
            CONTEXT,
            Contribution(a.ephemeral_public, a.signature, a.node_key_fingerprint, CODEC.max_weight + 1),
            LENGTH,
        )
    with refused("too-long"):
        service.check(CONTEXT, a, federation.max_length + 1)
    with refused("malformed"):
        service.check(CONTEXT, a, 0)
    with refused("malformed"):
        service.check(b"x" * 2000, a, LENGTH)
    with refused("malformed"):
        service.check(CONTEXT, Contribution(a.ephemeral_public, a.signature, "not-hex", 1))
    # a registered node signs a low-order ephemeral key: valid signature, unusable key
    node = federation.nodes[0]
    low_order = Contribution(
        bytes(32),
        sign_contribution(node.key, bytes(32), CONTEXT),
        node.fingerprint,
        1,
    )
    with refused("malformed"):
        service.check(CONTEXT, low_order, LENGTH)
    service.unmask(CONTEXT, LENGTH, [a, b])  # none of the refused checks burnt a mask
    with refused("mask-reused"):
        service.check(CONTEXT, b, LENGTH)


def test_check_over_grpc(federation, served):
    good = federation.contributions(federation.nodes[:2])
    for c in good:
        assert served.check(CONTEXT, c, LENGTH) is None
    as_tuple = tuple(getattr(good[0], f) for f in ("ephemeral_public", "signature", "node_key_fingerprint", "weight"))
    served.check(CONTEXT, as_tuple)
    assert federation.service.used_count == 0
    np.testing.assert_array_equal(served.unmask(CONTEXT, good, LENGTH), served_sum(federation, good))
    cases = {
        "mask-reused": (good[0], grpc.StatusCode.ALREADY_EXISTS),
        "bad-signature": (
            signed_by(federation.contributions(federation.nodes[:1])[0], federation.nodes[1].key),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    }
    for reason, (item, code) in cases.items():
        with pytest.raises(MaskServiceError) as err:
            served.check(CONTEXT, item, LENGTH)
        assert err.value.reason == reason and err.value.code == code
    raw = served._channel.unary_unary(CHECK_METHOD)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"not a frame", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("malformed: ")
    with pytest.raises(grpc.RpcError) as err:
        raw(encode_frame({"context": "", "contribution": None}), timeout=10)
    assert err.value.details().startswith("malformed: ")


def served_sum(federation, contributions):
    """Σ weight·mask recomputed from the service's key (what Unmask answers)."""
    total = zeros(LENGTH)
    for c in contributions:
        weighted_add(total, service_mask(federation.service._key, c.ephemeral_public, CONTEXT, LENGTH), c.weight)
    return total


# -- the server ---------------------------------------------------------------------------------


def reply(update, num_examples: int = 10) -> RecordDict:
    """A ClientApp-shaped secure-aggregation reply (client_app/task.py)."""
    return RecordDict(
        {
            "arrays": ArrayRecord([update.masked]),
            "metrics": MetricRecord({"num-examples": num_examples}),
            "secagg": ConfigRecord(
                {
                    "ephemeral-public": update.ephemeral_public,
                    "signature": update.signature,
                    "node-key-fingerprint": update.node_key_fingerprint,
                }
            ),
        }
    )


def test_new_reasons_are_bounded_and_exported():
    for reason in ("mask-refused", "mask-service-unavailable"):
        assert reason in REJECTION_REASONS and reason in INVALID_REASONS


def test_refused_contributions_are_rejected_on_arrival_and_the_buffer_still_flushes(
    federation, served, tmp_path, caplog
):
    validate = masked_validator(served, CONTEXT, LENGTH, timeout=10)
    options = StrategyOptions(buffer_size=3)
    secure = SecureFedBuff(initial(), options, CODEC, unmask_with(federation))
    plain = FedBuff(initial(), options)
    rejected: Counter[str] = Counter()

    def arrive(client: int, content: RecordDict, delta=None) -> None:
        """What AsyncLoop._handle does: validate, count a rejection, or hand to the strategy."""
        checked = validate(content)
        if isinstance(checked, Rejection):
            rejected[checked.reason] += 1
            return
        receipt = secure.receive(ClientUpdate(client, checked.delta, checked.num_examples, 0, checked.mask))
        assert receipt.outcome is Outcome.ACCEPTED
        plain.receive(ClientUpdate(client, delta, 10, 0))

    (d0, u0), (d1, u1), (d2, u2), (_, old) = federation.updates(federation.nodes)
    # an update unmasked in an earlier buffer (the service burnt its mask), then replayed
    ((_, partner),) = federation.updates(federation.nodes[1:2])
    federation.service.unmask(CONTEXT, LENGTH, [contribution_of(old, 1), contribution_of(partner, 1)])
    # node 1's mask under node 1's name, signed with node 0's key (a forged signature)
    forged = reply(u1)
    forged["secagg"]["signature"] = sign_contribution(federation.nodes[0].key, u1.ephemeral_public, CONTEXT)
    # an unregistered node
    outsider = make_node(tmp_path / "outsiders", "outsider")
    ((_, stranger),) = federation.updates([outsider])
    # node 2's signature over another mask than the one it sent
    misbound = reply(u2)
    misbound["secagg"]["signature"] = sign_contribution(federation.nodes[2].key, bytes([9]) * 32, CONTEXT)

    caplog.set_level("WARNING", logger="server_app.secagg")
    arrive(0, reply(u0), d0)
    arrive(3, reply(old))
    arrive(1, forged)
    arrive(4, reply(stranger))
    arrive(2, misbound)
    assert rejected == Counter({"mask-refused": 4}) and secure.buffer_fill == 1
    assert "mask-reused" in caplog.text and "bad-signature" in caplog.text and "unknown-node" in caplog.text
    arrive(1, reply(u1), d1)
    arrive(2, reply(u2), d2)
    assert secure.version == plain.version == 1  # the buffer flushed with the good contributions
    for got, want in zip(secure.model, plain.model):
        np.testing.assert_allclose(got, want, atol=2e-3)
    assert any(np.abs(a).max() > 0 for a in secure.model)


def test_a_malformed_reply_is_rejected_before_the_service_is_asked(federation, served):
    validate = masked_validator(served, CONTEXT, LENGTH)
    ((_, update),) = federation.updates(federation.nodes[:1])
    content = reply(update)
    del content["secagg"]
    assert validate(content).reason == "mask-envelope"


def test_an_unreachable_service_rejects_the_update_and_never_raises(federation):
    server, port = build_server(federation.service, "127.0.0.1", 0)
    server.start()
    client = MaskServiceClient(f"127.0.0.1:{port}", timeout=30)
    client.wait_ready(10)
    server.stop(0).wait()
    try:
        validate = masked_validator(client, CONTEXT, LENGTH, timeout=2)
        ((_, update),) = federation.updates(federation.nodes[:1])
        checked = validate(reply(update))
        assert isinstance(checked, Rejection) and checked.reason == "mask-service-unavailable"
        client.close()  # even a closed channel is a rejection, not an exception
        checked = validate(reply(update))
        assert isinstance(checked, Rejection) and checked.reason == "mask-service-unavailable"
    finally:
        client.close()
    assert federation.service.used_count == 0
