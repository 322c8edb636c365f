"""Payments: two-phase payments, consumer-presented codes, the Market's listings and orders.

Theory of operation
===================

A pure, deterministic core beside the ledger, in the Bridge's shape
(:mod:`business.bridge.core`). It never reads a clock or does I/O. A request becomes **ledger
events** (one linked chain) plus **its own state** under ``pm/``, read through a ``get``-only
view; the ledger decides whether value moves, payments keeps what the ledger cannot (what was
authorised, captured and refunded, the fee schedule, wrong code guesses, listings, orders):

1. :meth:`Payments.prepare` ``(request, now_ms, view)`` runs the checks and returns the
   events, the writes to make *if* the ledger accepts them, and the writes a refusal still
   makes (only a wrong code guess: the lockout must count refused guesses);
2. the caller runs identity's ``check_debits`` (an authorisation debits the user's wallet: it
   needs their EIP-712 signature over the operation, or the one-time code they issued; a
   capture or void is a post or void of the pending transfer, exempt by rule; a refund and a
   fee debit the merchant's own account) and then ``Ledger.apply``, at the same log time;
3. :meth:`Payments.settle` maps the ledger's verdict to a :class:`PaymentResult` and keeps the
   payments writes only if every event succeeded, so the two states never disagree.

:meth:`Payments.apply` does the three without the approval check (tests). Every outcome is
stored under ``pm/op/<op>``; a retry of the op answers that first code with no events and no
writes. Ledger ids: transfer ``index`` of an operation is ``ids.transfer_id(op, index)``; the
merchant's **settlement** account is ``ids.partner_account_id(partner, mode, "settlement",
ledger)`` on BAAS, ``"point_settlement"`` on its own points (identity's role accounts
``PAYMENT_ROLES``; ``debits_must_not_exceed_credits``: refunds come out of what it received), the
platform's **fees** account ``partner_account_id(0^16, mode, "fees", ledger)``; both are
created at the head of the first chain that needs them.

Payments: one state machine
---------------------------
:data:`PAYMENT_TABLE` maps every (state, command) pair, the state ``None`` meaning "no such
payment", to the next state or to the refusal code; the table test walks all 24 pairs.

* **authorise** (``Authorise``, or a ``RedeemCode``/``PlaceOrder`` that authorises): a pending
  transfer wallet -> settlement of ``amount`` with ``timeout`` = the capture window (at most
  ``capture_window_s_max``). The payment's id is the operation id; its record stamps the fee
  schedule of the ledger at that moment.
* **capture** ``amount <= authorised`` (else ``amount_exceeds_authorised``): a
  ``post_pending_transfer`` of that amount, the ledger releasing the rest; then, where a fee is
  configured, a linked transfer settlement -> platform fees of
  ``fee = min(captured, max(fee_min, ceil(captured * fee_bps / 10_000)))`` (rounding up, in the
  platform's favour as the Bridge's fee; never more than the capture, so the settlement
  account can always pay it). One capture per payment (``payment_already_captured``).
* **void**: a ``void_pending_transfer``; only an authorised payment.
* **refund**: a transfer settlement -> wallet; one or more (at most
  ``refunds_per_payment_max``), their sum never above the captured amount
  (``refund_exceeds_captured``); the fee is not refunded (Stripe keeps its fee too). The
  payment is ``refunded`` once the refunds reach the captured amount. A settlement account that
  no longer holds the amount answers ``merchant_insufficient_funds``.
* **expiry**: the ledger releases the reservation on its own log-time sweep; no payments event
  runs. The payment learns of it **at the next touch**: :func:`payment_state` reads the pending
  transfer (``lg/t/``, ``lg/ps/``) and an ``authorised`` record whose transfer the ledger holds
  expired, or whose ``timestamp + timeout`` the log time has reached, *is* ``expired`` -- the
  very rule by which the ledger refuses a post or void (``pending_transfer_expired``), so the
  two cannot disagree, and reads (the API's) use the same function. ``expired`` is therefore
  never written. Should a post at the boundary nanosecond still meet ``pending_transfer_expired``
  (its own timestamp may fall after the log time's first), ``settle`` maps it to
  ``payment_expired``.

Consumer-presented codes
------------------------
A code (:mod:`business.payments.codes.consumer`: 44 digits, prefix ``47``, layout and mode
digits, a Luhn check digit, and a **128-bit** uniformly random secret) is issued by the user's
wallet through identity's ``code.issue``: the state keeps only ``ids.code_hash(secret)``
(domain-separated SHA-256, tag ``baas/one-time-code/v1``) under ``id/c/``, bound to the wallet,
one ledger (asset and mode), an amount limit and an expiry (the app gives it
``ConsumerCodeConfig.validity_s_max`` = 5 min at most). Payments does not keep a second copy:
one code store, one consumption. ``RedeemCode`` (the merchant scanned it) carries the hash;
the operation's approvals carry the secret as a ``CodeApproval``, which ``check_debits``
hashes again, requires to approve exactly the debited wallet, and marks used in the same
atomic unit (a hash that does not match the secret fails there: nothing moves). Single use:
a used code is ``code_used``; an expired one ``code_expired`` (log time ``>= expiry``).

**Guessing.** An unknown hash is a wrong guess, counted per merchant and mode in one value
``pm/gu/<partner><mode>`` = (window start, count): at most ``guesses_max`` (10) in a fixed
window of ``guess_window_s`` (1 h) that opens at the first wrong guess; then every
``RedeemCode`` of that merchant is ``merchant_locked_out`` until the window ends, correct codes
included. State: one value per merchant and mode, whatever the number of guesses. With ``n``
codes live, one guess hits with probability ``n / 2^128``; at the bound a merchant gets
``24 * 365 * 10 = 87,600`` guesses a year, so even 10^9 live codes give a yearly success
chance below ``2^-47``. The lockout is defence in depth; the entropy is the protection. A typo
never counts: the till's parser refuses a wrong Luhn digit before any request is made.

The Market
----------
**Listings** (``pm/li/<listing>``) are public partner data: title (``title_chars_max``),
description (``description_chars_max``), a price in one ledger's unit (BAAS or the partner's
points), the available ``stock`` and ``active``; at most ``listings_per_partner_max`` per
partner. A listing is replaced only by its own partner (``listing_foreign``).
**Orders**: :data:`ORDER_TABLE` maps every (order state, order command) pair, ``None`` meaning
no such order. ``place`` takes ``quantity`` from the listing's stock (``sold_out`` when it has
fewer) and authorises a payment of ``price * quantity`` to the listing's partner, in one
chain: the order and its payment share the operation id. ``fulfil`` captures it in full,
``cancel`` voids it and returns the stock, ``refund`` refunds (partially or in full; stock is
not returned: the partner restocks with ``PutListing``). An authorised order whose payment
expired is ``lapsed`` (derived, never written, like ``expired``): its stock is still held
until ``ExpireOrder`` (the merchant's, or the platform's sweep: partner id all zeros) returns
it and writes ``expired``. Order and payment agree: authorised/authorised,
fulfilled/captured, refunded/refunded, cancelled/voided, lapsed or expired/expired.
:func:`business.payments.views.search_listings` searches the listings with a bounded scan.

The checks, in precedence
-------------------------
The member order of :class:`PaymentResult` is the order of the checks; each request runs the
subset that concerns it: ``bound_exceeded`` (a field beyond a :class:`PaymentsConfig` bound),
``not_platform``, the code checks (lockout, unknown, mode, used, expired, ledger, limit), the
asset (``asset_not_found``; ``asset_foreign`` unless it is BAAS or the merchant's own points or
token as the Bridge registered them), the listing checks, the order table,
``payment_of_order`` (a ``Capture``, ``Void`` or ``Refund`` naming an order's payment: the
order's commands move it), the payment table, the amounts, then the ledger's verdict:
``exceeds_credits`` or ``debit_account_not_found`` on the user's wallet is
``insufficient_funds``, on the settlement account ``merchant_insufficient_funds``;
``pending_transfer_expired`` is ``payment_expired`` (``order_expired``); any other ledger
failure ``ledger_refused`` with the ledger's code in the detail. Nothing moves unless every
event succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from business.bridge.model import amount_of, pack, unpack
from business.bridge.views import get_asset as get_bridge_asset
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    ledger_number,
    mode_of_ledger,
    partner_account_id,
    transfer_id,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import CODE_PREFIX, decode_code
from business.ledger.chains import chain_verdict
from business.ledger.core import Ledger
from business.ledger.model import (
    NS_PER_MS,
    NS_PER_S,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateTransfer,
    Event,
    PendingStatus,
    Result,
    TransferFlags,
    TransferResult,
)
from business.ledger.model import account_key as ledger_account_key
from business.ledger.views import get_asset as get_ledger_asset
from business.ledger.views import get_pending_status, get_transfer
from business.payments.model import (
    AMOUNT_MAX,
    BPS_DENOMINATOR,
    LISTING_COUNT_PREFIX,
    OP_PREFIX,
    AccountCode,
    Authorise,
    CancelOrder,
    Capture,
    Command,
    ExpireOrder,
    FulfilOrder,
    Listing,
    OrderCommand,
    OrderRecord,
    OrderState,
    PaymentRecord,
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
    encode_listing,
    encode_order,
    encode_payment,
    fee_key,
    guess_key,
    listing_key,
    order_key,
    payment_key,
)
from node.consensus.state_machine import Overlay, StateView, Write
from node.errors import InvalidRequest, InvariantViolation

__all__ = [
    "ORDER_TABLE",
    "PAYMENT_TABLE",
    "PaymentOutcome",
    "Payments",
    "Prepared",
    "fee_of",
    "order_state",
    "payment_state",
    "platform_fees_account",
    "settlement_account",
]

R = PaymentResult
S = PaymentState
OS = OrderState
ZERO16 = bytes(16)
ZERO32 = bytes(32)
_LINKED = int(TransferFlags.LINKED)
_NO_OVERDRAFT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)

# (state or None for "no such payment", command) -> next state, or the refusal.
PAYMENT_TABLE: dict[tuple[PaymentState | None, Command], PaymentState | PaymentResult] = {
    (None, Command.AUTHORISE): S.AUTHORISED,
    (None, Command.CAPTURE): R.PAYMENT_NOT_FOUND,
    (None, Command.VOID): R.PAYMENT_NOT_FOUND,
    (None, Command.REFUND): R.PAYMENT_NOT_FOUND,
    (S.AUTHORISED, Command.AUTHORISE): R.PAYMENT_EXISTS,
    (S.AUTHORISED, Command.CAPTURE): S.CAPTURED,
    (S.AUTHORISED, Command.VOID): S.VOIDED,
    (S.AUTHORISED, Command.REFUND): R.PAYMENT_NOT_CAPTURED,
    (S.CAPTURED, Command.AUTHORISE): R.PAYMENT_EXISTS,
    (S.CAPTURED, Command.CAPTURE): R.PAYMENT_ALREADY_CAPTURED,
    (S.CAPTURED, Command.VOID): R.PAYMENT_ALREADY_CAPTURED,
    (S.CAPTURED, Command.REFUND): S.CAPTURED,  # REFUNDED once the refunds reach the capture
    (S.REFUNDED, Command.AUTHORISE): R.PAYMENT_EXISTS,
    (S.REFUNDED, Command.CAPTURE): R.PAYMENT_ALREADY_CAPTURED,
    (S.REFUNDED, Command.VOID): R.PAYMENT_ALREADY_CAPTURED,
    (S.REFUNDED, Command.REFUND): R.PAYMENT_FULLY_REFUNDED,
    (S.VOIDED, Command.AUTHORISE): R.PAYMENT_EXISTS,
    (S.VOIDED, Command.CAPTURE): R.PAYMENT_VOIDED,
    (S.VOIDED, Command.VOID): R.PAYMENT_VOIDED,
    (S.VOIDED, Command.REFUND): R.PAYMENT_VOIDED,
    (S.EXPIRED, Command.AUTHORISE): R.PAYMENT_EXISTS,
    (S.EXPIRED, Command.CAPTURE): R.PAYMENT_EXPIRED,
    (S.EXPIRED, Command.VOID): R.PAYMENT_EXPIRED,
    (S.EXPIRED, Command.REFUND): R.PAYMENT_EXPIRED,
}

_OC = OrderCommand
ORDER_TABLE: dict[tuple[OrderState | None, OrderCommand], OrderState | PaymentResult] = {
    (None, _OC.PLACE): OS.AUTHORISED,
    **{(None, c): R.ORDER_NOT_FOUND for c in _OC if c != _OC.PLACE},
    **{(s, _OC.PLACE): R.ORDER_EXISTS for s in OS},
    (OS.AUTHORISED, _OC.FULFIL): OS.FULFILLED,
    (OS.AUTHORISED, _OC.CANCEL): OS.CANCELLED,
    (OS.AUTHORISED, _OC.EXPIRE): R.ORDER_NOT_EXPIRED,
    (OS.AUTHORISED, _OC.REFUND): R.ORDER_NOT_FULFILLED,
    (OS.LAPSED, _OC.FULFIL): R.ORDER_EXPIRED,
    (OS.LAPSED, _OC.CANCEL): R.ORDER_EXPIRED,
    (OS.LAPSED, _OC.EXPIRE): OS.EXPIRED,
    (OS.LAPSED, _OC.REFUND): R.ORDER_NOT_FULFILLED,
    (OS.FULFILLED, _OC.FULFIL): R.ORDER_ALREADY_FULFILLED,
    (OS.FULFILLED, _OC.CANCEL): R.ORDER_ALREADY_FULFILLED,
    (OS.FULFILLED, _OC.EXPIRE): R.ORDER_ALREADY_FULFILLED,
    (OS.FULFILLED, _OC.REFUND): OS.FULFILLED,  # REFUNDED once its payment is
    (OS.REFUNDED, _OC.FULFIL): R.ORDER_ALREADY_FULFILLED,
    (OS.REFUNDED, _OC.CANCEL): R.ORDER_ALREADY_FULFILLED,
    (OS.REFUNDED, _OC.EXPIRE): R.ORDER_ALREADY_FULFILLED,
    (OS.REFUNDED, _OC.REFUND): R.ORDER_FULLY_REFUNDED,
    **{(OS.CANCELLED, c): R.ORDER_CANCELLED for c in _OC if c != _OC.PLACE},
    **{(OS.EXPIRED, c): R.ORDER_EXPIRED for c in _OC if c != _OC.PLACE},
}


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :meth:`Payments.prepare` decided: a refusal, or the chain and its writes."""

    op: bytes
    code: PaymentResult
    events: tuple[Event, ...] = ()
    writes: tuple[Write, ...] = ()  # kept only if the whole chain succeeds
    refusal_writes: tuple[Write, ...] = ()  # kept only if refused (a wrong guess counted)
    # event index -> the refusal its ``exceeds_credits`` means (wallet or settlement)
    limits: tuple[tuple[int, PaymentResult], ...] = ()
    expired: PaymentResult = R.PAYMENT_EXPIRED  # what ``pending_transfer_expired`` means
    detail: Mapping[str, int] = field(default_factory=dict)
    retry: bool = False  # the op was applied before: ``code`` is its first outcome


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """One request's outcome: its code, the events and their ledger results, all writes."""

    code: PaymentResult
    events: tuple[Event, ...]
    results: tuple[Result, ...]
    writes: tuple[Write, ...]
    detail: Mapping[str, Any] = field(default_factory=dict)


class _Refused(Exception):  # control flow inside prepare: never escapes it
    def __init__(self, code: PaymentResult, writes: tuple[Write, ...] = ()) -> None:
        self.code = code
        self.writes = writes


def settlement_account(partner: bytes, ledger: int) -> int:
    """The merchant's settlement account on ``ledger``: its ``settlement`` role account on
    BAAS, its ``point_settlement`` one on its own points (identity's Role: one asset per role;
    both given at onboarding, ``PAYMENT_ROLES``)."""
    mode = mode_of_ledger(ledger)
    role = "settlement" if ledger == ledger_number(mode, ASSET_INDEX_BAAS) else "point_settlement"
    return partner_account_id(partner, mode, role, ledger)


def platform_fees_account(ledger: int) -> int:
    return partner_account_id(ZERO16, mode_of_ledger(ledger), "fees", ledger)


def fee_of(captured: int, fee_bps: int, fee_min: int) -> int:
    """The platform fee of a capture: rounded up, at least ``fee_min``, at most the capture."""
    if fee_bps == 0 and fee_min == 0:
        return 0
    return min(captured, max(fee_min, -(-captured * fee_bps // BPS_DENOMINATOR)))


def payment_state(view: StateView, p: PaymentRecord, now_ms: int) -> PaymentState:
    """The payment's state at log time ``now_ms``: the stored one, except that an authorised
    payment whose pending transfer the ledger holds expired, or whose expiry the log time has
    reached, is ``EXPIRED`` (the ledger's own rule; the sweep need not have run)."""
    if p.state != S.AUTHORISED:
        return p.state
    status = get_pending_status(view, p.pending)
    if status == PendingStatus.EXPIRED:
        return S.EXPIRED
    transfer = get_transfer(view, p.pending)
    if status != PendingStatus.PENDING or transfer is None:
        # Only payments posts or voids a payment's pending transfer.
        raise InvariantViolation("an authorised payment's pending transfer is not pending")
    if now_ms * NS_PER_MS >= transfer.timestamp + transfer.timeout * NS_PER_S:
        return S.EXPIRED
    return S.AUTHORISED


def order_state(view: StateView, o: OrderRecord, payment: PaymentRecord, now_ms: int) -> OrderState:
    """The order's state: the stored one, ``LAPSED`` while authorised with its payment expired."""
    if o.state == OS.AUTHORISED and payment_state(view, payment, now_ms) == S.EXPIRED:
        return OS.LAPSED
    return o.state


class _Chain:
    """The events of one operation, with their derived transfer ids and what a shortfall on
    each means."""

    def __init__(self, op: bytes, view: StateView) -> None:
        self.op = op
        self.view = view
        self.events: list[CreateAccount | CreateTransfer] = []
        self.limits: list[tuple[int, PaymentResult]] = []

    def account(self, account_id: int, ledger: int, code: AccountCode, flags: int = 0) -> None:
        if self.view.get(ledger_account_key(account_id)) is None:
            self.events.append(CreateAccount(account_id, ledger, int(code), flags | _LINKED))

    def transfer(self, dr: int, cr: int, amount: int, ledger: int, code: TransferCode, *,
                 flags: int = 0, pending_id: int = 0, timeout: int = 0,
                 limit: PaymentResult | None = None) -> int:  # fmt: skip
        index = len(self.events)
        if limit is not None:
            self.limits.append((index, limit))
        tid = transfer_id(self.op, index)
        self.events.append(
            CreateTransfer(
                tid, dr, cr, amount, ledger, int(code), flags | _LINKED, pending_id, timeout
            )
        )
        return tid

    def closed(self) -> tuple[Event, ...]:
        """The events with the last one's ``linked`` flag cleared: one closed chain."""
        if not self.events:
            return ()
        last = self.events[-1]
        return (*self.events[:-1], replace(last, flags=last.flags & ~_LINKED))


def _check_asset(view: StateView, partner: bytes, ledger: int) -> None:
    """A merchant is paid in BAAS or in an asset of its own (its points or token, as the
    Bridge registered it), never in another partner's."""
    asset = get_ledger_asset(view, ledger)
    if asset is None:
        raise _Refused(R.ASSET_NOT_FOUND)
    if asset.kind != AssetKind.BAAS:
        record = get_bridge_asset(view, ledger)
        if record is None or record.partner != partner:
            raise _Refused(R.ASSET_FOREIGN)


def _table(state: Any, command: Any, table: Mapping[Any, Any]) -> Any:
    """The table's next state, or raise its refusal."""
    target = table[(state, command)]
    if isinstance(target, PaymentResult):
        raise _Refused(target)
    return target


class Payments:
    """The payments core. Stateless between requests: all state is in the view."""

    prefix = b"pm/"

    def __init__(self, config: PaymentsConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self._prepare: dict[type, Any] = {
            Authorise: self._authorise,
            RedeemCode: self._redeem_code,
            Capture: self._capture,
            Void: self._void,
            Refund: self._refund,
            SetFee: self._set_fee,
            PutListing: self._put_listing,
            PlaceOrder: self._place_order,
            FulfilOrder: self._fulfil_order,
            CancelOrder: self._cancel_order,
            ExpireOrder: self._expire_order,
            RefundOrder: self._refund_order,
        }

    # --- the three steps ------------------------------------------------------------------

    def apply(self, request: Request, now_ms: int, view: StateView) -> PaymentOutcome:
        """prepare -> Ledger.apply -> settle, without the approval check (tests)."""
        prepared = self.prepare(request, now_ms, view)
        layer = Overlay(view)
        results: list[Result] = []
        if prepared.events:
            results, ledger_writes = self.ledger.apply(list(prepared.events), now_ms, view)
            layer.writes.update(ledger_writes)
        outcome = self.settle(prepared, results)
        layer.writes.update(outcome.writes)
        return replace(outcome, writes=tuple(layer.writes.items()))

    def prepare(self, request: Request, now_ms: int, view: StateView) -> Prepared:
        handler = self._prepare.get(type(request))
        if handler is None:
            raise InvalidRequest(f"not a payments request: {type(request).__name__}")
        if type(now_ms) is not int or now_ms < 0:
            raise InvalidRequest("log time must be a count of ms")
        stored = view.get(OP_PREFIX + request.op)
        if stored is not None:
            (code,) = unpack(stored, "operation result", 1)
            return Prepared(request.op, R(code), retry=True)
        try:
            prepared: Prepared = handler(request, now_ms, view)
        except _Refused as refused:
            return Prepared(request.op, refused.code, refusal_writes=refused.writes)
        return prepared

    def settle(self, prepared: Prepared, results: Sequence[Result]) -> PaymentOutcome:
        """The result of a prepared request given its ledger results (one per event)."""
        if len(results) != len(prepared.events):
            raise InvalidRequest("one ledger result per prepared event")
        if prepared.retry:
            return PaymentOutcome(prepared.code, (), (), ())
        code = prepared.code
        detail: dict[str, Any] = dict(prepared.detail)
        if code.succeeded:
            verdict = chain_verdict(
                results,
                prepared.limits,
                R.LEDGER_REFUSED,
                {TransferResult.PENDING_TRANSFER_EXPIRED: prepared.expired},
            )
            if verdict is not None:
                code, detail = verdict
        writes: dict[bytes, bytes | None] = {OP_PREFIX + prepared.op: pack(code.value)}
        writes.update(prepared.writes if code.succeeded else prepared.refusal_writes)
        return PaymentOutcome(code, prepared.events, tuple(results), tuple(writes.items()), detail)

    # --- payments -------------------------------------------------------------------------

    def _payment(self, view: StateView, payment: bytes, partner: bytes) -> PaymentRecord | None:
        """The payment, or None when there is none or it is another merchant's: a partner
        learns nothing of another's payments. An order's payment is refused
        (``payment_of_order``): only the order's commands move it, or the order's state and
        stock would part from its payment's."""
        raw = view.get(payment_key(payment))
        if raw is None:
            return None
        p = decode_payment(raw)
        if p.partner != partner:
            return None
        if view.get(order_key(payment)) is not None:
            raise _Refused(R.PAYMENT_OF_ORDER)
        return p

    def _open(
        self, chain: _Chain, partner: bytes, ledger: int, wallet_account: int, amount: int,
        window_s: int, now_ms: int, view: StateView,
    ) -> PaymentRecord:  # fmt: skip
        """Authorise: the pending transfer and the new payment's record."""
        if window_s > self.config.capture_window_s_max:
            raise _Refused(R.BOUND_EXCEEDED)
        _check_asset(view, partner, ledger)
        raw = view.get(payment_key(chain.op))  # ids are op ids: only without the op's result
        state = None if raw is None else payment_state(view, decode_payment(raw), now_ms)
        _table(state, Command.AUTHORISE, PAYMENT_TABLE)
        settlement = settlement_account(partner, ledger)
        chain.account(settlement, ledger, AccountCode.SETTLEMENT, _NO_OVERDRAFT)
        pending = chain.transfer(
            wallet_account, settlement, amount, ledger, TransferCode.AUTHORISE,
            flags=int(TransferFlags.PENDING), timeout=window_s, limit=R.INSUFFICIENT_FUNDS,
        )  # fmt: skip
        fee_bps, fee_min = 0, 0
        raw_fee = view.get(fee_key(ledger))
        if raw_fee is not None:
            fee_bps, raw_min = unpack(raw_fee, "fee", 2)
            fee_min = amount_of(raw_min)
        return PaymentRecord(
            partner, ledger, wallet_account, settlement, pending, amount, 0, 0, 0,
            S.AUTHORISED, fee_bps, fee_min, 0,
        )  # fmt: skip

    def _post(self, chain: _Chain, p: PaymentRecord, amount: int, now_ms: int,
              view: StateView) -> PaymentRecord:  # fmt: skip
        """Capture ``amount``: the post, then the linked fee transfer where configured."""
        _table(payment_state(view, p, now_ms), Command.CAPTURE, PAYMENT_TABLE)
        if amount > p.amount:
            raise _Refused(R.AMOUNT_EXCEEDS_AUTHORISED)
        return self._post_events(chain, p, amount)

    def _post_events(self, chain: _Chain, p: PaymentRecord, amount: int) -> PaymentRecord:
        """The post of ``amount`` and the linked fee transfer; the post may follow its pending
        transfer in the same chain (the ledger runs a chain's events in order)."""
        chain.transfer(
            p.wallet_account, p.settlement, amount, p.ledger, TransferCode.AUTHORISE,
            flags=int(TransferFlags.POST_PENDING_TRANSFER), pending_id=p.pending,
        )  # fmt: skip
        fee = fee_of(amount, p.fee_bps, p.fee_min)
        if fee:
            fees = platform_fees_account(p.ledger)
            chain.account(fees, p.ledger, AccountCode.FEES)
            chain.transfer(p.settlement, fees, fee, p.ledger, TransferCode.FEE)
        return replace(p, captured=amount, fee=fee, state=S.CAPTURED)

    def _cancel(self, chain: _Chain, p: PaymentRecord, now_ms: int,
                view: StateView) -> PaymentRecord:  # fmt: skip
        _table(payment_state(view, p, now_ms), Command.VOID, PAYMENT_TABLE)
        chain.transfer(
            p.wallet_account, p.settlement, p.amount, p.ledger, TransferCode.AUTHORISE,
            flags=int(TransferFlags.VOID_PENDING_TRANSFER), pending_id=p.pending,
        )  # fmt: skip
        return replace(p, state=S.VOIDED)

    def _give_back(self, chain: _Chain, p: PaymentRecord, amount: int, now_ms: int,
                   view: StateView) -> PaymentRecord:  # fmt: skip
        """Refund ``amount``: settlement -> wallet, the sum never above the capture."""
        _table(payment_state(view, p, now_ms), Command.REFUND, PAYMENT_TABLE)
        if amount > p.captured - p.refunded:
            raise _Refused(R.REFUND_EXCEEDS_CAPTURED)
        if p.refunds >= self.config.refunds_per_payment_max:
            raise _Refused(R.REFUNDS_FULL)
        chain.transfer(
            p.settlement, p.wallet_account, amount, p.ledger, TransferCode.REFUND,
            limit=R.MERCHANT_INSUFFICIENT_FUNDS,
        )  # fmt: skip
        refunded = p.refunded + amount
        state = S.REFUNDED if refunded == p.captured else S.CAPTURED
        return replace(p, refunded=refunded, refunds=p.refunds + 1, state=state)

    def _done(self, chain: _Chain, writes: dict[bytes, bytes], **detail: int) -> Prepared:
        return Prepared(
            chain.op, R.OK, chain.closed(), tuple(writes.items()), limits=tuple(chain.limits),
            detail=detail,
        )  # fmt: skip

    def _authorise(self, r: Authorise, now_ms: int, view: StateView) -> Prepared:
        chain = _Chain(r.op, view)
        p = self._open(chain, r.partner, r.ledger, r.wallet_account, r.amount,
                       r.capture_window_s, now_ms, view)  # fmt: skip
        return self._done(chain, {payment_key(r.op): encode_payment(p)})

    def _capture(self, r: Capture, now_ms: int, view: StateView) -> Prepared:
        p = self._payment(view, r.payment, r.partner)
        if p is None:
            raise _Refused(_table(None, Command.CAPTURE, PAYMENT_TABLE))
        chain = _Chain(r.op, view)
        p = self._post(chain, p, r.amount, now_ms, view)
        return self._done(chain, {payment_key(r.payment): encode_payment(p)}, fee=p.fee)

    def _void(self, r: Void, now_ms: int, view: StateView) -> Prepared:
        p = self._payment(view, r.payment, r.partner)
        if p is None:
            raise _Refused(_table(None, Command.VOID, PAYMENT_TABLE))
        chain = _Chain(r.op, view)
        p = self._cancel(chain, p, now_ms, view)
        return self._done(chain, {payment_key(r.payment): encode_payment(p)})

    def _refund(self, r: Refund, now_ms: int, view: StateView) -> Prepared:
        p = self._payment(view, r.payment, r.partner)
        if p is None:
            raise _Refused(_table(None, Command.REFUND, PAYMENT_TABLE))
        chain = _Chain(r.op, view)
        p = self._give_back(chain, p, r.amount, now_ms, view)
        return self._done(chain, {payment_key(r.payment): encode_payment(p)})

    def _set_fee(self, r: SetFee, now_ms: int, view: StateView) -> Prepared:
        if r.partner != ZERO16:
            raise _Refused(R.NOT_PLATFORM)
        value = pack(r.fee_bps, r.fee_min.to_bytes(16, "big"))
        return Prepared(r.op, R.OK, writes=((fee_key(r.ledger), value),))

    # --- consumer-presented codes ---------------------------------------------------------

    def _redeem_code(self, r: RedeemCode, now_ms: int, view: StateView) -> Prepared:
        if r.capture_window_s > self.config.capture_window_s_max:
            raise _Refused(R.BOUND_EXCEEDED)
        mode = mode_of_ledger(r.ledger)
        key = guess_key(r.partner, int(mode))
        raw = view.get(key)
        start_ms, count = (0, 0) if raw is None else unpack(raw, "guesses", 2)
        window_ms = self.config.guess_window_s * 1000
        if now_ms >= start_ms + window_ms:  # the window is over: a fresh one at the next guess
            start_ms, count = now_ms, 0
        if count >= self.config.guesses_max:
            raise _Refused(R.MERCHANT_LOCKED_OUT)
        stored = view.get(CODE_PREFIX + r.code_hash)
        if stored is None:
            raise _Refused(R.CODE_UNKNOWN, ((key, pack(start_ms, count + 1)),))
        code = decode_code(stored)
        if code.mode != mode:
            raise _Refused(R.CODE_WRONG_MODE)
        if code.used_by != ZERO32:
            raise _Refused(R.CODE_USED)
        if now_ms >= code.expiry * 1000:
            raise _Refused(R.CODE_EXPIRED)
        if code.ledger != r.ledger:
            raise _Refused(R.CODE_LEDGER_MISMATCH)
        if r.amount > code.amount_limit:
            raise _Refused(R.CODE_LIMIT_EXCEEDED)
        wallet_account = wallet_account_id(wallet_id(code.wallet, Mode(mode)), mode, r.ledger)
        chain = _Chain(r.op, view)
        p = self._open(chain, r.partner, r.ledger, wallet_account, r.amount,
                       r.capture_window_s, now_ms, view)  # fmt: skip
        if r.capture:  # the post sees the pending transfer made earlier in the same chain
            p = self._post_events(chain, p, p.amount)
        return self._done(chain, {payment_key(r.op): encode_payment(p)})

    # --- the Market -----------------------------------------------------------------------

    def _put_listing(self, r: PutListing, now_ms: int, view: StateView) -> Prepared:
        if (
            len(r.title) > self.config.title_chars_max
            or len(r.description) > self.config.description_chars_max
        ):
            raise _Refused(R.BOUND_EXCEEDED)
        _check_asset(view, r.partner, r.ledger)
        raw = view.get(listing_key(r.listing))
        writes: dict[bytes, bytes] = {}
        if raw is None:
            count_key = LISTING_COUNT_PREFIX + r.partner
            raw_count = view.get(count_key)
            (count,) = (0,) if raw_count is None else unpack(raw_count, "listing count", 1)
            if count >= self.config.listings_per_partner_max:
                raise _Refused(R.LISTINGS_FULL)
            writes[count_key] = pack(count + 1)
        elif decode_listing(raw).partner != r.partner:
            raise _Refused(R.LISTING_FOREIGN)
        listing = Listing(r.partner, r.ledger, r.price, r.stock, r.active, r.title, r.description)
        writes[listing_key(r.listing)] = encode_listing(listing)
        return Prepared(r.op, R.OK, writes=tuple(writes.items()))

    def _order(
        self, view: StateView, order: bytes, partner: bytes, now_ms: int, command: OrderCommand
    ) -> tuple[OrderRecord, PaymentRecord, OrderState]:
        """The order (its merchant's, or the platform's for an expiry), its payment, and the
        table's next state; raises the table's refusal."""
        raw = view.get(order_key(order))
        o = None if raw is None else decode_order(raw)
        platform_expiry = command == OrderCommand.EXPIRE and partner == ZERO16
        if o is None or (o.merchant != partner and not platform_expiry):
            raise _Refused(_table(None, command, ORDER_TABLE))
        raw_payment = view.get(payment_key(order))
        if raw_payment is None:
            raise InvariantViolation("an order without its payment")
        p = decode_payment(raw_payment)
        target = _table(order_state(view, o, p, now_ms), command, ORDER_TABLE)
        return o, p, target

    def _place_order(self, r: PlaceOrder, now_ms: int, view: StateView) -> Prepared:
        if r.quantity > self.config.order_quantity_max:
            raise _Refused(R.BOUND_EXCEEDED)
        raw = view.get(listing_key(r.listing))
        if raw is None:
            raise _Refused(R.LISTING_NOT_FOUND)
        listing = decode_listing(raw)
        if not listing.active:
            raise _Refused(R.LISTING_INACTIVE)
        if listing.stock < r.quantity:
            raise _Refused(R.SOLD_OUT)
        amount = listing.price * r.quantity
        if amount > AMOUNT_MAX:
            raise _Refused(R.BOUND_EXCEEDED)
        raw_order = view.get(order_key(r.op))  # as for payments: only without the op's result
        if raw_order is not None:
            _table(decode_order(raw_order).state, OrderCommand.PLACE, ORDER_TABLE)
        chain = _Chain(r.op, view)
        p = self._open(chain, listing.partner, listing.ledger, r.wallet_account, amount,
                       r.capture_window_s, now_ms, view)  # fmt: skip
        order = OrderRecord(r.listing, listing.partner, r.quantity, OS.AUTHORISED)
        stock = replace(listing, stock=listing.stock - r.quantity)
        return self._done(
            chain,
            {
                payment_key(r.op): encode_payment(p),
                order_key(r.op): encode_order(order),
                listing_key(r.listing): encode_listing(stock),
            },
        )

    def _restock(self, view: StateView, o: OrderRecord) -> tuple[bytes, bytes]:
        raw = view.get(listing_key(o.listing))
        if raw is None:
            raise InvariantViolation("an order's listing is gone")
        listing = decode_listing(raw)
        return listing_key(o.listing), encode_listing(
            replace(listing, stock=listing.stock + o.quantity)
        )

    def _order_step(
        self, r: FulfilOrder | CancelOrder | RefundOrder, command: OrderCommand, now_ms: int,
        view: StateView,
    ) -> Prepared:  # fmt: skip
        o, p, target = self._order(view, r.order, r.partner, now_ms, command)
        chain = _Chain(r.op, view)
        writes: dict[bytes, bytes] = {}
        if command == OrderCommand.FULFIL:
            p = self._post(chain, p, p.amount, now_ms, view)
        elif command == OrderCommand.CANCEL:
            p = self._cancel(chain, p, now_ms, view)
            key, value = self._restock(view, o)
            writes[key] = value
        else:
            assert isinstance(r, RefundOrder)
            p = self._give_back(chain, p, r.amount, now_ms, view)
            target = OS.REFUNDED if p.state == S.REFUNDED else target
        writes[payment_key(r.order)] = encode_payment(p)
        writes[order_key(r.order)] = encode_order(replace(o, state=target))
        prepared = self._done(chain, writes)
        return replace(prepared, expired=R.ORDER_EXPIRED)

    def _fulfil_order(self, r: FulfilOrder, now_ms: int, view: StateView) -> Prepared:
        return self._order_step(r, OrderCommand.FULFIL, now_ms, view)

    def _cancel_order(self, r: CancelOrder, now_ms: int, view: StateView) -> Prepared:
        return self._order_step(r, OrderCommand.CANCEL, now_ms, view)

    def _refund_order(self, r: RefundOrder, now_ms: int, view: StateView) -> Prepared:
        return self._order_step(r, OrderCommand.REFUND, now_ms, view)

    def _expire_order(self, r: ExpireOrder, now_ms: int, view: StateView) -> Prepared:
        """No ledger event: the ledger released the funds; this returns the stock."""
        o, _p, target = self._order(view, r.order, r.partner, now_ms, OrderCommand.EXPIRE)
        key, value = self._restock(view, o)
        writes = ((key, value), (order_key(r.order), encode_order(replace(o, state=target))))
        return Prepared(r.op, R.OK, writes=writes)
