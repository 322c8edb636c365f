"""The on-disk entry format shared by every LevelDB database of a node.

A value is ``format version (1 byte) || checksum (16 bytes) || payload``, where the checksum is
the first 16 bytes of ``SHA-256(key || version || payload)``. Binding the key means a value
copied under another key is caught too. A mismatch raises :class:`CorruptEntry`; callers count
it and never serve the entry. An unknown version raises :class:`UnsupportedFormat`.
"""

from __future__ import annotations

import hashlib

from node.errors import CorruptEntry, UnsupportedFormat

__all__ = ["CHECKSUM_BYTES", "ENTRY_VERSION", "decode_entry", "encode_entry"]

ENTRY_VERSION = 1
CHECKSUM_BYTES = 16
HEADER_BYTES = 1 + CHECKSUM_BYTES


def _checksum(key: bytes, version: int, payload: bytes) -> bytes:
    digest = hashlib.sha256(key)
    digest.update(bytes((version,)))
    digest.update(payload)
    return digest.digest()[:CHECKSUM_BYTES]


def encode_entry(key: bytes, payload: bytes) -> bytes:
    return bytes((ENTRY_VERSION,)) + _checksum(key, ENTRY_VERSION, payload) + payload


def decode_entry(key: bytes, value: bytes) -> bytes:
    if len(value) < HEADER_BYTES:
        raise CorruptEntry("entry shorter than its header")
    version = value[0]
    if version != ENTRY_VERSION:
        raise UnsupportedFormat(f"unknown entry format version {version}")
    payload = value[HEADER_BYTES:]
    if _checksum(key, version, payload) != value[1:HEADER_BYTES]:
        raise CorruptEntry("entry checksum mismatch")
    return payload
