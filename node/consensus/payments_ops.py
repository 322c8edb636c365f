"""Payments and the Market on the log (feature 9): a payments request in a ledger operation.

From log feature version :data:`PAYMENTS_FEATURE_VERSION` an operation of a ``ledger.ops``
entry may carry, instead of ledger events or a Bridge request, one payments request in its
wire form (``pm``: :func:`business.payments.wire.encode_request`, its ``op`` the operation's
record id). As the Bridge's (:mod:`node.consensus.bridge_ops`, whose shape this copies): the
request, its record's index put, the ledger chain the payments core makes of it, the payments
state (``pm/``), the owner records of the accounts it opens and the outbox events are one
operation: one atomic unit in the entry's write batch, one Merkle leaf, one sticky outcome
(format version 2: the events with their ledger results and the request's result code).

The step, for a *created* operation (:meth:`PaymentsStep.run`):

1. **who** (:meth:`PaymentsStep._scope`): the gateway's proposer (``pt``/``md``) must be there
   (``proposer_missing``); the request names the proposer (another partner's:
   ``account_not_found``); a partner must be onboarded, active, its user references linked
   (identity's :func:`~business.identity.scope.check_scope` with no events); the platform
   (all-zero id) may only set fees and expire orders (``partner_not_found`` otherwise). Every
   ledger named is of the proposer's mode (``ledger_not_found``), an order's listing too; the
   wallet account an authorisation or order debits must be a wallet's account of the mode
   (``account_not_found``). A partner acts only on its own payments, orders and listings (the
   core answers another's as not found);
2. :meth:`Payments.prepare <business.payments.core.Payments.prepare>`: the payments checks
   (tables, amounts, codes, stock); a refusal is the result, with no events (a wrong code
   guess is still counted);
3. a consumer-code redemption carries exactly one approval, a one-time code whose hash is the
   redeemed ``code_hash`` (``code_mismatch`` otherwise): the code the merchant scanned is the
   one identity consumes, never another of the same wallet;
4. every account the chain creates has an owner: the merchant's ``settlement`` role account
   from onboarding (:data:`~business.identity.model.PAYMENT_ROLES`; ``role_missing``
   otherwise) or the platform's fees account (recorded as the platform's);
5. identity's :func:`~business.identity.approvals.check_debits`: an authorisation debits the
   user's wallet and needs their approval over
   :func:`~business.identity.approvals.operation_digest` ``(record id, pm bytes)`` (an
   EIP-712 signature, or the one-time code); captures and voids are posts and voids (exempt);
   a refund and a fee debit the merchant's own settlement account;
6. the chain through ``Ledger.apply`` at the entry's log time, then :meth:`Payments.settle`
   keeps the payments writes only if the whole chain succeeded. On success the outbox gets
   its events (:mod:`business.payments.outbox`); an authorisation is indexed under its
   merchant (``pm/pp/<merchant><mode><timestamp ns><payment>``: the node's paginated list,
   in the order of its pending transfer's timestamp) and queued for the expiry sweep.

**Reserved transfer codes.** From feature 9 nothing but a payments request may make a
transfer with a payments code (:class:`~business.payments.model.TransferCode`, 201-203) or
post or void a transfer that has one: :func:`reserved_transfer` is checked for every raw
``ev`` operation (``transfer_code_reserved``). Otherwise a merchant could post its own
payment's pending transfer behind the payments state's back.

**Expiry on log time.** The ledger releases an expired authorisation by its own sweep; the
payments state learns of it at the next touch (:func:`~business.payments.core.
payment_state`). So that the partner hears of it and an order's stock comes back without
anyone touching them, every authorisation is queued by the minute its capture window ends
(``pm/xb/<minute>`` its count, ``pm/xi/<minute><n>`` the payment id; ``pm/xs`` the sweep's
cursor ``[minute, offset, open]``). :meth:`PaymentsStep.expire` runs at the start of every
``ledger.ops`` and ``ledger.tick`` entry: for minutes wholly before the log time, at most
:data:`EXPIRY_BUCKETS_PER_ENTRY_MAX` minutes and :data:`EXPIRY_ITEMS_PER_ENTRY_MAX` payments
per entry, it emits ``payment.expired`` for each still-authorised payment (its window is over,
the ledger's rule) and, for an order's payment, runs the core's ``ExpireOrder`` as the
platform (op id :func:`sweep_op`): the stock returns, ``order.expired`` is emitted. Captured
or voided payments are skipped. Deterministic (log time and state only) and bounded per entry;
a backlog only delays the notices, never a refusal (the core's own state rule refuses a
capture after the window at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from business.bridge.model import ReserveLow, pack, unpack
from business.identity.approvals import (
    CodeApproval,
    NoDebitRules,
    debits_of,
    decode_approvals,
)
from business.identity.core import platform_account
from business.identity.ids import code_hash, derive, mode_of_ledger
from business.identity.model import (
    ApprovalResult,
    IdentityConfig,
    OwnerKind,
    Role,
    ScopeResult,
    decode_owner,
    owner_key,
)
from business.identity.scope import PLATFORM, Proposer, Scope, Unapplied, check_scope
from business.ledger.core import Ledger
from business.ledger.model import (
    NS_PER_MS,
    NS_PER_S,
    CreateAccount,
    CreateTransfer,
    Event,
    Transfer,
    TransferFlags,
)
from business.ledger.outcome import OperationOutcome, outcome_of
from business.ledger.views import get_transfer
from business.payments.core import Payments, Prepared, payment_state, platform_fees_account
from business.payments.model import (
    PAYMENTS_FEATURE_VERSION,
    Authorise,
    CancelOrder,
    Capture,
    ExpireOrder,
    FulfilOrder,
    OrderState,
    PaymentResult,
    PaymentsConfig,
    PaymentState,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    Request,
    SetFee,
    TransferCode,
    Void,
    decode_listing,
    decode_order,
    decode_payment,
    listing_key,
    order_key,
    partner_payment_key,
    payment_key,
)
from business.payments.outbox import EventType, append_event
from node.consensus.request_step import approve_and_apply, refused_request
from node.consensus.state_machine import Overlay, StateView
from node.errors import InvariantViolation

__all__ = [
    "EXPIRY_BUCKETS_PER_ENTRY_MAX",
    "EXPIRY_BUCKET_MS",
    "EXPIRY_ITEMS_PER_ENTRY_MAX",
    "PAYMENTS_CONFIG",
    "PAYMENTS_FEATURE_VERSION",
    "PaymentsRun",
    "PaymentsStep",
    "reserve_low",
    "reserved_transfer",
    "sweep_op",
]

# The payments core's bounds are part of the log format: every replica refuses alike.
PAYMENTS_CONFIG = PaymentsConfig()
EXPIRY_BUCKET_MS = 60_000  # authorisations are queued by the minute their window ends
EXPIRY_BUCKETS_PER_ENTRY_MAX = 64  # minutes one entry's sweep walks (empty ones cost a read)
EXPIRY_ITEMS_PER_ENTRY_MAX = 64  # queued payments one entry's sweep looks at
SWEEP_CURSOR_KEY = b"pm/xs"  # [minute, offset, open]; absent: nothing queued
BUCKET_PREFIX = b"pm/xb/"  # + minute u64 -> how many payments were queued in it
ITEM_PREFIX = b"pm/xi/"  # + minute u64 + n u32 -> payment id
TAG_SWEEP_OP = b"baas/payments-sweep-op/v1"
RESERVED_CODES = frozenset(int(c) for c in TransferCode)
_POST_OR_VOID = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
_SETTLEMENT_ROLES = frozenset({int(Role.SETTLEMENT), int(Role.POINT_SETTLEMENT)})
S = ScopeResult
R = PaymentResult
E = EventType

# The outbox events of a successful request, by its type (RedeemCode adds the capture).
_EVENTS: dict[type, tuple[EventType, ...]] = {
    Authorise: (E.PAYMENT_AUTHORISED,),
    RedeemCode: (E.PAYMENT_AUTHORISED,),
    Capture: (E.PAYMENT_CAPTURED,),
    Void: (E.PAYMENT_VOIDED,),
    Refund: (E.PAYMENT_REFUNDED,),
    PlaceOrder: (E.ORDER_PLACED, E.PAYMENT_AUTHORISED),
    FulfilOrder: (E.ORDER_FULFILLED, E.PAYMENT_CAPTURED),
    CancelOrder: (E.ORDER_CANCELLED, E.PAYMENT_VOIDED),
    RefundOrder: (E.ORDER_REFUNDED, E.PAYMENT_REFUNDED),
    ExpireOrder: (E.ORDER_EXPIRED,),
}


@dataclass(frozen=True, slots=True)
class PaymentsRun:
    """One payments operation's outcome and its request kind (for metrics)."""

    outcome: OperationOutcome
    kind: str  # the request's type name: Authorise, Capture, ...


def sweep_op(payment: bytes) -> bytes:
    """The op id of the sweep's ``ExpireOrder`` of the order paid by ``payment``."""
    return derive(TAG_SWEEP_OP, payment)


def reserve_low(layer: Overlay, notice: ReserveLow, now_ms: int) -> None:
    """The Bridge's low-reserve notice as an outbox event (feature 9): object = the partner
    id and the BAAS ledger (u32); the level is read by whoever delivers it."""
    append_event(layer, E.RESERVE_LOW, notice.partner + notice.ledger.to_bytes(4, "big"), now_ms)


def reserved_transfer(view: StateView, events: Sequence[Event]) -> bool:
    """Whether raw ledger ``events`` make a payments transfer or resolve one (feature 9).

    A post or void with code 0 inherits its pending transfer's code, so the pending transfer
    is read: payments' pending transfers are in the state as soon as their operation ran
    (the step runs its chain at once); a raw pending transfer created earlier in the same
    entry, not run yet, cannot carry a payments code (it would have been refused itself).
    """
    for e in events:
        if type(e) is not CreateTransfer:
            continue
        if e.code in RESERVED_CODES:
            return True
        if e.flags & _POST_OR_VOID:
            found = get_transfer(view, e.pending_id) if 0 < e.pending_id < (1 << 128) else None
            if found is not None and found.code in RESERVED_CODES:
                return True
    return False


class PaymentsStep:
    """The payments step of the ledger-ops apply (pure: reads and writes one overlay)."""

    def __init__(self, ledger: Ledger, identity: IdentityConfig) -> None:
        self.payments = Payments(PAYMENTS_CONFIG, ledger)
        self._ledger = ledger
        self._identity = identity

    # --- one operation ----------------------------------------------------------------------

    def run(
        self,
        record_id: bytes,
        raw: bytes,
        request: Request,
        proposer: Proposer | None,
        approvals: bytes,
        now_ms: int,
        layer: Overlay,
        earlier: Unapplied,
    ) -> PaymentsRun:
        """Apply one created operation's request into ``layer`` (module docstring)."""
        kind = type(request).__name__
        if proposer is None:
            return PaymentsRun(OperationOutcome(now_ms, (), S.PROPOSER_MISSING.value), kind)
        refusal = self._scope(proposer, record_id, request, layer, earlier, now_ms)
        if refusal is not None:
            return PaymentsRun(OperationOutcome(now_ms, (), refusal.value), kind)
        prepared = self.payments.prepare(request, now_ms, layer)
        if not prepared.code.succeeded or prepared.retry:
            settled = self.payments.settle(prepared, ())
            layer.writes.update(settled.writes)
            return PaymentsRun(OperationOutcome(now_ms, (), settled.code.value), kind)
        events = prepared.events
        if isinstance(request, RedeemCode) and not _code_matches(
            approvals, request.code_hash, self._identity
        ):
            return PaymentsRun(refused_request(events, R.CODE_MISMATCH.value, now_ms), kind)
        owners = self._owners(events, proposer, layer)
        if isinstance(owners, ScopeResult):
            return PaymentsRun(refused_request(events, owners.value, now_ms), kind)
        checks = Overlay(layer)
        checks.writes.update(owners)
        approved = approve_and_apply(
            self._ledger, self._identity, NoDebitRules(), checks, layer,
            record_id=record_id, raw=raw, proposer=proposer, debits=debits_of(events),
            approvals=approvals, events=events, now_ms=now_ms,
        )  # fmt: skip
        if isinstance(approved, ApprovalResult):
            return PaymentsRun(refused_request(events, approved.value, now_ms), kind)
        results, approval_writes = approved
        settled = self.payments.settle(prepared, results)
        layer.writes.update(settled.writes)
        layer.writes.update(approval_writes)  # a one-time code is consumed once it was checked
        if settled.code.succeeded:
            layer.writes.update(owners)
            self._succeeded(request, prepared, now_ms, layer)
        outcome = outcome_of(events, results, now_ms)
        return PaymentsRun(replace(outcome, result=settled.code.value), kind)

    def _succeeded(self, request: Request, prepared: Prepared, now_ms: int, layer: Overlay) -> None:
        """The outbox events of a request that took effect, and its expiry queue entry."""
        subject = request.op
        if isinstance(request, (Capture, Void, Refund)):
            subject = request.payment
        elif isinstance(request, (FulfilOrder, CancelOrder, RefundOrder, ExpireOrder)):
            subject = request.order
        kinds = _EVENTS.get(type(request), ())
        if isinstance(request, RedeemCode) and request.capture:
            kinds = (*kinds, E.PAYMENT_CAPTURED)
        for kind in kinds:
            append_event(layer, kind, subject, now_ms)
        raw = layer.get(payment_key(request.op))
        if isinstance(request, (Authorise, RedeemCode, PlaceOrder)) and raw is not None:
            p = decode_payment(raw)
            transfer = get_transfer(layer, p.pending)
            if transfer is None:
                raise InvariantViolation("an authorised payment without its pending transfer")
            mode = int(mode_of_ledger(p.ledger))
            layer.writes[partner_payment_key(p.partner, mode, transfer.timestamp, request.op)] = b""
            if p.state == PaymentState.AUTHORISED:
                self._queue(request.op, transfer, layer)

    def _scope(
        self,
        proposer: Proposer,
        record_id: bytes,
        request: Request,
        layer: Overlay,
        earlier: Unapplied,
        now_ms: int,
    ) -> ScopeResult | None:
        if request.partner != proposer.partner:
            return S.ACCOUNT_NOT_FOUND  # another partner's data is not found, never foreign
        if proposer.partner == PLATFORM:
            if not isinstance(request, (SetFee, ExpireOrder)):
                return S.PARTNER_NOT_FOUND  # payments and listings are a partner's
        else:
            base = check_scope(layer, proposer, record_id, (), now_ms, earlier)
            if not isinstance(base, Scope):
                return base
        ledgers = [request.ledger] if isinstance(request, (Authorise, RedeemCode, SetFee)) else []
        if isinstance(request, PutListing):
            ledgers.append(request.ledger)
        if isinstance(request, PlaceOrder):
            raw = layer.get(listing_key(request.listing))
            if raw is not None:
                ledgers.append(decode_listing(raw).ledger)
        if any(mode_of_ledger(ledger) != proposer.mode for ledger in ledgers):
            return S.LEDGER_NOT_FOUND
        if isinstance(request, (Authorise, PlaceOrder)):
            raw = layer.get(owner_key(request.wallet_account))
            owner = None if raw is None else decode_owner(raw)
            if owner is None or owner.kind != OwnerKind.WALLET or owner.mode != proposer.mode:
                return S.ACCOUNT_NOT_FOUND
        return None

    def _owners(
        self, events: Sequence[Event], proposer: Proposer, layer: Overlay
    ) -> ScopeResult | dict[bytes, bytes | None]:
        """The owner records of the accounts the chain creates, or ``role_missing``: a
        settlement account must be its merchant's role from onboarding; the platform's fees
        account is recorded as the platform's when it is first opened."""
        writes: dict[bytes, bytes | None] = {}
        for e in events:
            if type(e) is not CreateAccount:
                continue
            raw = layer.get(owner_key(e.id))
            owner = None if raw is None else decode_owner(raw)
            if e.id == platform_fees_account(e.ledger):
                if owner is None:
                    key, value = platform_account(proposer.mode, e.ledger, e.id)
                    writes[key] = value
                continue
            if (
                owner is None
                or owner.kind != OwnerKind.PARTNER
                or owner.role not in _SETTLEMENT_ROLES
                or owner.mode != proposer.mode
                or owner.ledger != e.ledger
            ):
                return S.ROLE_MISSING
        return writes

    # --- expiry on log time ------------------------------------------------------------------

    def _queue(self, payment: bytes, transfer: Transfer, layer: Overlay) -> None:
        """Queue an authorised payment under the minute its window ends (module docstring)."""
        end_ns = transfer.timestamp + transfer.timeout * NS_PER_S
        minute = -(-end_ns // NS_PER_MS) // EXPIRY_BUCKET_MS  # swept once the minute is over
        bucket = BUCKET_PREFIX + minute.to_bytes(8, "big")
        raw = layer.get(bucket)
        count = 0 if raw is None else unpack(raw, "expiry bucket", 1)[0]
        layer.writes[ITEM_PREFIX + minute.to_bytes(8, "big") + count.to_bytes(4, "big")] = payment
        layer.writes[bucket] = pack(count + 1)
        cursor = layer.get(SWEEP_CURSOR_KEY)
        if cursor is None:
            layer.writes[SWEEP_CURSOR_KEY] = pack(minute, 0, 1)
            return
        at, offset, open_count = unpack(cursor, "expiry cursor", 3)
        if minute < at:
            # The cursor starts at the first minute queued, which may be later than this one
            # (a shorter window). It never walked this minute (only minutes already over are
            # walked, and this one is not), so it moves back to it.
            if offset:
                raise InvariantViolation("an authorisation queued behind the expiry sweep")
            at = minute
        layer.writes[SWEEP_CURSOR_KEY] = pack(at, offset, open_count + 1)

    def expire(self, log_index: int, now_ms: int, layer: Overlay) -> int:
        """The payments expiry sweep of one entry (module docstring); payments it expired."""
        cursor = layer.get(SWEEP_CURSOR_KEY)
        if cursor is None:
            return 0
        minute, offset, open_count = unpack(cursor, "expiry cursor", 3)
        expired = looked = walked = 0
        while open_count and walked < EXPIRY_BUCKETS_PER_ENTRY_MAX:
            if (minute + 1) * EXPIRY_BUCKET_MS > now_ms:
                break  # this minute's windows may still be open
            bucket = BUCKET_PREFIX + minute.to_bytes(8, "big")
            raw = layer.get(bucket)
            count = 0 if raw is None else unpack(raw, "expiry bucket", 1)[0]
            while offset < count and looked < EXPIRY_ITEMS_PER_ENTRY_MAX:
                item = ITEM_PREFIX + minute.to_bytes(8, "big") + offset.to_bytes(4, "big")
                payment = layer.get(item)
                if payment is None:
                    raise InvariantViolation("a queued payment is missing from its minute")
                expired += self._expire_one(payment, now_ms, layer)
                layer.writes[item] = None
                offset, open_count, looked = offset + 1, open_count - 1, looked + 1
            if offset < count:
                break  # the per-entry bound: the next entry goes on from here
            layer.writes[bucket] = None
            minute, offset, walked = minute + 1, 0, walked + 1
        if open_count:
            layer.writes[SWEEP_CURSOR_KEY] = pack(minute, offset, open_count)
        else:
            layer.writes[SWEEP_CURSOR_KEY] = None
        return expired

    def _expire_one(self, payment: bytes, now_ms: int, layer: Overlay) -> int:
        raw = layer.get(payment_key(payment))
        if raw is None:
            raise InvariantViolation("a queued payment has no record")
        p = decode_payment(raw)
        if p.state != PaymentState.AUTHORISED:
            return 0  # captured or voided within its window
        if payment_state(layer, p, now_ms) != PaymentState.EXPIRED:
            raise InvariantViolation("a payment swept before its window ended")
        append_event(layer, E.PAYMENT_EXPIRED, payment, now_ms)
        raw_order = layer.get(order_key(payment))
        if raw_order is not None and decode_order(raw_order).state == OrderState.AUTHORISED:
            request = ExpireOrder(sweep_op(payment), PLATFORM, payment)
            prepared = self.payments.prepare(request, now_ms, layer)
            settled = self.payments.settle(prepared, ())
            if not settled.code.succeeded:
                raise InvariantViolation(f"an order's expiry failed: {settled.code.value}")
            layer.writes.update(settled.writes)
            append_event(layer, E.ORDER_EXPIRED, payment, now_ms)
        return 1


def _code_matches(approvals: bytes, hashed: bytes, identity: IdentityConfig) -> bool:
    """Whether the approvals are exactly one one-time code, the secret of ``hashed``."""
    items = decode_approvals(approvals, identity.approvals_max)
    if items is None or len(items) != 1 or not isinstance(items[0], CodeApproval):
        return False
    return code_hash(items[0].code) == hashed
