"""A node's long-lived libp2p identity: an Ed25519 seed kept in a small versioned file.

The peer id is derived from the public key, so a node restarted from the same file keeps its
peer id, and the cluster member list (which names peer ids) stays valid across restarts. The
file holds secret key material: it is written with mode 0600 and atomically (a crash never
leaves a half-written identity), and nothing here ever logs the seed.

File format (44 bytes): ``b"BAASID1\\n"`` (version magic) || 32-byte seed || the first 4 bytes
of a domain-separated SHA-256 of the seed so a truncated or corrupted file is refused, not used.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from node.errors import ConfigError
from node.fileio import write_atomically

__all__ = [
    "IDENTITY_SEED_BYTES",
    "generate_identity_seed",
    "keypair_of_seed",
    "load_identity",
    "load_identity_seed",
    "peer_id_of_seed",
    "write_identity_file",
]

IDENTITY_SEED_BYTES = 32
_MAGIC = b"BAASID1\n"
_CHECK_BYTES = 4


def generate_identity_seed() -> bytes:
    """A fresh 32-byte Ed25519 seed from the OS CSPRNG."""
    return secrets.token_bytes(IDENTITY_SEED_BYTES)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != IDENTITY_SEED_BYTES:
        raise ConfigError("identity seed must be 32 bytes")


def _checksum(seed: bytes) -> bytes:
    return hashlib.sha256(b"baas.identity.v1" + seed).digest()[:_CHECK_BYTES]


def keypair_of_seed(seed: bytes) -> KeyPair:
    """The libp2p Ed25519 key pair of a seed (deterministic)."""
    _check_seed(seed)
    return create_new_key_pair(seed)


def peer_id_of_seed(seed: bytes) -> str:
    """The base58 peer id string libp2p derives from the seed's public key."""
    return ID.from_pubkey(keypair_of_seed(seed).public_key).to_base58()


def write_identity_file(path: Path | str, seed: bytes) -> None:
    """Write the identity atomically with mode 0600 (temp file in the same dir + rename)."""
    _check_seed(seed)
    write_atomically(Path(path), _MAGIC + seed + _checksum(seed), 0o600)


def load_identity_seed(path: Path | str) -> bytes:
    """Read and check an identity file; refuse a wrong version, size, checksum or mode."""
    source = Path(path)
    try:
        mode = stat.S_IMODE(source.stat().st_mode)
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read identity file {source}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(f"identity file {source} must not be readable by others (chmod 600)")
    if not raw.startswith(_MAGIC):
        raise ConfigError(f"identity file {source}: unknown format or version")
    body = raw[len(_MAGIC) :]
    if len(body) != IDENTITY_SEED_BYTES + _CHECK_BYTES:
        raise ConfigError(f"identity file {source}: wrong size")
    seed, check = body[:IDENTITY_SEED_BYTES], body[IDENTITY_SEED_BYTES:]
    if _checksum(seed) != check:
        raise ConfigError(f"identity file {source}: checksum mismatch (corrupted)")
    return seed


def load_identity(path: Path | str) -> KeyPair:
    """The libp2p key pair stored in an identity file."""
    return keypair_of_seed(load_identity_seed(path))
