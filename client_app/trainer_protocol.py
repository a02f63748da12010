"""The ClientApp ↔ warm trainer contract: one request and one response per connection.

A frame is ``MAGIC``, a big-endian u32 header length, a JSON header, then each blob the header
counts as a big-endian u64 length and its bytes. Records travel as Flower's own ``RecordDict``
protobuf, so arrays keep their dtype, shape and bytes exactly, and the context state comes back
whole. Both sides import this module; nothing else knows the layout.

Imports stay lean (stdlib and Flower's serde): the per-message ClientApp imports it.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=E0611

MAGIC = b"FBT1"  # the protocol's version is in the magic: a new layout gets a new one
MAX_HEADER_BYTES = 1 << 20
READY_LINE = "ready"  # what a started trainer writes on stdout, then its pid, once it listens
MAX_BLOB_BYTES = 1 << 32
_HEADER_LENGTH = struct.Struct(">I")
_BLOB_LENGTH = struct.Struct(">Q")

UserConfig = Mapping[str, bool | int | float | str]


class ProtocolError(RuntimeError):
    """A frame that does not follow this module's layout."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection before a whole frame arrived (a trainer that died)."""


REQUEST_KINDS = ("train", "evaluate")  # what a request asks: train the model, or evaluate it


@dataclass(frozen=True)
class TrainRequest:
    """One task for the trainer: the message content, the node's context, and what to do with
    the model (``kind``: train it, or evaluate it on the node's held-out split)."""

    run_id: int
    node_id: int
    run_config: UserConfig
    node_config: UserConfig
    content: RecordDict
    state: RecordDict
    kind: str = "train"


@dataclass(frozen=True)
class TrainResponse:
    """The reply content (``None`` when the task failed, then ``error`` says why) and the
    context state after the task, which the ClientApp hands back to Flower either way."""

    state: RecordDict
    content: RecordDict | None = None
    error: str = ""
    details: dict[str, object] = field(default_factory=dict)


def send_request(sock: socket.socket, request: TrainRequest) -> None:
    """Write ``request`` as one frame."""
    header = {
        "kind": request.kind,
        "run-id": request.run_id,
        "node-id": request.node_id,
        "run-config": dict(request.run_config),
        "node-config": dict(request.node_config),
    }
    _send_frame(sock, header, [_records_bytes(request.content), _records_bytes(request.state)])


def read_request(sock: socket.socket) -> TrainRequest:
    """Read one request frame."""
    header, blobs = _read_frame(sock)
    if header.get("kind") not in REQUEST_KINDS or len(blobs) != 2:
        raise ProtocolError(f"expected a train or evaluate request with 2 records, got {header.get('kind')!r}")
    try:
        return TrainRequest(
            int(header["run-id"]),
            int(header["node-id"]),
            dict(header["run-config"]),
            dict(header["node-config"]),
            _records(blobs[0]),
            _records(blobs[1]),
            str(header["kind"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"malformed train request header: {err}") from err


def send_response(sock: socket.socket, response: TrainResponse) -> None:
    """Write ``response`` as one frame."""
    blobs = [_records_bytes(response.state)]
    if response.content is not None:
        blobs.append(_records_bytes(response.content))
    header = {"kind": "result", "error": response.error, "details": response.details}
    _send_frame(sock, header, blobs)


def read_response(sock: socket.socket) -> TrainResponse:
    """Read one response frame."""
    header, blobs = _read_frame(sock)
    if header.get("kind") != "result" or len(blobs) not in (1, 2):
        raise ProtocolError(f"expected a result with 1 or 2 records, got {header.get('kind')!r}")
    content = _records(blobs[1]) if len(blobs) == 2 else None
    error = str(header.get("error", ""))
    if content is None and not error:
        raise ProtocolError("a result with neither content nor error")
    details = header.get("details")
    return TrainResponse(_records(blobs[0]), content, error, details if isinstance(details, dict) else {})


def _records_bytes(records: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(records).SerializeToString())


def _records(blob: bytes) -> RecordDict:
    try:
        return recorddict_from_proto(ProtoRecordDict.FromString(blob))
    except Exception as err:  # protobuf's DecodeError, or a record Flower refuses
        raise ProtocolError(f"undecodable records: {err}") from err


def _send_frame(sock: socket.socket, header: Mapping[str, object], blobs: list[bytes]) -> None:
    encoded = json.dumps({**header, "blobs": len(blobs)}).encode()
    parts = [MAGIC, _HEADER_LENGTH.pack(len(encoded)), encoded]
    for blob in blobs:
        parts += [_BLOB_LENGTH.pack(len(blob)), blob]
    sock.sendall(b"".join(parts))


def _read_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    """One frame: its header (decoded JSON: any JSON values, checked by the caller) and its blobs."""
    if (magic := _read_exact(sock, len(MAGIC))) != MAGIC:
        raise ProtocolError(f"not a trainer frame (magic {magic!r}, expected {MAGIC!r})")
    (length,) = _HEADER_LENGTH.unpack(_read_exact(sock, _HEADER_LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(sock, length))
        count = int(header.pop("blobs"))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ProtocolError(f"malformed header: {err}") from err
    blobs = []
    for _ in range(count):
        (size,) = _BLOB_LENGTH.unpack(_read_exact(sock, _BLOB_LENGTH.size))
        if size > MAX_BLOB_BYTES:
            raise ProtocolError(f"record of {size} bytes exceeds {MAX_BLOB_BYTES}")
        blobs.append(_read_exact(sock, size))
    return header, blobs


def _read_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, read = memoryview(buffer), 0
    while read < size:
        got = sock.recv_into(view[read:])
        if got == 0:
            raise ConnectionClosed(f"connection closed after {read} of {size} bytes")
        read += got
    return bytes(buffer)
