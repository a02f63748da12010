"""SecureFedBuff: the masked buffer steps like plaintext FedBuff, and drops what it cannot unmask."""

from __future__ import annotations

import numpy as np
import pytest

from mask_service.wire import MaskServiceError
from strategies import ClientUpdate, FedBuff, Outcome, StrategyOptions
from strategies.base import FlushError, MaskEnvelope
from strategies.secure_fedbuff import SecureFedBuff
from tests.test_mask_service import CODEC, CONTEXT, SHAPES, Federation
from tests.test_secagg_support import contribution_of

OPTIONS = StrategyOptions(buffer_size=3)


def unmask_with(federation):
    def unmask(contributions, length):
        try:
            return federation.service.unmask(CONTEXT, length, contributions)
        except MaskServiceError as err:
            raise FlushError("unmask-refused", str(err)) from err

    return unmask


def masked(update, client, staleness):
    return ClientUpdate(
        client,
        [update.masked],
        10,
        staleness,
        MaskEnvelope(update.ephemeral_public, update.signature, update.node_key_fingerprint),
    )


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path, nodes=4, k_min=2)
    yield fed
    fed.service.close()


def initial():
    return [np.zeros(s, np.float32) for s in SHAPES]


def test_masked_fedbuff_matches_plaintext_fedbuff_within_quantisation(federation):
    plain = FedBuff(initial(), OPTIONS)
    secure = SecureFedBuff(initial(), OPTIONS, CODEC, unmask_with(federation))
    for _round in range(2):
        for client, ((delta, update), tau) in enumerate(zip(federation.updates(federation.nodes[:3]), (0, 1, 3))):
            plain.receive(ClientUpdate(client, delta, 10, tau))
            receipt = secure.receive(masked(update, client, tau))
            assert receipt.outcome is Outcome.ACCEPTED
    assert secure.version == plain.version == 2
    # weights are quantised to 1/weight_scale and values to 2^-scale_bits
    for got, want in zip(secure.model, plain.model):
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_a_buffer_the_service_refuses_is_dropped_and_the_model_does_not_move(federation):
    secure = SecureFedBuff(initial(), StrategyOptions(buffer_size=2), CODEC, unmask_with(federation))
    (_, first), (_, second) = federation.updates(federation.nodes[:2])
    secure.receive(masked(first, 0, 0))
    # someone replays the first mask to the service behind the server's back: it is burnt
    ((_, other),) = federation.updates(federation.nodes[3:4])
    federation.service.unmask(CONTEXT, first.masked.size, [contribution_of(first, 1), contribution_of(other, 1)])
    receipt = secure.receive(masked(second, 1, 0))
    assert receipt.flush_error == "unmask-refused" and not receipt.stepped
    assert secure.version == 0
    assert all(not a.any() for a in secure.model)


def test_a_replayed_mask_in_one_buffer_is_refused_before_it_is_added(federation):
    secure = SecureFedBuff(initial(), StrategyOptions(buffer_size=3), CODEC, unmask_with(federation))
    ((_, update),) = federation.updates(federation.nodes[:1])
    secure.receive(masked(update, 0, 0))
    with pytest.raises(ValueError, match="already in the buffer"):
        secure.receive(masked(update, 1, 0))
    assert secure.buffer_fill == 1


def test_the_secure_buffer_only_accepts_masked_ring_vectors(federation):
    """Structural: with secure aggregation on, a plaintext float delta has no way in."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from server_app.validation import Rejection, validate_masked_reply
    from strategies.ring import MaskedBuffer

    ((delta, update),) = federation.updates(federation.nodes[:1])
    buffer = MaskedBuffer(CODEC, SHAPES)
    flat = np.concatenate([d.ravel() for d in delta])
    with pytest.raises(TypeError, match="uint64"):
        buffer.add(
            0,
            flat,
            weight=1,
            ephemeral_public=update.ephemeral_public,
            signature=update.signature,
            node_key_fingerprint=update.node_key_fingerprint,
        )
    secure = SecureFedBuff(initial(), OPTIONS, CODEC, unmask_with(federation))
    with pytest.raises(ValueError, match="masked vector"):
        secure.receive(ClientUpdate(0, delta, 10, 0))  # no envelope: a plaintext update
    reply = RecordDict(
        {
            "arrays": ArrayRecord([flat]),
            "metrics": MetricRecord({"num-examples": 10}),
            "secagg": ConfigRecord(
                {
                    "ephemeral-public": update.ephemeral_public,
                    "signature": update.signature,
                    "node-key-fingerprint": update.node_key_fingerprint,
                }
            ),
        }
    )
    checked = validate_masked_reply(reply, flat.size)
    assert isinstance(checked, Rejection) and checked.reason == "dtype"
    assert secure.buffer_fill == 0 and len(buffer) == 0


def test_masked_fedcompass_unmasks_a_group_and_the_general_buffer_as_one_set(federation):
    from strategies.fedcompass import FedCompass, SecureFedCompass

    options = StrategyOptions(strategy="fedcompass", compass_min_steps=2, compass_max_steps=10)
    calls = []

    def counting(contributions, length):
        calls.append(len(contributions))
        return unmask_with(federation)(contributions, length)

    plain, secure = FedCompass(initial(), options), SecureFedCompass(initial(), options, CODEC, counting)
    pairs = federation.updates(federation.nodes[:3])
    both = (plain, secure)

    def back(client, now, started, pair, staleness):
        for strategy in both:
            strategy.scheduler.returned(client, now, started, 10, trained=True)
        plain.receive(ClientUpdate(client, pair[0], 10, staleness))
        return secure.receive(masked(pair[1], client, staleness))

    for strategy in both:
        for node in (0, 1, 2):
            strategy.scheduler.plan(node, 0.0)
    back(0, 10.0, 0.0, pairs[0], 0)  # sets the probe group's timer: 15 s
    back(1, 12.0, 0.0, pairs[1], 0)
    assert [s.stepped for s in plain.tick(15.0)] == [s.stepped for s in secure.tick(15.0)] == [True]
    assert not back(2, 20.0, 0.0, pairs[2], 1).stepped  # late: the general buffer
    for strategy in both:  # node 0 alone in its next group: flushed with node 2's late update
        strategy.scheduler.plan(0, 15.0)
    receipt = back(0, 25.0, 15.0, federation.updates(federation.nodes[:1])[0], 0)
    assert receipt.stepped and calls == [2, 2]  # never a set of one: K_min = 2 holds
    assert secure.version == plain.version == 2
    for got, want in zip(secure.model, plain.model):
        np.testing.assert_allclose(got, want, atol=2e-3)
