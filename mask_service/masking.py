"""Client side of asynchronous secure aggregation: one-time masks and signatures.

The protocol message by message is in docs/secure-aggregation.md; where it hooks into a run,
docs/architecture.md, "Secure aggregation".

A client masks its encoded update with a mask only the mask service can recompute:

1. ``eph`` ← fresh X25519 key pair; ``shared = X25519(eph, service_public)``.
2. ``seed = HKDF-SHA256(shared, salt=None, info=b"fedbuff-mask-v1" || eph_pub || context, 32)``.
3. ``mask = ChaCha20(seed, nonce=0)`` keystream of ``8·n`` bytes read as little-endian uint64
   (the seed is single-use, so a zero nonce is safe).
4. ``masked = example_weight·encode(delta) + mask (mod 2^64)``.
5. ``signature = ECDSA-P384-SHA384(node_key, eph_pub || context || SHA-256(masked))``.

The service recomputes ``mask`` from its static private key and ``eph_pub``
(:func:`service_mask`), and verifies the signature from the digest alone, so neither the
service nor the server ever sees an unmasked update.

The node key is the EC P-384 key SuperNode authentication uses (``ssh-keygen -t ecdsa -b 384``,
OpenSSH format). The service's public key reaches the client through the (untrusted) server,
so the client checks it against a fingerprint pinned in its node config first
(:func:`pinned_service_key`).

Imports stay lean: numpy, cryptography and :mod:`strategies.ring` — no torch, no Flower, no gRPC.
The mask service imports the derivation from here so both sides share one implementation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strategies.ring import RING_DTYPE, WIRE_DTYPE, RingCodec, ring_add, ring_digest, weighted_add

PROTOCOL = b"fedbuff-mask-v1"
SEED_BYTES = 32
X25519_BYTES = 32
DIGEST_BYTES = 32
NODE_CURVE = ec.SECP384R1
SIGNATURE_HASH = hashes.SHA384

# node-config keys (see docs/secure-aggregation.md)
NODE_SIGNING_KEY = "secagg-signing-key"
NODE_SERVICE_FINGERPRINT = "secagg-service-fingerprint"


class ServiceKeyMismatch(ValueError):
    """The mask-service public key the server sent is not the one pinned in the node config."""


@dataclass(frozen=True)
class MaskedUpdate:
    """What a client sends instead of its update.

    ``masked`` is the uint64 ring vector; ``ephemeral_public`` the raw 32-byte X25519 key the
    mask was derived with; ``signature`` the DER ECDSA signature over
    :func:`signed_message`; ``node_key_fingerprint`` identifies the signing key for the
    service's registry; ``clipped`` counts coordinates the codec clipped (a metric).
    """

    masked: np.ndarray
    ephemeral_public: bytes
    signature: bytes
    node_key_fingerprint: str = ""
    example_weight: int = 1
    clipped: int = 0

    @property
    def digest(self) -> bytes:
        """SHA-256 of the masked vector (the server recomputes it; never trust the client's)."""
        return ring_digest(self.masked)


# -- fingerprints and keys ------------------------------------------------------------------


def fingerprint(public_key_bytes: bytes) -> str:
    """SHA-256 of public-key bytes, lowercase hex (64 characters)."""
    return hashlib.sha256(bytes(public_key_bytes)).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """Accept ``sha256:<hex>``, upper case, or colon-separated hex; return bare lowercase hex."""
    text = str(value).strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    text = text.replace(":", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{value!r} is not a SHA-256 hex fingerprint (64 hex digits)")
    return text


def service_key_bytes(key: X25519PublicKey | X25519PrivateKey) -> bytes:
    """Raw 32 bytes of the service's X25519 public key."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes_raw()


def service_key_fingerprint(key: X25519PublicKey | X25519PrivateKey | bytes) -> str:
    """Fingerprint of the mask service's key: SHA-256 of its raw 32 public bytes."""
    raw = key if isinstance(key, (bytes, bytearray)) else service_key_bytes(key)
    return fingerprint(bytes(raw))


def node_key_blob(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """OpenSSH wire blob of a node public key (the base64 field of its ``.pub`` line)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def node_key_fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """SHA-256 (hex) of the OpenSSH blob: the digest ``ssh-keygen -lf key.pub`` shows in base64."""
    return fingerprint(node_key_blob(key))


def load_signing_key(path: str | os.PathLike[str], password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """The node's EC P-384 private key (OpenSSH format as ``ssh-keygen`` writes it, or PEM)."""
    data = Path(path).expanduser().read_bytes()
    key: PrivateKeyTypes
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=password)
        else:
            key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot load the node signing key {path}: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _not_a_node_key(key, str(path))
    _check_node_curve(key, str(path))
    return key


def load_node_public_key(line: str | bytes) -> ec.EllipticCurvePublicKey:
    """A node public key from one OpenSSH ``.pub`` line (``ecdsa-sha2-nistp384 AAAA... comment``)."""
    data = line.encode() if isinstance(line, str) else bytes(line)
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, IndexError, binascii.Error) as err:
        raise ValueError(f"not an OpenSSH public key: {data[:40]!r}...: {err}") from err
    where = data[:40].decode(errors="replace")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _not_a_node_key(key, where)
    _check_node_curve(key, where)
    return key


def _not_a_node_key(key: object, where: str) -> ValueError:
    return ValueError(f"{where}: node keys are ECDSA P-384 (ssh-keygen -t ecdsa -b 384), got {type(key).__name__}")


def _check_node_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, where: str) -> None:
    if not isinstance(key.curve, NODE_CURVE):
        raise ValueError(f"{where}: node keys use curve secp384r1 (ssh-keygen -t ecdsa -b 384), got {key.curve.name}")


def decode_service_key(value: bytes | str) -> bytes:
    """Raw 32-byte service key from raw bytes, base64 or hex text."""
    if isinstance(value, (bytes, bytearray)) and len(value) == X25519_BYTES:
        return bytes(value)
    text = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    text = text.strip()
    for decoder in (lambda t: bytes.fromhex(t), lambda t: base64.b64decode(t, validate=True)):
        try:
            raw = decoder(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == X25519_BYTES:
            return raw
    raise ValueError("the mask-service public key must be 32 raw bytes, or their hex or base64")


def pinned_service_key(public_key: bytes | str, pinned_fingerprint: str) -> X25519PublicKey:
    """The service key the server relayed, after checking it against the node's pin.

    Raises :class:`ServiceKeyMismatch` when it differs: the server could otherwise hand
    out a key whose private half it holds, and unmask every update itself.
    """
    if not pinned_fingerprint:
        raise ServiceKeyMismatch(
            f"secure aggregation is on but node config {NODE_SERVICE_FINGERPRINT!r} is empty: "
            "pin the mask service's fingerprint (python -m mask_service --print-fingerprint)"
        )
    raw = decode_service_key(public_key)
    expected = normalize_fingerprint(pinned_fingerprint)
    actual = fingerprint(raw)
    if not hmac.compare_digest(actual, expected):
        raise ServiceKeyMismatch(
            f"mask-service public key fingerprint {actual} does not match the fingerprint pinned "
            f"in node config {NODE_SERVICE_FINGERPRINT!r} ({expected}); refusing to mask with a key "
            "the server may control"
        )
    return X25519PublicKey.from_public_bytes(raw)


# -- the mask ---------------------------------------------------------------------------------


def derive_seed(shared_secret: bytes, ephemeral_public: bytes, context: bytes) -> bytes:
    """HKDF-SHA256 of the X25519 shared secret, bound to the ephemeral key and the context."""
    if len(ephemeral_public) != X25519_BYTES:
        raise ValueError("ephemeral_public must be 32 bytes")
    info = PROTOCOL + bytes(ephemeral_public) + bytes(context)
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared_secret)


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of ChaCha20 keystream (nonce 0) under the single-use ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError("mask seeds are 32 bytes")
    if length < 0:
        raise ValueError(f"mask length {length} must be >= 0")
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * int(length))) + encryptor.finalize()
    return np.frombuffer(stream, dtype=WIRE_DTYPE).astype(RING_DTYPE)


def client_mask(
    service_public_key: X25519PublicKey, context: bytes, length: int, ephemeral: X25519PrivateKey | None = None
) -> tuple[np.ndarray, bytes]:
    """A fresh mask and the raw ephemeral public key it was derived with."""
    ephemeral = ephemeral or X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    seed = derive_seed(ephemeral.exchange(service_public_key), ephemeral_public, context)
    return expand_mask(seed, length), ephemeral_public


def service_mask(
    service_private_key: X25519PrivateKey, ephemeral_public: bytes, context: bytes, length: int
) -> np.ndarray:
    """The mask a client derived, recomputed by the service from its static private key."""
    peer = X25519PublicKey.from_public_bytes(bytes(ephemeral_public))
    seed = derive_seed(service_private_key.exchange(peer), ephemeral_public, context)
    return expand_mask(seed, length)


# -- signatures -------------------------------------------------------------------------------


def signed_message(ephemeral_public: bytes, context: bytes, masked_digest: bytes) -> bytes:
    """``eph_pub || context || SHA-256(masked)``: unambiguous, both ends are fixed-size."""
    if len(ephemeral_public) != X25519_BYTES or len(masked_digest) != DIGEST_BYTES:
        raise ValueError("ephemeral_public and masked_digest must both be 32 bytes")
    return bytes(ephemeral_public) + bytes(context) + bytes(masked_digest)


def sign_contribution(
    signing_key: ec.EllipticCurvePrivateKey, ephemeral_public: bytes, context: bytes, masked_digest: bytes
) -> bytes:
    """DER ECDSA signature (SHA-384) over :func:`signed_message`."""
    return signing_key.sign(signed_message(ephemeral_public, context, masked_digest), ec.ECDSA(SIGNATURE_HASH()))


def verify_contribution(
    public_key: ec.EllipticCurvePublicKey,
    signature: bytes,
    ephemeral_public: bytes,
    context: bytes,
    masked_digest: bytes,
) -> bool:
    """Whether ``signature`` is the node's over ``eph_pub || context || digest``."""
    try:
        public_key.verify(
            bytes(signature), signed_message(ephemeral_public, context, masked_digest), ec.ECDSA(SIGNATURE_HASH())
        )
    except (InvalidSignature, ValueError):
        return False
    return True


# -- the client's whole step ------------------------------------------------------------------


def secagg_context(run_id: int, length: int, label: str = "") -> bytes:
    """The context both ends bind a mask to: protocol, run and vector length (one per run).

    Every contribution in one unmask request shares the context, so it must not depend on
    the task (version, node); the ephemeral key already makes each mask unique.
    """
    suffix = f"|{label}" if label else ""
    return f"{PROTOCOL.decode()}|run={int(run_id)}|n={int(length)}{suffix}".encode()


def mask_update(
    delta_arrays: Iterable[np.ndarray],
    codec: RingCodec,
    service_public_key: X25519PublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    context: bytes,
    example_weight_int: int = 1,
) -> MaskedUpdate:
    """Encode, scale by the integer example weight, mask and sign one update.

    ``example_weight_int`` is applied before masking (``masked = e·x + m``), so the service
    never needs it; it must be in ``[0, codec.max_example_weight]`` (1 when the server
    applies the whole weight).
    """
    if isinstance(example_weight_int, bool) or not isinstance(example_weight_int, (int, np.integer)):
        raise TypeError(f"example weight must be an integer, got {example_weight_int!r}")
    if not 0 <= example_weight_int <= codec.max_example_weight:
        raise ValueError(
            f"example weight {example_weight_int} outside [0, max_example_weight={codec.max_example_weight}]"
        )
    arrays = list(delta_arrays)
    clipped = codec.clipped_count(arrays)
    encoded = codec.encode(arrays)
    mask, ephemeral_public = client_mask(service_public_key, context, encoded.size)
    if int(example_weight_int) == 1:
        masked = ring_add(encoded, mask)
    else:
        masked = weighted_add(mask, encoded, int(example_weight_int))  # mask is ours to reuse
    signature = sign_contribution(signing_key, ephemeral_public, context, ring_digest(masked))
    return MaskedUpdate(
        masked=masked,
        ephemeral_public=ephemeral_public,
        signature=signature,
        node_key_fingerprint=node_key_fingerprint(signing_key),
        example_weight=int(example_weight_int),
        clipped=clipped,
    )


@dataclass(frozen=True)
class NodeSecAggConfig:
    """The node-config half of secure aggregation: the signing key and the pinned service key."""

    signing_key_path: str
    service_fingerprint: str

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeSecAggConfig:
        """Read ``secagg-signing-key`` and ``secagg-service-fingerprint``; both are required."""
        missing = [k for k in (NODE_SIGNING_KEY, NODE_SERVICE_FINGERPRINT) if not node_config.get(k)]
        if missing:
            raise ValueError(
                f"secure aggregation is on but node config lacks {missing}: start the SuperNode with "
                f"--node-config \"{NODE_SIGNING_KEY}='/path/to/node_key' "
                f"{NODE_SERVICE_FINGERPRINT}='<sha256 hex>'\""
            )
        return cls(
            signing_key_path=str(node_config[NODE_SIGNING_KEY]),
            service_fingerprint=normalize_fingerprint(str(node_config[NODE_SERVICE_FINGERPRINT])),
        )

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        """Load the node's private key (each ClientApp process loads it once per message)."""
        return load_signing_key(self.signing_key_path)

    def service_key(self, relayed: bytes | str) -> X25519PublicKey:
        """Check the key the server relayed against the pin; see :func:`pinned_service_key`."""
        return pinned_service_key(relayed, self.service_fingerprint)
