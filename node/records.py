"""Record identity and the shard types every part of the data path shares.

A record is identified by ``SHA-256(partner id, idempotency key)``, so a retry with the same key
addresses the same record. Its encrypted blob is identified by ``SHA-256(blob)`` (the content
hash). Shards are keyed by (record id, content hash, shard index): the shards of a retried
attempt never mix with those of the first attempt, because a fresh encryption gives a fresh blob.

Everything here is pure and typed; encoding to msgpack uses explicit field names so that the
format can grow without breaking older readers, and every encoded structure carries a version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "HASH_BYTES",
    "SHARD_META_VERSION",
    "Shard",
    "ShardKey",
    "ShardMeta",
    "content_hash_of",
    "record_id_for",
]

HASH_BYTES = 32
SHARD_META_VERSION = 1
IDEMPOTENCY_KEY_CHARS_MAX = 255
PARTNER_ID_CHARS_MAX = 64


def _length_prefixed(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def record_id_for(partner_id: str, idempotency_key: str) -> bytes:
    """SHA-256 over the length-prefixed partner id and idempotency key (no ambiguity)."""
    if not partner_id or len(partner_id) > PARTNER_ID_CHARS_MAX:
        raise InvalidRequest("partner id must be 1..64 characters")
    if not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_CHARS_MAX:
        raise InvalidRequest(
            "Idempotency-Key must be 1..255 characters", code="invalid_idempotency_key"
        )
    digest = hashlib.sha256(b"baas.record-id.v1")
    digest.update(_length_prefixed(partner_id.encode()))
    digest.update(_length_prefixed(idempotency_key.encode()))
    return digest.digest()


def content_hash_of(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()


@dataclass(frozen=True, slots=True, order=True)
class ShardKey:
    """Where one shard lives in a node's shard database."""

    record_id: bytes
    content_hash: bytes
    index: int

    def __post_init__(self) -> None:
        if len(self.record_id) != HASH_BYTES or len(self.content_hash) != HASH_BYTES:
            raise InvalidRequest("record id and content hash must be 32 bytes")
        if not 0 <= self.index < 256:
            raise InvalidRequest("shard index must be 0..255")


@dataclass(frozen=True, slots=True)
class ShardMeta:
    """What a shard says about its record: enough to rebuild and to check ownership.

    ``k`` and ``n`` are the cluster's erasure settings at write time, recorded with every
    record so a later change of cluster settings never makes old records unreadable.
    ``body_fingerprint`` is a keyed hash computed by the gateway (nodes cannot invert it); it
    lets a retry with the same idempotency key be told apart from a reuse with another body.
    """

    record_id: bytes
    content_hash: bytes
    index: int
    k: int
    n: int
    blob_bytes: int
    partner_id: str
    body_fingerprint: bytes
    created_at_ms: int

    def __post_init__(self) -> None:
        # The same checks as ShardKey's, inline: metas are built per shard on the hot path.
        if len(self.record_id) != HASH_BYTES or len(self.content_hash) != HASH_BYTES:
            raise InvalidRequest("record id and content hash must be 32 bytes")
        if not 0 <= self.index < self.n:
            raise InvalidRequest("shard index must be below n")
        if not 1 <= self.k <= self.n <= 255:
            raise InvalidRequest("shard meta has invalid k/n/index")
        if self.blob_bytes < 0 or len(self.body_fingerprint) != HASH_BYTES:
            raise InvalidRequest("shard meta has invalid blob size or fingerprint")

    @property
    def key(self) -> ShardKey:
        return ShardKey(self.record_id, self.content_hash, self.index)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SHARD_META_VERSION,
            "rid": self.record_id,
            "ch": self.content_hash,
            "i": self.index,
            "k": self.k,
            "n": self.n,
            "len": self.blob_bytes,
            "pid": self.partner_id,
            "fp": self.body_fingerprint,
            "ts": self.created_at_ms,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> ShardMeta:
        if not isinstance(raw, dict):
            raise UnsupportedFormat("shard meta is not a map")
        if raw.get("v") != SHARD_META_VERSION:
            raise UnsupportedFormat(f"unknown shard meta version {raw.get('v')!r}")
        try:
            meta = cls(
                record_id=bytes(raw["rid"]),
                content_hash=bytes(raw["ch"]),
                index=int(raw["i"]),
                k=int(raw["k"]),
                n=int(raw["n"]),
                blob_bytes=int(raw["len"]),
                partner_id=str(raw["pid"]),
                body_fingerprint=bytes(raw["fp"]),
                created_at_ms=int(raw["ts"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedFormat(f"malformed shard meta: {exc}") from exc
        return meta


@dataclass(frozen=True, slots=True)
class Shard:
    """One erasure-coded piece of an encrypted record blob, with its meta."""

    meta: ShardMeta
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"m": self.meta.to_wire(), "d": self.data}

    @classmethod
    def from_wire(cls, raw: Any) -> Shard:
        if not isinstance(raw, dict) or not isinstance(raw.get("d"), bytes):
            raise UnsupportedFormat("malformed shard")
        return cls(meta=ShardMeta.from_wire(raw.get("m")), data=raw["d"])
