"""The wire form of Bridge requests: every kind round-trips, anything else is refused typed."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from bridgekit import BAAS, SHOP, SHOP_PTS, SHOP_TOKEN, Market, account, op, policy, wallet
from hypothesis import given
from hypothesis import strategies as st

from business.bridge import (
    DefinePoints,
    ExpirePoints,
    FundLiquidity,
    IssuePoints,
    RedeemPoints,
    RegisterToken,
    ReversePoints,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
)
from business.bridge.model import AMOUNT_MAX
from business.bridge.wire import KINDS, decode_request, encode_request
from node.errors import UnsupportedFormat


def _requests() -> list[object]:
    m = Market.standard()
    q = m.quote("alice", 100)
    alice = account("alice", SHOP_PTS)
    return [
        DefinePoints(op("d"), SHOP, SHOP_PTS, "SHOP_PTS", 2, 365),
        RegisterToken(op("t"), SHOP, SHOP_TOKEN, "SHOPT", 18, b"\x01" * 20),
        IssuePoints(op("i"), SHOP, SHOP_PTS, alice, AMOUNT_MAX),
        RedeemPoints(op("r"), SHOP, SHOP_PTS, alice, 1),
        ReversePoints(op("v"), SHOP, SHOP_PTS, op("i"), 5),
        ExpirePoints(op("x"), SHOP, SHOP_PTS),
        FundLiquidity(op("f"), SHOP, SHOP_PTS, 10**30),
        TopUpReserve(op("u"), SHOP, BAAS, 10**20, source=7),
        SetReserveThreshold(op("h"), SHOP, BAAS, 0),
        policy(enabled=False),
        Swap(op("s"), SHOP, SHOP_PTS, wallet("alice"), q, q.digest()),
    ]


def test_every_kind_round_trips() -> None:
    requests = _requests()
    assert {type(r) for r in requests} == set(KINDS.values())
    for request in requests:
        assert decode_request(encode_request(request)) == request  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([2, 3, []]),  # unknown version
        msgpack.packb([1, 99, []]),  # unknown kind
        msgpack.packb([1, 6, [op("x"), SHOP]]),  # a field short
        msgpack.packb([1, 6, [op("x"), SHOP, 0]]),  # ledger 0
        msgpack.packb([1, 3, [op("x"), SHOP, 32, 5, b"\x00" * 16]]),  # a wide field as int
        msgpack.packb([1, 6, [op("x")[:31], SHOP, 32]]),  # a 31-byte op id
        b"\x00" * 5000,
    ],
)
def test_malformed_requests_are_refused_typed(raw: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_request(raw)


values = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
fields = st.recursive(
    st.lists(values, max_size=16), lambda inner: st.lists(inner, max_size=4), max_leaves=24
)


@given(st.binary(max_size=300))
def test_no_bytes_raise_anything_but_unsupported_format(raw: bytes) -> None:
    with contextlib.suppress(UnsupportedFormat):
        decode_request(raw)


@given(st.sampled_from(sorted(KINDS)), fields)
def test_no_field_list_raises_anything_but_unsupported_format(
    kind: int, items: list[object]
) -> None:
    with contextlib.suppress(UnsupportedFormat):
        decode_request(msgpack.packb([1, kind, items]))
