"""The payments requests' msgpack wire form: every kind round-trips; anything else is refused."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paymentskit import BAAS, SHOP, op, wallet

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
from business.payments.wire import KINDS, REQUEST_BYTES_MAX, decode_request, encode_request
from node.errors import UnsupportedFormat

BIG = (1 << 128) - 1
EXAMPLES: list[Request] = [
    Authorise(op("a"), SHOP, BAAS, wallet("ann"), BIG, 600),
    RedeemCode(op("r"), SHOP, BAAS, b"\x07" * 32, 5, True, 60),
    Capture(op("c"), SHOP, op("a"), 1),
    Void(op("v"), SHOP, op("a")),
    Refund(op("f"), SHOP, op("a"), 2),
    SetFee(op("s"), bytes(16), BAAS, 250, BIG),
    PutListing(op("l"), SHOP, b"L" * 16, BAAS, 3, 9, False, "Mug ☕", "é" * 2000),
    PlaceOrder(op("o"), SHOP, b"L" * 16, wallet("bob"), 2, 60),
    FulfilOrder(op("ff"), SHOP, op("o")),
    CancelOrder(op("cc"), SHOP, op("o")),
    ExpireOrder(op("xx"), bytes(16), op("o")),
    RefundOrder(op("rr"), SHOP, op("o"), 4),
]


def test_every_kind_has_an_example_and_round_trips() -> None:
    assert {type(e) for e in EXAMPLES} == set(KINDS.values())
    for e in EXAMPLES:
        raw = encode_request(e)
        assert len(raw) <= REQUEST_BYTES_MAX
        assert decode_request(raw) == e


@given(st.binary(max_size=300))
def test_garbage_is_refused_as_unsupported(raw: bytes) -> None:
    with contextlib.suppress(UnsupportedFormat):  # any other exception fails the test
        decode_request(raw)


@pytest.mark.parametrize(
    "value",
    [
        [2, 3, []],  # unknown version
        [1, 99, []],  # unknown kind
        [1, 3, [op("c"), SHOP, op("a")]],  # a field missing
        [1, 3, [op("c"), SHOP, op("a"), 1]],  # an amount not 16 bytes
        [1, 3, [op("c"), SHOP, op("a"), bytes(16)]],  # amount 0: the constructor refuses
        [1, 4, [op("v"), SHOP[:3], op("a")]],  # a short partner id
        [1, 2, [op("r"), SHOP, BAAS, bytes(32), (5).to_bytes(16, "big"), 1, 60]],  # not a bool
    ],
)
def test_malformed_requests_are_refused(value: list[object]) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_request(msgpack.packb(value))
    with pytest.raises(UnsupportedFormat):
        decode_request(b"\x00" * (REQUEST_BYTES_MAX + 1))
