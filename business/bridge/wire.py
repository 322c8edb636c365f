"""The msgpack wire form of Bridge requests, as they will travel inside log entries.

A request is ``[WIRE_VERSION, kind, [field, ...]]``: ``kind`` is its type's number in
:data:`KINDS` (never reused), the fields are the dataclass fields in declaration order. Ints
that may pass 2^64 (amounts, rates, account ids: :data:`WIDE_FIELDS`) are 16-byte big-endian
``bin``, as in the ledger's wire form; a :class:`~business.bridge.model.Quote` inside a swap is
its own field list. The decoder builds the request through its constructor, so every shape
check of :mod:`business.bridge.model` runs, and turns anything wrong (garbage, an unknown
version or kind, a missing field, a bad width) into :class:`~node.errors.UnsupportedFormat`:
every replica refuses the same bytes alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from business.bridge.model import (
    DefinePoints,
    Direction,
    ExpirePoints,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    RegisterToken,
    Request,
    ReversePoints,
    SetPolicy,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = ["KINDS", "WIDE_FIELDS", "WIRE_VERSION", "decode_request", "encode_request"]

WIRE_VERSION = 1
REQUEST_BYTES_MAX = 4096  # a swap with its quote is about 400 bytes
KINDS: dict[int, type[Any]] = {
    1: DefinePoints,
    2: RegisterToken,
    3: IssuePoints,
    4: RedeemPoints,
    5: ReversePoints,
    6: ExpirePoints,
    7: FundLiquidity,
    8: TopUpReserve,
    9: SetReserveThreshold,
    10: SetPolicy,
    11: Swap,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}
WIDE_FIELDS = frozenset(
    {
        "wallet_account", "amount", "source", "threshold", "rate_num", "rate_den", "swap_min",
        "swap_max", "user_window_max", "partner_window_max", "fee_min", "amount_in",
        "amount_out", "fee",
    }
)  # fmt: skip


def _fields_out(obj: Any) -> list[Any]:
    out: list[Any] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Quote):
            out.append(_fields_out(value))
        elif f.name in WIDE_FIELDS:
            out.append(value.to_bytes(16, "big"))
        elif isinstance(value, bool):
            out.append(value)
        elif isinstance(value, int):
            out.append(int(value))
        else:
            out.append(value)
    return out


def _fields_in(cls: type[Any], values: object) -> Any:
    fields = dataclasses.fields(cls)
    if not isinstance(values, list) or len(values) != len(fields):
        raise UnsupportedFormat(f"{cls.__name__} needs {len(fields)} fields")
    kwargs: dict[str, Any] = {}
    for f, value in zip(fields, values, strict=True):
        if f.name == "quote":
            value = _fields_in(Quote, value)
        elif f.name == "direction":
            if type(value) is not int or value not in (1, 2):
                raise UnsupportedFormat("direction must be 1 or 2")
            value = Direction(value)
        elif f.name in WIDE_FIELDS:
            if type(value) is not bytes or len(value) != 16:
                raise UnsupportedFormat(f"{cls.__name__}.{f.name} must be 16 bytes")
            value = int.from_bytes(value, "big")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except InvalidRequest as exc:
        raise UnsupportedFormat(exc.detail) from exc


def encode_request(request: Request) -> bytes:
    kind = _KIND_OF.get(type(request))
    if kind is None:
        raise InvalidRequest(f"not a Bridge request: {type(request).__name__}")
    raw: bytes = msgpack.packb([WIRE_VERSION, kind, _fields_out(request)])
    return raw


def decode_request(raw: bytes) -> Request:
    """The request ``raw`` holds; :class:`UnsupportedFormat` for anything else."""
    if not isinstance(raw, bytes) or len(raw) > REQUEST_BYTES_MAX:
        raise UnsupportedFormat(f"a Bridge request is bytes, at most {REQUEST_BYTES_MAX}")
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise UnsupportedFormat("a Bridge request does not decode") from exc
    if not isinstance(value, list) or len(value) != 3 or value[0] != WIRE_VERSION:
        raise UnsupportedFormat("unknown Bridge request version")
    cls = KINDS.get(value[1]) if type(value[1]) is int else None
    if cls is None:
        raise UnsupportedFormat("unknown Bridge request kind")
    request: Request = _fields_in(cls, value[2])
    return request
