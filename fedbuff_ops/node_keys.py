"""Node signing keys for local runs: EC P-384 in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384``.

The same kind of key Flower's SuperNode authentication uses, so a deployment can give a
node one key for both. Private keys are written with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """Create ``directory/name`` (private) and ``directory/name.pub`` (public); return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private_path, public_path = directory / name, directory / f"{name}.pub"
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    os.chmod(private_path, 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + f" {name}\n".encode())
    return private_path, public_path
