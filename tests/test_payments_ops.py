"""Payments and the Market on the log (feature 9) through the node's own dispatcher on a real
LevelDB: a payments request is one ``ledger.ops`` operation; who may send which request; the
user's approval (signature or the scanned one-time code, and only that code); every refusal a
sticky result code that moves nothing; raw ledger events cannot touch payments' transfers;
expiry of payments and orders on log time by the bounded sweep; the outbox of events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    BOB,
    CAROL,
    POINTS,
    POINTS_LIVE,
    Node,
    rid,
    world,
)
from identitykit import OPERATOR, OTHER_SHOP, SHOP, T0_MS
from paymentsopskit import ALICE_PTS, CAROL_PTS, ISSUED, issue_code, pm_op, run, shop_world
from test_index_batch import prop

from business.bridge import DefinePoints, IssuePoints, SetReserveThreshold, TopUpReserve
from business.bridge.model import unpack
from business.identity import (
    BRIDGE_ROLES,
    DEFAULT_ROLES,
    PAYMENT_ROLES,
    PartnerPut,
    PartnerStatus,
)
from business.identity.ids import wallet_account_id, wallet_id
from business.identity.scope import PLATFORM
from business.ledger import CreateTransfer, TransferFlags
from business.ledger.views import get_account
from business.ledger.wire import encode_events
from business.payments import (
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
    SetFee,
    Void,
)
from business.payments.core import settlement_account
from business.payments.model import OrderState, PaymentState, TransferCode
from business.payments.outbox import EVENT_PREFIX, PAYMENTS_ACK, EventType, read_head
from business.payments.views import get_listing, get_order, get_payment
from node.consensus.ledger_ops import LEDGER_OPS, LEDGER_TICK, Operation
from node.consensus.payments_ops import EXPIRY_BUCKET_MS, EXPIRY_ITEMS_PER_ENTRY_MAX
from node.consensus.state_machine import AppEntry

LISTING = b"L" * 16
SETTLE = settlement_account(SHOP, POINTS)
MINUTE = 60_000


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = shop_world(tmp_path / "db")
    yield n
    n.close()


def held(node: Node, account: int) -> int:
    """Posted balance minus what pending transfers hold."""
    a = get_account(node.view, account)
    return 0 if a is None else a.credits_posted - a.debits_posted - a.debits_pending


def events(node: Node) -> list[tuple[str, bytes]]:
    out = []
    with node.db.iterator(prefix=EVENT_PREFIX) as it:
        for _, raw in it:
            kind, obj, _ = unpack(raw, "event", 3)
            out.append((EventType(kind).api_name, obj))
    return out


def authorise(n: int, amount: int = 300, window_s: int = 600, wallet: int = ALICE_PTS) -> Authorise:
    return Authorise(rid(n), SHOP, POINTS, wallet, amount, window_s)


def test_authorise_capture_refund_void_with_the_users_signature(node: Node) -> None:
    assert run(node, 100, authorise(100), signers=(ALICE,)) == "ok"
    assert held(node, ALICE_PTS) == ISSUED - 300
    assert run(node, 101, Capture(rid(101), SHOP, rid(100), 200)) == "ok"
    assert node.balance(ALICE_PTS) == ISSUED - 200 and held(node, ALICE_PTS) == ISSUED - 200
    assert run(node, 102, Refund(rid(102), SHOP, rid(100), 50)) == "ok"
    assert run(node, 103, Refund(rid(103), SHOP, rid(100), 200)) == "refund_exceeds_captured"
    assert run(node, 104, Refund(rid(104), SHOP, rid(100), 150)) == "ok"
    found = get_payment(node.view, SHOP, rid(100), node.now_ms)
    assert found is not None and found[1] == PaymentState.REFUNDED
    assert node.balance(ALICE_PTS) == ISSUED and node.balance(SETTLE) == 0
    assert run(node, 105, authorise(105, 100), signers=(ALICE,)) == "ok"
    assert run(node, 106, Void(rid(106), SHOP, rid(105))) == "ok"
    assert held(node, ALICE_PTS) == ISSUED and node.balanced()
    assert [k for k, _ in events(node)] == [
        "payment.authorised",
        "payment.captured",
        "payment.refunded",
        "payment.refunded",
        "payment.authorised",
        "payment.voided",
    ]


def test_a_retry_answers_the_first_outcome_and_moves_nothing(node: Node) -> None:
    op = pm_op(100, authorise(100), signers=(ALICE,))
    (first,) = node.ops(op)
    (again,) = node.ops(op)
    assert first.code == "created" and again.code == "existing"
    assert again.detail["outcome"] == first.detail["outcome"]
    assert held(node, ALICE_PTS) == ISSUED - 300
    assert len(events(node)) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no signature", "approval_missing"),
        ("another user's signature", "approval_unused"),
        ("no proposer", "proposer_missing"),
        ("another partner proposes", "account_not_found"),
        ("the platform proposes", "partner_not_found"),
        ("a live ledger from test mode", "ledger_not_found"),
        ("not a wallet", "account_not_found"),
        ("beyond the wallet", "insufficient_funds"),
        ("window beyond the bound", "bound_exceeded"),
        ("another partner's asset", "asset_foreign"),
    ],
)
def test_an_authorisation_refused_moves_nothing(node: Node, case: str, expected: str) -> None:
    request, kw = authorise(100), {"signers": (ALICE,)}
    if case == "no signature":
        kw = {}
    elif case == "another user's signature":
        kw = {"signers": (CAROL,)}
    elif case == "no proposer":
        kw = {**kw, "partner": None, "mode": None}
    elif case == "another partner proposes":
        kw = {**kw, "partner": OTHER_SHOP}
    elif case == "the platform proposes":
        kw = {**kw, "partner": PLATFORM}
        request = Authorise(rid(100), PLATFORM, POINTS, ALICE_PTS, 300, 600)
    elif case == "a live ledger from test mode":
        request = Authorise(rid(100), SHOP, POINTS_LIVE, ALICE_PTS, 300, 600)
    elif case == "not a wallet":
        request = authorise(100, wallet=SETTLE)
    elif case == "beyond the wallet":
        request = authorise(100, amount=ISSUED + 1)
    elif case == "window beyond the bound":
        request = authorise(100, window_s=8 * 86_400)
    elif case == "another partner's asset":
        request = Authorise(rid(100), OTHER_SHOP, POINTS, ALICE_PTS, 300, 600)
        kw = {**kw, "partner": OTHER_SHOP}
    before = node.ledger_items()
    assert run(node, 100, request, **kw) == expected
    assert node.ledger_items() == before
    assert events(node) == []


def test_a_partner_cannot_touch_another_partners_payment(node: Node) -> None:
    assert run(node, 100, authorise(100), signers=(ALICE,)) == "ok"
    other = Capture(rid(101), OTHER_SHOP, rid(100), 100)
    assert run(node, 101, other, partner=OTHER_SHOP) == "payment_not_found"
    assert run(node, 102, Capture(rid(102), SHOP, rid(100), 100), partner=OTHER_SHOP) == (
        "account_not_found"
    )
    assert get_payment(node.view, OTHER_SHOP, rid(100), node.now_ms) is None


def test_the_platform_sets_the_fee_and_a_capture_pays_it(node: Node) -> None:
    assert run(node, 99, SetFee(rid(99), SHOP, POINTS, 100, 1)) == "not_platform"
    assert run(node, 100, SetFee(rid(100), PLATFORM, POINTS, 100, 1), partner=PLATFORM) == "ok"
    assert run(node, 101, authorise(101, 500), signers=(ALICE,)) == "ok"
    assert run(node, 102, Capture(rid(102), SHOP, rid(101), 500)) == "ok"
    assert node.balance(SETTLE) == 495  # a 1% fee, 5 points
    assert node.balanced()


def test_a_consumer_code_is_consumed_once_and_only_the_scanned_one(node: Node) -> None:
    first = issue_code(node, ALICE, b"\x01" * 16)
    other = issue_code(node, ALICE, b"\x02" * 16)
    redeem = RedeemCode(rid(100), SHOP, POINTS, first, 200, True, 600)
    # alice's other code cannot stand in for the scanned one (it would stay usable)
    assert run(node, 100, redeem, codes=(b"\x02" * 16,)) == "code_mismatch"
    assert run(node, 101, RedeemCode(rid(101), SHOP, POINTS, first, 200, True, 600),
               signers=(ALICE,)) == "code_mismatch"  # fmt: skip
    assert node.balance(ALICE_PTS) == ISSUED
    assert run(node, 102, RedeemCode(rid(102), SHOP, POINTS, first, 200, True, 600),
               codes=(b"\x01" * 16,)) == "ok"  # fmt: skip
    assert node.balance(ALICE_PTS) == ISSUED - 200 and node.balance(SETTLE) == 200
    again = RedeemCode(rid(103), SHOP, POINTS, first, 100, True, 600)
    assert run(node, 103, again, codes=(b"\x01" * 16,)) == "code_used"
    assert run(node, 104, RedeemCode(rid(104), SHOP, POINTS, other, 100, False, 600),
               codes=(b"\x02" * 16,)) == "ok"  # fmt: skip
    assert held(node, ALICE_PTS) == ISSUED - 300
    assert [k for k, _ in events(node)] == [
        "payment.authorised",
        "payment.captured",
        "payment.authorised",
    ]


def test_raw_ledger_events_cannot_make_or_resolve_payments_transfers(node: Node) -> None:
    assert run(node, 100, authorise(100), signers=(ALICE,)) == "ok"
    found = get_payment(node.view, SHOP, rid(100), node.now_ms)
    assert found is not None
    pending = found[0].pending
    post = CreateTransfer(
        9001, 0, 0, 300, 0, 0, int(TransferFlags.POST_PENDING_TRANSFER), pending_id=pending
    )
    raw = Operation(prop(101), encode_events([post]), None, SHOP, 0)
    (result,) = node.ops(raw)
    assert result.detail["outcome"].events[0].result == "transfer_code_reserved"
    made = CreateTransfer(9002, SETTLE, ALICE_PTS, 1, POINTS, int(TransferCode.REFUND))
    (result,) = node.ops(Operation(prop(102), encode_events([made]), None, SHOP, 0))
    assert result.detail["outcome"].events[0].result == "transfer_code_reserved"
    # the payment is untouched and can still be captured through payments
    assert run(node, 103, Capture(rid(103), SHOP, rid(100), 300)) == "ok"


def test_a_payment_expires_on_log_time_and_the_sweep_tells(node: Node) -> None:
    assert run(node, 100, authorise(100, window_s=60), signers=(ALICE,)) == "ok"
    late = T0_MS + 10 * MINUTE
    assert run(node, 101, Capture(rid(101), SHOP, rid(100), 10), now_ms=late) == "payment_expired"
    # that entry's sweep told; the ledger releases the funds at its own next sweep (a tick)
    assert [k for k, _ in events(node)] == ["payment.authorised", "payment.expired"]
    node.apply(AppEntry(LEDGER_TICK, {}), now_ms=late + 1)
    assert held(node, ALICE_PTS) == ISSUED
    found = get_payment(node.view, SHOP, rid(100), node.now_ms)
    assert found is not None and found[1] == PaymentState.EXPIRED


def test_the_market_order_lifecycle(node: Node) -> None:
    put = PutListing(rid(100), SHOP, LISTING, POINTS, 100, 3, True, "Mug", "A blue mug")
    assert run(node, 100, put) == "ok"
    place = PlaceOrder(rid(101), SHOP, LISTING, ALICE_PTS, 2, 600)
    assert run(node, 101, place, signers=(ALICE,)) == "ok"
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 1
    sold_out = PlaceOrder(rid(102), SHOP, LISTING, CAROL_PTS, 2, 600)
    assert run(node, 102, sold_out, signers=(CAROL,)) == "sold_out"
    assert run(node, 103, FulfilOrder(rid(103), SHOP, rid(101))) == "ok"
    assert run(node, 104, RefundOrder(rid(104), SHOP, rid(101), 200)) == "ok"
    order = get_order(node.view, SHOP, rid(101), node.now_ms)
    assert order is not None and order[1] == OrderState.REFUNDED
    place = PlaceOrder(rid(105), SHOP, LISTING, CAROL_PTS, 1, 600)
    assert run(node, 105, place, signers=(CAROL,)) == "ok"
    assert run(node, 106, CancelOrder(rid(106), SHOP, rid(105))) == "ok"
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 1
    assert node.balance(ALICE_PTS) == ISSUED and node.balance(CAROL_PTS) == ISSUED
    assert [k for k, _ in events(node)] == [
        "order.placed",
        "payment.authorised",
        "order.fulfilled",
        "payment.captured",
        "order.refunded",
        "payment.refunded",
        "order.placed",
        "payment.authorised",
        "order.cancelled",
        "payment.voided",
    ]


def test_an_order_whose_payment_expired_returns_its_stock_by_the_sweep(node: Node) -> None:
    put = PutListing(rid(100), SHOP, LISTING, POINTS, 100, 3, True, "Mug", "")
    assert run(node, 100, put) == "ok"
    assert run(node, 101, PlaceOrder(rid(101), SHOP, LISTING, ALICE_PTS, 3, 60),
               signers=(ALICE,)) == "ok"  # fmt: skip
    # before the window ends neither the merchant nor the platform can expire it
    early = ExpireOrder(rid(102), PLATFORM, rid(101))
    assert run(node, 102, early, partner=PLATFORM) == "order_not_expired"
    applied = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=T0_MS + 5 * MINUTE)
    assert applied.outcome.detail["payments_expired"] == 1
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 3
    order = get_order(node.view, SHOP, rid(101), node.now_ms)
    assert order is not None and order[1] == OrderState.EXPIRED
    assert [k for k, _ in events(node)][-2:] == ["payment.expired", "order.expired"]
    assert held(node, ALICE_PTS) == ISSUED


def test_the_sweep_is_bounded_per_entry(node: Node) -> None:
    count = EXPIRY_ITEMS_PER_ENTRY_MAX + 5
    ops = [pm_op(100 + i, authorise(100 + i, 1, 60), signers=(ALICE,)) for i in range(count)]
    node.ops(*ops)
    later = T0_MS + 5 * MINUTE
    first = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=later)
    second = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=later + 1)
    assert first.outcome.detail["payments_expired"] == EXPIRY_ITEMS_PER_ENTRY_MAX
    assert second.outcome.detail["payments_expired"] == 5
    assert node.view.get(b"pm/xs") is None  # nothing left queued
    assert EXPIRY_BUCKET_MS == MINUTE


def test_a_missing_settlement_role_is_role_missing(tmp_path: Path) -> None:
    node = world(tmp_path / "old", feature=9)  # demo-shop without the payments roles
    try:
        assert node.code(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0, 0)) == "ok"
        issue = IssuePoints(rid(2), SHOP, POINTS, ALICE_PTS, 100)
        assert node.code(issue, refs=(ALICE_REF,)) == "ok"
        assert run(node, 100, authorise(100, 10), signers=(ALICE,)) == "role_missing"
    finally:
        node.close()


def test_payments_before_feature_9_are_malformed(tmp_path: Path) -> None:
    node = world(tmp_path / "v8", feature=8)
    try:
        (result,) = node.ops(pm_op(100, authorise(100), signers=(ALICE,)))
        assert result.code == "malformed"
        ack = node.apply(AppEntry(PAYMENTS_ACK, {"upto": 1}))
        assert ack.outcome.code == "feature_not_enabled"
    finally:
        node.close()


def test_the_outbox_is_acknowledged_and_trimmed_on_the_log(node: Node) -> None:
    assert run(node, 100, authorise(100), signers=(ALICE,)) == "ok"
    assert run(node, 101, Void(rid(101), SHOP, rid(100))) == "ok"
    head = read_head(node.view)
    assert (head.next_seq, head.first_seq, head.acked_seq) == (3, 1, 0)
    applied = node.apply(AppEntry(PAYMENTS_ACK, {"upto": 1}))
    assert applied.outcome.detail == {"acked": 1, "first": 2}
    assert [k for k, _ in events(node)] == ["payment.voided"]
    # never past the last event, never backwards
    node.apply(AppEntry(PAYMENTS_ACK, {"upto": 99}))
    node.apply(AppEntry(PAYMENTS_ACK, {"upto": 0}))
    head = read_head(node.view)
    assert (head.next_seq, head.first_seq, head.acked_seq) == (3, 3, 2)
    assert node.apply(AppEntry(PAYMENTS_ACK, {"upto": -1})).outcome.code == "malformed"


def test_bob_of_another_partner_is_still_a_wallet_of_the_mode(node: Node) -> None:
    # any wallet of the mode may pay a partner with its own signature (no link needed)
    bob_pts = wallet_account_id(wallet_id(bytes.fromhex(BOB.address[2:]), 0), 0, POINTS)
    assert run(node, 100, authorise(100, wallet=bob_pts), signers=(BOB,)) in (
        "account_not_found",  # bob never held demo-shop's points: no such wallet account
    )
    assert BAAS != POINTS


def test_a_shorter_window_queued_after_a_longer_one_still_expires_first(node: Node) -> None:
    assert run(node, 100, authorise(100, 10, 3600), signers=(ALICE,)) == "ok"
    assert run(node, 101, authorise(101, 10, 60), signers=(ALICE,)) == "ok"
    tick = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=T0_MS + 5 * MINUTE)
    assert tick.outcome.detail["payments_expired"] == 1
    assert [k for k, _ in events(node)][-1] == "payment.expired"
    tick = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=T0_MS + 62 * MINUTE)
    assert tick.outcome.detail["payments_expired"] == 1
    assert node.view.get(b"pm/xs") is None


def test_market_refusals_move_nothing(node: Node) -> None:
    put = PutListing(rid(100), SHOP, LISTING, POINTS, 100, 3, True, "Mug", "")
    assert run(node, 100, put) == "ok"
    theirs = PutListing(rid(101), OTHER_SHOP, LISTING, POINTS, 1, 99, True, "Mine", "")
    assert run(node, 101, theirs, partner=OTHER_SHOP) == "asset_foreign"  # not its points
    before = node.ledger_items()
    unsigned = PlaceOrder(rid(102), SHOP, LISTING, ALICE_PTS, 1, 600)
    assert run(node, 102, unsigned) == "approval_missing"
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 3
    assert node.ledger_items() == before
    off = PutListing(rid(103), SHOP, LISTING, POINTS, 100, 3, False, "Mug", "")
    assert run(node, 103, off) == "ok"
    inactive = PlaceOrder(rid(104), SHOP, LISTING, ALICE_PTS, 1, 600)
    assert run(node, 104, inactive, signers=(ALICE,)) == "listing_inactive"
    on = PutListing(rid(105), SHOP, LISTING, POINTS, 100, 3, True, "Mug", "")
    assert run(node, 105, on) == "ok"
    assert run(node, 106, PlaceOrder(rid(106), SHOP, LISTING, ALICE_PTS, 1, 600),
               signers=(ALICE,)) == "ok"  # fmt: skip
    foreign = FulfilOrder(rid(107), OTHER_SHOP, rid(106))
    assert run(node, 107, foreign, partner=OTHER_SHOP) == "order_not_found"
    assert run(node, 108, RefundOrder(rid(108), SHOP, rid(106), 10)) == "order_not_fulfilled"


def test_the_merchant_expires_a_lapsed_order_and_the_sweep_only_tells(node: Node) -> None:
    put = PutListing(rid(100), SHOP, LISTING, POINTS, 100, 3, True, "Mug", "")
    assert run(node, 100, put) == "ok"
    assert run(node, 101, PlaceOrder(rid(101), SHOP, LISTING, ALICE_PTS, 2, 60),
               signers=(ALICE,)) == "ok"  # fmt: skip
    # at 61 s the window is over, but its minute is not: the sweep has not run yet
    late = T0_MS + 61_000
    assert run(node, 102, FulfilOrder(rid(102), SHOP, rid(101)), now_ms=late) == "order_expired"
    assert run(node, 103, ExpireOrder(rid(103), SHOP, rid(101)), now_ms=late + 1) == "ok"
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 3
    tick = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=T0_MS + 5 * MINUTE)
    assert tick.outcome.detail["payments_expired"] == 1  # the payment's notice, once
    listing = get_listing(node.view, LISTING)
    assert listing is not None and listing.stock == 3  # not returned twice
    assert [k for k, _ in events(node)][-2:] == ["order.expired", "payment.expired"]
    assert [k for k, _ in events(node)].count("order.expired") == 1


def test_wrong_code_guesses_are_counted_on_the_log_and_lock_the_merchant_out(node: Node) -> None:
    good = issue_code(node, ALICE, b"\x07" * 16)
    for n in range(100, 110):
        guess = RedeemCode(rid(n), SHOP, POINTS, bytes([n]) * 32, 10, True, 600)
        assert run(node, n, guess, codes=(bytes([n]) * 16,)) == "code_unknown"
    right = RedeemCode(rid(110), SHOP, POINTS, good, 10, True, 600)
    assert run(node, 110, right, codes=(b"\x07" * 16,)) == "merchant_locked_out"
    # another merchant is not locked out by demo-shop's guesses
    theirs = RedeemCode(rid(111), OTHER_SHOP, POINTS, good, 10, True, 600)
    assert run(node, 111, theirs, partner=OTHER_SHOP, codes=(b"\x07" * 16,)) == "asset_foreign"
    assert node.balance(ALICE_PTS) == ISSUED


def test_a_suspended_partner_and_an_unlinked_reference_are_refused(node: Node) -> None:
    assert run(node, 100, authorise(100), signers=(ALICE,), refs=(b"\x09" * 32,)) == (
        "user_not_linked"
    )
    put = PartnerPut(SHOP, PartnerStatus.SUSPENDED, DEFAULT_ROLES + BRIDGE_ROLES + PAYMENT_ROLES,
                     OPERATOR)  # fmt: skip
    assert node.apply(AppEntry("partner.put", put.to_body())).outcome.code == "ok"
    assert run(node, 101, authorise(101), signers=(ALICE,)) == "partner_not_active"
    assert held(node, ALICE_PTS) == ISSUED


def test_a_low_reserve_notice_of_the_bridge_is_an_outbox_event(node: Node) -> None:
    assert node.code(TopUpReserve(rid(100), SHOP, BAAS, BAAS_UNIT)) == "ok"
    assert node.code(SetReserveThreshold(rid(101), SHOP, BAAS, 2 * BAAS_UNIT)) == "ok"
    assert events(node) == [("reserve.low", SHOP + BAAS.to_bytes(4, "big"))]


@pytest.mark.parametrize(
    "body",
    [
        {"pm": b"\x93\x01\x01\x90"},  # a request that does not decode (no fields)
        {"pm": "text"},  # not bytes
        {"pm": "op"},  # another operation's op id (filled in below)
        {"pm": "with br"},  # beside a Bridge request
    ],
)
def test_malformed_payments_operations_apply_nothing(node: Node, body: dict[str, object]) -> None:
    good = pm_op(100, authorise(100), signers=(ALICE,)).to_body()
    if body["pm"] == "op":
        body = {"pm": pm_op(101, authorise(101)).to_body()["pm"]}
    elif body["pm"] == "with br":
        body = {"br": b"\x01"}
    applied = node.apply(AppEntry(LEDGER_OPS, {"ops": [{**good, **body}]}))
    (result,) = applied.outcome.detail["results"]
    assert result.code == "malformed"
    assert events(node) == [] and held(node, ALICE_PTS) == ISSUED
