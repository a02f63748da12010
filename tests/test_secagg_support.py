"""Helpers shared by the secure-aggregation tests (no tests of its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mask_service.masking import MaskedUpdate, mask_update, node_key_fingerprint
from strategies.ring import Contribution, RingCodec

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    """A test node: its P-384 key, where its OpenSSH files are, and its fingerprint."""

    key: ec.EllipticCurvePrivateKey
    private_path: Path
    public_path: Path

    @property
    def fingerprint(self) -> str:
        return node_key_fingerprint(self.key)

    def public_line(self) -> bytes:
        return self.public_path.read_bytes()


def make_node(directory: Path, name: str, curve: ec.EllipticCurve | None = None) -> Node:
    """A node key in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` would write it."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP384R1())
    private_path, public_path = directory / name, directory / f"{name}.pub"
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    os.chmod(private_path, 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + b" " + name.encode() + b"\n")
    return Node(key, private_path, public_path)


def ssh_keygen_node(directory: Path, name: str) -> Node | None:
    """A node key made by the real ``ssh-keygen -t ecdsa -b 384`` (None if not installed)."""
    binary = shutil.which("ssh-keygen")
    if binary is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / name
    subprocess.run(
        [binary, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f", str(private_path)],
        check=True,
        capture_output=True,
    )
    key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    return Node(key, private_path, directory / f"{name}.pub")


def register(registry: Path, node: Node) -> None:
    """Put ``node``'s public key in a registry directory."""
    registry.mkdir(parents=True, exist_ok=True)
    shutil.copy(node.public_path, registry / node.public_path.name)


def random_update(rng: np.random.Generator, shapes, scale: float = 0.5) -> list[np.ndarray]:
    return [rng.normal(0.0, scale, size=s).astype(np.float32) for s in shapes]


def contribution_of(update: MaskedUpdate, weight: int) -> Contribution:
    """The server's view of one masked update: its envelope and the weight the server gave it."""
    return Contribution(update.ephemeral_public, update.signature, update.node_key_fingerprint, weight)


def masked_by(node: Node, delta, codec: RingCodec, service_public_key, context: bytes) -> MaskedUpdate:
    return mask_update(delta, codec, service_public_key, node.key, context)
