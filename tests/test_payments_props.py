"""Property tests: any sequence of payments and orders through the real ledger core.

Every step goes through ``Payments.apply`` -> the real ``Ledger.apply`` on a MemoryView, and
:meth:`paymentskit.Shop.check` runs after each: every ledger balanced (posted and pending), no
wallet or settlement account overdrawn, refunds never above the capture, stock never negative,
every payment's state agreeing with its pending transfer and every order's with its payment.
Here also: the stock a listing shows plus what its live orders hold is always what it was
stocked with, and the wallets, settlement and fee accounts together always hold the funding.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from paymentskit import BAAS, FAUCET, FUNDING, OTHER, PLATFORM, SHOP, USERS, Shop, op, wallet

from business.ledger import AccountFlags, CreateAccount, CreateTransfer
from business.ledger.views import iter_accounts
from business.payments.core import platform_fees_account, settlement_account
from business.payments.model import (
    ORDER_PREFIX,
    AccountCode,
    CancelOrder,
    Capture,
    ExpireOrder,
    FulfilOrder,
    OrderState,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    SetFee,
    Void,
    decode_order,
)
from business.payments.model import Authorise as Auth

LISTING = b"L" * 16
STOCK = 6
TAKINGS = 100_000
PRICE = 30

KINDS = (
    "authorise", "capture", "void", "refund", "redeem", "advance", "place", "fulfil", "cancel",
    "expire", "refund_order",
)  # fmt: skip
steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1),  # which payment / order
        st.integers(1, 100),  # amount
        st.integers(0, 2),  # which user
        st.integers(0, 200),  # seconds to advance
    ),
    min_size=10,
    max_size=60,
)


def request(kind: str, n: int, amount: int, user: str, step: int, shop: Shop) -> object | None:
    pay, order, name = op(f"pay-{n}"), op(f"order-{n}"), f"{kind}-{step}"
    window = 300
    if kind == "authorise":
        return Auth(pay, SHOP, BAAS, wallet(user), 50 + amount, window)
    if kind == "capture":
        return Capture(op(name), SHOP, pay, amount)
    if kind == "void":
        return Void(op(name), SHOP, pay)
    if kind == "refund":
        return Refund(op(name), SHOP, pay, 1 + amount // 3)
    if kind == "redeem":
        h = shop.issue_code(f"code-{step}", user, limit=100)
        return RedeemCode(pay, SHOP, BAAS, h, amount, amount % 2 == 0, window)
    if kind == "place":
        return PlaceOrder(order, OTHER, LISTING, wallet(user), 1 + amount % 3, window)
    if kind == "fulfil":
        return FulfilOrder(op(name), SHOP, order)
    if kind == "cancel":
        return CancelOrder(op(name), SHOP, order)
    if kind == "expire":
        return ExpireOrder(op(name), PLATFORM, order)
    if kind == "refund_order":
        return RefundOrder(op(name), SHOP, order, 1 + amount // 2)
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.booleans())
def test_any_sequence_conserves_and_agrees(
    plan: list[tuple[str, int, int, int, int]], fee: bool
) -> None:
    shop = Shop()
    # The merchant holds takings from elsewhere, so only the core bounds refunds (the ledger
    # would refuse an over-refund of an empty settlement account on its own).
    settlement = settlement_account(SHOP, BAAS)
    flags = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    shop.ledger_apply(
        [
            CreateAccount(settlement, BAAS, int(AccountCode.SETTLEMENT), flags),
            CreateTransfer(99, FAUCET, settlement, TAKINGS, BAAS, 1),
        ]
    )
    if fee:
        assert shop.code(SetFee(op("fee"), PLATFORM, BAAS, 300, 2)) == "ok"
    put = PutListing(op("list"), SHOP, LISTING, BAAS, PRICE, STOCK, True, "Mug", "A mug.")
    assert shop.code(put) == "ok"
    for step, (kind, n, amount, u, seconds) in enumerate(plan):
        if kind == "advance":
            shop.now_ms += seconds * 1000
            shop.check()
            continue
        r = request(kind, n, amount, USERS[u], step, shop)
        event(f"{kind}: {shop.apply(r).code.value}")  # type: ignore[arg-type]
        held = 0
        for _key, raw in shop.view.scan(ORDER_PREFIX, ORDER_PREFIX[:-1] + b"0"):
            o = decode_order(raw)
            held += o.quantity if o.state in (OrderState.AUTHORISED, OrderState.FULFILLED,
                                              OrderState.REFUNDED) else 0  # fmt: skip
        assert shop.stock(LISTING) + held == STOCK
        accounts = {a.id: a for a in iter_accounts(shop.view)}
        holders = [wallet(x) for x in USERS]
        holders += [settlement_account(SHOP, BAAS), platform_fees_account(BAAS)]
        total = sum(
            accounts[i].credits_posted - accounts[i].debits_posted for i in holders if i in accounts
        )
        assert total == FUNDING * len(USERS) + TAKINGS
