"""The mask service: recomputes one-time masks for a buffer, never sees an update (docs/secure-aggregation.md).

It holds a static X25519 key pair (created on first start in ``--state-dir``, private key
mode 0600), a registry of node public keys (OpenSSH ``.pub`` files), and a durable log of
every mask it has ever unmasked (SQLite, synchronous commits). For ``Unmask(context,
length, contributions)`` it checks, in order, and refuses the whole request on the first
failure (recording nothing):

1. shape: context ≤ ``max_context`` bytes, ``1 ≤ length ≤ max_length``,
   ``1 ≤ len(contributions) ≤ max_contributions``, well-formed fields;
2. every weight in ``[0, max_weight]``;
3. no ephemeral key twice in the request;
4. at least ``k_min`` distinct registered nodes with a weight ≥ 1;
5. every node key fingerprint registered, every signature valid over
   ``eph_pub || context || masked_digest``;
6. no ephemeral key ever unmasked before (also across restarts);

then computes ``Σ weight_i·mask_i (mod 2^64)``, records every ephemeral key of the request
as used in one committed transaction, and only then answers.

``Check(context, contribution)`` runs the per-contribution part of these checks (bounds,
weight, registration, signature, never used, usable ephemeral key) for one contribution
and records nothing, so the server can refuse a bad contribution on arrival instead of
losing a whole buffer at flush.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from mask_service.masking import (
    fingerprint,
    load_node_public_key,
    mask_sum,
    node_key_fingerprint,
    normalize_fingerprint,
    service_key_bytes,
    verify_contribution,
)
from mask_service.wire import (
    PROTOCOL,
    SERVICE_NAME,
    MaskServiceError,
    ServiceInfo,
    b64,
    contribution_from_json,
    decode_frame,
    encode_frame,
    unb64,
)
from strategies.ring import Contribution, wire_view

log = logging.getLogger("mask_service")
T = TypeVar("T")

KEY_FILE = "mask_service_key.pem"
PUBLIC_FILE = "mask_service_key.pub"
FINGERPRINT_FILE = "mask_service_key.fingerprint"
USED_DB = "used_masks.sqlite"
# Check runs per contribution: it looks at the registry's files at most this often (Unmask always)
REGISTRY_RECHECK_SECONDS = 1.0


class StateError(RuntimeError):
    """The state directory is unsafe or inconsistent; the service refuses to start."""


# -- static key -------------------------------------------------------------------------------


def load_or_create_key(state_dir: Path) -> X25519PrivateKey:
    """The service's static X25519 key, generated (mode 0600) on first start.

    A key without its used-mask log is refused: a restart must never forget which masks
    were already unmasked, or a server could replay old contributions.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, db_path = state_dir / KEY_FILE, state_dir / USED_DB
    if not key_path.exists():
        key = X25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return load_or_create_key(state_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        UsedMaskLog(db_path, create=True).close()
        _fsync_dir(state_dir)
        log.info("generated a new mask-service key in %s", key_path)
    else:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise StateError(f"{key_path} is accessible by group/others (mode {mode:o}); run: chmod 600 {key_path}")
        if not db_path.exists():
            raise StateError(
                f"{key_path} exists but its used-mask log {db_path} does not: masks unmasked before "
                "could be replayed. Restore the log, or delete the key to start over with a new "
                "key (every node must then pin the new fingerprint)"
            )
        try:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as err:
            raise StateError(f"cannot load {key_path}: {err}") from err
        if not isinstance(loaded, X25519PrivateKey):
            raise StateError(f"{key_path} is not an X25519 private key")
        key = loaded
    public = service_key_bytes(key)
    for name, text in ((PUBLIC_FILE, b64(public) + "\n"), (FINGERPRINT_FILE, fingerprint(public) + "\n")):
        path = state_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- used masks -------------------------------------------------------------------------------


class MaskReused(Exception):
    """Some ephemeral keys were already recorded."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        super().__init__(f"{len(keys)} mask(s) already used")


class UsedMaskLog:
    """Durable set of unmasked ephemeral keys (SQLite, ``synchronous=FULL``).

    Recording a request is one transaction: all of its keys or none. The primary key
    makes check-and-insert atomic, so two concurrent requests cannot both use a mask.
    """

    def __init__(self, path: Path, create: bool = False) -> None:
        path = Path(path)
        if not create and not path.exists():
            raise StateError(f"used-mask log {path} does not exist")
        if create and not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # a rollback journal: the database file alone is the whole state, fsynced per commit
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS used_masks ("
            " ephemeral_public BLOB PRIMARY KEY,"
            " node_key_fingerprint TEXT NOT NULL,"
            " context_sha256 TEXT NOT NULL,"
            " used_at REAL NOT NULL)"
        )

    def find_used(self, keys: Sequence[bytes]) -> list[bytes]:
        """Which of ``keys`` were already recorded."""
        found: list[bytes] = []
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT ephemeral_public FROM used_masks WHERE ephemeral_public IN ({marks})", chunk
                ).fetchall()
                found.extend(bytes(r[0]) for r in rows)
        return found

    def record(self, entries: Sequence[tuple[bytes, str]], context_sha256: str) -> None:
        """Record ``(ephemeral_public, node fingerprint)`` pairs, atomically; MaskReused if any is known."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO used_masks VALUES (?, ?, ?, ?)",
                    [(key, node, context_sha256, now) for key, node in entries],
                )
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise MaskReused([]) from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM used_masks").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- node key registry ------------------------------------------------------------------------


class NodeKeyRegistry:
    """Registered node public keys by fingerprint, re-read when the files change.

    ``path`` is a directory of OpenSSH ``.pub`` files, or one file listing keys one per line
    (``#`` comments allowed) or comma-separated (Flower's public-keys CSV). Keys must be
    ECDSA P-384. A broken file at start-up is an error; a broken edit later is logged and the
    previous registry kept.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StateError(f"registered-keys path {self.path} does not exist")
        self._lock = threading.Lock()
        self._stamp: object = None
        self._checked_at = -math.inf
        self.generation = 0  # bumped at every reload: what was verified against older keys is stale
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.refresh(strict=True)
        if not self._keys:
            log.warning("no node keys registered in %s: every unmask will be refused", self.path)

    def __len__(self) -> int:
        return len(self._keys)

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix == ".pub" and p.is_file())
        return [self.path]

    def _current_stamp(self) -> object:
        files = self._files()
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)

    def refresh(self, strict: bool = False, max_age: float = 0.0) -> None:
        """Re-read the keys if any file changed; with ``max_age``, look at most that often (seconds).

        Looking means a stat of every key file: per contribution, that would cost more than
        the signature check itself with a thousand registered nodes.
        """
        with self._lock:
            now = time.monotonic()
            if max_age and now - self._checked_at < max_age:
                return
            self._checked_at = now
            try:
                stamp = self._current_stamp()
                if stamp == self._stamp:
                    return
                keys: dict[str, ec.EllipticCurvePublicKey] = {}
                for file in self._files():
                    for entry in _key_entries(file.read_text()):
                        try:
                            key = load_node_public_key(entry)
                        except ValueError as err:
                            raise StateError(f"{file}: {err}") from err
                        keys[node_key_fingerprint(key)] = key
            except (OSError, StateError) as err:
                if strict:
                    raise StateError(str(err)) from err
                log.error("keeping the previous node registry: %s", err)
                return
            if self._stamp is not None:
                log.info("node registry reloaded: %d key(s)", len(keys))
            self._keys, self._stamp = keys, stamp
            self.generation += 1

    def lookup(self, node_fingerprint: str) -> ec.EllipticCurvePublicKey | None:
        try:
            return self._keys.get(normalize_fingerprint(node_fingerprint))
        except ValueError:
            return None


def _key_entries(text: str) -> list[str]:
    entries: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.extend(part.strip() for part in line.split(",") if part.strip())
    return entries


# -- the service ------------------------------------------------------------------------------


class MaskService:
    """The unmask logic, independent of gRPC (the servicer below is a thin shell)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        registered_keys: str | os.PathLike[str],
        *,
        k_min: int,
        max_weight: int,
        max_length: int,
        max_contributions: int = 4096,
        max_context_bytes: int = 1024,
    ) -> None:
        if k_min < 1:
            raise ValueError(f"k_min={k_min} must be >= 1 (2 or more for any privacy)")
        if max_weight < 1 or max_length < 1 or max_contributions < 1:
            raise ValueError("max_weight, max_length and max_contributions must be >= 1")
        if max_contributions < k_min:
            raise ValueError(f"max_contributions={max_contributions} < k_min={k_min}")
        if k_min < 2:
            log.warning("k_min=%d: a single contribution can be unmasked on its own", k_min)
        self.state_dir = Path(state_dir)
        self._key = load_or_create_key(self.state_dir)
        self._used = UsedMaskLog(self.state_dir / USED_DB)
        self.registry = NodeKeyRegistry(registered_keys)
        self.k_min, self.max_weight, self.max_length = int(k_min), int(max_weight), int(max_length)
        self.max_contributions, self.max_context_bytes = int(max_contributions), int(max_context_bytes)
        self.public_key = service_key_bytes(self._key)
        self.fingerprint = fingerprint(self.public_key)
        # signatures Check verified, with the registry generation they were verified against:
        # the flush's Unmask of the same contributions need not verify them again
        self._verified: OrderedDict[tuple[bytes, bytes, bytes, str], int] = OrderedDict()
        self._verified_lock = threading.Lock()

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            self.public_key,
            self.fingerprint,
            self.k_min,
            self.max_weight,
            self.max_length,
            self.max_contributions,
            PROTOCOL,
        )

    @property
    def used_count(self) -> int:
        """How many masks this service has ever unmasked."""
        return len(self._used)

    def unmask(self, context: bytes, length: object, contributions: Sequence[Contribution]) -> np.ndarray:
        """``Σ weight_i·mask_i (mod 2^64)``, or :class:`MaskServiceError` (nothing recorded).

        ``length`` is checked here (an int >= 1): the servicer passes it as the request header holds it.
        """
        context = bytes(context)
        if len(context) > self.max_context_bytes:
            raise MaskServiceError("malformed", f"context is {len(context)} bytes > {self.max_context_bytes}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise MaskServiceError("malformed", f"length {length!r} must be an integer >= 1")
        if length > self.max_length:
            raise MaskServiceError("too-long", f"vector length {length} > max-length {self.max_length}")
        if not contributions:
            raise MaskServiceError("too-few", f"no contributions (k-min is {self.k_min})")
        if len(contributions) > self.max_contributions:
            raise MaskServiceError(
                "too-many-contributions", f"{len(contributions)} contributions > {self.max_contributions}"
            )
        for item in contributions:
            if not isinstance(item, Contribution):
                raise MaskServiceError("malformed", f"expected Contribution, got {type(item).__name__}")
            if not 0 <= item.weight <= self.max_weight:
                raise MaskServiceError(
                    "weight-out-of-range", f"weight {item.weight} outside [0, max-weight={self.max_weight}]"
                )
        keys = [c.ephemeral_public for c in contributions]
        if len(set(keys)) != len(keys):
            raise MaskServiceError("duplicate-mask", "the same ephemeral key appears twice in one request")
        weighted_nodes = set()
        for c in contributions:
            if c.weight >= 1:
                try:
                    weighted_nodes.add(normalize_fingerprint(c.node_key_fingerprint))
                except ValueError:
                    raise MaskServiceError("malformed", "a node key fingerprint is not SHA-256 hex") from None
        if len(weighted_nodes) < self.k_min:
            raise MaskServiceError(
                "too-few",
                f"{len(weighted_nodes)} distinct node(s) with weight >= 1 < k-min {self.k_min}",
            )
        self.registry.refresh()
        for index, c in enumerate(contributions):
            self._verify(context, c, f"contribution {index}")
        used = self._used.find_used(keys)
        if used:
            raise MaskServiceError(
                "mask-reused", f"{len(used)} mask(s) were already unmasked (first {used[0][:8].hex()}...)"
            )
        try:
            total = mask_sum(self._key, [(c.ephemeral_public, c.weight) for c in contributions], context, int(length))
        except ValueError as err:  # e.g. a low-order ephemeral point
            raise MaskServiceError("malformed", f"unusable ephemeral key: {err}") from err
        try:
            self._used.record(
                [(c.ephemeral_public, normalize_fingerprint(c.node_key_fingerprint)) for c in contributions],
                fingerprint(context),
            )
        except MaskReused:
            raise MaskServiceError("mask-reused", "a concurrent request used one of these masks") from None
        with self._verified_lock:  # used masks can never pass again: their memos are dead weight
            for c in contributions:
                self._verified.pop((c.ephemeral_public, c.signature, context, c.node_key_fingerprint), None)
        log.info(
            "unmasked %d contribution(s) from %d node(s), length %d, context %s",
            len(contributions),
            len(weighted_nodes),
            length,
            fingerprint(context)[:12],
        )
        return total

    def check(self, context: bytes, contribution: Contribution, length: int | None = None) -> None:
        """Would ``contribution`` pass an ``Unmask`` on its own merits? :class:`MaskServiceError` if not.

        The per-contribution subset of :meth:`unmask`'s checks, with the same reasons:
        context size and ``length`` bounds (when given), weight in ``[0, max_weight]``, node
        key fingerprint well-formed and registered, signature valid over
        ``eph_pub || context || masked_digest``, ephemeral key never unmasked, and usable
        (not a low-order point). It records nothing (no mask is burnt) and computes no mask,
        so its answer says nothing about one; request-level checks (``too-few``,
        ``duplicate-mask``, ``too-many-contributions``) are left to :meth:`unmask`.
        """
        context = bytes(context)
        if len(context) > self.max_context_bytes:
            raise MaskServiceError("malformed", f"context is {len(context)} bytes > {self.max_context_bytes}")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
                raise MaskServiceError("malformed", f"length {length!r} must be an integer >= 1")
            if length > self.max_length:
                raise MaskServiceError("too-long", f"vector length {length} > max-length {self.max_length}")
        if not isinstance(contribution, Contribution):
            raise MaskServiceError("malformed", f"expected Contribution, got {type(contribution).__name__}")
        if not 0 <= contribution.weight <= self.max_weight:
            raise MaskServiceError(
                "weight-out-of-range", f"weight {contribution.weight} outside [0, max-weight={self.max_weight}]"
            )
        try:
            normalize_fingerprint(contribution.node_key_fingerprint)
        except ValueError:
            raise MaskServiceError("malformed", "the node key fingerprint is not SHA-256 hex") from None
        self.registry.refresh(max_age=REGISTRY_RECHECK_SECONDS)
        self._verify(context, contribution, "contribution")
        if self._used.find_used([contribution.ephemeral_public]):
            raise MaskServiceError(
                "mask-reused", f"mask {contribution.ephemeral_public[:8].hex()}... was already unmasked"
            )
        try:  # the shared secret is computed and dropped: only a low-order point fails here
            self._key.exchange(X25519PublicKey.from_public_bytes(contribution.ephemeral_public))
        except ValueError as err:
            raise MaskServiceError("malformed", f"unusable ephemeral key: {err}") from err

    def _verify(self, context: bytes, c: Contribution, what: str) -> None:
        """Node key registered and signature valid, or MaskServiceError ``unknown-node``/``bad-signature``.

        A signature verified before against the same registry is not verified again (the
        answer could not differ); the memo is bounded and dropped entry by entry, oldest first.
        """
        node_key = self.registry.lookup(c.node_key_fingerprint)
        if node_key is None:
            raise MaskServiceError(
                "unknown-node", f"{what}: node key {c.node_key_fingerprint[:16]}... is not registered"
            )
        memo = (c.ephemeral_public, c.signature, context, c.node_key_fingerprint)
        generation = self.registry.generation
        with self._verified_lock:
            if self._verified.get(memo) == generation:
                return
        if not verify_contribution(node_key, c.signature, c.ephemeral_public, context):
            raise MaskServiceError(
                "bad-signature",
                f"{what}: signature is not valid for node key {c.node_key_fingerprint[:16]}...",
            )
        with self._verified_lock:
            self._verified[memo] = generation
            while len(self._verified) > 2 * self.max_contributions:
                self._verified.popitem(last=False)

    def close(self) -> None:
        self._used.close()


# -- gRPC -------------------------------------------------------------------------------------


class _Servicer:
    def __init__(self, service: MaskService) -> None:
        self.service = service

    def public_key(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        info = self.service.info()
        return encode_frame(
            {
                "protocol": info.protocol,
                "public_key": b64(info.public_key),
                "fingerprint": info.fingerprint,
                "k_min": info.k_min,
                "max_weight": info.max_weight,
                "max_length": info.max_length,
                "max_contributions": info.max_contributions,
            }
        )

    def check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        def run() -> bytes:
            header, _ = _decode(request)
            contribution = _parse(contribution_from_json, header.get("contribution"))
            self.service.check(_parse(unb64, header.get("context"), "context"), contribution, header.get("length"))
            return encode_frame({"ok": True})

        return _answer(context, "check", run)

    def unmask(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        def run() -> bytes:
            header, _ = _decode(request)
            items = header.get("contributions")
            if not isinstance(items, list):
                raise MaskServiceError("malformed", "contributions must be a list")
            if len(items) > self.service.max_contributions:
                raise MaskServiceError(
                    "too-many-contributions", f"{len(items)} contributions > {self.service.max_contributions}"
                )
            contributions = [_parse(contribution_from_json, item) for item in items]
            ctx = _parse(unb64, header.get("context"), "context")
            total = self.service.unmask(ctx, header.get("length"), contributions)
            return encode_frame({"length": int(total.size), "count": len(contributions)}, wire_view(total))

        return _answer(context, "unmask", run)


def _decode(request: bytes) -> tuple[dict, memoryview]:
    return _parse(decode_frame, request)


def _parse(parser: Callable[..., T], *args: object) -> T:
    """Run a request parser; its ValueError is the caller's fault: ``malformed``."""
    try:
        return parser(*args)
    except ValueError as err:
        raise MaskServiceError("malformed", str(err)) from err


def _answer(context: grpc.ServicerContext, what: str, run: Callable[[], bytes]) -> bytes:
    """Run one RPC: a refusal becomes its gRPC status, anything else INTERNAL without a trace."""
    try:
        return run()
    except MaskServiceError as err:
        log.warning("%s from %s refused: %s", what, context.peer(), err.details)
        context.abort(err.code, err.details)
    except Exception:
        log.exception("%s failed", what)
        context.abort(grpc.StatusCode.INTERNAL, "internal: the mask service failed; see its log")
    raise AssertionError("context.abort always raises")


def build_server(
    service: MaskService,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    workers: int = 4,
    tls_cert_chain: bytes | None = None,
    tls_private_key: bytes | None = None,
    tls_client_ca: bytes | None = None,
) -> tuple[grpc.Server, int]:
    """A started-able gRPC server for ``service``; returns it and the bound port."""
    send_limit = 8 * service.max_length + (1 << 20)
    receive_limit = max(4 << 20, service.max_contributions * 2048 + service.max_context_bytes * 2 + (1 << 20))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mask-service"),
        options=[
            ("grpc.max_send_message_length", send_limit),
            ("grpc.max_receive_message_length", receive_limit),
        ],
    )
    servicer = _Servicer(service)
    handlers = {
        "Unmask": grpc.unary_unary_rpc_method_handler(servicer.unmask),
        "PublicKey": grpc.unary_unary_rpc_method_handler(servicer.public_key),
        "Check": grpc.unary_unary_rpc_method_handler(servicer.check),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    address = f"{host}:{port}"
    if tls_cert_chain or tls_private_key:
        if not (tls_cert_chain and tls_private_key):
            raise ValueError("TLS needs both a certificate chain and a private key")
        credentials = grpc.ssl_server_credentials(
            [(tls_private_key, tls_cert_chain)],
            root_certificates=tls_client_ca,
            require_client_auth=tls_client_ca is not None,
        )
        bound = server.add_secure_port(address, credentials)
    else:
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving without TLS on %s: any host that reaches it can burn masks", address)
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"cannot bind the mask service to {address}")
    return server, bound


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mask_service",
        description="FedBuff mask service: unmasks sums of one-time masks for a secure-aggregation buffer.",
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="key pair and used-mask log (created)")
    parser.add_argument(
        "--registered-keys", type=Path, help="directory of node OpenSSH .pub files, or a file listing them"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095, help="0 picks a free port (printed)")
    parser.add_argument("--k-min", type=int, default=2, help="fewest distinct weighted nodes per unmask")
    parser.add_argument("--max-weight", type=int, default=4 * 65536, help="largest integer weight")
    parser.add_argument("--max-length", type=int, default=50_000_000, help="largest vector length")
    parser.add_argument("--max-contributions", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tls-cert-chain", type=Path)
    parser.add_argument("--tls-private-key", type=Path)
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    parser.add_argument(
        "--print-fingerprint",
        action="store_true",
        help="create or load the key, print its public key and fingerprint, and exit",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.print_fingerprint and args.registered_keys is None:
        parser.error("--registered-keys is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.print_fingerprint:
            key = load_or_create_key(args.state_dir)
            public = service_key_bytes(key)
            print(f"public-key={b64(public)}\nfingerprint={fingerprint(public)}", flush=True)
            return 0
        service = MaskService(
            args.state_dir,
            args.registered_keys,
            k_min=args.k_min,
            max_weight=args.max_weight,
            max_length=args.max_length,
            max_contributions=args.max_contributions,
        )
        read = lambda p: p.read_bytes() if p else None  # noqa: E731
        server, port = build_server(
            service,
            args.host,
            args.port,
            workers=args.workers,
            tls_cert_chain=read(args.tls_cert_chain),
            tls_private_key=read(args.tls_private_key),
            tls_client_ca=read(args.tls_client_ca),
        )
    except (StateError, ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    log.info(
        "mask service on %s:%d, %d node key(s) registered, k-min %d, fingerprint %s",
        args.host,
        port,
        len(service.registry),
        service.k_min,
        service.fingerprint,
    )
    print(
        f"mask-service ready address={args.host}:{port} public-key={b64(service.public_key)} "
        f"fingerprint={service.fingerprint}",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    server.stop(grace=2).wait()
    service.close()
    return 0
