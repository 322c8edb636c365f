"""A ledger on a MemoryView for the ledger tests: apply batches, read back, check invariants.

Plain helpers (``from ledgerkit import Book``). :class:`Book` applies every batch through
:meth:`Ledger.apply`, applies its writes, and after each batch checks what must always hold:
per ledger the stored totals equal the sums over the accounts and debits == credits (posted
and pending), and no flagged account is over its limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from business.ledger import (
    Account,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Ledger,
    LedgerConfig,
    MemoryView,
    Result,
    state_digest,
)
from business.ledger.views import all_totals, get_account, get_transfer, iter_accounts

T0_MS = 1_800_000_000_000  # a log time in 2027
POINTS = 1  # ledger 1: points, scale 2
OTHER = 2  # ledger 2: another asset

# The standard accounts of a fresh book.
A, B, C, D, E, X, H, F = 1, 2, 3, 4, 5, 6, 7, 8
STANDARD: list[Event] = [
    CreateAsset(POINTS, AssetKind.POINT, 2),
    CreateAsset(OTHER, AssetKind.TOKEN, 6),
    CreateAccount(A, POINTS, 1),
    CreateAccount(B, POINTS, 1),
    CreateAccount(C, OTHER, 1),  # another ledger
    CreateAccount(D, POINTS, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    CreateAccount(E, POINTS, 1, flags=AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
    CreateAccount(X, POINTS, 1, flags=AccountFlags.CLOSED),
    CreateAccount(H, POINTS, 1, flags=AccountFlags.HISTORY),
    CreateAccount(F, POINTS, 1),  # a spare plain account
]


def transfer(**fields: Any) -> CreateTransfer:
    """A valid A -> B transfer of 10 on ledger 1 unless ``fields`` say otherwise."""
    base: dict[str, Any] = {
        "id": 50,
        "debit_account_id": A,
        "credit_account_id": B,
        "amount": 10,
        "ledger": POINTS,
        "code": 1,
    }
    base.update(fields)
    return CreateTransfer(**base)


class Book:
    def __init__(self, config: LedgerConfig | None = None, now_ms: int = T0_MS) -> None:
        self.ledger = Ledger(config or LedgerConfig())
        self.view = MemoryView()
        self.now_ms = now_ms

    @classmethod
    def standard(cls, **kwargs: Any) -> Book:
        book = cls(**kwargs)
        assert book.codes(STANDARD) == ["ok"] * len(STANDARD)
        return book

    def apply(self, events: Sequence[Event], now_ms: int | None = None) -> list[Result]:
        if now_ms is not None:
            self.now_ms = now_ms
        results, writes = self.ledger.apply(events, self.now_ms, self.view)
        assert len(results) == len(events)
        assert all(key.startswith(b"lg/") for key, _ in writes)
        self.view.apply(writes)
        self.check()
        return results

    def codes(self, events: Sequence[Event], now_ms: int | None = None) -> list[str]:
        return [r.code.value for r in self.apply(events, now_ms)]

    def code(self, event: Event, now_ms: int | None = None) -> str:
        return self.codes([event], now_ms)[0]

    def account(self, account_id: int) -> Account:
        found = get_account(self.view, account_id)
        assert found is not None
        return found

    def balances(self, account_id: int) -> tuple[int, int, int, int]:
        a = self.account(account_id)
        return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)

    def digest(self) -> bytes:
        return state_digest(self.view.data.items())

    def check(self) -> None:
        sums: dict[int, list[int]] = {}
        for a in iter_accounts(self.view):
            s = sums.setdefault(a.ledger, [0, 0, 0, 0])
            s[0] += a.debits_posted
            s[1] += a.credits_posted
            s[2] += a.debits_pending
            s[3] += a.credits_pending
            if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert a.debits_pending + a.debits_posted <= a.credits_posted
            if a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
                assert a.credits_pending + a.credits_posted <= a.debits_posted
        for t in all_totals(self.view):
            assert t.balanced, t
            stored = [t.debits_posted, t.credits_posted, t.debits_pending, t.credits_pending]
            assert stored == sums.get(t.ledger, [0, 0, 0, 0]), (t, sums)

    def transfer_amount(self, transfer_id: int) -> int:
        found = get_transfer(self.view, transfer_id)
        assert found is not None
        return found.amount
