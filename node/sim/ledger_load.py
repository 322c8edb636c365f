"""The simulator's ledger workload: what a ledger client's operations carry, drawn from the seed.

The cluster runs the newest log feature, so every operation is checked (feature 7): each is
proposed by the platform (``pt`` all zeros, test mode), which may create an asset on a platform
ledger (asset index 2-15) and accounts whose ids derive from the operation
(``ids.account_id(record id, event index)``), and move value between its own accounts. Each
ledger client owns one such ledger and its accounts, so clients never wait on each
other: operation 1 creates the asset, an issuer and :data:`USERS` user accounts flagged
``debits_must_not_exceed_credits``; operation 2 issues :data:`ISSUED` to each user; every
later operation is one of: a transfer between two users (sometimes more than the payer holds:
``exceeds_credits``), a linked chain of two transfers (both legs or neither), a pending
transfer with a 1-3 s timeout (expired by the sweep at a later log time unless resolved),
or the post or void of an earlier pending transfer (which may have expired: a sticky
refusal). A client also sends an operation it already had acknowledged again now and then:
the answer must be the first outcome (checked by :class:`~node.sim.checkers.Checker`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from business.identity.ids import ASSET_INDEX_PARTNER_MIN, Mode, account_id, ledger_number
from business.identity.scope import PLATFORM
from business.ledger.model import (
    AMOUNT_MAX,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    TransferFlags,
)
from business.ledger.wire import encode_events
from node.sim.rng import SimRng

__all__ = [
    "ISSUED",
    "RETRY_CHANCE",
    "USERS",
    "CommittedView",
    "LedgerWorkload",
    "OpFields",
    "Workload",
]

USERS = 4
ISSUED = 1_000
RETRY_CHANCE = 0.15  # an acknowledged operation sent again instead of a new one


@dataclass(frozen=True, slots=True)
class OpFields:
    """What one operation carries besides its record (the fields of
    :class:`~node.consensus.ledger_ops.Operation` a gateway would set): ledger events, or a
    Bridge request, the users' approvals and the proposer."""

    events: bytes | None = None  # wire form (business/ledger/wire.py)
    approvals: bytes | None = None
    partner: bytes | None = None
    mode: int | None = None
    user_refs: tuple[bytes, ...] = ()
    bridge: bytes | None = None  # feature 8: a Bridge request (business/bridge/wire.py)
    payments: bytes | None = None  # feature 9: a payments request (business/payments/wire.py)
    deposit: bytes | None = None  # feature 10: a vault deposit credit (deposit_ops.py)
    # A deposit's record id derives from the deposit (chain, transaction, log index), not from
    # the client's sequence number: the same deposit sent twice is one record.
    record_id: bytes | None = None

    @property
    def body(self) -> bytes:
        """The bytes the record's blob carries of the operation (its fingerprint changes
        with them)."""
        return (
            (self.events or b"") + (self.bridge or b"") + (self.payments or b"")
            + (self.deposit or b"")
        )  # fmt: skip


class CommittedView(Protocol):
    """A committed state a client may read (as a gateway reads a node's): keys and log time."""

    def get(self, key: bytes) -> bytes | None: ...

    @property
    def log_time_ms(self) -> int: ...


class Workload(Protocol):
    """What a ledger client's operations carry, drawn from the seed."""

    def operation(
        self, seq: int, record_id: bytes, rng: SimRng, view: CommittedView
    ) -> OpFields: ...

    def on_outcome(self, seq: int, outcome: Mapping[str, Any] | None) -> None:
        """Operation ``seq`` was acknowledged with this (first, sticky) outcome."""
        ...


@dataclass
class LedgerWorkload:
    ledger: int  # this client's ledger number: a platform ledger of test mode
    pending_ids: list[int] = field(default_factory=list)
    first_op: bytes = b""  # operation 1's record id: the accounts' ids derive from it

    @classmethod
    def for_client(cls, client: int) -> LedgerWorkload:
        """Client ``client``'s ledger: one of the platform's asset indexes 2..15 (1 is BAAS)."""
        index = 2 + client % (ASSET_INDEX_PARTNER_MIN - 2)
        return cls(ledger_number(Mode.TEST, index))

    def account(self, j: int) -> int:
        """Account ``j`` of this ledger (0: the issuer): event ``j + 1`` of operation 1."""
        return account_id(self.first_op, j + 1)

    def operation(self, seq: int, record_id: bytes, rng: SimRng, view: CommittedView) -> OpFields:
        if seq == 1:
            self.first_op = record_id
        return OpFields(events=self.events(seq, rng), partner=PLATFORM, mode=Mode.TEST)

    def on_outcome(self, seq: int, outcome: Mapping[str, Any] | None) -> None:
        return None  # the ledger workload draws blind: a refusal is part of it

    def events(self, seq: int, rng: SimRng) -> bytes:
        """Operation ``seq``'s events (wire form); drawn once, resent as they are."""
        return encode_events(self._events(seq, rng))

    def _events(self, seq: int, rng: SimRng) -> list[Event]:
        ledger, account = self.ledger, self.account
        if seq == 1:
            limited = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            return [
                CreateAsset(ledger, AssetKind.POINT, 2),
                CreateAccount(account(0), ledger, 1),
                *(CreateAccount(account(j), ledger, 2, flags=limited) for j in range(1, USERS + 1)),
            ]
        tid = ledger * 10**9 + seq * 10
        if seq == 2:
            return [
                CreateTransfer(tid + j, account(0), account(j), ISSUED, ledger, 1)
                for j in range(1, USERS + 1)
            ]
        a = rng.randint(1, USERS)
        b = a % USERS + 1
        kind = rng.random()
        if kind < 0.45:
            return [CreateTransfer(tid, account(a), account(b), rng.randint(1, 400), ledger, 1)]
        if kind < 0.65:
            c = b % USERS + 1
            linked = TransferFlags.LINKED
            return [
                CreateTransfer(tid, account(a), account(b), rng.randint(1, 300), ledger, 1,
                               flags=linked),
                CreateTransfer(tid + 1, account(b), account(c), rng.randint(1, 300), ledger, 1),
            ]  # fmt: skip
        if kind < 0.85 or not self.pending_ids:
            self.pending_ids.append(tid)
            return [
                CreateTransfer(tid, account(a), account(b), rng.randint(1, 200), ledger, 1,
                               flags=TransferFlags.PENDING, timeout=rng.randint(1, 3))
            ]  # fmt: skip
        pending = rng.choice(self.pending_ids)
        if rng.random() < 0.5:
            flags, amount = TransferFlags.POST_PENDING_TRANSFER, AMOUNT_MAX
        else:
            flags, amount = TransferFlags.VOID_PENDING_TRANSFER, 0
        return [CreateTransfer(tid, 0, 0, amount, 0, 0, flags=flags, pending_id=pending)]
