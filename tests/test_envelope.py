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


def test_version_2_carries_the_plaintext_salt_encrypted() -> None:
    salt = os.urandom(32)
    blob = seal_blob(
        b"hello", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY, plaintext_salt=salt
    )
    assert salt not in blob and b"hello" not in blob
    assert read_header(blob).version == 2 and read_header(blob).plaintext_salt is None
    header, plaintext = open_blob(blob, record_id=RID, key_for=_keys)
    assert plaintext == b"hello" and header.plaintext_salt == salt and header.version == 2
    v1_header, _ = open_blob(
        seal_blob(b"hello", record_id=RID, partner_id="p1", key_id="k1", partner_key=KEY),
        record_id=RID,
        key_for=_keys,
    )
    assert v1_header.plaintext_salt is None and v1_header.version == 1


def test_a_version_2_blob_relabelled_version_1_fails_to_open() -> None:
    import msgpack

    blob = seal_blob(
        b"hello",
        record_id=RID,
        partner_id="p1",
        key_id="k1",
        partner_key=KEY,
        plaintext_salt=os.urandom(32),
    )
    raw = msgpack.unpackb(blob, raw=False)
    raw["v"] = 1
    with pytest.raises(CorruptEntry):
        open_blob(msgpack.packb(raw, use_bin_type=True), record_id=RID, key_for=_keys)


def test_a_salt_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError):
        seal_blob(
            b"x",
            record_id=RID,
            partner_id="p1",
            key_id="k1",
            partner_key=KEY,
            plaintext_salt=b"short",
        )
