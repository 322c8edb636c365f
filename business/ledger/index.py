"""The ledger's index by scope tag (log feature 13): a partner's lists without walking the ledger.

Every account and transfer the partner API creates carries in ``user_data_128`` its *scope*,
an opaque tag of (partner, mode) (gateway/ledger_routes.py ``scope_of``). The list routes list
one scope's objects; before this index a node walked every key after the cursor and kept the
tagged ones, so a partner whose objects were sparse got short pages and, past a bound, 503
``ledger_list_too_sparse``. From log feature :data:`INDEX_FEATURE_VERSION` the ledger-ops
apply (node/consensus/ledger_ops.py) adds, for every account and transfer an entry creates
with a non-zero tag, one empty-valued key:

* ``lg/pa/<tag u128><account id u128>`` -- the scope's accounts in id order;
* ``lg/pt/<tag u128><transfer id u128>`` -- the scope's transfers in id order (the API's
  documented orders; by account the ledger's own ``lg/at/`` index stays newest first).

The index is derived from the ledger's own writes (:func:`tag_index_writes`), whoever made
them (raw events, the Bridge, payments, deposits, the sweeps), so it holds nothing the state
did not already hold: opaque tags and ids. It is state like any ``lg/`` key: carried by
snapshots, covered by the ledger state digest.

**What an entry created** is read off its writes and the ledger's last timestamp before it
(``lg/m``): timestamps are unique and grow, an object keeps the timestamp it was created
with, so an account or transfer value written with a timestamp after that one was created by
this entry; an updated account keeps its older one. No read per object.

**Upgrade.** The first entry applied at feature 13 writes the mark ``lg/pm`` (version, and
the ledger's last timestamp then: ``indexed_after``). Every object with a later timestamp is
indexed. On a ledger that had never created anything (``indexed_after`` 0: a cluster that
enabled feature 13 before its first ledger operation, as a fresh cluster does) the index is
complete and the node lists from it. A ledger upgraded with objects in it keeps the old walk
for its lists (:func:`index_complete` false): correct, with the old bounds; a backfill of
the older objects is not built yet (the apply's state view has no ordered scan, so it would
need a leader-proposed entry naming the ids).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from business.ledger.model import (
    ACCOUNT_HEAD_V1,
    ACCOUNT_PREFIX,
    META_KEY,
    META_V1,
    TRANSFER_PREFIX,
    TRANSFER_V1,
    VALUE_VERSION,
)
from node.consensus.state_machine import StateView, Write
from node.errors import UnsupportedFormat

__all__ = [
    "INDEX_FEATURE_VERSION",
    "INDEX_MARK_KEY",
    "TAG_ACCOUNTS_PREFIX",
    "TAG_TRANSFERS_PREFIX",
    "index_complete",
    "indexed_after",
    "tag_index_writes",
    "tag_key",
]

INDEX_FEATURE_VERSION = 13
TAG_ACCOUNTS_PREFIX = b"lg/pa/"  # + tag u128 + account id u128 -> b""
TAG_TRANSFERS_PREFIX = b"lg/pt/"  # + tag u128 + transfer id u128 -> b""
INDEX_MARK_KEY = b"lg/pm"  # -> MARK_V1: objects created after ``indexed_after`` are indexed
MARK_VERSION = 1
MARK_V1 = struct.Struct(">BQ")  # version, the ledger's last timestamp when indexing began
# The hot loop reads fields off the stored bytes (no decode: ~3x cheaper per transfer).
_PREFIX_BYTES = len(ACCOUNT_PREFIX)
_OBJECT_KEY_BYTES = _PREFIX_BYTES + 16
_NO_TAG = bytes(16)
_TRANSFER_TAG_AT = struct.calcsize(">B16s16s16s16s")  # version, dr, cr, amount, pending id
_TRANSFER_TS_AT = struct.calcsize(">B16s16s16s16s16sIIHH")  # the timestamp ends the value
assert len(TRANSFER_PREFIX) == _PREFIX_BYTES and TRANSFER_V1.size == _TRANSFER_TS_AT + 8
assert TRANSFER_V1.format.lstrip(">").startswith("B16s16s16s16s16sIIHH")


def tag_key(prefix: bytes, tag: int, object_id: int) -> bytes:
    """The index key of one object (``prefix``: :data:`TAG_ACCOUNTS_PREFIX` or
    :data:`TAG_TRANSFERS_PREFIX`)."""
    return prefix + tag.to_bytes(16, "big") + object_id.to_bytes(16, "big")


def _last_timestamp(view: StateView) -> int:
    raw = view.get(META_KEY)
    if raw is None:
        return 0  # a ledger that never created anything
    if len(raw) != META_V1.size:
        raise UnsupportedFormat("unknown ledger state layout version")
    last: int = META_V1.unpack(raw)[1]
    return last


def indexed_after(view: StateView) -> int | None:
    """The ledger's last timestamp when indexing began (objects after it are indexed), or
    None before feature 13's first entry."""
    raw = view.get(INDEX_MARK_KEY)
    if raw is None:
        return None
    if len(raw) != MARK_V1.size or raw[0] != MARK_VERSION:
        raise UnsupportedFormat("unknown ledger index mark version")
    after: int = MARK_V1.unpack(raw)[1]
    return after


def index_complete(view: StateView) -> bool:
    """Whether every tagged object of the ledger is in the index (lists may read only it)."""
    return indexed_after(view) == 0


def tag_index_writes(before: StateView, writes: Mapping[bytes, bytes | None]) -> list[Write]:
    """The index entries of the objects ``writes`` create (and the mark, on the first entry
    at feature 13); ``before`` is the state as of just before the entry."""
    last = _last_timestamp(before)
    out: list[Write] = []
    if before.get(INDEX_MARK_KEY) is None:
        out.append((INDEX_MARK_KEY, MARK_V1.pack(MARK_VERSION, last)))
    account_head = ACCOUNT_HEAD_V1.unpack_from
    for key, value in writes.items():
        if len(key) != _OBJECT_KEY_BYTES or value is None:  # most of an entry's writes
            continue
        head = key[:_PREFIX_BYTES]
        if head == ACCOUNT_PREFIX:
            _, _, _, _, tag_raw, timestamp = account_head(value)
            if timestamp > last and tag_raw != _NO_TAG:
                out.append((TAG_ACCOUNTS_PREFIX + tag_raw + key[_PREFIX_BYTES:], b""))
        elif head == TRANSFER_PREFIX and value[0] == VALUE_VERSION:  # not a sticky failure
            tag_raw = value[_TRANSFER_TAG_AT : _TRANSFER_TAG_AT + 16]
            timestamp = int.from_bytes(value[_TRANSFER_TS_AT:], "big")
            if timestamp > last and tag_raw != _NO_TAG:
                out.append((TAG_TRANSFERS_PREFIX + tag_raw + key[_PREFIX_BYTES:], b""))
    return out
