"""Leaf data v1 and v2: what one leaf of the record log commits to, and the plaintext commitment.

A leaf binds a record's identity (id, owner, commit time) to what the network stores for it
(the encrypted blob's hash, the erasure code ``k`` of ``n`` and every shard's hash) and to the
record's plaintext through a salted commitment. The layout is fixed by
``docs/verifiable-log.md`` (integers big-endian, nothing may follow)::

    version 1 | record id 32 | owner length L 1 | owner L | committed at ms 8
    | content hash 32 | k 1 | n 1 | shard hashes 32 x n | plaintext commitment 32

A ledger operation's record (a transfer request, later a swap or a payment) gets leaf data v2:
the version byte 2, the same fields, then the 32-byte digest of what the operation did
(:meth:`business.ledger.outcome.OperationOutcome.digest`)::

    version 2 | ...the v1 fields... | outcome digest 32

The version byte comes first and the lengths differ by 32, so bytes of one version never decode
as the other. :class:`LeafData` is both: ``outcome_digest`` is None for v1.

The leaf's Merkle hash is RFC 9162's ``SHA-256(0x00 || leaf data)`` from
:mod:`node.merkle.tree`. Decoding is strict, because a user's verifier reads leaf data from a
receipt it does not trust: any other version, length or field value is
:class:`~node.errors.UnsupportedFormat`. Pure: no I/O.

The plaintext commitment is ``SHA-256(b"baas.plaintext.v1\\x00" || salt || canonical JSON)``
with a 32-byte salt per record: only whoever holds the salt (the owner, through the gateway)
can test a guess of the record against it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from node.errors import InvalidRequest, UnsupportedFormat
from node.merkle import tree

__all__ = [
    "LEAF_VERSION",
    "LEAF_VERSION_OPERATION",
    "OWNER_BYTES_MAX",
    "PLAINTEXT_DOMAIN",
    "SALT_BYTES",
    "LeafData",
    "plaintext_commitment",
]

LEAF_VERSION = 1
LEAF_VERSION_OPERATION = 2  # v1 plus the operation's outcome digest
HASH_BYTES = 32
OWNER_BYTES_MAX = 128
SHARD_COUNT_MAX = 255
SALT_BYTES = 32
PLAINTEXT_DOMAIN = b"baas.plaintext.v1\x00"
_U64_MAX = (1 << 64) - 1
_TIME = struct.Struct(">Q")


def plaintext_commitment(salt: bytes, canonical_json: bytes) -> bytes:
    """``SHA-256(b"baas.plaintext.v1\\x00" || salt || canonical_json)``; ``salt`` is 32 bytes."""
    if len(salt) != SALT_BYTES:
        raise InvalidRequest(f"the salt is {SALT_BYTES} bytes, not {len(salt)}")
    return hashlib.sha256(PLAINTEXT_DOMAIN + salt + canonical_json).digest()


@dataclass(frozen=True)
class LeafData:
    """One leaf of the record log: v1, or v2 with ``outcome_digest``. Construction checks
    every field (InvalidRequest)."""

    record_id: bytes
    owner: str
    committed_at_ms: int
    content_hash: bytes
    k: int
    n: int
    shard_hashes: tuple[bytes, ...]
    plaintext_commitment: bytes
    outcome_digest: bytes | None = None  # v2: the ledger operation's outcome digest

    @property
    def version(self) -> int:
        return LEAF_VERSION if self.outcome_digest is None else LEAF_VERSION_OPERATION

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise InvalidRequest(f"leaf data: {problem}")

    def _problem(self) -> str | None:
        for name in ("record_id", "content_hash", "plaintext_commitment"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != HASH_BYTES:
                return f"{name} must be {HASH_BYTES} bytes"
        digest = self.outcome_digest
        if digest is not None and (not isinstance(digest, bytes) or len(digest) != HASH_BYTES):
            return f"outcome_digest must be None or {HASH_BYTES} bytes"
        if not isinstance(self.owner, str):
            return "owner must be a string"
        try:
            owner_bytes = len(self.owner.encode("utf-8"))
        except UnicodeEncodeError:
            return "owner is not valid UTF-8"
        if not 1 <= owner_bytes <= OWNER_BYTES_MAX:
            return f"owner must be 1..{OWNER_BYTES_MAX} UTF-8 bytes, not {owner_bytes}"
        if not _is_int(self.committed_at_ms) or not 0 <= self.committed_at_ms <= _U64_MAX:
            return "committed_at_ms must be an unsigned 64-bit integer"
        if not _is_int(self.k) or not _is_int(self.n):
            return "k and n must be integers"
        if not 1 <= self.k <= self.n <= SHARD_COUNT_MAX:
            return f"need 1 <= k <= n <= {SHARD_COUNT_MAX}, got k={self.k} n={self.n}"
        if not isinstance(self.shard_hashes, tuple) or len(self.shard_hashes) != self.n:
            return f"shard_hashes must be a tuple of n={self.n} hashes"
        if any(not isinstance(h, bytes) or len(h) != HASH_BYTES for h in self.shard_hashes):
            return f"every shard hash must be {HASH_BYTES} bytes"
        return None

    def encode(self) -> bytes:
        owner = self.owner.encode("utf-8")
        return b"".join(
            (
                bytes([self.version]),
                self.record_id,
                bytes([len(owner)]),
                owner,
                _TIME.pack(self.committed_at_ms),
                self.content_hash,
                bytes([self.k, self.n]),
                *self.shard_hashes,
                self.plaintext_commitment,
                self.outcome_digest or b"",
            )
        )

    def leaf_hash(self) -> bytes:
        """The RFC 9162 leaf hash, ``SHA-256(0x00 || encode())``."""
        return tree.leaf_hash(self.encode())

    @classmethod
    def decode(cls, raw: bytes) -> LeafData:
        """Strictly the inverse of :meth:`encode` (v1 or v2); anything else is UnsupportedFormat."""
        if not raw:
            raise UnsupportedFormat("leaf data is empty")
        version = raw[0]
        if version not in (LEAF_VERSION, LEAF_VERSION_OPERATION):
            raise UnsupportedFormat(
                f"leaf data version {version} is not {LEAF_VERSION} or {LEAF_VERSION_OPERATION}"
            )
        tail = HASH_BYTES if version == LEAF_VERSION_OPERATION else 0  # the outcome digest
        # version, record id, owner length: the smallest prefix that says how long the rest is
        if len(raw) < 1 + HASH_BYTES + 1:
            raise UnsupportedFormat(f"leaf data of {len(raw)} bytes is too short")
        owner_len = raw[1 + HASH_BYTES]
        if not 1 <= owner_len <= OWNER_BYTES_MAX:
            raise UnsupportedFormat(f"leaf data owner length {owner_len} is not 1..128")
        at = 1 + HASH_BYTES + 1 + owner_len
        counts_at = at + _TIME.size + HASH_BYTES
        if len(raw) < counts_at + 2:
            raise UnsupportedFormat(f"leaf data of {len(raw)} bytes is too short")
        k, n = raw[counts_at], raw[counts_at + 1]
        commitment_at = counts_at + 2 + HASH_BYTES * n
        expected = commitment_at + HASH_BYTES + tail
        if len(raw) != expected:
            raise UnsupportedFormat(
                f"leaf data (version {version}) is {len(raw)} bytes; owner length {owner_len} "
                f"and n={n} make it {expected}"
            )
        try:
            owner = raw[1 + HASH_BYTES + 1 : at].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsupportedFormat("leaf data owner is not UTF-8") from exc
        shards_at = counts_at + 2
        shard_hashes = tuple(
            raw[shards_at + HASH_BYTES * i : shards_at + HASH_BYTES * (i + 1)] for i in range(n)
        )
        try:
            return cls(
                record_id=raw[1 : 1 + HASH_BYTES],
                owner=owner,
                committed_at_ms=_TIME.unpack_from(raw, at)[0],
                content_hash=raw[at + _TIME.size : counts_at],
                k=k,
                n=n,
                shard_hashes=shard_hashes,
                plaintext_commitment=raw[commitment_at : commitment_at + HASH_BYTES],
                outcome_digest=raw[commitment_at + HASH_BYTES :] if tail else None,
            )
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
