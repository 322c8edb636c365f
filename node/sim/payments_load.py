"""The simulator's payments workload (log feature 9 and up): two merchants, their users, a Market.

The world's log runs the newest feature; its leader proposes the identity entries of
:meth:`PaymentsWorkload.setup_entries` one at a time until the committed state holds each: the
two partners of the Bridge workload onboarded (``ONBOARDING_ROLES``, so with the payment
roles), every user's wallet linked with the user's own EIP-712 signature, and
:data:`CODES_PER_USER` one-time payment codes per user issued by the user (``code.issue``
signed by their wallet: only the code's hash reaches the log; the secrets stay with the
workload, as with the user's app). One payments client then sends ``ledger.ops`` operations:
first the set-up -- per partner its points defined (Bridge ``DefinePoints``, no validity) and
issued to its users, one listing with :data:`LISTING_STOCK` units put, and the platform's fee
on the partner's points (``SetFee`` proposed by the platform) -- each step sent again under a
new id until ``ok``; then, drawn per operation, a partner and one of its users and one of:

* ``Authorise`` approved by the user's signature over the exact request, with a capture window
  of :data:`WINDOW_S_MIN`-:data:`WINDOW_S_MAX` s, so many lapse: the expiry runs on log time
  (ticks), by the ledger's sweep and the payments sweep (``payment.expired``);
* ``Capture`` (partial, or now and then more than authorised), ``Void`` and ``Refund`` (partial,
  or more than what is left) of one of the recent payments, whatever its state: refusals such
  as ``payment_expired``, ``payment_already_captured``, ``refund_exceeds_captured`` follow;
* ``RedeemCode`` of one of the user's codes (capturing at once or not), approved by the code
  itself; now and then a code already used (``code_used``) or one never issued
  (``code_unknown``, a counted guess);
* ``PlaceOrder`` of 1-2 units of the partner's listing (stock reserved, payment authorised,
  ``sold_out`` once the stock is gone), ``FulfilOrder``, ``CancelOrder`` (stock back) and
  ``RefundOrder``; an order whose payment lapses gets its stock back from the sweep;
* a vault deposit of BAAS (feature 10, ``dp``, proposed by the platform as a node's deposit
  watcher does; its record id derived from the deposit's chain, transaction and log index)
  to a linked user's wallet (``credited``) or to a wallet nobody linked (``held_in_suspense``),
  or an earlier deposit sent again under a new sequence number: the same record, answered
  ``existing`` with its first outcome, credited once.

The client also resends acknowledged operations (a retry must get the first outcome, checked
by :class:`~node.sim.checkers.Checker`). The checks of the converged state are
:func:`node.sim.checkers.check_payments`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from business.bridge import DefinePoints, IssuePoints, encode_request
from business.identity import Mode, eip712
from business.identity.approvals import CodeApproval, encode_approvals
from business.identity.ids import code_hash, ledger_number, wallet_id
from business.identity.model import CODE_PREFIX, CodeIssueEntry
from business.identity.scope import PLATFORM
from business.payments import encode_request as encode_payment_request
from business.payments.model import (
    Authorise,
    CancelOrder,
    Capture,
    FulfilOrder,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    Request,
    SetFee,
    Void,
    decode_payment,
    payment_key,
)
from node.chain.deposits import deposit_record_id, suspense_account
from node.consensus.deposit_ops import DepositCreditBody
from node.consensus.state_machine import AppEntry
from node.sim.bridge_load import (
    BAAS,
    BAAS_UNIT,
    POINT_INDEX_FIRST,
    BridgeWorkload,
    SimPartner,
    SimUser,
    approve,
    count_first_outcome,
    sign_typed,
)
from node.sim.ledger_load import CommittedView, OpFields
from node.sim.rng import SimRng

__all__ = [
    "CODES_PER_USER",
    "ISSUED",
    "LISTING_STOCK",
    "WINDOW_S_MAX",
    "PaymentsWorkload",
    "listing_id",
]

T = Mode.TEST
ISSUED = 5_000  # points issued to each user at the set-up
CODES_PER_USER = 3
CODE_LIMIT = 300  # the most one code may debit
LISTING_STOCK = 6  # units of each partner's one listing (never restocked: the checker counts)
LISTING_PRICE = 40
# Capture windows of 2-8 s: an operation takes about 1-3 s of simulated time under the faults,
# so many authorisations are captured or voided in time and many lapse.
WINDOW_S_MIN, WINDOW_S_MAX = 2, 8
FEE_BPS, FEE_MIN = 150, 1
RECENT = 8  # captures, voids and refunds pick among this many recent payments or orders
# The drawn operations and their chances (the rest: RefundOrder).
KINDS = (
    ("authorise", 0.20),
    ("capture", 0.14),
    ("void", 0.07),
    ("refund", 0.11),
    ("redeem", 0.11),
    ("order", 0.12),
    ("fulfil", 0.07),
    ("cancel", 0.04),
    ("deposit", 0.06),
    ("deposit_again", 0.03),
)
# Vault deposits (feature 10), credited by the platform as a node's deposit watcher would.
CHAIN_ID = 31337
VAULT = b"\x5a" * 20
TOKEN = b"\x70" * 20
DEPOSIT_UNITS_MAX = 10  # a deposit is 1-10 BAAS
UNKNOWN_WALLET_CHANCE = 0.3  # deposits naming a wallet nobody linked: held in suspense


def listing_id(partner: SimPartner) -> bytes:
    """The partner's one listing (a 16-byte id its platform derives)."""
    return hashlib.sha256(b"sim-listing|" + partner.id).digest()[:16]


@dataclass(frozen=True, slots=True)
class SimCode:
    user: SimUser
    partner: SimPartner
    secret: bytes

    @property
    def hash(self) -> bytes:
        return code_hash(self.secret)


@dataclass
class PaymentsWorkload:
    market: BridgeWorkload  # the partners, their users and links (the Bridge workload's draw)
    codes: tuple[SimCode, ...]
    step: int = 0  # the next set-up step (all done: the random phase)
    waiting: dict[int, int] = field(default_factory=dict)  # seq -> its set-up step
    kinds: dict[int, tuple[str, bytes, SimPartner]] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)  # first outcomes, by result code
    seen: set[int] = field(default_factory=set)
    payments: list[tuple[bytes, SimPartner]] = field(default_factory=list)  # authorised ok
    orders: list[tuple[bytes, SimPartner]] = field(default_factory=list)  # placed ok
    used: set[bytes] = field(default_factory=set)  # code hashes sent in a redemption
    # Deposits sent: the operation (sent again as is for a duplicate) and the user credited
    # (None: an unknown wallet, held in suspense).
    deposits: list[tuple[OpFields, SimUser | None]] = field(default_factory=list)

    @classmethod
    def draw(cls, rng: SimRng, epoch_ms: int) -> PaymentsWorkload:
        market = BridgeWorkload.draw(rng, epoch_ms)
        codes = tuple(
            SimCode(u, p, rng.randrange(1, 1 << 128).to_bytes(16, "big"))
            for p in market.partners
            for u in p.users
            for _ in range(CODES_PER_USER)
        )
        return cls(market, codes)

    @property
    def partners(self) -> tuple[SimPartner, ...]:
        return self.market.partners

    @property
    def listings(self) -> dict[bytes, int]:
        """Each listing's id and the stock it was put with."""
        return {listing_id(p): LISTING_STOCK for p in self.partners}

    # -- identity, proposed by the leader

    def setup_entries(self) -> list[tuple[bytes, AppEntry]]:
        entries = self.market.setup_entries()
        expiry_s = self.market.deadline_s - 2 * 86_400  # a day past the start: within bounds
        for c in self.codes:
            ledger = ledger_number(T, POINT_INDEX_FIRST + c.partner.index)
            address = c.user.address
            message = eip712.CodeIssue(T, c.hash, ledger, CODE_LIMIT, expiry_s, address)
            signature = sign_typed(c.user.key, message)
            issue = CodeIssueEntry(T, address, c.hash, ledger, CODE_LIMIT, expiry_s, signature)
            entries.append((CODE_PREFIX + c.hash, AppEntry("code.issue", issue.to_body())))
        return entries

    # -- the payments client's operations

    def _setup_steps(self) -> list[tuple[str, SimPartner, SimUser | None]]:
        steps: list[tuple[str, SimPartner, SimUser | None]] = []
        for p in self.partners:
            steps += [("define", p, None), *(("issue", p, u) for u in p.users)]
            steps += [("listing", p, None), ("fee", p, None)]
        return steps

    def operation(self, seq: int, record_id: bytes, rng: SimRng, view: CommittedView) -> OpFields:
        steps = self._setup_steps()
        if self.step < len(steps):
            self.waiting[seq] = self.step
            kind, p, u = steps[self.step]
            return self._setup_op(kind, p, u, record_id, view)
        p = rng.choice(self.partners)
        u = rng.choice(p.users)
        roll = rng.random()
        kind = "refund_order"
        for name, chance in KINDS:
            if roll < chance:
                kind = name
                break
            roll -= chance
        self.kinds[seq] = (kind, record_id, p)
        if kind == "deposit_again" and self.deposits:
            return rng.choice(self.deposits)[0]  # the watcher proposes it again: one record
        if kind.startswith("deposit"):
            return self._deposit(u, rng)
        return self._op(kind, p, u, record_id, rng, view)

    def _deposit(self, u: SimUser, rng: SimRng) -> OpFields:
        """A confirmed vault deposit of BAAS, to ``u``'s wallet or to one nobody linked."""
        n = len(self.deposits) + 1
        unknown = rng.random() < UNKNOWN_WALLET_CHANCE
        address = rng.randrange(1, 1 << 160).to_bytes(20, "big") if unknown else u.address
        block_hash = hashlib.sha256(b"sim-block|%d" % n).digest()
        body = DepositCreditBody(
            chain_id=CHAIN_ID, vault=VAULT, tx_hash=hashlib.sha256(b"sim-tx|%d" % n).digest(),
            log_index=0, block_number=n, block_hash=block_hash, token=TOKEN,
            ledger=BAAS, wallet=wallet_id(address, T),
            amount=rng.randint(1, DEPOSIT_UNITS_MAX) * BAAS_UNIT, address=address,
            cursor_number=n, cursor_hash=block_hash,
        )  # fmt: skip
        record_id = deposit_record_id(body.key)
        op = OpFields(partner=PLATFORM, mode=T, deposit=body.encode(), record_id=record_id)
        self.deposits.append((op, None if unknown else u))
        return op

    def expected_deposits(self) -> dict[int, int]:
        """What the deposits sent credit, once each: per user's BAAS account, and the
        suspense account (a duplicate credits nothing)."""
        credited: dict[int, int] = {}
        for op, user in self.deposits:
            assert op.deposit is not None
            amount = DepositCreditBody.decode(op.deposit).amount
            account = suspense_account(T, BAAS) if user is None else user.account(BAAS)
            credited[account] = credited.get(account, 0) + amount
        return credited

    def on_outcome(self, seq: int, outcome: Mapping[str, Any] | None) -> None:
        result = count_first_outcome(self, seq, outcome)
        if result is None:
            return
        kind, op, p = self.kinds.get(seq, ("", b"", self.partners[0]))
        if kind in ("deposit_again", "redeem"):  # a duplicate deposit's, a code's outcomes
            key = f"{kind}_{result}"
            self.results[key] = self.results.get(key, 0) + 1
        if result == "ok" and kind in ("authorise", "redeem"):
            self.payments.append((op, p))
        elif result == "ok" and kind == "order":
            self.orders.append((op, p))

    def _setup_op(
        self, kind: str, p: SimPartner, u: SimUser | None, record_id: bytes, view: CommittedView
    ) -> OpFields:
        points = p.points(view)
        if kind == "define":
            raw = encode_request(DefinePoints(record_id, p.id, points, f"PAY{p.index}", 0, 0))
            return OpFields(partner=p.id, mode=T, bridge=raw)
        if kind == "issue":
            assert u is not None
            raw = encode_request(IssuePoints(record_id, p.id, points, u.account(points), ISSUED))
            return OpFields(partner=p.id, mode=T, user_refs=(u.ref,), bridge=raw)
        if kind == "listing":
            request: Request = PutListing(
                record_id, p.id, listing_id(p), points, LISTING_PRICE, LISTING_STOCK, True,
                f"sim item {p.index}", "a simulated product",
            )  # fmt: skip
            return OpFields(partner=p.id, mode=T, payments=encode_payment_request(request))
        fee = SetFee(record_id, PLATFORM, points, FEE_BPS, FEE_MIN)
        return OpFields(partner=PLATFORM, mode=T, payments=encode_payment_request(fee))

    def _op(
        self,
        kind: str,
        p: SimPartner,
        u: SimUser,
        record_id: bytes,
        rng: SimRng,
        view: CommittedView,
    ) -> OpFields:
        points = p.points(view)
        window = rng.randint(WINDOW_S_MIN, WINDOW_S_MAX)
        signer: SimUser | None = None
        code: bytes | None = None
        request: Request
        target = None
        if kind in ("fulfil", "cancel", "refund_order"):
            target = self._recent(self.orders, p, rng)
        elif kind in ("capture", "void", "refund"):
            target = self._recent(self.payments, p, rng)
        if kind == "redeem":
            request, code = self._redeem(p, u, record_id, points, rng)
        elif kind == "order":
            quantity = rng.randint(1, 2)
            request = PlaceOrder(
                record_id, p.id, listing_id(p), u.account(points), quantity, window
            )
            signer = u
        elif target is not None and kind == "fulfil":
            request = FulfilOrder(record_id, p.id, target)
        elif target is not None and kind == "cancel":
            request = CancelOrder(record_id, p.id, target)
        elif target is not None and kind == "refund_order":
            request = RefundOrder(record_id, p.id, target, rng.randint(1, LISTING_PRICE))
        elif target is not None:
            request = self._payment_step(kind, p, target, record_id, rng, view)
        else:  # an authorisation (also when nothing to capture, fulfil, ... exists yet)
            amount = rng.randint(1, 300)
            request = Authorise(record_id, p.id, points, u.account(points), amount, window)
            signer = u
        raw = encode_payment_request(request)
        if code is not None:
            approvals: bytes | None = encode_approvals([CodeApproval(code)])
        else:
            approvals = None if signer is None else approve(signer, record_id, raw, self.deadline)
        return OpFields(approvals=approvals, partner=p.id, mode=T, payments=raw)

    @staticmethod
    def _payment_step(
        kind: str,
        p: SimPartner,
        payment: bytes,
        record_id: bytes,
        rng: SimRng,
        view: CommittedView,
    ) -> Request:
        """A capture (partial, or now and then above the authorised), void or refund (partial,
        or above what is left) of ``payment``, sized from its committed record."""
        raw = view.get(payment_key(payment))
        record = None if raw is None else decode_payment(raw)
        authorised = 1 if record is None else record.amount
        left = 1 if record is None else max(1, record.captured - record.refunded)
        if kind == "capture":
            return Capture(record_id, p.id, payment, rng.randint(1, authorised + 10))
        if kind == "void":
            return Void(record_id, p.id, payment)
        return Refund(record_id, p.id, payment, rng.randint(1, left + 5))

    @property
    def deadline(self) -> int:
        return self.market.deadline_s

    def _redeem(
        self, p: SimPartner, u: SimUser, record_id: bytes, points: int, rng: SimRng
    ) -> tuple[RedeemCode, bytes]:
        """A redemption of one of ``u``'s codes at ``p``: a fresh one, one already used, or
        (rarely: a merchant is locked out after ten) a code never issued."""
        mine = [c for c in self.codes if c.user == u and c.partner == p]
        fresh = [c for c in mine if c.hash not in self.used]
        roll = rng.random()
        if roll < 0.05:
            secret = rng.randrange(1, 1 << 128).to_bytes(16, "big")
        elif fresh and roll < 0.8:
            secret = fresh[0].secret
        else:
            secret = rng.choice(mine).secret
        self.used.add(code_hash(secret))
        amount = rng.randint(1, CODE_LIMIT)
        capture = rng.random() < 0.5
        window = rng.randint(WINDOW_S_MIN, WINDOW_S_MAX)
        request = RedeemCode(record_id, p.id, points, code_hash(secret), amount, capture, window)
        return request, secret

    @staticmethod
    def _recent(items: list[tuple[bytes, SimPartner]], p: SimPartner, rng: SimRng) -> bytes | None:
        """The newest id of ``p`` in ``items`` half the time (still within its window, most
        likely), else one of its last :data:`RECENT` (None: there is none)."""
        mine = [op for op, owner in items[-4 * RECENT :] if owner == p][-RECENT:]
        if not mine:
            return None
        return mine[-1] if rng.random() < 0.5 else rng.choice(mine)
