"""The encryption envelope of a record blob (AES-256-GCM, envelope encryption).

The gateway encrypts each record body under a fresh 256-bit data key; the data key is wrapped
(AES-256-GCM) by the owning partner's key from the keyring. The blob that nodes store is the
msgpack map::

    {"v": 1, "pid": partner id, "kid": key id, "wk": wrapped data key, "wn": wrap nonce,
     "n": nonce, "c": ciphertext}

Both encryptions bind the record id, partner id and key id as associated data, so a blob moved
to another record id or partner fails to open. Nodes only ever see this blob: they never hold
partner keys or plaintext. Unknown versions are refused.

Version 2 (what the gateway writes) has the same fields; its encrypted plaintext is
``plaintext salt (32 bytes) || record``. The salt keys the record's plaintext commitment in the
Merkle log (docs/verifiable-log.md): it travels only inside the envelope, so the owner (through
the gateway) can check the commitment and nobody else can test guesses against it. The version
is bound into the associated data, so a v2 blob relabelled v1 fails to open.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import CorruptEntry, UnsupportedFormat

__all__ = [
    "ENVELOPE_VERSION",
    "SALT_BYTES",
    "EnvelopeHeader",
    "open_blob",
    "read_header",
    "seal_blob",
]

ENVELOPE_VERSION = 2  # what seal_blob writes when given a plaintext salt
ENVELOPE_VERSIONS = (1, 2)
KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 32


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    version: int
    partner_id: str
    key_id: str
    plaintext_salt: bytes | None = None  # known only once opened (version 2)


def _aad(version: int, purpose: bytes, record_id: bytes, partner_id: str, key_id: str) -> bytes:
    tag = b"baas.envelope.v1" if version == 1 else b"baas.envelope.v%d" % version
    return b"|".join((tag, purpose, record_id, partner_id.encode(), key_id.encode()))


def seal_blob(
    plaintext: bytes,
    *,
    record_id: bytes,
    partner_id: str,
    key_id: str,
    partner_key: bytes,
    plaintext_salt: bytes | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext`` for ``partner_id`` under a fresh data key.

    With ``plaintext_salt`` (32 bytes) the blob is version 2 and carries the salt encrypted
    beside the plaintext; without, version 1.
    """
    if len(partner_key) != KEY_BYTES:
        raise ValueError("partner key must be 32 bytes")
    if plaintext_salt is not None and len(plaintext_salt) != SALT_BYTES:
        raise ValueError("plaintext salt must be 32 bytes")
    version = 1 if plaintext_salt is None else 2
    inner = plaintext if plaintext_salt is None else plaintext_salt + plaintext
    data_key = random_bytes(KEY_BYTES)
    nonce = random_bytes(NONCE_BYTES)
    wrap_nonce = random_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(
        nonce, inner, _aad(version, b"data", record_id, partner_id, key_id)
    )
    wrapped = AESGCM(partner_key).encrypt(
        wrap_nonce, data_key, _aad(version, b"wrap", record_id, partner_id, key_id)
    )
    blob: bytes = msgpack.packb(
        {
            "v": version,
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
    if raw.get("v") not in ENVELOPE_VERSIONS:
        raise UnsupportedFormat(f"unknown envelope version {raw.get('v')!r}")
    return raw


def read_header(blob: bytes) -> EnvelopeHeader:
    raw = _unpack(blob)
    return EnvelopeHeader(int(raw["v"]), str(raw["pid"]), str(raw["kid"]))


def open_blob(
    blob: bytes, *, record_id: bytes, key_for: Callable[[str, str], bytes]
) -> tuple[EnvelopeHeader, bytes]:
    """Decrypt a blob; ``key_for(partner_id, key_id)`` returns the partner key (or raises).

    The returned header carries the plaintext salt of a version 2 blob.
    """
    raw = _unpack(blob)
    version = int(raw["v"])
    try:
        header = EnvelopeHeader(version, str(raw["pid"]), str(raw["kid"]))
        wrapped, wrap_nonce = bytes(raw["wk"]), bytes(raw["wn"])
        nonce, ciphertext = bytes(raw["n"]), bytes(raw["c"])
    except (KeyError, TypeError) as exc:
        raise CorruptEntry("record envelope is missing fields") from exc
    partner_key = key_for(header.partner_id, header.key_id)
    try:
        data_key = AESGCM(partner_key).decrypt(
            wrap_nonce,
            wrapped,
            _aad(version, b"wrap", record_id, header.partner_id, header.key_id),
        )
        plaintext = AESGCM(data_key).decrypt(
            nonce, ciphertext, _aad(version, b"data", record_id, header.partner_id, header.key_id)
        )
    except (InvalidTag, ValueError) as exc:
        raise CorruptEntry("record envelope failed authentication") from exc
    if version == 1:
        return header, plaintext
    if len(plaintext) < SALT_BYTES:
        raise CorruptEntry("record envelope is missing its plaintext salt")
    return replace(header, plaintext_salt=plaintext[:SALT_BYTES]), plaintext[SALT_BYTES:]
