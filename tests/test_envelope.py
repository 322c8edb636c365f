"""The AES-256-GCM envelope: round trip, binding to record and partner, tamper detection."""

from __future__ import annotations

import os

import pytest

from node.errors import CorruptEntry, UnsupportedFormat
from node.storage.envelope import open_blob, read_header, seal_blob

KEY = os.urandom(32)
RID = os.urandom(32)


def _keys(pid: str, kid: str) -> bytes:
    assert (pid, kid) == ("p1", "k1")
    return KEY


def test_round_trip_and_header() -> None:
    blob = seal_blob(b"hello", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY)
    assert b"hello" not in blob
    header, plaintext = open_blob(blob, record_id=RID, key_for=_keys)
    assert plaintext == b"hello"
    assert read_header(blob) == header and header.partner_id == "p1" and header.key_id == "k1"


def test_fresh_data_key_each_time() -> None:
    a = seal_blob(b"same", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY)
    b = seal_blob(b"same", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY)
    assert a != b


def test_blob_is_bound_to_its_record_id() -> None:
    blob = seal_blob(b"hello", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY)
    with pytest.raises(CorruptEntry):
        open_blob(blob, record_id=os.urandom(32), key_for=_keys)


@pytest.mark.parametrize("position", [-1, -20, 40])
def test_any_flipped_byte_fails(position: int) -> None:
    blob = bytearray(
        seal_blob(b"hello world", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY)
    )
    blob[position] ^= 0x01
    with pytest.raises((CorruptEntry, UnsupportedFormat, AssertionError)):
        open_blob(bytes(blob), record_id=RID, key_for=_keys)


def test_unknown_version_is_refused() -> None:
    import msgpack

    blob = msgpack.packb({"v": 99}, use_bin_type=True)
    with pytest.raises(UnsupportedFormat):
        open_blob(blob, record_id=RID, key_for=_keys)
