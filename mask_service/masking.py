"""Client side of asynchronous secure aggregation: one-time masks and signatures.

The protocol message by message is in docs/secure-aggregation.md; where it hooks into a run,
docs/architecture.md, "Secure aggregation".

A client masks its encoded update with a mask only the mask service can recompute:

1. ``eph`` ← fresh X25519 key pair; ``shared = X25519(eph, service_public)``.
2. ``seed = HKDF-SHA256(shared, salt=None, info=b"fedbuff-mask-v2" || eph_pub || context, 32)``.
3. ``mask = ChaCha20(seed, nonce=0)`` keystream of ``8·n`` bytes read as little-endian uint64
   (the seed is single-use, so a zero nonce is safe).
4. ``masked = example_weight·encode(delta) + mask (mod 2^64)``, one pass: the keystream is
   written into the output vector and the encoded update added to it slice by slice.
5. ``signature = ECDSA-P384-SHA384(node_key, eph_pub || context)``: the node vouches for the
   mask, which is what the service's checks need; the vector itself travels over the node's
   authenticated TLS connection (why no digest of it is signed: docs/secure-aggregation.md, §3).

The service recomputes ``mask`` from its static private key and ``eph_pub``
(:func:`mask_sum`), so neither the service nor the server ever sees an unmasked update.

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
import functools
import hashlib
import hmac
import os
import sys
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

from strategies.chunked import CHUNK, slices
from strategies.ring import RING_DTYPE, RingCodec, zeros

PROTOCOL = b"fedbuff-mask-v2"
SEED_BYTES = 32
X25519_BYTES = 32
NODE_CURVE = ec.SECP384R1
SIGNATURE_HASH = hashes.SHA384
HEX_DIGITS = frozenset("0123456789abcdef")

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
    if len(text) != 64 or not set(text) <= HEX_DIGITS:
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


ZERO_BLOCK = memoryview(bytes(8 * CHUNK))  # what the keystream is XORed into: it reads out as itself


class Keystream:
    """ChaCha20 keystream (nonce 0) under a single-use 32-byte seed, read as little-endian
    uint64 words into the caller's buffers, one cache-sized block at a time.

    The cipher writes straight into the destination: no keystream copy, no full-size zero
    buffer, so a mask never has to exist whole unless the caller wants it whole.
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError("mask seeds are 32 bytes")
        self._encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()

    def read_into(self, words: np.ndarray) -> None:
        """Fill the contiguous uint64 vector ``words`` with the next ``8·len(words)`` bytes."""
        if words.dtype != RING_DTYPE or not words.flags.c_contiguous:
            raise TypeError("keystreams are written into contiguous uint64 vectors")
        out = words.data.cast("B")
        for start in range(0, len(out), len(ZERO_BLOCK)):
            chunk = out[start : start + len(ZERO_BLOCK)]
            self._encryptor.update_into(ZERO_BLOCK[: len(chunk)], chunk)
        if sys.byteorder != "little":
            words.byteswap(inplace=True)


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of ChaCha20 keystream (nonce 0) under the single-use ``seed``."""
    if length < 0:
        raise ValueError(f"mask length {length} must be >= 0")
    mask = np.empty(int(length), RING_DTYPE)
    Keystream(seed).read_into(mask)
    return mask


def client_mask(
    service_public_key: X25519PublicKey, context: bytes, length: int, ephemeral: X25519PrivateKey | None = None
) -> tuple[np.ndarray, bytes]:
    """A fresh mask and the raw ephemeral public key it was derived with."""
    ephemeral = ephemeral or X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    seed = derive_seed(ephemeral.exchange(service_public_key), ephemeral_public, context)
    return expand_mask(seed, length), ephemeral_public


def service_seed(service_private_key: X25519PrivateKey, ephemeral_public: bytes, context: bytes) -> bytes:
    """The seed a client derived, recomputed by the service from its static private key."""
    peer = X25519PublicKey.from_public_bytes(bytes(ephemeral_public))
    return derive_seed(service_private_key.exchange(peer), ephemeral_public, context)


def service_mask(
    service_private_key: X25519PrivateKey, ephemeral_public: bytes, context: bytes, length: int
) -> np.ndarray:
    """The mask a client derived, recomputed by the service from its static private key."""
    return expand_mask(service_seed(service_private_key, ephemeral_public, context), length)


def mask_sum(
    service_private_key: X25519PrivateKey, weighted: Iterable[tuple[bytes, int]], context: bytes, length: int
) -> np.ndarray:
    """``Σ q_i·mask_i (mod 2^64)`` over ``(ephemeral_public, q)`` pairs, in one pass over the sum.

    Block by block, each mask's next keystream block is generated into one cache-sized
    scratch block, scaled and added to that block of the sum: memory is the sum and a block.
    Raises ValueError for an unusable ephemeral key (a low-order point).
    """
    streams = [(Keystream(service_seed(service_private_key, key, context)), int(q)) for key, q in weighted if q]
    total = zeros(length)
    scratch = np.empty(min(CHUNK, int(length)), RING_DTYPE)
    with np.errstate(over="ignore"):
        for part in slices(int(length)):
            block, words = total[part], scratch[: part.stop - part.start]
            for stream, q in streams:
                stream.read_into(words)
                if q != 1:
                    np.multiply(words, np.uint64(q), out=words)
                np.add(block, words, out=block)
    return total


# -- signatures -------------------------------------------------------------------------------


def signed_message(ephemeral_public: bytes, context: bytes) -> bytes:
    """``eph_pub || context``: unambiguous, the key is fixed-size."""
    if len(ephemeral_public) != X25519_BYTES:
        raise ValueError("ephemeral_public must be 32 bytes")
    return bytes(ephemeral_public) + bytes(context)


def sign_contribution(signing_key: ec.EllipticCurvePrivateKey, ephemeral_public: bytes, context: bytes) -> bytes:
    """DER ECDSA signature (SHA-384) over :func:`signed_message`."""
    return signing_key.sign(signed_message(ephemeral_public, context), ec.ECDSA(SIGNATURE_HASH()))


def verify_contribution(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, ephemeral_public: bytes, context: bytes
) -> bool:
    """Whether ``signature`` is the node's over ``eph_pub || context``."""
    try:
        public_key.verify(bytes(signature), signed_message(ephemeral_public, context), ec.ECDSA(SIGNATURE_HASH()))
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
    key_fingerprint: str | None = None,
) -> MaskedUpdate:
    """Encode, scale by the integer example weight, mask and sign one update.

    ``example_weight_int`` is applied before masking (``masked = e·x + m``), so the service
    never needs it; it must be in ``[0, codec.max_example_weight]`` (1 when the server
    applies the whole weight). ``key_fingerprint`` is the signing key's
    :func:`node_key_fingerprint` when the caller already has it.
    """
    if isinstance(example_weight_int, bool) or not isinstance(example_weight_int, (int, np.integer)):
        raise TypeError(f"example weight must be an integer, got {example_weight_int!r}")
    if not 0 <= example_weight_int <= codec.max_example_weight:
        raise ValueError(
            f"example weight {example_weight_int} outside [0, max_example_weight={codec.max_example_weight}]"
        )
    arrays = list(delta_arrays)
    masked, ephemeral_public = client_mask(service_public_key, context, sum(int(np.size(a)) for a in arrays))
    clipped = codec.encode_add(arrays, masked, int(example_weight_int))  # masked = mask + e·x, in place
    return MaskedUpdate(
        masked=masked,
        ephemeral_public=ephemeral_public,
        signature=sign_contribution(signing_key, ephemeral_public, context),
        node_key_fingerprint=key_fingerprint or node_key_fingerprint(signing_key),
        example_weight=int(example_weight_int),
        clipped=clipped,
    )


@functools.lru_cache(maxsize=4)
def _node_identity(path: str, mtime_ns: int, size: int, inode: int) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The key file at ``path`` as it was at that stat (a changed file is another entry)."""
    key = load_signing_key(path)
    return key, node_key_fingerprint(key)


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
        """The node's private key (see :meth:`signing_identity`)."""
        return self.signing_identity()[0]

    def signing_identity(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        """The node's private key and its fingerprint, loaded once per process while the file
        stays the same (a warm trainer signs every update with it; parsing it costs more than
        the signature)."""
        path = Path(self.signing_key_path).expanduser()
        try:
            found = path.stat()
        except OSError as err:
            raise ValueError(f"cannot load the node signing key {path}: {err}") from err
        return _node_identity(str(path), found.st_mtime_ns, found.st_size, found.st_ino)

    def service_key(self, relayed: bytes | str) -> X25519PublicKey:
        """Check the key the server relayed against the pin; see :func:`pinned_service_key`."""
        return pinned_service_key(relayed, self.service_fingerprint)
