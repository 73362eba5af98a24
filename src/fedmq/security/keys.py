"""Ed25519 keys for update signatures: one private key per edge, its public key at the cloud.

Files are PEM: `<node>.key` (PKCS8, mode 0600) stays on the device; `<node>.pub`
(SubjectPublicKeyInfo) is enrolled at the cloud by copying it into its trusted-keys folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmq.errors import ConfigError

_NODE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def generate_keypair(folder: Path, node: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `<node>.key` and `<node>.pub` into `folder`; refuse to replace a key silently."""
    if not _NODE.match(node):
        raise ConfigError(f"node name {node!r}: use letters, digits, '_', '.', '-'")
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{node}.key", folder / f"{node}.pub"
    if not overwrite and (private.exists() or public.exists()):
        raise ConfigError(f"{private} or {public} exists; pass --force to replace the key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {path} is not an Ed25519 public key")
    return key


def load_trusted(folder: str | Path) -> dict[str, Ed25519PublicKey]:
    """Every `<node>.pub` in `folder`, by node name: the edges whose updates the cloud accepts."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"trusted keys: {root} is not a folder")
    keys = {p.stem: load_public_key(p) for p in sorted(root.glob("*.pub"))}
    if not keys:
        raise ConfigError(f"trusted keys: no <node>.pub files in {root}")
    return keys
