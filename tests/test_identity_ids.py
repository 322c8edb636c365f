"""Domain-separated ids: a key reused across routes, partners and modes never collides."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from business.identity.ids import (
    ASSET_INDEX_BAAS,
    ID_MAX,
    TAGS,
    Mode,
    account_id,
    code_hash,
    derive,
    ledger_number,
    mode_of_ledger,
    operation_id,
    partner_account_id,
    partner_id,
    transfer_id,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from node.errors import InvalidRequest

SHOP, OTHER = partner_id("demo-shop"), partner_id("other-shop")
WALLET = bytes(range(20))


def test_one_idempotency_key_on_every_route_partner_and_mode_gives_distinct_ids() -> None:
    key = "order-42"
    ops = {
        (p, m, kind): operation_id(p, m, kind, key)
        for p in (SHOP, OTHER)
        for m in Mode
        for kind in ("transfer", "transfer.batch", "payment", "swap")
    }
    assert len(set(ops.values())) == len(ops) == 16
    ledger_ids = {transfer_id(op, i) for op in ops.values() for i in range(3)}
    ledger_ids |= {account_id(op, i) for op in ops.values() for i in range(3)}
    assert len(ledger_ids) == 16 * 6  # transfers and accounts of one operation differ too


def test_the_same_inputs_give_the_same_id_and_known_vectors_stay_fixed() -> None:
    assert operation_id(SHOP, Mode.TEST, "transfer", "k") == operation_id(
        SHOP, Mode.TEST, "transfer", "k"
    )
    # Fixed vectors: changing the construction would change every stored id.
    assert partner_id("demo-shop").hex() == derive(b"baas/partner/v1", b"demo-shop")[:16].hex()
    assert derive(b"t", b"ab", b"c") != derive(b"t", b"a", b"bc")  # length prefixes
    assert derive(b"t", b"") != derive(b"t")
    assert len(set(TAGS)) == len(TAGS)


def test_wallets_accounts_and_user_references_are_scoped_by_mode_and_partner() -> None:
    test_w, live_w = wallet_id(WALLET, Mode.TEST), wallet_id(WALLET, Mode.LIVE)
    assert test_w != live_w
    baas_test = ledger_number(Mode.TEST, ASSET_INDEX_BAAS)
    baas_live = ledger_number(Mode.LIVE, ASSET_INDEX_BAAS)
    assert (baas_test, baas_live) == (2, 3)
    assert wallet_account_id(test_w, Mode.TEST, baas_test) != wallet_account_id(
        live_w, Mode.LIVE, baas_live
    )
    refs = {user_ref(p, m, "alice") for p in (SHOP, OTHER) for m in Mode}
    assert len(refs) == 4
    assert b"alice" not in b"".join(refs)
    roles = {partner_account_id(SHOP, Mode.TEST, r, baas_test) for r in ("reserve", "fees")}
    assert len(roles) == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda: operation_id(SHOP, Mode.TEST, "transfer", ""),
        lambda: operation_id(SHOP, Mode.TEST, "transfer", "k" * 256),
        lambda: operation_id(b"short", Mode.TEST, "transfer", "k"),
        lambda: transfer_id(b"\x00" * 31, 0),
        lambda: transfer_id(b"\x00" * 32, -1),
        lambda: wallet_id(b"\x00" * 19, Mode.TEST),
        lambda: wallet_account_id(b"\x00" * 16, Mode.TEST, 0),
        lambda: code_hash(b"short"),
        lambda: ledger_number(Mode.TEST, 0),
        lambda: partner_id(""),
    ],
)
def test_bad_inputs_are_refused(call: object) -> None:
    with pytest.raises(InvalidRequest):
        call()  # type: ignore[operator]


@given(st.integers(1, (1 << 31) - 1), st.sampled_from(list(Mode)))
def test_ledger_parity_is_the_mode(asset_index: int, mode: Mode) -> None:
    ledger = ledger_number(mode, asset_index)
    assert mode_of_ledger(ledger) == mode
    other = Mode.LIVE if mode == Mode.TEST else Mode.TEST
    assert ledger != ledger_number(other, asset_index)


_key = st.text(min_size=1, max_size=40)
_op = st.tuples(
    st.sampled_from([SHOP, OTHER]),
    st.sampled_from(list(Mode)),
    st.sampled_from(["transfer", "payment", "swap"]),
    _key,
)


@given(_op, _op)
def test_operation_ids_collide_only_for_equal_inputs(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    assert (operation_id(*a) == operation_id(*b)) == (a == b)


@given(_op, st.integers(0, 100), st.integers(0, 100))
def test_ledger_ids_are_never_reserved_and_kinds_never_collide(
    op: tuple,
    i: int,
    j: int,  # type: ignore[type-arg]
) -> None:
    o = operation_id(*op)
    t, a = transfer_id(o, i), account_id(o, j)
    assert 0 < t < ID_MAX and 0 < a < ID_MAX
    assert t != a
    assert (transfer_id(o, i) == transfer_id(o, j)) == (i == j)


@given(st.lists(st.binary(max_size=8), max_size=4), st.lists(st.binary(max_size=8), max_size=4))
def test_derive_is_injective_over_field_lists(a: list[bytes], b: list[bytes]) -> None:
    assert (derive(b"tag", *a) == derive(b"tag", *b)) == (a == b)
    assert derive(b"tag-a", *a) != derive(b"tag-b", *a)
