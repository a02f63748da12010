"""Client-side masking (mask_service/masking.py): mask derivation, signatures, pinned service key."""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from mask_service.masking import (
    NODE_SERVICE_FINGERPRINT,
    NODE_SIGNING_KEY,
    NodeSecAggConfig,
    ServiceKeyMismatch,
    client_mask,
    expand_mask,
    fingerprint,
    load_node_public_key,
    load_signing_key,
    mask_sum,
    mask_update,
    node_key_fingerprint,
    normalize_fingerprint,
    pinned_service_key,
    secagg_context,
    service_key_fingerprint,
    service_mask,
    verify_contribution,
)
from strategies.chunked import CHUNK
from strategies.ring import RingCodec, ring_sub, weighted_add, zeros
from tests.test_secagg_support import ROOT, make_node, random_update, ssh_keygen_node

SHAPES = [(4, 3), (3,)]


@pytest.fixture
def service_key():
    return X25519PrivateKey.generate()


def test_client_and_service_derive_the_same_mask(service_key):
    context = secagg_context(7, 40)
    ephemeral = X25519PrivateKey.generate()
    mask, ephemeral_public = client_mask(service_key.public_key(), context, 40, ephemeral)
    assert mask.dtype == np.uint64 and mask.shape == (40,)
    assert np.array_equal(mask, service_mask(service_key, ephemeral_public, context, 40))
    # bound to the context and the ephemeral key; a fresh key gives a fresh mask
    assert not np.array_equal(mask, service_mask(service_key, ephemeral_public, context + b"x", 40))
    other, other_public = client_mask(service_key.public_key(), context, 40)
    assert other_public != ephemeral_public and not np.array_equal(mask, other)
    # another service key cannot recompute it
    assert not np.array_equal(mask, service_mask(X25519PrivateKey.generate(), ephemeral_public, context, 40))


def test_expand_mask_is_a_chacha20_keystream_prefix():
    seed = bytes(range(32))
    long, short = expand_mask(seed, 100), expand_mask(seed, 10)
    assert np.array_equal(long[:10], short)
    assert expand_mask(seed, 0).size == 0
    bits = np.unpackbits(long.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.05  # looks uniform, not zeros
    with pytest.raises(ValueError):
        expand_mask(b"short", 4)


def test_mask_update_masks_encodes_and_signs(service_key, tmp_path):
    node = make_node(tmp_path, "node0")
    codec = RingCodec()
    context = secagg_context(1, 15)
    delta = random_update(np.random.default_rng(0), SHAPES)
    update = mask_update(delta, codec, service_key.public_key(), node.key, context)
    assert update.masked.dtype == np.uint64 and update.masked.shape == (15,)
    assert len(update.ephemeral_public) == 32 and update.node_key_fingerprint == node.fingerprint
    mask = service_mask(service_key, update.ephemeral_public, context, 15)
    assert np.array_equal(ring_sub(update.masked, mask), codec.encode(delta))
    assert not np.array_equal(update.masked, codec.encode(delta))
    public = node.key.public_key()
    assert verify_contribution(public, update.signature, update.ephemeral_public, context)
    assert not verify_contribution(public, update.signature, update.ephemeral_public, context + b"!")
    assert not verify_contribution(public, update.signature, bytes(32), context)
    stranger = make_node(tmp_path, "stranger").key.public_key()
    assert not verify_contribution(stranger, update.signature, update.ephemeral_public, context)
    assert not verify_contribution(public, b"garbage", update.ephemeral_public, context)


def test_example_weight_is_applied_before_the_mask(service_key, tmp_path):
    node = make_node(tmp_path, "node0")
    codec = RingCodec(max_example_weight=8, max_weight=1024, weight_scale=256)
    context = secagg_context(1, 15)
    delta = random_update(np.random.default_rng(1), SHAPES)
    update = mask_update(delta, codec, service_key.public_key(), node.key, context, example_weight_int=5)
    expected = weighted_add(zeros(15), codec.encode(delta), 5)
    mask = service_mask(service_key, update.ephemeral_public, context, 15)
    assert np.array_equal(ring_sub(update.masked, mask), expected)
    assert update.example_weight == 5
    with pytest.raises(ValueError, match="max_example_weight"):
        mask_update(delta, codec, service_key.public_key(), node.key, context, example_weight_int=9)
    with pytest.raises(TypeError):
        mask_update(delta, codec, service_key.public_key(), node.key, context, example_weight_int=1.0)


def test_pinned_service_key_accepts_the_pin_and_refuses_a_swap(service_key):
    raw = service_key.public_key().public_bytes_raw()
    pin = service_key_fingerprint(service_key)
    assert pin == fingerprint(raw) and len(pin) == 64
    for relayed in (raw, base64.b64encode(raw).decode(), raw.hex()):
        for spelled in (pin, pin.upper(), f"sha256:{pin}"):
            assert pinned_service_key(relayed, spelled).public_bytes_raw() == raw
    swapped = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ServiceKeyMismatch, match="does not match the fingerprint pinned"):
        pinned_service_key(swapped, pin)
    with pytest.raises(ServiceKeyMismatch, match="empty"):
        pinned_service_key(raw, "")
    with pytest.raises(ValueError, match="SHA-256"):
        pinned_service_key(raw, "not-a-fingerprint")
    with pytest.raises(ValueError, match="32 raw bytes"):
        pinned_service_key(b"\x01" * 31, pin)


def test_node_secagg_config_from_node_config(tmp_path, service_key):
    node = make_node(tmp_path, "node0")
    pin = service_key_fingerprint(service_key)
    config = NodeSecAggConfig.from_node_config(
        {"partition-id": 0, NODE_SIGNING_KEY: str(node.private_path), NODE_SERVICE_FINGERPRINT: f"sha256:{pin}"}
    )
    assert config.service_fingerprint == pin
    assert node_key_fingerprint(config.signing_key()) == node.fingerprint
    relayed = service_key.public_key().public_bytes_raw()
    assert config.service_key(relayed).public_bytes_raw() == relayed
    with pytest.raises(ServiceKeyMismatch):
        config.service_key(X25519PrivateKey.generate().public_key().public_bytes_raw())
    with pytest.raises(ValueError, match=NODE_SERVICE_FINGERPRINT):
        NodeSecAggConfig.from_node_config({NODE_SIGNING_KEY: str(node.private_path)})


def test_keys_made_by_ssh_keygen_load_and_fingerprint_like_ssh_keygen(tmp_path):
    node = ssh_keygen_node(tmp_path, "edge0")
    if node is None:
        pytest.skip("ssh-keygen not installed")
    key = load_signing_key(node.private_path)
    public = load_node_public_key(node.public_path.read_text())
    assert node_key_fingerprint(key) == node_key_fingerprint(public)
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(node.public_path)], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    assert shown.startswith("SHA256:")
    digest = base64.b64decode(shown[len("SHA256:") :] + "=" * (-len(shown) % 4))
    assert digest.hex() == node_key_fingerprint(public)


def test_only_p384_node_keys_are_accepted(tmp_path):
    node = make_node(tmp_path, "p256", ec.SECP256R1())
    with pytest.raises(ValueError, match="secp384r1"):
        load_signing_key(node.private_path)
    with pytest.raises(ValueError, match="secp384r1"):
        load_node_public_key(node.public_path.read_bytes())
    with pytest.raises(ValueError, match="OpenSSH public key"):
        load_node_public_key("ecdsa-sha2-nistp384 not-base64")
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(ValueError, match="cannot load"):
        load_signing_key(tmp_path / "junk")


def test_normalize_fingerprint():
    pin = "ab" * 32
    assert normalize_fingerprint(f" SHA256:{pin.upper()} ") == pin
    assert normalize_fingerprint(":".join(pin[i : i + 2] for i in range(0, 64, 2))) == pin
    with pytest.raises(ValueError):
        normalize_fingerprint("ab" * 31)


def test_rooms_masking_and_ring_import_no_torch_flower_or_grpc():
    """ring.py is pure numpy; the client masking adds only cryptography (docs/architecture.md,
    "Import rules")."""
    code = (
        "import sys; import strategies.ring;"
        "bad = [m for m in ('cryptography', 'flwr', 'torch', 'grpc') if m in sys.modules];"
        "assert not bad, bad;"
        "import mask_service.masking;"
        "bad = [m for m in ('flwr', 'torch', 'grpc') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_block_by_block_keystream_and_mask_sum_equal_the_whole_keystream(service_key):
    length = 2 * CHUNK + 5  # crosses block boundaries
    seed = bytes(range(32))
    whole = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor().update(bytes(8 * length))
    assert expand_mask(seed, length).tobytes() == whole
    context = secagg_context(3, length)
    keys = [client_mask(service_key.public_key(), context, 1)[1] for _ in range(3)]
    weights = [1, 0, 70000]
    expected = zeros(length)
    for key, q in zip(keys, weights):
        weighted_add(expected, service_mask(service_key, key, context, length), q)
    assert np.array_equal(mask_sum(service_key, zip(keys, weights), context, length), expected)
    assert not mask_sum(service_key, [(keys[0], 0)], context, length).any()
    with pytest.raises(ValueError):  # a low-order point is no usable ephemeral key
        mask_sum(service_key, [(bytes(32), 1)], context, length)
