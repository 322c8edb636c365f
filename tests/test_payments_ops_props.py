"""Seeded random runs of payments and Market operations on the log (feature 9, the node's own
dispatcher on a real LevelDB): authorisations, captures, voids, refunds, orders, fulfilments,
cancellations and ticks far and near, several operations per entry. After every entry: every
ledger balanced (posted and pending), no flagged account overdrawn, every payment's state
agreeing with its pending transfer in the ledger (and every order's with its payment), refunds
never above the capture, and the listing's stock plus what authorised orders hold and fulfilled
ones sold equal to what was put; at the end every payment queued for expiry has been swept
once its minute is over, and no event was dropped from the outbox.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from bridgeopskit import ALICE, CAROL, POINTS, Node, rid
from identitykit import SHOP
from paymentskit import AGREES, ORDER_OF_PAYMENT, check_ledgers
from paymentsopskit import ALICE_PTS, CAROL_PTS, pm_op, shop_world

from business.ledger.model import ACCOUNT_PREFIX, decode_account
from business.ledger.views import get_pending_status
from business.payments import (
    Authorise,
    CancelOrder,
    Capture,
    FulfilOrder,
    PlaceOrder,
    PutListing,
    Refund,
    Void,
)
from business.payments.core import order_state, payment_state
from business.payments.model import (
    ORDER_PREFIX,
    PAYMENT_PREFIX,
    OrderState,
    PaymentState,
    decode_listing,
    decode_order,
    decode_payment,
    listing_key,
)
from business.payments.outbox import read_head
from node.consensus.ledger_ops import LEDGER_TICK, Operation
from node.consensus.state_machine import AppEntry

LISTING = b"R" * 16
STOCK = 20
USERS = ((ALICE, ALICE_PTS), (CAROL, CAROL_PTS))


def check(node: Node) -> None:
    with node.db.iterator(prefix=ACCOUNT_PREFIX) as it:
        check_ledgers(
            decode_account(int.from_bytes(key[len(ACCOUNT_PREFIX) :], "big"), raw)
            for key, raw in it
        )
    held = 0
    with node.db.iterator(prefix=PAYMENT_PREFIX) as it:
        for key, raw in it:
            p = decode_payment(raw)
            assert 0 <= p.refunded <= p.captured <= p.amount
            state = payment_state(node.view, p, node.now_ms)
            assert get_pending_status(node.view, p.pending) in AGREES[state], state
            order = node.view.get(ORDER_PREFIX + key[len(PAYMENT_PREFIX) :])
            if order is not None:
                o = decode_order(order)
                assert order_state(node.view, o, p, node.now_ms) in ORDER_OF_PAYMENT[state]
                if o.state in (OrderState.AUTHORISED, OrderState.FULFILLED, OrderState.REFUNDED):
                    held += o.quantity  # reserved, or sold (a refund does not restock)
    raw = node.view.get(listing_key(LISTING))
    assert raw is not None and decode_listing(raw).stock + held == STOCK


def one(rng: random.Random, n: int, ids: list[bytes]) -> Operation:
    account, pts = rng.choice(USERS)
    kind = rng.randrange(7)
    window = rng.choice((60, 120, 3600))
    if kind == 0 or not ids:
        request = Authorise(rid(n), SHOP, POINTS, pts, rng.randrange(1, 200), window)
        return pm_op(n, request, signers=(account,))
    if kind == 1:
        order = PlaceOrder(rid(n), SHOP, LISTING, pts, rng.randrange(1, 4), window)
        return pm_op(n, order, signers=(account,))
    target = rng.choice(ids)
    if kind == 2:
        return pm_op(n, Capture(rid(n), SHOP, target, rng.randrange(1, 200)))
    if kind == 3:
        return pm_op(n, Void(rid(n), SHOP, target))
    if kind == 4:
        return pm_op(n, Refund(rid(n), SHOP, target, rng.randrange(1, 100)))
    if kind == 5:
        return pm_op(n, FulfilOrder(rid(n), SHOP, target))
    return pm_op(n, CancelOrder(rid(n), SHOP, target))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_payments_keep_every_invariant(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    node = shop_world(tmp_path / "db")
    try:
        put = PutListing(rid(99), SHOP, LISTING, POINTS, 7, STOCK, True, "Thing", "")
        node.ops(pm_op(99, put))
        n, ids = 100, []
        for _ in range(25):
            if rng.random() < 0.2:  # time passes: near a window's end, or far past them
                step = rng.choice((30_000, 61_000, 3_700_000))
                node.apply(AppEntry(LEDGER_TICK, {}), now_ms=node.now_ms + step)
                check(node)
                continue
            ops = []
            for _ in range(rng.randrange(1, 5)):
                ops.append(one(rng, n, ids))
                ids.append(rid(n))
                n += 1
            node.ops(*ops)
            check(node)
        for _ in range(3):  # past every window, then the sweep drains the queue
            node.apply(AppEntry(LEDGER_TICK, {}), now_ms=node.now_ms + 2 * 3_600_000)
        check(node)
        assert node.view.get(b"pm/xs") is None
        with node.db.iterator(prefix=PAYMENT_PREFIX) as it:
            for _, raw in it:
                state = payment_state(node.view, decode_payment(raw), node.now_ms)
                assert state != PaymentState.AUTHORISED
        head = read_head(node.view)
        assert head.next_seq > 1 and head.dropped == 0
    finally:
        node.close()
