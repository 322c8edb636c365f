"""The encryption envelope of a record blob (AES-256-GCM, envelope encryption).

The gateway encrypts each record body under a fresh 256-bit data key; the data key is wrapped
(AES-256-GCM) by the owning partner's key from the keyring. The blob that nodes store is the
msgpack map::

    {"v": 1, "pid": partner id, "kid": key id, "wk": wrapped data key, "wn": wrap nonce,
     "n": nonce, "c": ciphertext}

Both encryptions bind the record id, partner id and key id as associated data, so a blob moved
to another record id or partner fails to open. Nodes only ever see this blob: they never hold
partner keys or plaintext. Unknown versions are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import CorruptEntry, UnsupportedFormat

__all__ = ["ENVELOPE_VERSION", "EnvelopeHeader", "open_blob", "read_header", "seal_blob"]

ENVELOPE_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    version: int
    partner_id: str
    key_id: str


def _aad(purpose: bytes, record_id: bytes, partner_id: str, key_id: str) -> bytes:
    return b"|".join(
        (b"baas.envelope.v1", purpose, record_id, partner_id.encode(), key_id.encode())
    )


def seal_blob(
    plaintext: bytes,
    *,
    record_id: bytes,
    partner_id: str,
    key_id: str,
    partner_key: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext`` for ``partner_id`` under a fresh data key."""
    if len(partner_key) != KEY_BYTES:
        raise ValueError("partner key must be 32 bytes")
    data_key = random_bytes(KEY_BYTES)
    nonce = random_bytes(NONCE_BYTES)
    wrap_nonce = random_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(
        nonce, plaintext, _aad(b"data", record_id, partner_id, key_id)
    )
    wrapped = AESGCM(partner_key).encrypt(
        wrap_nonce, data_key, _aad(b"wrap", record_id, partner_id, key_id)
    )
    blob: bytes = msgpack.packb(
        {
            "v": ENVELOPE_VERSION,
            "pid": partner_id,
            "kid": key_id,
            "wk": wrapped,
            "wn": wrap_nonce,
            "n": nonce,
            "c": ciphertext,
        },
        use_bin_type=True,
    )
    return blob


def _unpack(blob: bytes) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(blob, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise CorruptEntry("record blob is not a valid envelope") from exc
    if not isinstance(raw, dict):
        raise CorruptEntry("record blob is not a valid envelope")
    if raw.get("v") != ENVELOPE_VERSION:
        raise UnsupportedFormat(f"unknown envelope version {raw.get('v')!r}")
    return raw


def read_header(blob: bytes) -> EnvelopeHeader:
    raw = _unpack(blob)
    return EnvelopeHeader(ENVELOPE_VERSION, str(raw["pid"]), str(raw["kid"]))


def open_blob(
    blob: bytes, *, record_id: bytes, key_for: Callable[[str, str], bytes]
) -> tuple[EnvelopeHeader, bytes]:
    """Decrypt a blob; ``key_for(partner_id, key_id)`` returns the partner key (or raises)."""
    raw = _unpack(blob)
    try:
        header = EnvelopeHeader(ENVELOPE_VERSION, str(raw["pid"]), str(raw["kid"]))
        wrapped, wrap_nonce = bytes(raw["wk"]), bytes(raw["wn"])
        nonce, ciphertext = bytes(raw["n"]), bytes(raw["c"])
    except (KeyError, TypeError) as exc:
        raise CorruptEntry("record envelope is missing fields") from exc
    partner_key = key_for(header.partner_id, header.key_id)
    try:
        data_key = AESGCM(partner_key).decrypt(
            wrap_nonce, wrapped, _aad(b"wrap", record_id, header.partner_id, header.key_id)
        )
        plaintext = AESGCM(data_key).decrypt(
            nonce, ciphertext, _aad(b"data", record_id, header.partner_id, header.key_id)
        )
    except (InvalidTag, ValueError) as exc:
        raise CorruptEntry("record envelope failed authentication") from exc
    return header, plaintext
