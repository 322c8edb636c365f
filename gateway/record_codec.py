"""What the gateway does to a partner's record before a node sees it, and after.

A record is a JSON object. Its plaintext is the RFC 8785 canonical JSON (so equal records are
equal bytes, and later Merkle leaves can hash it). Numbers must be integers: money and points
are minor units, never floats. The plaintext is sealed in an envelope under the partner's
active data key (:mod:`node.storage.envelope`); the body fingerprint is HMAC-SHA256 of the
plaintext under the partner's fingerprint key, so nodes can compare bodies for idempotency
without learning anything about them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import rfc8785

from gateway.keyring import Keyring, PartnerKeys
from node.errors import InvalidRequest, PayloadTooLarge
from node.storage.envelope import open_blob, seal_blob

__all__ = ["canonical_record", "fingerprint", "open_record", "seal_record"]

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


def seal_record(partner: PartnerKeys, record_id: bytes, plaintext: bytes) -> bytes:
    key_id = partner.active_data_key_id
    return seal_blob(
        plaintext,
        record_id=record_id,
        partner_id=partner.partner_id,
        key_id=key_id,
        partner_key=partner.data_key(key_id),
    )


def open_record(keyring: Keyring, record_id: bytes, blob: bytes) -> tuple[str, Any]:
    """Decrypt a blob; return (owning partner id, record object)."""
    header, plaintext = open_blob(
        blob, record_id=record_id, key_for=lambda pid, kid: keyring.partner(pid).data_key(kid)
    )
    return header.partner_id, json.loads(plaintext)
