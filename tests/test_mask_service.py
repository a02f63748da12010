"""The mask service in-process (mask_service/): unmasking, refusals, durable state, gRPC shell."""

from __future__ import annotations

import os
import stat
import time

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from mask_service.client import MaskServiceClient
from mask_service.masking import mask_update, pinned_service_key, secagg_context, service_mask, sign_contribution
from mask_service.service import (
    KEY_FILE,
    USED_DB,
    MaskService,
    NodeKeyRegistry,
    StateError,
    build_server,
)
from mask_service.wire import UNMASK_METHOD, MaskServiceError, encode_frame
from strategies.ring import Contribution, MaskedBuffer, RingCodec, ring_sub, weighted_add, zeros
from tests.test_secagg_support import contribution_of, make_node, random_update, register

SHAPES = [(5, 4), (4,)]
LENGTH = 24
CODEC = RingCodec(scale_bits=24, clip=8.0, max_weight=4096, max_summands=16, weight_scale=1024)
CONTEXT = secagg_context(42, LENGTH)


class Federation:
    """A mask service with registered nodes, and the server-side view of their updates."""

    def __init__(self, tmp_path, nodes: int = 5, k_min: int = 3, max_length: int = 1000) -> None:
        self.tmp_path = tmp_path
        self.registry = tmp_path / "registered"
        self.nodes = [make_node(tmp_path / "nodes", f"node{i}") for i in range(nodes)]
        for node in self.nodes:
            register(self.registry, node)
        self.k_min, self.max_length = k_min, max_length
        self.service = self.start()
        self.rng = np.random.default_rng(3)

    def start(self) -> MaskService:
        return MaskService(
            self.tmp_path / "state",
            self.registry,
            k_min=self.k_min,
            max_weight=CODEC.max_weight,
            max_length=self.max_length,
        )

    def restart(self) -> None:
        self.service.close()
        self.service = self.start()

    @property
    def public_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.service.public_key)

    def updates(self, nodes, context: bytes = CONTEXT):
        """One masked update per node, with its plaintext delta."""
        out = []
        for node in nodes:
            delta = random_update(self.rng, SHAPES)
            out.append((delta, mask_update(delta, CODEC, self.public_key, node.key, context)))
        return out

    def contributions(self, nodes, weights=None, context: bytes = CONTEXT) -> list[Contribution]:
        weights = weights or [1024] * len(nodes)
        return [contribution_of(update, w) for (_, update), w in zip(self.updates(nodes, context), weights)]


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    yield fed
    fed.service.close()


def refused(reason: str):
    return pytest.raises(MaskServiceError, match=f"^{reason}: ")


def test_unmask_returns_the_weighted_mask_sum_and_the_buffer_decodes(federation):
    weights = [CODEC.quantize_weight((1 + tau) ** -0.5) for tau in (0, 1, 3, 8)]
    updates = federation.updates(federation.nodes[:4])
    buffer = MaskedBuffer(CODEC, SHAPES)
    expected = [np.zeros(s) for s in SHAPES]
    for client, ((delta, update), q) in enumerate(zip(updates, weights)):
        buffer.add(
            client,
            update.masked,
            weight=q,
            ephemeral_public=update.ephemeral_public,
            signature=update.signature,
            node_key_fingerprint=update.node_key_fingerprint,
        )
        for e, d in zip(expected, delta):
            e += q / CODEC.weight_scale * d
    mask_sum = federation.service.unmask(CONTEXT, LENGTH, buffer.contributions)
    assert mask_sum.dtype == np.uint64 and mask_sum.shape == (LENGTH,)
    flushed = buffer.flush(mask_sum)
    assert flushed.overflow == 0 and flushed.count == 4
    assert flushed.total_weight == pytest.approx(sum(weights) / 1024)
    tolerance = sum(weights) / 1024 * 2.0**-25 + 1e-9
    for got, want in zip(flushed.total, expected):
        assert got.shape == want.shape and np.max(np.abs(got - want)) <= tolerance
    assert federation.service.used_count == 4


def test_fewer_than_k_min_distinct_weighted_nodes_is_refused(federation):
    service = federation.service
    a, b, c = federation.nodes[:3]
    with refused("too-few"):
        service.unmask(CONTEXT, LENGTH, federation.contributions([a, b]))
    with refused("too-few"):  # a zero weight does not count: it would let one weight isolate a mask
        service.unmask(CONTEXT, LENGTH, federation.contributions([a, b, c], weights=[1024, 1024, 0]))
    with refused("too-few"):  # three masks from one node are one node
        service.unmask(CONTEXT, LENGTH, federation.contributions([a, a, a]))
    with refused("too-few"):
        service.unmask(CONTEXT, LENGTH, [])
    assert service.used_count == 0
    assert service.unmask(CONTEXT, LENGTH, federation.contributions([a, b, c, a], [5, 6, 7, 0])).shape == (LENGTH,)


def test_a_used_mask_is_refused_even_after_a_restart(federation):
    first = federation.contributions(federation.nodes[:3])
    federation.service.unmask(CONTEXT, LENGTH, first)
    fresh = federation.contributions(federation.nodes[3:5])
    with refused("mask-reused"):
        federation.service.unmask(CONTEXT, LENGTH, [first[0], *fresh])
    with refused("mask-reused"):  # even with other weights, which would isolate a mask by difference
        federation.service.unmask(
            CONTEXT,
            LENGTH,
            [
                Contribution(
                    *[getattr(c, f) for f in ("ephemeral_public", "signature", "node_key_fingerprint")],
                    2048,
                )
                for c in first
            ],
        )
    fingerprint = federation.service.fingerprint
    federation.restart()
    assert federation.service.fingerprint == fingerprint  # same key after a restart
    with refused("mask-reused"):
        federation.service.unmask(CONTEXT, LENGTH, first)
    # the refused requests recorded nothing: the fresh masks are still usable
    federation.service.unmask(CONTEXT, LENGTH, [*fresh, *federation.contributions(federation.nodes[:1])])


def test_bad_signatures_are_refused(federation):
    good = federation.contributions(federation.nodes[:3])
    # node 1's key signs node 0's mask under node 0's name: a forged signature
    forged_key = Contribution(
        good[0].ephemeral_public,
        sign_contribution(federation.nodes[1].key, good[0].ephemeral_public, CONTEXT),
        good[0].node_key_fingerprint,
        1024,
    )
    with refused("bad-signature"):
        federation.service.unmask(CONTEXT, LENGTH, [forged_key, *good[1:]])
    # node 3 claims node 0's contribution: its key did not sign it
    claimed = Contribution(good[0].ephemeral_public, good[0].signature, federation.nodes[3].fingerprint, 1024)
    with refused("bad-signature"):
        federation.service.unmask(CONTEXT, LENGTH, [claimed, *good[1:]])
    with refused("bad-signature"):  # signed for another context (another run)
        federation.service.unmask(secagg_context(43, LENGTH), LENGTH, good)
    # a server-made contribution, signed by a registered key over a different ephemeral key
    node = federation.nodes[0]
    forged = Contribution(
        bytes(32),
        sign_contribution(node.key, good[0].ephemeral_public, CONTEXT),
        node.fingerprint,
        1024,
    )
    with refused("bad-signature"):
        federation.service.unmask(CONTEXT, LENGTH, [forged, *good[1:]])
    federation.service.unmask(CONTEXT, LENGTH, good)  # nothing was burnt by the refusals


def test_unregistered_node_key_is_refused(federation, tmp_path):
    outsider = make_node(tmp_path / "outsiders", "outsider")
    contributions = federation.contributions([*federation.nodes[:2], outsider])
    with refused("unknown-node"):
        federation.service.unmask(CONTEXT, LENGTH, contributions)
    with refused("malformed"):
        bad = Contribution(contributions[0].ephemeral_public, contributions[0].signature, "not-hex", 1)
        federation.service.unmask(CONTEXT, LENGTH, [bad, *contributions[1:]])


def test_weights_duplicates_and_lengths_out_of_bounds_are_refused(federation):
    nodes = federation.nodes[:3]
    with refused("weight-out-of-range"):
        federation.service.unmask(CONTEXT, LENGTH, federation.contributions(nodes, [1, 1, CODEC.max_weight + 1]))
    good = federation.contributions(nodes)
    with refused("duplicate-mask"):
        federation.service.unmask(CONTEXT, LENGTH, [*good, good[0]])
    with refused("too-long"):
        federation.service.unmask(CONTEXT, federation.max_length + 1, good)
    with refused("malformed"):
        federation.service.unmask(CONTEXT, 0, good)
    with refused("malformed"):
        federation.service.unmask(b"x" * 2000, LENGTH, good)
    assert federation.service.used_count == 0


def test_state_dir_is_private_and_a_lost_log_refuses_to_start(federation):
    state = federation.tmp_path / "state"
    assert stat.S_IMODE((state / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "mask_service_key.fingerprint").read_text().strip() == federation.service.fingerprint
    federation.service.close()
    os.chmod(state / KEY_FILE, 0o644)
    with pytest.raises(StateError, match="chmod 600"):
        federation.start()
    os.chmod(state / KEY_FILE, 0o600)
    (state / USED_DB).unlink()
    with pytest.raises(StateError, match="replayed"):
        federation.start()
    (state / KEY_FILE).unlink()  # a new key (nodes must re-pin) starts over
    federation.service = federation.start()
    assert (state / USED_DB).exists()


def test_registry_reads_a_key_list_and_reloads_changes(tmp_path):
    nodes = [make_node(tmp_path / "nodes", f"n{i}") for i in range(3)]
    listing = tmp_path / "keys.csv"
    lines = [n.public_path.read_text().strip() for n in nodes]
    listing.write_text(f"# registered nodes\n{lines[0]},{lines[1]}\n\n")
    registry = NodeKeyRegistry(listing)
    assert len(registry) == 2 and registry.lookup(nodes[1].fingerprint) is not None
    assert registry.lookup(nodes[2].fingerprint) is None and registry.lookup("zz") is None
    listing.write_text(f"{lines[0]}\n{lines[1]}\n{lines[2]}\n")
    os.utime(listing, ns=(1, 1))  # a different stamp even within the clock's resolution
    registry.refresh()
    assert registry.lookup(nodes[2].fingerprint) is not None
    listing.write_text("ecdsa-sha2-nistp384 garbage\n")
    os.utime(listing, ns=(2, 2))
    registry.refresh()  # a broken edit keeps the previous keys
    assert len(registry) == 3
    with pytest.raises(StateError):
        NodeKeyRegistry(listing)
    with pytest.raises(StateError, match="does not exist"):
        NodeKeyRegistry(tmp_path / "missing")


def test_grpc_shell_in_process(federation):
    server, port = build_server(federation.service, "127.0.0.1", 0)
    server.start()
    try:
        with MaskServiceClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_ready(10)
            info = client.info()
            assert info.public_key == federation.service.public_key and info.k_min == 3
            key = pinned_service_key(client.public_key(), federation.service.fingerprint)
            assert key.public_bytes_raw() == federation.service.public_key
            contributions = federation.contributions(federation.nodes[:3])
            expected = zeros(LENGTH)
            for c in contributions:
                weighted_add(
                    expected, service_mask(federation.service._key, c.ephemeral_public, CONTEXT, LENGTH), c.weight
                )
            as_tuples = [(c.ephemeral_public, c.signature, c.node_key_fingerprint, c.weight) for c in contributions]
            assert np.array_equal(client.unmask(CONTEXT, as_tuples, LENGTH), expected)
            cases = {
                "mask-reused": (contributions, grpc.StatusCode.ALREADY_EXISTS),
                "too-few": (federation.contributions(federation.nodes[:2]), grpc.StatusCode.FAILED_PRECONDITION),
            }
            for reason, (items, code) in cases.items():
                with pytest.raises(MaskServiceError) as err:
                    client.unmask(CONTEXT, items, LENGTH)
                assert err.value.reason == reason and err.value.code == code
            # a negative weight never reaches the service logic
            negative = encode_frame(
                {
                    "context": "",
                    "length": 4,
                    "contributions": [
                        {
                            "ephemeral_public": "A" * 43 + "=",
                            "signature": "AA==",
                            "node_key_fingerprint": "ab" * 32,
                            "weight": -1,
                        }
                    ],
                }
            )
            raw = client._channel.unary_unary(UNMASK_METHOD)
            with pytest.raises(grpc.RpcError) as err:
                raw(negative, timeout=10)
            assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert err.value.details().startswith("weight-out-of-range: ")
            with pytest.raises(grpc.RpcError) as err:
                raw(b"not a frame", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("malformed: ")
    finally:
        server.stop(0)


def test_large_vectors_pass_the_grpc_message_limits(tmp_path):
    """8 MB answers exceed gRPC's 4 MB default; both ends raise their limits."""
    length = 1_000_000
    fed = Federation(tmp_path, nodes=3, k_min=3, max_length=length)
    server, port = build_server(fed.service, "127.0.0.1", 0)
    server.start()
    try:
        context = secagg_context(1, length)
        rng = np.random.default_rng(0)
        contributions, expected, total = [], np.zeros(length), zeros(length)
        for node in fed.nodes:
            delta = [rng.normal(0, 0.1, size=length).astype(np.float32)]
            expected += delta[0]
            masked = mask_update(delta, CODEC, fed.public_key, node.key, context)
            weighted_add(total, masked.masked, 1)
            contributions.append(contribution_of(masked, 1))
        with MaskServiceClient(f"127.0.0.1:{port}") as client:
            mask_sum = client.unmask(context, contributions, length)
        decoded = CODEC.decode(ring_sub(total, mask_sum), [(length,)])[0]
        assert np.max(np.abs(decoded - expected)) <= 3 * 2.0**-25 + 1e-9
    finally:
        server.stop(0)
        fed.service.close()


def test_a_checked_signature_is_not_verified_again_at_unmask_unless_the_registry_changed(federation, monkeypatch):
    import mask_service.service as service_module

    verified = []
    real = service_module.verify_contribution
    monkeypatch.setattr(service_module, "verify_contribution", lambda *args: verified.append(args[2]) or real(*args))
    service = federation.service
    good = federation.contributions(federation.nodes[:4])
    for c in good:
        service.check(CONTEXT, c, LENGTH)
    assert len(verified) == 4
    service.unmask(CONTEXT, LENGTH, good[:3])
    assert len(verified) == 4  # all three were verified by their checks
    # a registry edit: what was verified against the old keys is verified again
    register(federation.registry, make_node(federation.tmp_path / "nodes", "late"))
    fresh = federation.contributions(federation.nodes[4:5] + federation.nodes[:1])
    service.unmask(CONTEXT, LENGTH, [good[3], *fresh])
    assert verified[4:] == [c.ephemeral_public for c in (good[3], *fresh)]


def test_check_looks_at_the_registry_files_at_most_once_a_second_and_unmask_always(federation, monkeypatch):
    import mask_service.service as service_module

    service = federation.service
    good = federation.contributions(federation.nodes[:2])
    (federation.registry / federation.nodes[0].public_path.name).unlink()  # node 0 is unregistered...
    clock = [time.monotonic() + 1000.0]
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    service.registry.refresh()
    register(federation.registry, federation.nodes[0])  # ...and registered again
    service.check(CONTEXT, good[1], LENGTH)
    with refused("unknown-node"):  # not looked at yet
        service.check(CONTEXT, good[0], LENGTH)
    clock[0] += service_module.REGISTRY_RECHECK_SECONDS
    service.check(CONTEXT, good[0], LENGTH)
