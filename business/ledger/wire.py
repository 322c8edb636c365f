"""The msgpack wire form of ledger events, as they travel inside log entries.

A batch is ``[WIRE_VERSION, [event, ...]]``; each event is a short array led by its type::

    [1, ledger, kind, scale, user_data_128]                                   CreateAsset
    [2, id, ledger, code, flags, user_data_128]                               CreateAccount
    [3, id, debit, credit, amount, ledger, code, flags, pending_id, timeout,
        user_data_128]                                                        CreateTransfer

Ids, amounts and ``user_data_128`` are 16-byte big-endian ``bin`` (msgpack integers stop at
2^64); the rest are msgpack integers. Positional arrays keep a 1,000-transfer batch near 100 KB.
The decoder checks every field's type and width and the batch bound, and turns anything else
(garbage, truncation, an unknown version or type, a wrong width) into
:class:`~node.errors.UnsupportedFormat` -- it never raises another exception type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from business.ledger.model import (
    U16_MAX,
    U32_MAX,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "WIRE_VERSION",
    "decode_events",
    "encode_events",
    "event_from_wire",
    "event_to_wire",
]

WIRE_VERSION = 1
_ASSET, _ACCOUNT, _TRANSFER = 1, 2, 3
_EVENT_FIELDS = {_ASSET: 5, _ACCOUNT: 6, _TRANSFER: 11}

# Building a decoded transfer through its slots: the decoder has already checked every field's
# type and width (``_id``, ``_n``), which is all ``CreateTransfer.__post_init__`` checks, and
# the frozen dataclass's __init__ plus that re-check cost ~3x this. The value is the same
# frozen event (equal, hashed and printed alike). Transfers are the events of every operation;
# accounts and assets keep the checked constructor.
_new_transfer = CreateTransfer.__new__
(_t_id, _t_dr, _t_cr, _t_amount, _t_ledger, _t_code, _t_flags, _t_pid, _t_timeout, _t_ud) = (
    CreateTransfer.__dict__[name].__set__
    for name in (
        "id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "flags",
        "pending_id", "timeout", "user_data_128",
    )
)  # fmt: skip


def _b(value: int) -> bytes:
    return value.to_bytes(16, "big")


def event_to_wire(e: Event) -> list[Any]:
    try:
        if type(e) is CreateTransfer:
            return [
                _TRANSFER, _b(e.id), _b(e.debit_account_id), _b(e.credit_account_id),
                _b(e.amount), e.ledger, e.code, e.flags, _b(e.pending_id), e.timeout,
                _b(e.user_data_128),
            ]  # fmt: skip
        if type(e) is CreateAccount:
            return [_ACCOUNT, _b(e.id), e.ledger, e.code, e.flags, _b(e.user_data_128)]
        if type(e) is CreateAsset:
            return [_ASSET, e.ledger, e.kind, e.scale, _b(e.user_data_128)]
    except (OverflowError, AttributeError, TypeError) as exc:
        raise InvalidRequest(f"a ledger event field does not fit its width: {exc}") from exc
    raise InvalidRequest(f"not a ledger event: {type(e).__name__}")


def encode_events(events: Sequence[Event]) -> bytes:
    packed: bytes = msgpack.packb(
        [WIRE_VERSION, [event_to_wire(e) for e in events]], use_bin_type=True
    )
    return packed


def _id(raw: object) -> int:
    if type(raw) is not bytes or len(raw) != 16:
        raise UnsupportedFormat("a ledger id or amount must be 16 bytes")
    return int.from_bytes(raw, "big")


def _n(raw: object, high: int) -> int:
    if type(raw) is not int or not 0 <= raw <= high:
        raise UnsupportedFormat(f"a ledger field must be an integer in 0..{high}")
    return raw


def event_from_wire(raw: object) -> Event:
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise UnsupportedFormat("a ledger event must be an array led by its type")
    kind = raw[0]
    if _EVENT_FIELDS.get(kind) != len(raw):
        raise UnsupportedFormat(f"unknown ledger event type {kind} or wrong field count")
    if kind == _TRANSFER:
        e = _new_transfer(CreateTransfer)
        _t_id(e, _id(raw[1]))
        _t_dr(e, _id(raw[2]))
        _t_cr(e, _id(raw[3]))
        _t_amount(e, _id(raw[4]))
        _t_ledger(e, _n(raw[5], U32_MAX))
        _t_code(e, _n(raw[6], U16_MAX))
        _t_flags(e, _n(raw[7], U16_MAX))
        _t_pid(e, _id(raw[8]))
        _t_timeout(e, _n(raw[9], U32_MAX))
        _t_ud(e, _id(raw[10]))
        return e
    if kind == _ACCOUNT:
        return CreateAccount(
            id=_id(raw[1]),
            ledger=_n(raw[2], U32_MAX),
            code=_n(raw[3], U16_MAX),
            flags=_n(raw[4], U16_MAX),
            user_data_128=_id(raw[5]),
        )
    return CreateAsset(
        ledger=_n(raw[1], U32_MAX),
        kind=_n(raw[2], 255),
        scale=_n(raw[3], 255),
        user_data_128=_id(raw[4]),
    )


def decode_events(payload: bytes, *, events_max: int, bytes_max: int) -> list[Event]:
    """The events of one wire batch; refuses anything malformed with UnsupportedFormat."""
    if type(payload) is not bytes or len(payload) > bytes_max:
        raise UnsupportedFormat(f"a ledger batch is bytes of at most {bytes_max}")
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=16,
            max_str_len=0,
            max_array_len=max(events_max, 16),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same
        raise UnsupportedFormat(f"a ledger batch is not valid msgpack: {exc}") from exc
    if type(raw) is not list or len(raw) != 2 or raw[0] != WIRE_VERSION or type(raw[0]) is not int:
        raise UnsupportedFormat("unknown ledger wire version")
    events = raw[1]
    if type(events) is not list or len(events) > events_max:
        raise UnsupportedFormat(f"a ledger batch holds a list of at most {events_max} events")
    return [event_from_wire(e) for e in events]
