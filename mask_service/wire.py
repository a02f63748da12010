"""The mask service's wire format: gRPC generic handlers carrying small framed byte messages.

No .proto and no protoc step. Each request and response body is one frame::

    frame   = magic "FBM1" | header_len (uint32, big-endian) | header | payload
    header  = UTF-8 JSON object (binary fields base64, fingerprints hex)
    payload = raw bytes (ring vectors: little-endian uint64), possibly empty

Methods (service ``fedbuff.mask.v2.MaskService``):

``PublicKey``
    request header ``{}``; response header ``{"protocol", "public_key" (base64 of the raw
    32-byte X25519 key), "fingerprint" (SHA-256 hex of those bytes), "k_min", "max_weight",
    "max_length", "max_contributions"}``, no payload.
``Unmask``
    request header ``{"context": base64, "length": n, "contributions": [{"ephemeral_public":
    base64 (32 bytes), "signature": base64 (DER ECDSA over ephemeral_public || context),
    "node_key_fingerprint": hex, "weight": int}, ...]}``, no payload; response header
    ``{"length": n, "count": k}`` and payload ``Σ weight_i·mask_i (mod 2^64)`` as ``8·n``
    little-endian bytes.
``Check``
    request header ``{"context": base64, "length": n (optional), "contribution": {one
    contribution as in Unmask}}``, no payload; response header ``{"ok": true}``, no payload.
    Refuses with the same reasons as ``Unmask`` when that one contribution would be
    refused on its own (registration, signature, already used, bounds); records nothing.

Refusals are gRPC errors whose details read ``"<reason>: <explanation>"`` with reason one of
:data:`REASONS`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from strategies.ring import Contribution

SERVICE_NAME = "fedbuff.mask.v2.MaskService"
UNMASK_METHOD = f"/{SERVICE_NAME}/Unmask"
PUBLIC_KEY_METHOD = f"/{SERVICE_NAME}/PublicKey"
CHECK_METHOD = f"/{SERVICE_NAME}/Check"
PROTOCOL = "fedbuff-mask-v2"
MAGIC = b"FBM1"
_HEADER = struct.Struct(">4sI")
MAX_HEADER_BYTES = 64 << 20

# reason -> gRPC status code of a refusal
REASONS: Mapping[str, grpc.StatusCode] = {
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    "duplicate-mask": grpc.StatusCode.INVALID_ARGUMENT,
    "too-long": grpc.StatusCode.OUT_OF_RANGE,
    "too-many-contributions": grpc.StatusCode.OUT_OF_RANGE,
    "weight-out-of-range": grpc.StatusCode.OUT_OF_RANGE,
    "too-few": grpc.StatusCode.FAILED_PRECONDITION,
    "unknown-node": grpc.StatusCode.PERMISSION_DENIED,
    "bad-signature": grpc.StatusCode.UNAUTHENTICATED,
    "mask-reused": grpc.StatusCode.ALREADY_EXISTS,
}


class MaskServiceError(RuntimeError):
    """A refusal (or failure) of the mask service, with a machine-readable ``reason``."""

    def __init__(self, reason: str, message: str, code: grpc.StatusCode | None = None) -> None:
        self.reason = reason
        self.message = message
        self.code = code if code is not None else REASONS.get(reason, grpc.StatusCode.UNKNOWN)
        super().__init__(f"{reason}: {message}")

    @property
    def details(self) -> str:
        """The gRPC status details: ``"<reason>: <message>"``."""
        return f"{self.reason}: {self.message}"

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> MaskServiceError:
        """Rebuild the service's refusal from a gRPC error on the client side."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = (err.details() if hasattr(err, "details") else None) or str(err)
        reason, sep, message = details.partition(": ")
        if not sep or reason not in REASONS:
            reason = "unavailable" if code == grpc.StatusCode.UNAVAILABLE else "rpc-error"
            message = details
        return cls(reason, message, code)


@dataclass(frozen=True)
class ServiceInfo:
    """What ``PublicKey`` answers: the key to relay to clients and the service's limits."""

    public_key: bytes
    fingerprint: str
    k_min: int
    max_weight: int
    max_length: int
    max_contributions: int
    protocol: str = PROTOCOL


def encode_frame(header: Mapping[str, Any], payload: bytes | memoryview = b"") -> bytes:
    """``magic | len | JSON header | payload``: the payload is copied once, into the frame."""
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return b"".join((_HEADER.pack(MAGIC, len(head)), head, payload))


def decode_frame(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """Split a frame into its JSON header (a dict) and payload (a view of ``data``, not a copy);
    ValueError when malformed."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise ValueError("frame shorter than its fixed header")
    magic, size = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad frame magic {magic!r} (expected {MAGIC!r})")
    if size > MAX_HEADER_BYTES or _HEADER.size + size > len(data):
        raise ValueError("frame header length exceeds the frame")
    try:
        header = json.loads(data[_HEADER.size : _HEADER.size + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"frame header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise ValueError("frame header must be a JSON object")
    return header, memoryview(data)[_HEADER.size + size :]


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what} is not valid base64") from err


def contribution_to_json(item: Contribution | Sequence[Any]) -> dict[str, Any]:
    """One contribution as the Unmask header lists it (accepts a tuple in field order)."""
    if not isinstance(item, Contribution):
        ephemeral_public, signature, node_key_fingerprint, weight = item
        item = Contribution(bytes(ephemeral_public), bytes(signature), str(node_key_fingerprint), int(weight))
    return {
        "ephemeral_public": b64(item.ephemeral_public),
        "signature": b64(item.signature),
        "node_key_fingerprint": item.node_key_fingerprint,
        "weight": int(item.weight),
    }


def contribution_from_json(obj: object, max_signature_bytes: int = 512) -> Contribution:
    """Parse and shape-check one contribution.

    ValueError when malformed; :class:`MaskServiceError` ``weight-out-of-range`` for a
    negative weight (the upper bound is the service's to check).
    """
    if not isinstance(obj, dict):
        raise ValueError("each contribution must be a JSON object")
    weight = obj.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise ValueError("contribution weight must be a JSON integer")
    ephemeral_public = unb64(obj.get("ephemeral_public"), "ephemeral_public")
    signature = unb64(obj.get("signature"), "signature")
    if not 0 < len(signature) <= max_signature_bytes:
        raise ValueError("signature length out of bounds")
    fingerprint = obj.get("node_key_fingerprint")
    if not isinstance(fingerprint, str):
        raise ValueError("node_key_fingerprint must be a string")
    if len(ephemeral_public) != 32:
        raise ValueError("ephemeral_public must be 32 bytes")
    if weight < 0:
        raise MaskServiceError("weight-out-of-range", f"weight {weight} is negative")
    return Contribution(ephemeral_public, signature, fingerprint, weight)
