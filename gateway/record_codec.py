"""What the gateway does to a partner's record before a node sees it, and after.

A record is a JSON object. Its plaintext is the RFC 8785 canonical JSON (so equal records are
equal bytes, and later Merkle leaves can hash it). Numbers must be integers: money and points
are minor units, never floats. The plaintext is sealed in an envelope under the partner's
active data key (:mod:`node.storage.envelope`); the body fingerprint is HMAC-SHA256 of the
plaintext under the partner's fingerprint key, so nodes can compare bodies for idempotency
without learning anything about them.

Each record also gets a fresh 32-byte *plaintext salt*: sealed inside the envelope (version 2)
and keying the record's plaintext commitment ``SHA-256("baas.plaintext.v1\0" || salt ||
canonical JSON)``, which goes into its Merkle leaf (docs/verifiable-log.md). The owner reads
the salt back with the record and can check the leaf; nobody else ever sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

import rfc8785

from gateway.keyring import Keyring, PartnerKeys
from node.errors import InvalidRequest, PayloadTooLarge
from node.merkle.leaf import plaintext_commitment
from node.storage.envelope import SALT_BYTES, open_blob, seal_blob

__all__ = [
    "OpenedRecord",
    "SealedRecord",
    "canonical_record",
    "fingerprint",
    "open_record",
    "seal_record",
    "sealed_wire",
]

DEPTH_MAX = 32


def _check_values(value: Any, depth: int = 0) -> None:
    if depth > DEPTH_MAX:
        raise InvalidRequest("record is nested too deeply", code="invalid_record")
    if isinstance(value, float):
        raise InvalidRequest(
            "record contains a non-integer number; amounts are integers in minor units",
            code="invalid_record",
        )
    if isinstance(value, dict):
        for item in value.values():
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def canonical_record(record: Any, bytes_max: int) -> bytes:
    if not isinstance(record, dict) or not record:
        raise InvalidRequest("record must be a non-empty JSON object", code="invalid_record")
    _check_values(record)
    try:
        plaintext = rfc8785.dumps(record)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"record cannot be canonicalized: {exc}", code="invalid_record"
        ) from exc
    if len(plaintext) > bytes_max:
        raise PayloadTooLarge(f"record exceeds {bytes_max} bytes")
    return plaintext


def fingerprint(partner: PartnerKeys, plaintext: bytes) -> bytes:
    return hmac.new(
        partner.fingerprint_key, b"baas.body-fingerprint.v1|" + plaintext, hashlib.sha256
    ).digest()


@dataclass(frozen=True, slots=True)
class SealedRecord:
    blob: bytes
    plaintext_commitment: bytes


@dataclass(frozen=True, slots=True)
class OpenedRecord:
    owner: str
    record: Any
    plaintext_salt: bytes | None  # None for records written before envelope version 2


def seal_record(partner: PartnerKeys, record_id: bytes, plaintext: bytes) -> SealedRecord:
    key_id = partner.active_data_key_id
    salt = os.urandom(SALT_BYTES)
    blob = seal_blob(
        plaintext,
        record_id=record_id,
        partner_id=partner.partner_id,
        key_id=key_id,
        partner_key=partner.data_key(key_id),
        plaintext_salt=salt,
    )
    return SealedRecord(blob, plaintext_commitment(salt, plaintext))


def sealed_wire(partner: PartnerKeys, record_id: bytes, plaintext: bytes) -> dict[str, Any]:
    """The node wire form of one record (``rid, blob, pid, fp, pc``): sealed, fingerprinted."""
    sealed = seal_record(partner, record_id, plaintext)
    return {
        "rid": record_id,
        "blob": sealed.blob,
        "pid": partner.partner_id,
        "fp": fingerprint(partner, plaintext),
        "pc": sealed.plaintext_commitment,
    }


def open_record(keyring: Keyring, record_id: bytes, blob: bytes) -> OpenedRecord:
    """Decrypt a blob: the owning partner id, the record object and its plaintext salt."""
    header, plaintext = open_blob(
        blob, record_id=record_id, key_for=lambda pid, kid: keyring.partner(pid).data_key(kid)
    )
    return OpenedRecord(header.partner_id, json.loads(plaintext), header.plaintext_salt)
