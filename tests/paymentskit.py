"""Payments on the real ledger core over a MemoryView, for the payments tests.

:class:`Shop` applies every request through :meth:`Payments.apply` (prepare -> the real
``Ledger.apply`` -> settle), applies the writes, and after each request checks what must always
hold: every ledger balanced (posted and pending), no wallet or settlement account overdrawn,
refunds never above the capture, stock never negative, and every payment's state agreeing with
its pending transfer in the ledger (and every order's with its payment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from business.identity.ids import Mode, code_hash, partner_id, wallet_account_id, wallet_id
from business.identity.model import CODE_PREFIX, StoredCode, encode_code
from business.ledger import (
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Ledger,
    LedgerConfig,
    MemoryView,
    PendingStatus,
)
from business.ledger.model import Account
from business.ledger.views import get_pending_status, iter_accounts
from business.payments.core import PaymentOutcome, Payments, order_state, payment_state
from business.payments.model import (
    LISTING_PREFIX,
    ORDER_PREFIX,
    PAYMENT_PREFIX,
    PREFIX,
    AccountCode,
    OrderState,
    PaymentsConfig,
    PaymentState,
    Request,
    decode_listing,
    decode_order,
    decode_payment,
)

T0_MS = 1_800_000_000_000  # a log time in 2027
BAAS = 2  # ledger_number(TEST, 1)
BAAS_LIVE = 3
SHOP = partner_id("demo-shop")
OTHER = partner_id("other-shop")
PLATFORM = bytes(16)
FAUCET = 77  # a plain account that funds the wallets
FUNDING = 10_000  # what each wallet starts with
USERS = ("ann", "bob", "cat")
ADDRESSES = {u: hashlib.sha256(u.encode()).digest()[:20] for u in USERS}

# A payment's state -> the pending transfer statuses it may have in the ledger.
AGREES = {
    PaymentState.AUTHORISED: {PendingStatus.PENDING},
    PaymentState.CAPTURED: {PendingStatus.POSTED},
    PaymentState.REFUNDED: {PendingStatus.POSTED},
    PaymentState.VOIDED: {PendingStatus.VOIDED},
    PaymentState.EXPIRED: {PendingStatus.PENDING, PendingStatus.EXPIRED},
}
ORDER_OF_PAYMENT = {
    PaymentState.AUTHORISED: {OrderState.AUTHORISED},
    PaymentState.CAPTURED: {OrderState.FULFILLED},
    PaymentState.REFUNDED: {OrderState.REFUNDED},
    PaymentState.VOIDED: {OrderState.CANCELLED},
    PaymentState.EXPIRED: {OrderState.LAPSED, OrderState.EXPIRED},
}


def op(name: str) -> bytes:
    return hashlib.sha256(b"op/" + name.encode()).digest()


def wallet(user: str, ledger: int = BAAS) -> int:
    mode = Mode(ledger & 1)
    return wallet_account_id(wallet_id(ADDRESSES[user], mode), mode, ledger)


def secret(name: str) -> bytes:
    return hashlib.sha256(b"code/" + name.encode()).digest()[:16]


def check_ledgers(accounts: Iterable[Account]) -> None:
    """Every ledger balanced (posted and pending), no flagged account overdrawn."""
    sums: dict[int, list[int]] = {}
    for a in accounts:
        s = sums.setdefault(a.ledger, [0, 0, 0, 0])
        s[0] += a.debits_posted
        s[1] += a.credits_posted
        s[2] += a.debits_pending
        s[3] += a.credits_pending
        if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
            assert a.debits_posted + a.debits_pending <= a.credits_posted
    for ledger, (dpo, cpo, dp, cp) in sums.items():
        assert dpo == cpo and dp == cp, f"ledger {ledger} unbalanced"


class Shop:
    def __init__(self, config: PaymentsConfig | None = None) -> None:
        self.payments = Payments(config or PaymentsConfig(), Ledger(LedgerConfig()))
        self.view = MemoryView()
        self.now_ms = T0_MS
        self.count = 0
        events: list[Any] = [CreateAsset(BAAS, AssetKind.BAAS, 18)]
        events.append(CreateAsset(BAAS_LIVE, AssetKind.BAAS, 18))
        events.append(CreateAccount(FAUCET, BAAS, 1))
        flags = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        for n, user in enumerate(USERS):
            events.append(CreateAccount(wallet(user), BAAS, int(AccountCode.WALLET), flags))
            events.append(CreateTransfer(1000 + n, FAUCET, wallet(user), FUNDING, BAAS, 1))
        self.ledger_apply(events)

    def ledger_apply(self, events: list[Any]) -> None:
        results, writes = self.payments.ledger.apply(events, self.now_ms, self.view)
        assert all(r.succeeded for r in results), results
        self.view.apply(writes)

    def apply(self, request: Request, now_ms: int | None = None) -> PaymentOutcome:
        if now_ms is not None:
            self.now_ms = now_ms
        outcome = self.payments.apply(request, self.now_ms, self.view)
        assert all(k.startswith((PREFIX, b"lg/")) for k, _ in outcome.writes)
        self.view.apply(outcome.writes)
        self.count += 1
        self.check()
        return outcome

    def code(self, request: Request, now_ms: int | None = None) -> str:
        return self.apply(request, now_ms).code.value

    def issue_code(
        self, name: str, user: str = "ann", *, ledger: int = BAAS, limit: int = 500,
        validity_s: int = 300, used_by: bytes = bytes(32),
    ) -> bytes:  # fmt: skip
        """What identity's ``code.issue`` stores for a code (its tests cover the issuing);
        returns the code's hash, as a till sends it."""
        h = code_hash(secret(name))
        expiry = self.now_ms // 1000 + validity_s
        stored = StoredCode(Mode(ledger & 1), ADDRESSES[user], ledger, limit, expiry, used_by)
        self.view.apply([(CODE_PREFIX + h, encode_code(stored))])
        return h

    # --- reads ---------------------------------------------------------------------------

    def balance(self, account_id: int) -> int:
        for a in iter_accounts(self.view):
            if a.id == account_id:
                return a.credits_posted - a.debits_posted
        return 0

    def available(self, account_id: int) -> int:
        for a in iter_accounts(self.view):
            if a.id == account_id:
                return a.credits_posted - a.debits_posted - a.debits_pending
        return 0

    def payment_state(self, payment: bytes) -> PaymentState | None:
        raw = self.view.get(PAYMENT_PREFIX + payment)
        if raw is None:
            return None
        return payment_state(self.view, decode_payment(raw), self.now_ms)

    def order_state(self, order: bytes) -> OrderState | None:
        raw = self.view.get(ORDER_PREFIX + order)
        if raw is None:
            return None
        p = decode_payment(self.view.data[PAYMENT_PREFIX + order])
        return order_state(self.view, decode_order(raw), p, self.now_ms)

    def stock(self, listing: bytes) -> int:
        return decode_listing(self.view.data[LISTING_PREFIX + listing]).stock

    def payments_state(self) -> dict[bytes, bytes]:
        """Everything but the sticky results and the ledger's meta (failed events consume
        timestamps too): what a refusal must not change."""
        skip = (b"pm/op/", b"lg/t/", b"lg/m")
        return {k: v for k, v in self.view.data.items() if not k.startswith(skip)}

    # --- the invariants ------------------------------------------------------------------

    def check(self) -> None:
        check_ledgers(iter_accounts(self.view))
        for key, raw in self.view.scan(PAYMENT_PREFIX, PAYMENT_PREFIX[:-1] + b"0"):
            p = decode_payment(raw)
            assert 0 <= p.refunded <= p.captured <= p.amount
            assert p.fee <= p.captured
            state = payment_state(self.view, p, self.now_ms)
            status = get_pending_status(self.view, p.pending)
            assert status in AGREES[state], (state, status)
            if state == PaymentState.REFUNDED:
                assert p.refunded == p.captured
            order = self.view.get(ORDER_PREFIX + key[len(PAYMENT_PREFIX) :])
            if order is not None:
                o = order_state(self.view, decode_order(order), p, self.now_ms)
                assert o in ORDER_OF_PAYMENT[state], (o, state)
        for _key, raw in self.view.scan(LISTING_PREFIX, LISTING_PREFIX[:-1] + b"0"):
            assert decode_listing(raw).stock >= 0
