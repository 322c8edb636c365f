"""The Bridge on the log (feature 8; 11 and 12 below): a Bridge request inside a ``ledger.ops``
operation.

From log feature version :data:`BRIDGE_FEATURE_VERSION` an operation of a ``ledger.ops``
entry may carry, instead of ledger events, one Bridge request in its wire form (``br``:
:func:`business.bridge.wire.encode_request`; see :mod:`node.consensus.ledger_ops` for the
operation's codec). The request, its record's index put, the ledger events the Bridge makes
of it, the Bridge's own state (``br/``) and the owner records of the accounts it opens are one
operation: one atomic unit in the entry's write batch, one Merkle leaf, one outcome. This
module is the step the ledger-ops apply calls for such an operation (:meth:`BridgeStep.run`),
and the point-expiry sweep it calls at the start of every ``ledger.ops`` and ``ledger.tick``
entry (:meth:`BridgeStep.expire`). Pure: no clock, no I/O; time is the entry's log time.

The step, for a *created* operation (a retry of its record is answered with its stored
outcome by the ledger-ops apply, like any operation):

1. **who** (:meth:`BridgeStep._scope`): the gateway's proposer (``pt``/``md``) must be there
   (``proposer_missing``), be a partner (``partner_not_found`` for the platform: the Bridge's
   requests are a partner's), onboarded and active in the mode and with its user references
   linked (identity's :func:`~business.identity.scope.check_scope` with no events); the
   request names that partner (another's: ``account_not_found``) and ledgers of the mode
   (``ledger_not_found``). A partner defines points only on its own point ledger (the one
   identity allocated; ``asset_not_allowed``); a token only from feature 12 (before it
   ``RegisterToken`` is ``asset_not_allowed``), on the ledger allocated for it (below). It
   issues only to a wallet it linked and names in ``ur`` (``account_not_found`` otherwise); a
   swap's wallet must be one of its linked users named in ``ur`` (their accounts are opened
   for them); a redemption's account must be a wallet's of the mode;
2. :meth:`Bridge.prepare <business.bridge.core.Bridge.prepare>`: the Bridge's own checks
   (reserve, windows, policy version, quote, lots, ...); a refusal is the operation's result,
   with no events;
3. every account the Bridge's chain creates must have an owner: one of the partner's role
   accounts from onboarding (else ``role_missing``: add the role with a ``partner.put``,
   e.g. :data:`~business.identity.model.BRIDGE_ROLES`), a linked user's wallet account
   (opened now: :func:`~business.identity.core.open_wallet_account`), or the test-mode
   BAAS faucet (a platform account);
4. identity's approval check (:func:`~business.identity.approvals.check_debits`) over the
   chain's debits with the Bridge as the ``DebitRules`` (a reversal capped at its issuance's
   unspent amount, point expiry at the expired lot): every debit of a user's wallet (a
   redemption, both legs of a swap) needs that user's approval over
   :func:`~business.identity.approvals.operation_digest` ``(record id, br bytes)``: the user
   signs the exact request, quote included (the events depend on the state, the request does
   not). The test-mode faucet's debit of a top-up is exempt (the Bridge allows it in test
   mode only, bounded by ``faucet_amount_max``);
5. the chain runs through ``Ledger.apply`` at the entry's log time (after the mode's BAAS
   asset, opened on first use as identity opens it), then :meth:`Bridge.settle
   <business.bridge.core.Bridge.settle>` keeps the Bridge's writes only if the whole chain
   succeeded (``reserve_exhausted``, ``liquidity_exhausted``, ... otherwise: nothing moved).

The outcome (:class:`~business.ledger.outcome.OperationOutcome`, format version 2) lists the
chain's events with the ledger's results and carries the request's result code (``ok``,
``exists``, a Bridge refusal, a scope or approval refusal); it is stored as every operation's
outcome is (sticky; in the receipt and the leaf).

Tokens (feature 12, :data:`TOKEN_FEATURE_VERSION`): a ``RegisterToken`` passes the scope
check like any request, then :meth:`BridgeStep._allocate_token` gives it its ledger: the next
index of identity's asset counter (:func:`~business.identity.core.allocate_asset_index`, shared
with the partners' point assets, so no two assets share a ledger; ``bound_exceeded`` once the
indexes are spent) in the proposer's mode (the request's own ledger only names the mode), and
plans the owner records of the token's issuance, liquidity and breakage accounts for each of
those roles the partner holds on its points (:data:`TOKEN_ROLES`; one it lacks leaves that
account unowned: ``role_missing`` in step 3). The Bridge core then refuses an address already
registered in the mode (``token_address_taken``) or a partner's token beyond
``tokens_per_partner_max`` (``bound_exceeded``) and records the token by (mode, chain,
address), the chain being identity's EIP-712 chain id (what a deposit of it will resolve:
:func:`business.bridge.views.token_by_address`). The counter, owners and records are written
only if the whole chain succeeds, so a refused registration allocates nothing.

Point expiry runs on log time, by rule, with no proposer: a registry of point assets with a
validity period (``br/xr``, at most :data:`EXPIRY_ASSETS_MAX`; a further definition with a
validity period is ``bound_exceeded``) and the first log day any of them is due (``br/xn``,
one read per entry). When the entry's log day reaches it, the sweep runs the Bridge's bounded
``ExpirePoints`` for at most :data:`EXPIRY_ASSETS_PER_ENTRY_MAX` due assets (each at most
``expiry_wallets_per_call_max`` wallets), op id derived from (ledger, log index), every
transfer's debit checked against its ``POINT_EXPIRY`` cap (an excess is an invariant broken,
not a refusal), and stores the next due day: the same day while work is left, else the next.
Expired lots are never spendable before the sweep anyway (the Bridge counts only unexpired
lots), so a busy day only delays the move to breakage, never a spend of expired points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from business.bridge import Bridge, BridgeConfig, BridgeResult, ReserveLow, faucet_account
from business.bridge.model import (
    DAY_MS,
    EVENT_RESERVE_LOW,
    DefinePoints,
    ExpirePoints,
    IssuePoints,
    RedeemPoints,
    RegisterToken,
    Request,
    ReserveLowRecord,
    SetPolicy,
    Swap,
    SwapEntry,
    TopUpReserve,
    asset_key,
    decode_asset,
    decode_reserve_low,
    encode_reserve_low,
    encode_swap_entry,
    event_id,
    expiry_cursor_key,
    pack,
    reserve_low_key,
    swap_index_key,
    unpack,
)
from business.identity.approvals import (
    debits_of,
)
from business.identity.core import (
    allocate_asset_index,
    decode_partner,
    open_wallet_account,
    platform_account,
)
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    derive,
    ledger_number,
    mode_of_ledger,
    partner_account_id,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import (
    PARTNER_PREFIX,
    ApprovalResult,
    AssetRef,
    IdentityConfig,
    Owner,
    OwnerKind,
    Role,
    ScopeResult,
    decode_owner,
    encode_owner,
    link_key,
    owner_key,
)
from business.identity.scope import PLATFORM, Proposer, Scope, Unapplied, check_scope
from business.ledger.core import Ledger
from business.ledger.model import (
    BAAS_SCALE,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Result,
)
from business.ledger.model import asset_key as ledger_asset_key
from business.ledger.outcome import OperationOutcome, outcome_of
from node.consensus.request_step import approve_and_apply, refused_request
from node.consensus.state_machine import Dispatcher, Overlay, StateView
from node.errors import InvariantViolation

__all__ = [
    "BRIDGE_CONFIG",
    "BRIDGE_FEATURE_VERSION",
    "EXPIRY_ASSETS_MAX",
    "EXPIRY_ASSETS_PER_ENTRY_MAX",
    "SWAP_INDEX_FEATURE_VERSION",
    "TOKEN_FEATURE_VERSION",
    "BridgeRun",
    "BridgeStep",
    "expiry_op",
    "reserve_low_item",
    "swap_index_item",
]

BRIDGE_FEATURE_VERSION = 8
# Feature 11: swaps listed per partner (br/sw/) and reserve.low events kept (br/rl/); new keys
# change what a log replays to, so an older log replays as it did.
SWAP_INDEX_FEATURE_VERSION = 11
# Feature 12: a partner's RegisterToken allocates the token's ledger (before: asset_not_allowed).
TOKEN_FEATURE_VERSION = 12
# The role accounts a token gets, each only if the partner holds that role on its points.
TOKEN_ROLES = (Role.ISSUANCE, Role.LIQUIDITY, Role.BREAKAGE)
# The Bridge's bounds are part of the log format, like the ledger's: every replica alike.
BRIDGE_CONFIG = BridgeConfig()
EXPIRY_ASSETS_MAX = 4096  # point assets with a validity period (the registry's bound)
EXPIRY_ASSETS_PER_ENTRY_MAX = 4  # due assets one entry's sweep works on
EXPIRY_REGISTRY_KEY = b"br/xr"  # [[ledger, partner], ...] sorted by ledger
EXPIRY_DUE_KEY = b"br/xn"  # the first log day any registered asset is due
TAG_EXPIRY_OP = b"baas/bridge-expiry-op/v1"
S = ScopeResult


@dataclass(frozen=True, slots=True)
class BridgeRun:
    """One Bridge operation's outcome, its request kind and notices (for metrics)."""

    outcome: OperationOutcome
    kind: str  # the request's type name: Swap, IssuePoints, ...
    notices: tuple[ReserveLow, ...] = ()


def swap_index_item(
    request: Swap, partner: bytes, mode: int, user_ref: bytes, done: BridgeRun
) -> tuple[bytes, bytes]:
    """The swap's entry in its partner's index (feature 11), whatever its outcome: a list
    shows failed swaps too. The amounts are the quote's."""
    q = request.quote
    entry = SwapEntry(
        wallet=request.wallet,
        user_ref=user_ref,
        ledger=request.ledger,
        direction=int(q.direction),
        amount_in=q.amount_in,
        amount_out=q.amount_out,
        fee=q.fee,
        policy_version=q.policy_version,
        quote_digest=request.quote_digest,
        result=done.outcome.result or "ok",
    )
    key = swap_index_key(partner, mode, done.outcome.log_time_ms, request.op)
    return key, encode_swap_entry(entry)


def reserve_low_item(
    notice: ReserveLow, op: bytes, now_ms: int, view: StateView
) -> dict[bytes, bytes | None]:
    """The reserve's last ``reserve.low`` event (feature 11): one value per reserve, so the
    state stays bounded however often it crosses; the count says how many it raised."""
    key = reserve_low_key(notice.ledger, notice.partner)
    raw = view.get(key)
    count = 0 if raw is None else decode_reserve_low(raw).count
    record = ReserveLowRecord(
        event_id(EVENT_RESERVE_LOW, op), op, now_ms, notice.level, notice.threshold, count + 1
    )
    return {key: encode_reserve_low(record)}


def expiry_op(ledger: int, log_index: int) -> bytes:
    """The op id of the sweep's ``ExpirePoints`` for ``ledger`` in the entry at ``log_index``."""
    return derive(TAG_EXPIRY_OP, ledger.to_bytes(4, "big"), log_index.to_bytes(8, "big"))


class BridgeStep:
    """The Bridge step of the ledger-ops apply (pure: reads and writes one overlay)."""

    def __init__(self, ledger: Ledger, identity: IdentityConfig) -> None:
        # tokens are found by (mode, chain, address): the chain is the one identity signs for
        self.bridge = Bridge(replace(BRIDGE_CONFIG, chain_id=identity.chain_id), ledger)
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
    ) -> BridgeRun:
        """Apply one created operation's request into ``layer`` (module docstring); from
        feature 11 also its swap-index entry and its ``reserve.low`` event."""
        done = self._run(record_id, raw, request, proposer, approvals, now_ms, layer, earlier)
        if Dispatcher.feature_version(layer) < SWAP_INDEX_FEATURE_VERSION:
            return done
        if isinstance(request, Swap) and proposer is not None and proposer.partner != PLATFORM:
            ref = proposer.user_refs[0] if proposer.user_refs else b""
            key, value = swap_index_item(request, proposer.partner, proposer.mode, ref, done)
            layer.writes[key] = value
        for notice in done.notices:
            layer.writes.update(reserve_low_item(notice, record_id, now_ms, layer))
        return done

    def _run(
        self,
        record_id: bytes,
        raw: bytes,
        request: Request,
        proposer: Proposer | None,
        approvals: bytes,
        now_ms: int,
        layer: Overlay,
        earlier: Unapplied,
    ) -> BridgeRun:
        kind = type(request).__name__
        if proposer is None:
            return BridgeRun(OperationOutcome(now_ms, (), S.PROPOSER_MISSING.value), kind)
        wallets = self._scope(proposer, record_id, request, layer, earlier, now_ms)
        if isinstance(wallets, (ScopeResult, BridgeResult)):
            return BridgeRun(OperationOutcome(now_ms, (), wallets.value), kind)
        planned: dict[bytes, bytes | None] = {}  # a token's ledger and role owners (feature 12)
        if isinstance(request, RegisterToken):
            allocated = self._allocate_token(request, proposer, layer)
            if isinstance(allocated, BridgeResult):
                return BridgeRun(OperationOutcome(now_ms, (), allocated.value), kind)
            request, planned = allocated
        prepared = self.bridge.prepare(request, now_ms, layer)
        events = prepared.events
        if not prepared.code.succeeded or prepared.retry:
            settled = self.bridge.settle(prepared, (), now_ms, layer)
            layer.writes.update(settled.writes)
            return BridgeRun(OperationOutcome(now_ms, (), settled.code.value), kind)
        with_planned = Overlay(layer)
        with_planned.writes.update(planned)
        owners = self._owners(request, events, proposer, wallets, with_planned, now_ms)
        if isinstance(owners, ScopeResult):
            return BridgeRun(refused_request(events, owners.value, now_ms), kind)
        owners = {**planned, **owners}
        checks = Overlay(layer)
        # A user's account the chain debits but does not create (it does not exist yet) is
        # still theirs to approve; the ledger then finds it holds nothing.
        for address, ledger in wallets.values():
            checks.writes.update(
                open_wallet_account(layer, proposer.mode, address, ledger, now_ms)[1]
            )
        checks.writes.update(owners)
        faucet = (
            faucet_account(request.ledger)
            if isinstance(request, TopUpReserve) and request.source == 0
            else None
        )
        debits = tuple(
            d for d in debits_of(events, dict(prepared.claims)) if d.account_id != faucet
        )
        prelude = self._baas_asset(events, proposer, layer)
        approved = approve_and_apply(
            self._ledger, self._identity, self.bridge, checks, layer,
            record_id=record_id, raw=raw, proposer=proposer, debits=debits,
            approvals=approvals, events=[*prelude, *events] if events else (), now_ms=now_ms,
        )  # fmt: skip
        if isinstance(approved, ApprovalResult):
            return BridgeRun(refused_request(events, approved.value, now_ms), kind)
        results, approval_writes = approved
        opened, mine = results[: len(prelude)], results[len(prelude) :]
        settled = self.bridge.settle(prepared, mine, now_ms, layer)
        layer.writes.update(settled.writes)
        layer.writes.update(approval_writes)  # a one-time code is consumed once it was checked
        if settled.code.succeeded:
            layer.writes.update(owners)
            self._register_expiry(request, layer)
        outcome = outcome_of([*events, *prelude], [*mine, *opened], now_ms)
        return BridgeRun(replace(outcome, result=settled.code.value), kind, settled.notices)

    def _scope(
        self,
        proposer: Proposer,
        record_id: bytes,
        request: Request,
        layer: Overlay,
        earlier: Unapplied,
        now_ms: int,
    ) -> ScopeResult | BridgeResult | dict[int, tuple[bytes, int]]:
        """The refusal, or the user's wallet accounts the request may open (account ->
        address, ledger)."""
        if proposer.partner == PLATFORM:
            return S.PARTNER_NOT_FOUND
        base = check_scope(layer, proposer, record_id, (), now_ms, earlier)
        if not isinstance(base, Scope):
            return base
        if request.partner != proposer.partner:
            return S.ACCOUNT_NOT_FOUND  # another partner's data is not found, never foreign
        ledgers = [request.ledger]
        if isinstance(request, SetPolicy):
            ledgers.append(request.baas_ledger)
        if isinstance(request, Swap):
            ledgers.append(request.quote.baas_ledger)
        if any(mode_of_ledger(ledger) != proposer.mode for ledger in ledgers):
            return S.LEDGER_NOT_FOUND
        if isinstance(request, RegisterToken):
            if Dispatcher.feature_version(layer) < TOKEN_FEATURE_VERSION:
                return S.ASSET_NOT_ALLOWED  # no token ledger allocation before feature 12
            return {}
        if isinstance(request, DefinePoints):
            raw = layer.get(PARTNER_PREFIX + proposer.partner)
            assert raw is not None  # check_scope found it
            if request.ledger != ledger_number(proposer.mode, decode_partner(raw)[1]):
                return S.ASSET_NOT_ALLOWED
            if request.validity_days and self._registry_full(request.ledger, layer):
                return BridgeResult.BOUND_EXCEEDED
        linked = [
            raw[:20]
            for ref in proposer.user_refs
            if (raw := layer.get(link_key(proposer.partner, proposer.mode, ref))) is not None
        ]
        mode = proposer.mode
        if isinstance(request, IssuePoints):
            for address in linked:
                if wallet_account_id(wallet_id(address, mode), mode, request.ledger) == (
                    request.wallet_account
                ):
                    return {request.wallet_account: (address, request.ledger)}
            return S.ACCOUNT_NOT_FOUND
        if isinstance(request, Swap):
            for address in linked:
                if wallet_id(address, mode) == request.wallet:
                    ledgers = [request.ledger, request.quote.baas_ledger]
                    return {
                        wallet_account_id(request.wallet, mode, lg): (address, lg) for lg in ledgers
                    }
            return S.ACCOUNT_NOT_FOUND
        if isinstance(request, RedeemPoints):
            raw = layer.get(owner_key(request.wallet_account))
            owner = None if raw is None else decode_owner(raw)
            if owner is None or owner.kind != OwnerKind.WALLET or owner.mode != mode:
                return S.ACCOUNT_NOT_FOUND
        return {}

    def _owners(
        self,
        request: Request,
        events: Sequence[Event],
        proposer: Proposer,
        wallets: dict[int, tuple[bytes, int]],
        layer: Overlay,
        now_ms: int,
    ) -> ScopeResult | dict[bytes, bytes | None]:
        """The owner records of the accounts the chain creates, or ``role_missing``."""
        writes: dict[bytes, bytes | None] = {}
        for e in events:
            if type(e) is not CreateAccount:
                continue
            if e.id in wallets:
                address, _ = wallets[e.id]
                _, opened = open_wallet_account(layer, proposer.mode, address, e.ledger, now_ms)
                writes.update(opened)
                continue
            raw = layer.get(owner_key(e.id))
            owner = None if raw is None else decode_owner(raw)
            if isinstance(request, TopUpReserve) and e.id == faucet_account(e.ledger):
                if owner is None:
                    key, value = platform_account(proposer.mode, e.ledger, e.id)
                    writes[key] = value
                continue
            if (
                owner is None
                or owner.kind != OwnerKind.PARTNER
                or owner.owner != proposer.partner
                or owner.mode != proposer.mode
                or owner.ledger != e.ledger
            ):
                return S.ROLE_MISSING
        return writes

    def _allocate_token(
        self, request: RegisterToken, proposer: Proposer, layer: Overlay
    ) -> BridgeResult | tuple[RegisterToken, dict[bytes, bytes | None]]:
        """The token's ledger (the next asset index, in the proposer's mode: the request's own
        ledger only names the mode) and the writes that take it: the index counter and the
        owner records of its role accounts, one per role the partner holds on its point asset
        (issuance, liquidity, breakage); a role it lacks stays unowned, so the chain that
        would open its account is ``role_missing``, as for points. Kept only on success."""
        allocated = allocate_asset_index(layer)
        if allocated is None:
            return BridgeResult.BOUND_EXCEEDED
        index, counter = allocated
        mode = proposer.mode
        ledger = ledger_number(mode, index)
        raw = layer.get(PARTNER_PREFIX + proposer.partner)
        assert raw is not None  # check_scope found it
        held = {
            r.role for r in decode_partner(raw)[2] if r.mode == mode and r.asset == AssetRef.POINTS
        }
        writes: dict[bytes, bytes | None] = dict((counter,))
        for role in TOKEN_ROLES:
            if role in held:
                account = partner_account_id(proposer.partner, mode, role.name.lower(), ledger)
                owner = Owner(OwnerKind.PARTNER, mode, ledger, proposer.partner, int(role))
                writes[owner_key(account)] = encode_owner(owner)
        return replace(request, ledger=ledger), writes

    def _baas_asset(
        self, events: Sequence[Event], proposer: Proposer, view: StateView
    ) -> tuple[Event, ...]:
        """The mode's BAAS asset, opened on first use (as identity's scope opens it)."""
        baas = ledger_number(proposer.mode, ASSET_INDEX_BAAS)
        uses = any(type(e) is CreateAccount and e.ledger == baas for e in events)
        if uses and view.get(ledger_asset_key(baas)) is None:
            return (CreateAsset(baas, AssetKind.BAAS, BAAS_SCALE),)
        return ()

    # --- point expiry on log time ------------------------------------------------------------

    def _registry(self, view: StateView) -> list[tuple[int, bytes]]:
        raw = view.get(EXPIRY_REGISTRY_KEY)
        if raw is None:
            return []
        (items,) = unpack(raw, "expiry registry", 1)
        return [(ledger, partner) for ledger, partner in items]

    def _registry_full(self, ledger: int, view: StateView) -> bool:
        assets = self._registry(view)
        return len(assets) >= EXPIRY_ASSETS_MAX and all(lg != ledger for lg, _ in assets)

    def _register_expiry(self, request: Request, layer: Overlay) -> None:
        """A point asset defined with a validity period joins the sweep's registry."""
        if not isinstance(request, DefinePoints) or not request.validity_days:
            return
        assets = self._registry(layer)
        if any(ledger == request.ledger for ledger, _ in assets):
            return
        assets = sorted([*assets, (request.ledger, request.partner)])
        layer.writes[EXPIRY_REGISTRY_KEY] = pack([[lg, p] for lg, p in assets])
        asset = decode_asset(layer.get(asset_key(request.ledger)) or b"")
        due = layer.get(EXPIRY_DUE_KEY)
        day = (
            asset.start_day
            if due is None
            else min(unpack(due, "expiry due", 1)[0], asset.start_day)
        )
        layer.writes[EXPIRY_DUE_KEY] = pack(day)

    def expire(self, log_index: int, now_ms: int, layer: Overlay) -> int:
        """The point-expiry sweep of one entry (module docstring); the transfers it made."""
        due = layer.get(EXPIRY_DUE_KEY)
        today = now_ms // DAY_MS
        if due is None or today < unpack(due, "expiry due", 1)[0]:
            return 0
        moved = worked = 0
        next_due = today + 1
        for ledger, partner in self._registry(layer):
            if self._cursor_day(ledger, layer) > today:
                continue
            if worked == EXPIRY_ASSETS_PER_ENTRY_MAX:
                next_due = today  # more assets are due: the next entry goes on
                break
            worked += 1
            moved += self._expire_asset(
                ExpirePoints(expiry_op(ledger, log_index), partner, ledger), now_ms, layer
            )
            if self._cursor_day(ledger, layer) <= today:
                next_due = today  # that asset has more to sweep
        layer.writes[EXPIRY_DUE_KEY] = pack(next_due)
        return moved

    def _cursor_day(self, ledger: int, view: StateView) -> int:
        raw = view.get(expiry_cursor_key(ledger))
        if raw is not None:
            day: int = unpack(raw, "cursor", 3)[0]
            return day
        return decode_asset(view.get(asset_key(ledger)) or b"").start_day

    def _expire_asset(self, request: ExpirePoints, now_ms: int, layer: Overlay) -> int:
        prepared = self.bridge.prepare(request, now_ms, layer)
        # The rule's cap, paired with the Bridge's own computation: by rule, never by luck.
        for index, claim in prepared.claims:
            e = prepared.events[index]
            assert type(e) is CreateTransfer
            cap = self.bridge.cap(layer, claim.rule, claim.reference, e.debit_account_id, now_ms)
            if e.amount > cap:
                raise InvariantViolation("a point expiry exceeds its lot's expired amount")
        results: list[Result] = []
        if prepared.events:
            results, writes = self._ledger.apply(list(prepared.events), now_ms, layer)
            layer.writes.update(writes)
        settled = self.bridge.settle(prepared, results, now_ms, layer)
        if not settled.code.succeeded:
            raise InvariantViolation(f"a point expiry failed: {settled.code.value}")
        layer.writes.update(settled.writes)
        return len(prepared.events)
