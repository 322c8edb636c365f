"""The Market on the real ledger: listings, the order table (every pair), stock held and
released, refunds following payments."""

from __future__ import annotations

import pytest
from paymentskit import BAAS, OTHER, PLATFORM, SHOP, Shop, op, wallet

from business.payments.core import ORDER_TABLE, settlement_account
from business.payments.model import (
    OP_PREFIX,
    CancelOrder,
    Capture,
    ExpireOrder,
    FulfilOrder,
    OrderCommand,
    OrderState,
    PaymentResult,
    PaymentsConfig,
    PlaceOrder,
    PutListing,
    Refund,
    RefundOrder,
    Void,
)

OS = OrderState
C = OrderCommand
WINDOW_S = 600
LISTING = b"L" * 16
PRICE = 25


def listing(shop: Shop, stock: int = 5, **kw: object) -> str:
    fields: dict[str, object] = {
        "op": op(f"list-{shop.count}"), "partner": SHOP, "listing": LISTING, "ledger": BAAS,
        "price": PRICE, "stock": stock, "active": True, "title": "Mug",
        "description": "A mug.",
    }  # fmt: skip
    fields.update(kw)
    return shop.code(PutListing(**fields))  # type: ignore[arg-type]


def place(shop: Shop, name: str, quantity: int = 2, user: str = "ann") -> str:
    return shop.code(PlaceOrder(op(name), OTHER, LISTING, wallet(user), quantity, WINDOW_S))


def in_state(state: OS | None) -> tuple[Shop, bytes]:
    shop = Shop()
    assert listing(shop) == "ok"
    order = op("order")
    if state is None:
        return shop, order
    assert place(shop, "order") == "ok"
    if state in (OS.FULFILLED, OS.REFUNDED):
        assert shop.code(FulfilOrder(op("f0"), SHOP, order)) == "ok"
    if state == OS.REFUNDED:
        assert shop.code(RefundOrder(op("r0"), SHOP, order, 2 * PRICE)) == "ok"
    if state == OS.CANCELLED:
        assert shop.code(CancelOrder(op("c0"), SHOP, order)) == "ok"
    if state in (OS.LAPSED, OS.EXPIRED):
        shop.now_ms += WINDOW_S * 1000 + 1
    if state == OS.EXPIRED:
        assert shop.code(ExpireOrder(op("x0"), SHOP, order)) == "ok"
    assert shop.order_state(order) == state
    return shop, order


def command(c: OrderCommand, order: bytes) -> object:
    if c == C.PLACE:
        return PlaceOrder(order, OTHER, LISTING, wallet("ann"), 2, WINDOW_S)
    if c == C.REFUND:
        return RefundOrder(op("cmd"), SHOP, order, 1)
    return {C.FULFIL: FulfilOrder, C.CANCEL: CancelOrder, C.EXPIRE: ExpireOrder}[c](
        op("cmd"), SHOP, order
    )


def test_the_order_table_covers_every_pair() -> None:
    states: list[OS | None] = [None, *OS]
    assert set(ORDER_TABLE) == {(s, c) for s in states for c in C}


@pytest.mark.parametrize(("state", "cmd"), sorted(ORDER_TABLE, key=repr))
def test_every_order_state_command_pair_does_what_the_table_says(
    state: OS | None, cmd: OrderCommand
) -> None:
    shop, order = in_state(state)
    if cmd == C.PLACE and state is not None:
        shop.view.apply([(OP_PREFIX + order, None)])  # as for payments: the op's result first
    stock = shop.stock(LISTING)
    before = shop.payments_state()
    outcome = shop.apply(command(cmd, order))  # type: ignore[arg-type]
    expected = ORDER_TABLE[(state, cmd)]
    if isinstance(expected, PaymentResult):
        assert outcome.code == expected
        assert shop.payments_state() == before
    else:
        assert outcome.code == PaymentResult.OK
        assert shop.order_state(order) == expected
        held = {C.PLACE: -2, C.CANCEL: 2, C.EXPIRE: 2}.get(cmd, 0)
        assert shop.stock(LISTING) == stock + held


def test_an_order_reserves_stock_and_authorises_then_fulfil_captures() -> None:
    shop = Shop()
    assert listing(shop, stock=3) == "ok"
    assert place(shop, "o1", 2) == "ok"
    assert shop.stock(LISTING) == 1
    assert shop.available(wallet("ann")) == 10_000 - 2 * PRICE
    assert place(shop, "o2", 2, user="bob") == "sold_out"
    assert shop.code(FulfilOrder(op("f"), OTHER, op("o1"))) == "order_not_found"  # not its order
    assert shop.code(FulfilOrder(op("f2"), SHOP, op("o1"))) == "ok"
    assert shop.balance(settlement_account(SHOP, BAAS)) == 2 * PRICE
    assert shop.code(RefundOrder(op("r1"), SHOP, op("o1"), PRICE)) == "ok"
    assert shop.order_state(op("o1")) == OS.FULFILLED
    assert shop.code(RefundOrder(op("r2"), SHOP, op("o1"), PRICE + 1)) == "refund_exceeds_captured"
    assert shop.code(RefundOrder(op("r3"), SHOP, op("o1"), PRICE)) == "ok"
    assert shop.order_state(op("o1")) == OS.REFUNDED
    assert shop.balance(wallet("ann")) == 10_000


def test_a_lapsed_order_holds_its_stock_until_expired_by_the_merchant_or_the_platform() -> None:
    shop = Shop()
    assert listing(shop, stock=2) == "ok"
    assert place(shop, "o1", 2) == "ok"
    shop.now_ms += WINDOW_S * 1000 + 1
    assert shop.order_state(op("o1")) == OS.LAPSED
    assert shop.code(FulfilOrder(op("f"), SHOP, op("o1"))) == "order_expired"
    assert shop.code(ExpireOrder(op("x"), OTHER, op("o1"))) == "order_not_found"
    assert shop.code(ExpireOrder(op("x2"), PLATFORM, op("o1"))) == "ok"
    assert shop.stock(LISTING) == 2
    assert place(shop, "o2", 2, user="bob") == "ok"


def test_an_order_not_yet_lapsed_cannot_be_expired() -> None:
    shop = Shop()
    assert listing(shop) == "ok"
    assert place(shop, "o1") == "ok"
    assert shop.code(ExpireOrder(op("x"), PLATFORM, op("o1"))) == "order_not_expired"


def test_listing_rules() -> None:
    shop = Shop(PaymentsConfig(listings_per_partner_max=1, title_chars_max=5))
    assert listing(shop, title="x" * 6) == "bound_exceeded"
    assert listing(shop) == "ok"
    assert listing(shop, stock=9) == "ok"  # the partner replaces its own listing
    assert shop.stock(LISTING) == 9
    assert listing(shop, partner=OTHER) == "listing_foreign"
    assert listing(shop, listing=b"M" * 16) == "listings_full"
    assert listing(shop, active=False) == "ok"
    assert place(shop, "o") == "listing_inactive"
    assert shop.code(PlaceOrder(op("o2"), OTHER, b"Z" * 16, wallet("ann"), 1, 60)) == (
        "listing_not_found"
    )


def test_an_order_the_wallet_cannot_pay_reserves_no_stock() -> None:
    shop = Shop()
    assert listing(shop, stock=1000, price=5000) == "ok"
    assert place(shop, "o", 3) == "insufficient_funds"
    assert shop.stock(LISTING) == 1000
    assert shop.order_state(op("o")) is None


# --- search -------------------------------------------------------------------------------


def test_search_filters_pages_and_never_reads_more_than_its_bound() -> None:
    from business.payments.views import ListingQuery, search_listings

    shop = Shop(PaymentsConfig(search_scan_max=5))
    for n in range(12):
        partner = SHOP if n % 2 == 0 else OTHER
        colour = "red" if n < 6 else "blue"
        fields: dict[str, object] = {"listing": bytes([n]) * 16, "partner": partner,
                                     "price": 10 * (n + 1), "title": f"Item {n}",
                                     "description": colour}  # fmt: skip
        assert listing(shop, n % 3, **fields) == "ok"
    config = shop.payments.config

    def ids(query: ListingQuery) -> tuple[list[int], bytes | None]:
        page = search_listings(shop.view, query, config)
        return [lid[0] for lid, _ in page.listings], page.resume_after

    assert ids(ListingQuery(limit=3)) == ([0, 1, 2], bytes([2]) * 16)
    assert ids(ListingQuery(limit=3, after=bytes([2]) * 16)) == ([3, 4, 5], bytes([5]) * 16)
    # Only SHOP's, in stock, blue: the scan stops at its bound of 5 reads and says where.
    query = ListingQuery(partner=SHOP, in_stock=True, text="BLUE", limit=10)
    assert ids(query) == ([], bytes([4]) * 16)
    resumed = ListingQuery(partner=SHOP, in_stock=True, text="BLUE", after=bytes([4]) * 16)
    assert ids(resumed) == ([8], bytes([9]) * 16)  # 6 has no stock; 8 does and is blue
    priced = ListingQuery(price_min=50, price_max=70, limit=10, after=bytes([3]) * 16)
    assert ids(priced) == ([4, 5, 6], bytes([8]) * 16)
    assert ids(ListingQuery(after=bytes([9]) * 16)) == ([10, 11], None)  # the end


def test_a_listing_is_priced_in_baas_or_the_partners_own_asset() -> None:
    from business.ledger import AssetKind, CreateAsset

    shop = Shop()
    shop.ledger_apply([CreateAsset(34, AssetKind.POINT, 0)])
    assert listing(shop, ledger=40) == "asset_not_found"
    assert listing(shop, ledger=34) == "asset_foreign"  # no Bridge record names SHOP


def test_an_orders_payment_moves_only_by_the_orders_commands() -> None:
    shop = Shop()
    assert listing(shop) == "ok" and place(shop, "o1") == "ok"
    for request in (
        Capture(op("c"), SHOP, op("o1"), 10),
        Void(op("v"), SHOP, op("o1")),
        Refund(op("r"), SHOP, op("o1"), 10),
    ):
        assert shop.code(request) == "payment_of_order"
    # another merchant still learns nothing: not found, not "of an order"
    assert shop.code(Void(op("v2"), OTHER, op("o1"))) == "payment_not_found"
    assert shop.code(CancelOrder(op("cancel"), SHOP, op("o1"))) == "ok"
