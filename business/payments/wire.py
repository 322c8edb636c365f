"""The msgpack wire form of payments requests, as they will travel inside log entries.

A request is ``[WIRE_VERSION, kind, [field, ...]]``: ``kind`` is its type's number in
:data:`KINDS` (never reused), the fields are the dataclass fields in declaration order. Ints
that may pass 2^64 (amounts, prices, account ids: :data:`WIDE_FIELDS`) are 16-byte big-endian
``bin``, as in the ledger's and the Bridge's wire forms. The decoder builds the request through
its constructor, so every shape check of :mod:`business.payments.model` runs, and turns
anything wrong (garbage, an unknown version or kind, a missing field, a bad width) into
:class:`~node.errors.UnsupportedFormat`: every replica refuses the same bytes alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from business.payments.model import (
    Authorise,
    CancelOrder,
    Capture,
    ExpireOrder,
    FulfilOrder,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    Request,
    SetFee,
    Void,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = ["KINDS", "REQUEST_BYTES_MAX", "WIDE_FIELDS", "decode_request", "encode_request"]

WIRE_VERSION = 1
# A listing's description is at most 2,000 characters of up to 4 UTF-8 bytes, plus the rest.
REQUEST_BYTES_MAX = 16_384
KINDS: dict[int, type[Any]] = {
    1: Authorise,
    2: RedeemCode,
    3: Capture,
    4: Void,
    5: Refund,
    6: SetFee,
    7: PutListing,
    8: PlaceOrder,
    9: FulfilOrder,
    10: CancelOrder,
    11: ExpireOrder,
    12: RefundOrder,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}
WIDE_FIELDS = frozenset({"wallet_account", "amount", "price", "fee_min"})


def encode_request(request: Request) -> bytes:
    kind = _KIND_OF.get(type(request))
    if kind is None:
        raise InvalidRequest(f"not a payments request: {type(request).__name__}")
    fields = [
        getattr(request, f.name).to_bytes(16, "big")
        if f.name in WIDE_FIELDS
        else getattr(request, f.name)
        for f in dataclasses.fields(request)
    ]
    raw: bytes = msgpack.packb([WIRE_VERSION, kind, fields])
    return raw


def decode_request(raw: bytes) -> Request:
    """The request ``raw`` holds; :class:`UnsupportedFormat` for anything else."""
    if not isinstance(raw, bytes) or len(raw) > REQUEST_BYTES_MAX:
        raise UnsupportedFormat(f"a payments request is bytes, at most {REQUEST_BYTES_MAX}")
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise UnsupportedFormat("a payments request does not decode") from exc
    if not isinstance(value, list) or len(value) != 3 or value[0] != WIRE_VERSION:
        raise UnsupportedFormat("unknown payments request version")
    cls = KINDS.get(value[1]) if type(value[1]) is int else None
    if cls is None:
        raise UnsupportedFormat("unknown payments request kind")
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(value[2], list) or len(value[2]) != len(names):
        raise UnsupportedFormat(f"{cls.__name__} needs {len(names)} fields")
    kwargs: dict[str, Any] = {}
    for name, field in zip(names, value[2], strict=True):
        if name in WIDE_FIELDS:
            if type(field) is not bytes or len(field) != 16:
                raise UnsupportedFormat(f"{cls.__name__}.{name} must be 16 bytes")
            field = int.from_bytes(field, "big")
        kwargs[name] = field
    try:
        request: Request = cls(**kwargs)
    except InvalidRequest as exc:
        raise UnsupportedFormat(exc.detail) from exc
    return request
