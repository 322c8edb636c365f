"""The Bridge: partners' point assets and tokens, BAAS reserves, swap policies, quotes, swaps.

Theory of operation
===================

A pure, deterministic core beside the ledger (:mod:`business.ledger.core`, whose shape it
copies). It never reads a clock or does I/O. The Bridge turns one request into **ledger
events** (one linked chain) plus **its own state** under the prefix ``br/``, read through a
``get``-only view; the ledger decides whether value moves, the Bridge only keeps what the
ledger cannot: lots and their expiry days, issuances and what of them is unspent, policies and
their versions, window usage, reserve thresholds. One request is one operation:

1. :meth:`Bridge.prepare` ``(request, now_ms, view)`` runs the Bridge's checks (below) and,
   when they pass, returns the ledger events, the debit-rule claims the identity approval
   check needs (:class:`~business.identity.approvals.RuleClaim` per event index) and the
   Bridge writes to make *if* the ledger accepts the chain;
2. the caller runs identity's ``check_debits`` over the events (every debit of a user's wallet
   needs that user's approval, except the claimed rules) and then ``Ledger.apply`` over them,
   at the same log time, on the same view;
3. :meth:`Bridge.settle` ``(prepared, results, now_ms, view_after)`` maps the ledger's verdict
   to a Bridge result: the Bridge writes are kept only if every event succeeded, so the two
   states never disagree (a reserve the ledger finds exhausted fails the whole chain and
   leaves lots, windows and counters as they were), and a low-reserve notice is derived.

If the approval check refuses, neither the ledger nor ``settle`` runs and nothing of the
prepared operation is written. Operations are prepared one after the other: the view given to
``prepare`` must hold the ledger and Bridge writes of every operation before it (one overlay
per log entry, as the ledger-ops apply keeps), since lots, windows and the accounts to create
depend on them.

:meth:`Bridge.apply` does the three steps without the approval check (the tests, the
simulator). Every outcome, success or refusal, is stored under ``br/op/<op id>``; a retry of
the op id answers that first code with no events and no writes: a retry never changes an
outcome (the ledger's transfer ids derive from the op id too, so even a replayed chain would
answer ``exists``). Ids: the ledger ids of an operation's transfers are
``identity.ids.transfer_id(op, index)``; the partner's accounts are
``identity.ids.partner_account_id(partner, mode, role, ledger)`` (the mode is the ledger's
parity); the test-mode BAAS faucet is the platform's ``faucet`` account on the BAAS ledger.

Accounts the Bridge creates (``CreateAccount`` events at the head of a chain, only for accounts
the ledger does not hold yet: the ledger compares the stored flags, ``linked`` included, when
an account is created again, so the Bridge never re-creates one): per point or token asset
the partner's ``issuance`` (the mint, its "@world"), ``liquidity``
(``debits_must_not_exceed_credits``: what it can pay out in swaps) and ``breakage`` (expired
points); per partner on the BAAS
ledger the ``reserve`` (``debits_must_not_exceed_credits`` + ``history``: the BAAS it pays
swaps with; its history is the reserve's) and ``fees``; a user's wallet account on a ledger
(``debits_must_not_exceed_credits``) before it is first credited.

Point assets and lots
---------------------
A partner defines a point asset (code, scale, optional validity period in days). Every credit
of points to a user is a **lot** ``(expiry day, origin, amount)``: origin ``issued`` (the
partner issued it) or ``bought`` (a swap BAAS -> points). Points credited on log day ``d``
(``now_ms // 86_400_000``) with a validity of ``N`` days get expiry day ``d + N`` and may be
spent while the log day is before it (they expire at 00:00 UTC of day ``d + N``); without a
validity period the expiry day is ``NEVER_DAY``. A user's lots of one asset live in one value
(``br/lt/<ledger><wallet account>``), sorted by (expiry day, origin); a credit with the same
expiry day and origin is **merged** into the existing lot, so a user holds at most two lots
per day of validity, and at most ``lots_per_wallet_max`` (else ``lots_full``).
Invariant (the property test's): the sum of a wallet's lots is its ledger balance on that
ledger, because every movement of a user's points is made by the Bridge.

A spend (redeem, swap points -> BAAS) takes from the oldest unexpired lot first and may touch
at most ``lots_per_spend_max`` lots (else ``lots_per_spend_exceeded``: spend in smaller
parts); lots whose expiry day has come are never counted as spendable, whether or not the
sweep has moved them yet (``insufficient_funds``). A partner may **reverse** one of its
issuances, capped at that issuance's unspent amount: ``min(amount - reversed, the issued lot
it went into)``, and 0 once that lot expired. Within one merged lot the Bridge does not know
which issuance a spend consumed; the cap attributes spends to the issuances last, which can
never let a partner take more than the lot still holds, nor more than it issued, nor any
points the user bought (a separate lot). This is the ``REVERSAL`` cap of identity's
``DebitRules`` (:meth:`Bridge.cap`); ``POINT_EXPIRY`` is capped by the user's lots of the
claimed expiry day once that day has come.

**Expiry** runs on log time, bounded per call (:class:`ExpirePoints`): each new lot with an
expiry day is appended to that day's bucket of its asset (``br/xh/`` page count, ``br/xp/``
pages of wallet accounts, like the ledger's pending expiry), and a cursor per asset
(``br/xc/``) walks the days up to the log day, oldest first. For every wallet in a bucket the
lots of that day move to the partner's breakage account, one transfer per wallet, the whole
call one linked chain (each transfer claiming ``POINT_EXPIRY``). At most
``expiry_wallets_per_call_max`` transfers, ``expiry_days_scan_max`` days and
``expiry_entries_scan_max`` bucket entries per call; the rest waits for the next call.

Supply (the partner's liability) of a point asset is what its users hold: the issuance
account's net debit minus its breakage and liquidity balances (:func:`points_supply`).

Tokens and reserves
-------------------
A token is registered with its symbol, decimals (at most 18) and ERC-20 address; its ledger
asset has kind ``token`` and scale = decimals. A contract is one asset per mode: the token is
recorded under ``br/ta/<mode><chain id><address>`` (``BridgeConfig.chain_id``: what a chain
deposit of it will look up) and a second registration of that address in the mode, by any
partner, is ``token_address_taken``; a partner's tokens of a mode are listed under
``br/tl/<partner><mode>``, at most ``tokens_per_partner_max`` (else ``bound_exceeded``). Which
ledger a token gets is the caller's choice here; on the log the node allocates it
(node/consensus/bridge_ops.py, feature 12). Swaps of a token run the points' chain without lots
(a token has no expiry: the ledger balance is all there is). Its liquidity is funded from its
issuance account, in test mode only (``faucet_live_mode``; live tokens come from on-chain
deposits, a later issue), at most ``faucet_amount_max`` per call. The BAAS reserve of a partner
is topped up from the platform's test-mode faucet (``source`` 0; refused in live mode) or from
an account the partner owns. Its level is ``credits_posted - debits_posted - debits_pending``.
A partner sets a threshold; an operation that leaves the level below it while it was not
already low returns a :class:`ReserveLow` notice (metrics now, webhooks with payments) and
marks the reserve low until a later operation leaves it at or above the threshold.

Policies
--------
Per asset: rate ``rate_num / rate_den`` (BAAS units per asset unit, integers), minimum and
maximum swap size and window limits (asset units; a limit of 0 means none), the window in
seconds, the fee in basis points with a minimum (BAAS units), enabled or not. Every change
that changes something bumps the version (stamped on quotes, required by swaps) and appends an
audit entry ``br/pa/<ledger><version>`` (actor, log time, the policy). The window usage of a
user and of the partner is a fixed ring of ``window_buckets_max + 1`` buckets of width
``window_s * 1000 // window_buckets_max`` ms (at least 1): a swap counts in the bucket of its
log time, and usage is the sum over the buckets at most ``window_buckets_max`` widths back,
so a swap counts for at least ``window_s`` (never more than the limit in any window) and the
state per user and per partner is bounded whatever the number of swaps.

Quote and swap arithmetic (integers only; every rounding favours the reserve)
-----------------------------------------------------------------------------
``fee(x) = max(fee_min, ceil(x * fee_bps / 10_000))`` BAAS units.

* **IN** (asset -> BAAS), the user gives ``a`` asset units: ``min <= a <= max``;
  ``gross = floor(a * rate_num / rate_den)``; ``fee = fee(gross)``; refused ``below_min`` when
  ``gross <= fee``; the user gets ``out = gross - fee`` BAAS. Chain: user asset -> liquidity
  ``a``; reserve -> user BAAS ``gross``; user BAAS -> fees ``fee`` (omitted when 0).
* **OUT** (BAAS -> asset), the user gives ``b`` BAAS units: ``fee = fee(b)``; refused
  ``below_min`` when ``fee >= b``; ``net = b - fee``; the user gets
  ``out = floor(net * rate_den / rate_num)`` asset units, ``min <= out <= max`` (so ``out = 0``
  is ``below_min``). Chain: user BAAS -> fees ``fee``; user BAAS -> reserve ``net``;
  liquidity -> user asset ``out``. The residue of the floor stays in the reserve.

Both chains open with the ``CreateAccount`` of the user's receiving wallet account (when it
does not exist yet). The user's accounts are derived from the wallet the quote is bound to
(``identity.ids.wallet_account_id``), never taken from the request; every transfer of a swap
carries the policy version it ran under in ``user_data_128``. A quote
states these amounts, the rate, the policy version, its log-time issue and expiry (at most
``quote_ttl_ms_max`` apart) and is bound to partner, asset, user wallet and direction; its
:meth:`~business.bridge.model.Quote.digest` is what the user approves (the operation the
user signs carries the swap's events, which carry its amounts). A swap recomputes the terms
from the policy the quote names and refuses any difference.

The checks, in precedence
-------------------------
The member order of :class:`~business.bridge.model.BridgeResult` is the order of the checks;
each request runs the subset that concerns it. A request that cannot be built (a field of the
wrong type or width) never reaches the core (:class:`~node.errors.InvalidRequest` when it is
built); one beyond a configured bound is ``bound_exceeded``, a policy pairing an asset with the
BAAS ledger of the other mode ``ledger_wrong_mode``: a refusal, never an exception, so every
replica answers alike. For a swap: ``quote_altered`` (the digest is
not the quote's, the quote names another partner or asset, was issued after the log time, or
lives longer than allowed), ``quote_other_user``, ``asset_not_found`` / ``asset_foreign``
(another partner's asset), ``quote_expired``, ``policy_not_found``, ``policy_disabled``,
``policy_version_changed``, ``below_min`` / ``above_max`` (of the recomputed terms),
``quote_terms_mismatch`` (the quote's rate or amounts differ from the recomputed ones),
``user_window_limit`` /
``partner_window_limit``, ``insufficient_funds`` / ``lots_per_spend_exceeded`` /
``lots_full`` (points), then the ledger's verdict on the chain: ``exceeds_credits`` on the
reserve is ``reserve_exhausted``, on the liquidity account ``liquidity_exhausted``, on the
user's wallet ``insufficient_funds`` (``debit_account_not_found`` alike: an account that does
not exist yet holds nothing); any other ledger failure ``ledger_refused`` with the
ledger's code in the detail. Nothing moves unless every event succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from business.bridge.model import (
    BPS_DENOMINATOR,
    DAY_MS,
    ISSUANCE_PREFIX,
    NEVER_DAY,
    OP_PREFIX,
    AccountCode,
    AssetKindRef,
    AssetRecord,
    BridgeConfig,
    BridgeResult,
    DefinePoints,
    Direction,
    ExpirePoints,
    FundLiquidity,
    Issuance,
    IssuePoints,
    Lot,
    LotOrigin,
    PolicyRecord,
    Quote,
    RedeemPoints,
    RegisterToken,
    Request,
    ReserveLow,
    ReversePoints,
    SetPolicy,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
    TransferCode,
    asset_key,
    decode_asset,
    decode_issuance,
    decode_lots,
    decode_policy,
    decode_ring,
    encode_asset,
    encode_issuance,
    encode_lots,
    encode_policy,
    encode_ring,
    expiry_cursor_key,
    expiry_head_key,
    expiry_page_key,
    lots_key,
    pack,
    policy_audit_key,
    policy_key,
    reserve_key,
    token_address_key,
    token_list_key,
    unpack,
    window_partner_key,
    window_user_key,
)
from business.bridge.views import reserve_level
from business.identity.approvals import DebitRule, RuleClaim
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    ledger_number,
    mode_of_ledger,
    partner_account_id,
    transfer_id,
    wallet_account_id,
)
from business.ledger.chains import chain_verdict
from business.ledger.core import Ledger
from business.ledger.model import (
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Result,
    TransferFlags,
)
from business.ledger.model import account_key as ledger_account_key
from node.consensus.state_machine import Overlay, StateView, Write
from node.errors import InvalidRequest, InvariantViolation

__all__ = ["Bridge", "BridgeOutcome", "Prepared", "faucet_account", "role_account", "terms"]

R = BridgeResult
ZERO16 = bytes(16)
_LINKED = int(TransferFlags.LINKED)
_WALLET_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_RESERVE_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY)
_LIQUIDITY_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :meth:`Bridge.prepare` decided: a refusal, or the chain and the writes it needs."""

    op: bytes
    code: BridgeResult
    events: tuple[Event, ...] = ()
    claims: tuple[tuple[int, RuleClaim], ...] = ()  # event index -> the debit rule it claims
    writes: tuple[Write, ...] = ()  # the Bridge's, kept only if the whole chain succeeds
    # event index -> the refusal its ``exceeds_credits`` means (reserve, liquidity, wallet)
    limits: tuple[tuple[int, BridgeResult], ...] = ()
    reserve: tuple[bytes, int] | None = None  # (partner, BAAS ledger) whose level may change
    detail: Mapping[str, int] = field(default_factory=dict)
    retry: bool = False  # the op id was applied before: ``code`` is its first outcome


@dataclass(frozen=True, slots=True)
class BridgeOutcome:
    """One request's outcome: its code, the events and their ledger results, all writes
    (ledger and Bridge, for the node's one write batch) and notices."""

    code: BridgeResult
    events: tuple[Event, ...]
    results: tuple[Result, ...]
    claims: tuple[tuple[int, RuleClaim], ...]
    writes: tuple[Write, ...]
    notices: tuple[ReserveLow, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)


class _Refused(Exception):  # control flow inside prepare: never escapes it
    def __init__(self, code: BridgeResult) -> None:
        self.code = code


class _Chain:
    """The events of one operation under construction, with their derived transfer ids."""

    def __init__(self, op: bytes, view: StateView, user_data: int = 0) -> None:
        self.op = op
        self.view = view
        self.user_data = user_data  # user_data_128 of every transfer (a swap's policy version)
        self.events: list[Event] = []
        self.claims: list[tuple[int, RuleClaim]] = []
        self.limits: list[tuple[int, BridgeResult]] = []

    def account(self, account_id: int, ledger: int, code: AccountCode, flags: int = 0) -> None:
        """Create the account unless it exists: an existing account is never re-created, since
        the ledger compares the stored flags (``linked`` included) on a re-creation."""
        if self.view.get(ledger_account_key(account_id)) is None:
            self.events.append(CreateAccount(account_id, ledger, int(code), flags | _LINKED))

    def transfer(
        self,
        dr: int,
        cr: int,
        amount: int,
        ledger: int,
        code: TransferCode,
        *,
        claim: RuleClaim | None = None,
        limit: BridgeResult | None = None,
    ) -> None:
        index = len(self.events)
        if claim is not None:
            self.claims.append((index, claim))
        if limit is not None:
            self.limits.append((index, limit))
        self.events.append(
            CreateTransfer(
                transfer_id(self.op, index),
                dr,
                cr,
                amount,
                ledger,
                int(code),
                _LINKED,
                user_data_128=self.user_data,
            )
        )

    def closed(self) -> tuple[Event, ...]:
        """The events with the last one's ``linked`` flag cleared: one closed chain."""
        if not self.events:
            return ()
        last = self.events[-1]
        if isinstance(last, CreateAsset):
            return tuple(self.events)
        unlinked = replace(last, flags=last.flags & ~_LINKED)
        return (*self.events[:-1], unlinked)


def _day(now_ms: int) -> int:
    return now_ms // DAY_MS


def _mode(ledger: int) -> Mode:
    return mode_of_ledger(ledger)


def _baas_ledger(ledger: int) -> int:
    return ledger_number(_mode(ledger), ASSET_INDEX_BAAS)


def role_account(partner: bytes, ledger: int, role: str) -> int:
    """The partner's ``role`` account on ``ledger`` (in the ledger's mode)."""
    return partner_account_id(partner, _mode(ledger), role, ledger)


_role = role_account


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fee_of(policy: PolicyRecord, baas: int) -> int:
    return max(policy.fee_min, _ceil_div(baas * policy.fee_bps, BPS_DENOMINATOR))


def terms(policy: PolicyRecord, direction: Direction, amount_in: int) -> tuple[int, int, int]:
    """``(amount_out, fee, asset_amount)`` of a swap under ``policy`` (see the theory), or
    raises ``_Refused`` (``below_min`` / ``above_max``). ``asset_amount`` is the asset side,
    what the size bounds and window limits count."""
    if direction == Direction.IN:
        asset = amount_in
        if asset < policy.swap_min:
            raise _Refused(R.BELOW_MIN)
        if asset > policy.swap_max:
            raise _Refused(R.ABOVE_MAX)
        gross = asset * policy.rate_num // policy.rate_den  # floor: the reserve pays less
        fee = fee_of(policy, gross)  # ceil: the user pays more
        if gross <= fee:
            raise _Refused(R.BELOW_MIN)
        return gross - fee, fee, asset
    fee = fee_of(policy, amount_in)
    if fee >= amount_in:
        raise _Refused(R.BELOW_MIN)
    asset = (amount_in - fee) * policy.rate_den // policy.rate_num  # floor: the user gets less
    if asset < policy.swap_min:
        raise _Refused(R.BELOW_MIN)
    if asset > policy.swap_max:
        raise _Refused(R.ABOVE_MAX)
    return asset, fee, asset


def quote_terms(
    policy: PolicyRecord, direction: Direction, amount_in: int
) -> tuple[int, int, int] | BridgeResult:
    """:func:`terms`, its refusal as the result instead of raised: for a preview of a policy
    being edited (the dashboard), the same arithmetic a swap runs."""
    try:
        return terms(policy, direction, amount_in)
    except _Refused as refused:
        return refused.code


class Bridge:
    """The Bridge core. Stateless between requests: all state is in the view."""

    prefix = b"br/"

    def __init__(self, config: BridgeConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self._prepare: dict[type, Any] = {
            DefinePoints: self._define_points,
            RegisterToken: self._register_token,
            IssuePoints: self._issue,
            RedeemPoints: self._redeem,
            ReversePoints: self._reverse,
            ExpirePoints: self._expire,
            FundLiquidity: self._fund_liquidity,
            TopUpReserve: self._top_up,
            SetReserveThreshold: self._set_threshold,
            SetPolicy: self._set_policy,
            Swap: self._swap,
        }

    # --- the three steps ------------------------------------------------------------------

    def apply(self, request: Request, now_ms: int, view: StateView) -> BridgeOutcome:
        """prepare -> Ledger.apply -> settle, without the approval check (tests, simulator)."""
        prepared = self.prepare(request, now_ms, view)
        layer = Overlay(view)
        results: list[Result] = []
        if prepared.events:
            results, ledger_writes = self.ledger.apply(list(prepared.events), now_ms, view)
            layer.writes.update(ledger_writes)
        outcome = self.settle(prepared, results, now_ms, layer)
        layer.writes.update(outcome.writes)
        return replace(outcome, writes=tuple(layer.writes.items()))

    def prepare(self, request: Request, now_ms: int, view: StateView) -> Prepared:
        handler = self._prepare.get(type(request))
        if handler is None:
            raise InvalidRequest(f"not a Bridge request: {type(request).__name__}")
        if type(now_ms) is not int or now_ms < 0:
            raise InvalidRequest("log time must be a count of ms")
        stored = view.get(OP_PREFIX + request.op)
        if stored is not None:
            (code,) = unpack(stored, "operation result", 1)
            return Prepared(request.op, R(code), retry=True)
        try:
            prepared: Prepared = handler(request, now_ms, view)
        except _Refused as refused:
            return Prepared(request.op, refused.code)
        return prepared

    def settle(
        self, prepared: Prepared, results: Sequence[Result], now_ms: int, view_after: StateView
    ) -> BridgeOutcome:
        """The Bridge result of a prepared request given its ledger results; ``view_after``
        sees the ledger's writes (for the reserve level)."""
        if len(results) != len(prepared.events):
            raise InvalidRequest("one ledger result per prepared event")
        if prepared.retry:
            return BridgeOutcome(prepared.code, (), (), (), ())
        code = prepared.code
        detail: dict[str, Any] = dict(prepared.detail)
        if code.succeeded:
            verdict = chain_verdict(results, prepared.limits, R.LEDGER_REFUSED)
            if verdict is not None:  # an account with nothing is exhausted too
                code, detail = verdict
        writes: dict[bytes, bytes | None] = {OP_PREFIX + prepared.op: pack(code.value)}
        notices: tuple[ReserveLow, ...] = ()
        if code.succeeded:
            writes.update(prepared.writes)
            if prepared.reserve is not None:
                notices, reserve_writes = self._reserve_notice(prepared.reserve, view_after, writes)
                writes.update(reserve_writes)
        return BridgeOutcome(
            code,
            prepared.events,
            tuple(results),
            prepared.claims,
            tuple(writes.items()),
            notices,
            detail,
        )

    # --- identity's DebitRules hook -------------------------------------------------------

    def cap(
        self, view: StateView, rule: DebitRule, reference: bytes, account_id: int, now_ms: int
    ) -> int:
        """How much ``rule`` may still debit from ``account_id`` (``DebitRules``)."""
        today = _day(now_ms)
        if rule == DebitRule.REVERSAL:
            raw = view.get(ISSUANCE_PREFIX + reference) if len(reference) == 32 else None
            if raw is None:
                return 0
            issuance = decode_issuance(raw)
            if issuance.wallet_account != account_id:
                return 0
            return _reversal_cap(
                issuance, decode_lots(view.get(lots_key(issuance.ledger, account_id))), today
            )
        if rule == DebitRule.POINT_EXPIRY and len(reference) == 8:
            ledger = int.from_bytes(reference[:4], "big")
            day = int.from_bytes(reference[4:], "big")
            if day > today:
                return 0
            lots = decode_lots(view.get(lots_key(ledger, account_id)))
            return sum(lot.amount for lot in lots if lot.expiry_day == day)
        return 0

    # --- quotes ---------------------------------------------------------------------------

    def quote(
        self,
        view: StateView,
        partner: bytes,
        ledger: int,
        wallet: bytes,
        direction: Direction,
        amount_in: int,
        now_ms: int,
    ) -> Quote | BridgeResult:
        """The terms of a swap now (a read: no writes), or the refusal a swap would get."""
        try:
            self._own_asset(view, partner, ledger)
            policy = self._policy(view, ledger)
            amount_out, fee, _ = terms(policy, direction, amount_in)
        except _Refused as refused:
            return refused.code
        return Quote(
            partner,
            ledger,
            policy.baas_ledger,
            wallet,
            direction,
            amount_in,
            amount_out,
            fee,
            policy.rate_num,
            policy.rate_den,
            policy.version,
            now_ms,
            now_ms + self.config.quote_ttl_ms_max,
        )

    # --- shared reads ---------------------------------------------------------------------

    def _own_asset(self, view: StateView, partner: bytes, ledger: int) -> AssetRecord:
        raw = view.get(asset_key(ledger))
        if raw is None:
            raise _Refused(R.ASSET_NOT_FOUND)
        asset = decode_asset(raw)
        if asset.partner != partner:
            raise _Refused(R.ASSET_FOREIGN)
        return asset

    def _points(self, view: StateView, partner: bytes, ledger: int) -> AssetRecord:
        asset = self._own_asset(view, partner, ledger)
        if asset.kind != AssetKindRef.POINT:
            raise _Refused(R.ASSET_KIND_MISMATCH)
        return asset

    def _policy(self, view: StateView, ledger: int) -> PolicyRecord:
        raw = view.get(policy_key(ledger))
        if raw is None:
            raise _Refused(R.POLICY_NOT_FOUND)
        policy = decode_policy(raw)
        if not policy.enabled:
            raise _Refused(R.POLICY_DISABLED)
        return policy

    def _expiry_day(self, asset: AssetRecord, now_ms: int) -> int:
        if asset.validity_days == 0:
            return NEVER_DAY
        return min(_day(now_ms) + asset.validity_days, NEVER_DAY - 1)

    # --- definitions ----------------------------------------------------------------------

    def _define(
        self, r: DefinePoints | RegisterToken, record: AssetRecord, kind: AssetKind, view: StateView
    ) -> Prepared:
        raw = view.get(asset_key(r.ledger))
        if raw is not None:
            old = decode_asset(raw)
            if old.partner != r.partner:
                raise _Refused(R.LEDGER_TAKEN)
            if replace(old, start_day=record.start_day) != record:
                raise _Refused(R.EXISTS_WITH_DIFFERENT_FIELDS)
            return Prepared(r.op, R.EXISTS)
        chain = _Chain(r.op, view)
        chain.events.append(
            CreateAsset(r.ledger, int(kind), record.scale, int.from_bytes(r.partner, "big"))
        )
        chain.account(_role(r.partner, r.ledger, "issuance"), r.ledger, AccountCode.ISSUANCE)
        chain.account(
            _role(r.partner, r.ledger, "liquidity"),
            r.ledger,
            AccountCode.LIQUIDITY,
            _LIQUIDITY_FLAGS,
        )
        chain.account(_role(r.partner, r.ledger, "breakage"), r.ledger, AccountCode.BREAKAGE)
        return Prepared(
            r.op, R.OK, chain.closed(), writes=((asset_key(r.ledger), encode_asset(record)),)
        )

    def _define_points(self, r: DefinePoints, now_ms: int, view: StateView) -> Prepared:
        if r.validity_days > self.config.validity_days_max or len(r.code) > (
            self.config.code_chars_max
        ):
            raise _Refused(R.BOUND_EXCEEDED)
        record = AssetRecord(
            r.partner, int(AssetKindRef.POINT), r.scale, r.code, r.validity_days, b"", _day(now_ms)
        )
        return self._define(r, record, AssetKind.POINT, view)

    def _register_token(self, r: RegisterToken, now_ms: int, view: StateView) -> Prepared:
        if len(r.symbol) > self.config.code_chars_max:
            raise _Refused(R.BOUND_EXCEEDED)
        mode = _mode(r.ledger)
        list_key = token_list_key(r.partner, mode)
        raw = view.get(list_key)
        ledgers: list[int] = [] if raw is None else unpack(raw, "token list", 1)[0]
        if len(ledgers) >= self.config.tokens_per_partner_max and r.ledger not in ledgers:
            raise _Refused(R.BOUND_EXCEEDED)
        record = AssetRecord(
            r.partner, int(AssetKindRef.TOKEN), r.decimals, r.symbol, 0, r.address, _day(now_ms)
        )
        prepared = self._define(r, record, AssetKind.TOKEN, view)
        if prepared.code != R.OK:
            return prepared  # the same token on the same ledger again: exists
        # One asset per contract in a mode: a chain deposit of it must credit exactly one.
        address_key = token_address_key(mode, self.config.chain_id, r.address)
        if view.get(address_key) is not None:
            raise _Refused(R.TOKEN_ADDRESS_TAKEN)
        writes = (
            *prepared.writes,
            (address_key, pack(r.ledger, r.partner)),
            (list_key, pack([*ledgers, r.ledger])),
        )
        return replace(prepared, writes=writes)

    # --- points ---------------------------------------------------------------------------

    def _credit_lot(
        self,
        lots: list[Lot],
        expiry_day: int,
        origin: LotOrigin,
        amount: int,
    ) -> tuple[list[Lot], bool]:
        """The lots with ``amount`` merged into (expiry day, origin); True if it is a new lot."""
        for i, lot in enumerate(lots):
            if lot.expiry_day == expiry_day and lot.origin == origin:
                merged = [*lots]
                merged[i] = replace(lot, amount=lot.amount + amount)
                return merged, False
        if len(lots) >= self.config.lots_per_wallet_max:
            raise _Refused(R.LOTS_FULL)
        new = sorted(
            [*lots, Lot(expiry_day, int(origin), amount)], key=lambda x: (x.expiry_day, x.origin)
        )
        return new, True

    def _spend_lots(self, lots: list[Lot], amount: int, today: int) -> list[Lot]:
        """Oldest unexpired lot first; refusals: not enough unexpired, or too many lots."""
        spendable = sum(lot.amount for lot in lots if lot.expiry_day > today)
        if spendable < amount:
            raise _Refused(R.INSUFFICIENT_FUNDS)
        out: list[Lot] = []
        left, touched = amount, 0
        for lot in lots:  # sorted by (expiry day, origin): oldest first
            if left == 0 or lot.expiry_day <= today:
                out.append(lot)
                continue
            take = min(left, lot.amount)
            left -= take
            touched += 1
            if lot.amount > take:
                out.append(replace(lot, amount=lot.amount - take))
        if touched > self.config.lots_per_spend_max:
            raise _Refused(R.LOTS_PER_SPEND_EXCEEDED)
        return out

    def _lot_writes(
        self, ledger: int, account: int, lots: list[Lot], new_day: int | None, view: StateView
    ) -> dict[bytes, bytes | None]:
        key = lots_key(ledger, account)
        writes: dict[bytes, bytes | None] = {key: encode_lots(lots) if lots else None}
        if new_day is not None and new_day != NEVER_DAY:
            writes.update(self._bucket_add(ledger, new_day, account, view))
        return writes

    def _bucket_add(
        self, ledger: int, day: int, account: int, view: StateView
    ) -> dict[bytes, bytes | None]:
        head_key = expiry_head_key(ledger, day)
        raw = view.get(head_key)
        pages = 0 if raw is None else unpack(raw, "expiry head", 1)[0]
        page = view.get(expiry_page_key(ledger, day, pages - 1)) if pages else None
        writes: dict[bytes, bytes | None] = {}
        if page is None or len(page) >= 16 * self.config.expiry_page_ids_max:
            pages += 1
            writes[head_key] = pack(pages)
            page = b""
        writes[expiry_page_key(ledger, day, pages - 1)] = page + account.to_bytes(16, "big")
        return writes

    def _issue(self, r: IssuePoints, now_ms: int, view: StateView) -> Prepared:
        asset = self._points(view, r.partner, r.ledger)
        day = self._expiry_day(asset, now_ms)
        lots = decode_lots(view.get(lots_key(r.ledger, r.wallet_account)))
        lots, new = self._credit_lot(lots, day, LotOrigin.ISSUED, r.amount)
        chain = _Chain(r.op, view)
        chain.account(r.wallet_account, r.ledger, AccountCode.WALLET, _WALLET_FLAGS)
        chain.transfer(
            _role(r.partner, r.ledger, "issuance"),
            r.wallet_account,
            r.amount,
            r.ledger,
            TransferCode.ISSUE,
        )
        writes = self._lot_writes(r.ledger, r.wallet_account, lots, day if new else None, view)
        issuance = Issuance(r.partner, r.ledger, r.wallet_account, day, r.amount, 0)
        writes[ISSUANCE_PREFIX + r.op] = encode_issuance(issuance)
        return Prepared(
            r.op, R.OK, chain.closed(), writes=tuple(writes.items()), detail={"expiry_day": day}
        )

    def _redeem(self, r: RedeemPoints, now_ms: int, view: StateView) -> Prepared:
        self._points(view, r.partner, r.ledger)
        lots = decode_lots(view.get(lots_key(r.ledger, r.wallet_account)))
        lots = self._spend_lots(lots, r.amount, _day(now_ms))
        chain = _Chain(r.op, view)
        chain.transfer(
            r.wallet_account,
            _role(r.partner, r.ledger, "issuance"),
            r.amount,
            r.ledger,
            TransferCode.REDEEM,
            limit=R.INSUFFICIENT_FUNDS,
        )
        writes = self._lot_writes(r.ledger, r.wallet_account, lots, None, view)
        return Prepared(
            r.op,
            R.OK,
            chain.closed(),
            tuple(chain.claims),
            tuple(writes.items()),
            tuple(chain.limits),
        )

    def _reverse(self, r: ReversePoints, now_ms: int, view: StateView) -> Prepared:
        self._points(view, r.partner, r.ledger)
        raw = view.get(ISSUANCE_PREFIX + r.issuance)
        issuance = None if raw is None else decode_issuance(raw)
        # Another partner's issuance answers as not found: nothing leaks across partners.
        if issuance is None or issuance.partner != r.partner or issuance.ledger != r.ledger:
            raise _Refused(R.ISSUANCE_NOT_FOUND)
        account = issuance.wallet_account
        lots = decode_lots(view.get(lots_key(r.ledger, account)))
        if r.amount > _reversal_cap(issuance, lots, _day(now_ms)):
            raise _Refused(R.REVERSAL_EXCEEDS_UNSPENT)
        out = []
        for lot in lots:
            if lot.expiry_day == issuance.expiry_day and lot.origin == LotOrigin.ISSUED:
                lot = replace(lot, amount=lot.amount - r.amount)
            if lot.amount:
                out.append(lot)
        chain = _Chain(r.op, view)
        chain.transfer(
            account,
            _role(r.partner, r.ledger, "issuance"),
            r.amount,
            r.ledger,
            TransferCode.REVERSE,
            claim=RuleClaim(DebitRule.REVERSAL, r.issuance),
        )
        writes = self._lot_writes(r.ledger, account, out, None, view)
        writes[ISSUANCE_PREFIX + r.issuance] = encode_issuance(
            replace(issuance, reversed=issuance.reversed + r.amount)
        )
        return Prepared(r.op, R.OK, chain.closed(), tuple(chain.claims), tuple(writes.items()))

    def _expire(self, r: ExpirePoints, now_ms: int, view: StateView) -> Prepared:
        asset = self._points(view, r.partner, r.ledger)
        if asset.validity_days == 0:
            return Prepared(r.op, R.OK)  # points without a validity period never expire
        today = _day(now_ms)
        cfg = self.config
        layer = Overlay(view)
        cursor_key = expiry_cursor_key(r.ledger)
        raw = view.get(cursor_key)
        day, page, offset = (asset.start_day, 0, 0) if raw is None else unpack(raw, "cursor", 3)
        chain = _Chain(r.op, view)
        breakage = _role(r.partner, r.ledger, "breakage")
        days = entries = 0
        while day <= today and days < cfg.expiry_days_scan_max:
            head = view.get(expiry_head_key(r.ledger, day))
            pages = 0 if head is None else unpack(head, "expiry head", 1)[0]
            full = False
            while page < pages and not full:
                ids = view.get(expiry_page_key(r.ledger, day, page)) or b""
                while offset * 16 < len(ids):
                    if (
                        len(chain.events) >= cfg.expiry_wallets_per_call_max
                        or entries >= cfg.expiry_entries_scan_max
                    ):
                        full = True
                        break
                    account = int.from_bytes(ids[offset * 16 : offset * 16 + 16], "big")
                    offset += 1
                    entries += 1
                    self._expire_wallet(r, day, account, breakage, chain, layer)
                if not full:
                    page, offset = page + 1, 0
            if full:
                break
            for k in range(pages):
                layer.writes[expiry_page_key(r.ledger, day, k)] = None
            if head is not None:
                layer.writes[expiry_head_key(r.ledger, day)] = None
            day, page, offset = day + 1, 0, 0
            days += 1
        layer.writes[cursor_key] = pack(day, page, offset)
        return Prepared(
            r.op,
            R.OK,
            chain.closed(),
            tuple(chain.claims),
            tuple(layer.writes.items()),
            detail={"expired_wallets": len(chain.events)},
        )

    def _expire_wallet(
        self, r: ExpirePoints, day: int, account: int, breakage: int, chain: _Chain, layer: Overlay
    ) -> None:
        key = lots_key(r.ledger, account)
        lots = decode_lots(layer.get(key))
        amount = sum(lot.amount for lot in lots if lot.expiry_day == day)
        if amount == 0:
            return  # spent, reversed, or already expired from an earlier entry of the bucket
        kept = [lot for lot in lots if lot.expiry_day != day]
        layer.writes[key] = encode_lots(kept) if kept else None
        reference = r.ledger.to_bytes(4, "big") + day.to_bytes(4, "big")
        chain.transfer(
            account,
            breakage,
            amount,
            r.ledger,
            TransferCode.EXPIRE,
            claim=RuleClaim(DebitRule.POINT_EXPIRY, reference),
        )

    # --- liquidity and reserves -----------------------------------------------------------

    def _fund_liquidity(self, r: FundLiquidity, now_ms: int, view: StateView) -> Prepared:
        asset = self._own_asset(view, r.partner, r.ledger)
        if asset.kind == AssetKindRef.TOKEN:
            if _mode(r.ledger) != Mode.TEST:
                raise _Refused(R.FAUCET_LIVE_MODE)
            if r.amount > self.config.faucet_amount_max:
                raise _Refused(R.FAUCET_AMOUNT_EXCEEDED)
        chain = _Chain(r.op, view)
        chain.transfer(
            _role(r.partner, r.ledger, "issuance"),
            _role(r.partner, r.ledger, "liquidity"),
            r.amount,
            r.ledger,
            TransferCode.LIQUIDITY_FUND,
        )
        return Prepared(r.op, R.OK, chain.closed())

    def _check_baas(self, ledger: int) -> None:
        if ledger != _baas_ledger(ledger):
            raise _Refused(R.ASSET_KIND_MISMATCH)

    def _reserve_accounts(self, chain: _Chain, partner: bytes, baas: int) -> int:
        reserve = _role(partner, baas, "reserve")
        chain.account(reserve, baas, AccountCode.RESERVE, _RESERVE_FLAGS)
        chain.account(_role(partner, baas, "fees"), baas, AccountCode.FEES)
        return reserve

    def _top_up(self, r: TopUpReserve, now_ms: int, view: StateView) -> Prepared:
        self._check_baas(r.ledger)
        chain = _Chain(r.op, view)
        source = r.source
        if source == 0:
            if _mode(r.ledger) != Mode.TEST:
                raise _Refused(R.FAUCET_LIVE_MODE)
            if r.amount > self.config.faucet_amount_max:
                raise _Refused(R.FAUCET_AMOUNT_EXCEEDED)
            source = faucet_account(r.ledger)
            chain.account(source, r.ledger, AccountCode.ISSUANCE)
        reserve = self._reserve_accounts(chain, r.partner, r.ledger)
        chain.transfer(source, reserve, r.amount, r.ledger, TransferCode.RESERVE_TOP_UP)
        return Prepared(r.op, R.OK, chain.closed(), reserve=(r.partner, r.ledger))

    def _set_threshold(self, r: SetReserveThreshold, now_ms: int, view: StateView) -> Prepared:
        self._check_baas(r.ledger)
        chain = _Chain(r.op, view)
        self._reserve_accounts(chain, r.partner, r.ledger)
        key = reserve_key(r.ledger, r.partner)
        low = False if (raw := view.get(key)) is None else unpack(raw, "reserve", 2)[1]
        return Prepared(
            r.op,
            R.OK,
            chain.closed(),
            writes=((key, pack(r.threshold.to_bytes(16, "big"), low)),),
            reserve=(r.partner, r.ledger),
        )

    def _reserve_notice(
        self,
        reserve: tuple[bytes, int],
        view_after: StateView,
        pending: Mapping[bytes, bytes | None],
    ) -> tuple[tuple[ReserveLow, ...], dict[bytes, bytes | None]]:
        partner, baas = reserve
        key = reserve_key(baas, partner)
        raw = pending.get(key, view_after.get(key))
        if raw is None:
            return (), {}
        threshold_raw, low = unpack(raw, "reserve", 2)
        threshold = int.from_bytes(threshold_raw, "big")
        level = reserve_level(view_after, partner, baas)
        if level < threshold and not low:
            return (ReserveLow(partner, baas, level, threshold),), {key: pack(threshold_raw, True)}
        if level >= threshold and low:
            return (), {key: pack(threshold_raw, False)}
        return (), {}

    # --- policies -------------------------------------------------------------------------

    def _set_policy(self, r: SetPolicy, now_ms: int, view: StateView) -> Prepared:
        if r.window_s > self.config.window_s_max:
            raise _Refused(R.BOUND_EXCEEDED)
        if _mode(r.baas_ledger) != _mode(r.ledger):
            raise _Refused(R.LEDGER_WRONG_MODE)
        self._own_asset(view, r.partner, r.ledger)
        self._check_baas(r.baas_ledger)
        raw = view.get(policy_key(r.ledger))
        old = None if raw is None else decode_policy(raw)
        new = PolicyRecord(
            version=1 if old is None else old.version + 1,
            baas_ledger=r.baas_ledger,
            rate_num=r.rate_num,
            rate_den=r.rate_den,
            swap_min=r.swap_min,
            swap_max=r.swap_max,
            window_s=r.window_s,
            user_window_max=r.user_window_max,
            partner_window_max=r.partner_window_max,
            fee_bps=r.fee_bps,
            fee_min=r.fee_min,
            enabled=r.enabled,
            changed_ms=now_ms,
        )
        if old is not None and replace(old, changed_ms=0) == replace(
            new, version=old.version, changed_ms=0
        ):
            return Prepared(r.op, R.EXISTS, detail={"version": old.version})
        chain = _Chain(r.op, view)
        self._reserve_accounts(chain, r.partner, r.baas_ledger)
        encoded = encode_policy(new)
        writes = (
            (policy_key(r.ledger), encoded),
            (policy_audit_key(r.ledger, new.version), pack(r.actor, now_ms, encoded)),
        )
        return Prepared(r.op, R.OK, chain.closed(), writes=writes, detail={"version": new.version})

    # --- swaps ----------------------------------------------------------------------------

    def _swap(self, r: Swap, now_ms: int, view: StateView) -> Prepared:
        q = r.quote
        if (
            q.digest() != r.quote_digest
            or q.partner != r.partner
            or q.ledger != r.ledger
            or q.issued_ms > now_ms
            or not q.issued_ms < q.expires_ms <= q.issued_ms + self.config.quote_ttl_ms_max
        ):
            raise _Refused(R.QUOTE_ALTERED)
        if q.wallet != r.wallet:
            raise _Refused(R.QUOTE_OTHER_USER)
        asset = self._own_asset(view, r.partner, r.ledger)
        if now_ms >= q.expires_ms:
            raise _Refused(R.QUOTE_EXPIRED)
        policy = self._policy(view, r.ledger)
        if policy.version != q.policy_version:
            raise _Refused(R.POLICY_VERSION_CHANGED)
        amount_out, fee, asset_amount = terms(policy, q.direction, q.amount_in)
        stated = (q.baas_ledger, q.rate_num, q.rate_den, q.amount_out, q.fee)
        if stated != (policy.baas_ledger, policy.rate_num, policy.rate_den, amount_out, fee):
            raise _Refused(R.QUOTE_TERMS_MISMATCH)
        baas = policy.baas_ledger
        # The user's accounts derive from the wallet the quote is bound to: never from input.
        user_asset = wallet_account_id(r.wallet, _mode(r.ledger), r.ledger)
        user_baas = wallet_account_id(r.wallet, _mode(baas), baas)
        writes = self._windows(r.ledger, user_asset, policy, asset_amount, now_ms, view)
        writes.update(
            self._swap_lots(r.ledger, user_asset, asset, q.direction, asset_amount, now_ms, view)
        )
        chain = _Chain(r.op, view, user_data=policy.version)
        reserve = _role(r.partner, baas, "reserve")
        fees = _role(r.partner, baas, "fees")
        liquidity = _role(r.partner, r.ledger, "liquidity")
        if q.direction == Direction.IN:
            chain.account(user_baas, baas, AccountCode.WALLET, _WALLET_FLAGS)
            chain.transfer(
                user_asset,
                liquidity,
                q.amount_in,
                r.ledger,
                TransferCode.SWAP,
                limit=R.INSUFFICIENT_FUNDS,
            )
            chain.transfer(
                reserve,
                user_baas,
                amount_out + fee,
                baas,
                TransferCode.SWAP,
                limit=R.RESERVE_EXHAUSTED,
            )
            if fee:
                chain.transfer(user_baas, fees, fee, baas, TransferCode.SWAP_FEE)
        else:
            chain.account(user_asset, r.ledger, AccountCode.WALLET, _WALLET_FLAGS)
            if fee:
                chain.transfer(
                    user_baas,
                    fees,
                    fee,
                    baas,
                    TransferCode.SWAP_FEE,
                    limit=R.INSUFFICIENT_FUNDS,
                )
            chain.transfer(
                user_baas,
                reserve,
                q.amount_in - fee,
                baas,
                TransferCode.SWAP,
                limit=R.INSUFFICIENT_FUNDS,
            )
            chain.transfer(
                liquidity,
                user_asset,
                amount_out,
                r.ledger,
                TransferCode.SWAP,
                limit=R.LIQUIDITY_EXHAUSTED,
            )
        detail = {
            "amount_in": q.amount_in,
            "amount_out": amount_out,
            "fee": fee,
            "policy_version": policy.version,
        }
        return Prepared(
            r.op,
            R.OK,
            chain.closed(),
            tuple(chain.claims),
            tuple(writes.items()),
            tuple(chain.limits),
            (r.partner, baas),
            detail,
        )

    def _windows(
        self,
        ledger: int,
        user_asset: int,
        policy: PolicyRecord,
        amount: int,
        now_ms: int,
        view: StateView,
    ) -> dict[bytes, bytes | None]:
        buckets = self.config.window_buckets_max
        width_ms = max(1, policy.window_s * 1000 // buckets)
        epoch = now_ms // width_ms
        writes: dict[bytes, bytes | None] = {}
        for key, limit, code in (
            (
                window_user_key(ledger, user_asset),
                policy.user_window_max,
                R.USER_WINDOW_LIMIT,
            ),
            (window_partner_key(ledger), policy.partner_window_max, R.PARTNER_WINDOW_LIMIT),
        ):
            ring = decode_ring(view.get(key))
            live = [(e, a) for e, a in ring if epoch - buckets <= e <= epoch]
            if limit and sum(a for _, a in live) + amount > limit:
                raise _Refused(code)
            slots = dict(live)
            slots[epoch] = slots.get(epoch, 0) + amount
            if len(slots) > buckets + 1:
                raise InvariantViolation("a window ring outgrew its buckets")
            writes[key] = encode_ring(sorted(slots.items()))
        return writes

    def _swap_lots(
        self,
        ledger: int,
        user_asset: int,
        asset: AssetRecord,
        direction: Direction,
        amount: int,
        now_ms: int,
        view: StateView,
    ) -> dict[bytes, bytes | None]:
        if asset.kind != AssetKindRef.POINT:
            return {}
        lots = decode_lots(view.get(lots_key(ledger, user_asset)))
        if direction == Direction.IN:
            lots = self._spend_lots(lots, amount, _day(now_ms))
            return self._lot_writes(ledger, user_asset, lots, None, view)
        day = self._expiry_day(asset, now_ms)
        lots, new = self._credit_lot(lots, day, LotOrigin.BOUGHT, amount)
        return self._lot_writes(ledger, user_asset, lots, day if new else None, view)


def _reversal_cap(issuance: Issuance, lots: list[Lot], today: int) -> int:
    """What of ``issuance`` may still be reversed: its unreversed amount, at most what its
    issued lot still holds, and nothing once that lot expired."""
    if issuance.expiry_day <= today:
        return 0
    lot = next(
        (x for x in lots if x.expiry_day == issuance.expiry_day and x.origin == LotOrigin.ISSUED),
        None,
    )
    held = 0 if lot is None else lot.amount
    return min(issuance.amount - issuance.reversed, held)


def faucet_account(baas_ledger: int) -> int:
    """The platform's test-mode BAAS faucet on ``baas_ledger`` (the platform's partner id is
    all zeros, as in identity's approvals)."""
    return partner_account_id(ZERO16, _mode(baas_ledger), "faucet", baas_ledger)
