"""Which accounts and assets a ledger operation's proposer may touch, and what to open for it.

The ledger-ops apply (node/consensus/ledger_ops.py, once the log has enabled feature 7) calls
:func:`check_scope` for each created operation with events, BEFORE it runs them and before the
approval check (:func:`business.identity.approvals.check_debits`). The proposer is who the
gateway authenticated (never the client): a partner id and mode, or the platform
(:data:`PLATFORM`, the all-zero partner id no partner can have: partner ids are hashes). On
anything but ``ok`` the operation is refused whole: none of its events run and nothing here is
written.

The rules (member order of :class:`~business.identity.model.ScopeResult` is the precedence:
proposer, user references, asset and account creations over all events, then the accounts of
each transfer in event order):

* the proposer: a partner must be onboarded in the mode (``partner_not_found``) and active
  (``partner_not_active``); the platform always is;
* user references (the op's ``ur``, :func:`~business.identity.ids.user_ref`): each must be
  linked by this partner in this mode (``user_not_linked``); their wallets are the ones the
  operation may *credit*;
* ``CreateAsset``: a partner only on its own point ledger in the mode, as a point asset (its
  scale is its choice); the platform only on a platform ledger (asset index < 16) of the mode
  (``asset_not_allowed``);
* ``CreateAccount``: the id must be derived, ``ids.account_id(record id, event index)`` -- so
  it can never be a wallet's or another partner's account (that would need a SHA-256
  collision) -- or be one of the proposer's own role accounts (``account_id_not_derived``);
  on a ledger of the mode (``ledger_not_found``). An account that may go negative (without
  ``debits_must_not_exceed_credits``) creates value on its ledger, so only the ledger's
  issuer may have one (``account_would_mint``): a partner on its own point ledger, the
  platform on its ledgers except live BAAS (live BAAS comes only from on-chain deposits;
  test BAAS from the faucet). The account is recorded as the proposer's (``id/o/<account>``);
* a transfer (not a post or void): each account is the proposer's own in the mode (a partner
  account of this partner, or a platform account for the platform), or a wallet account of
  the mode: any wallet's for the *debit* side (the approval check then requires that wallet's
  approval), only a wallet named through a linked user reference for the *credit* side (a
  partner may credit a linked wallet, nothing else); the platform may also credit any
  partner's account of the mode (the test-mode faucet, later on-chain deposits). Anything
  else -- another partner's account, the other mode's, an unknown id, an unlinked wallet --
  is ``account_not_found``: the answer is the same whether the account exists or not, so
  one partner learns nothing about another's ids;
* a post or void: the accounts of the pending transfer it resolves (or the ones it names)
  must be the proposer's own or wallets of the mode; no link, no approval (the pending
  transfer was approved when it was created; posting captures at most that).

Opening on first use: a linked wallet's account on a ledger is opened the first time the
operation touches it (:func:`~business.identity.core.open_wallet_account` writes its owner;
the ledger's ``CreateAccount`` with ``debits_must_not_exceed_credits`` runs first in the same
operation), and so is a partner's role account (its owner was written at onboarding by
``partner.put``) and the mode's BAAS asset (``CreateAsset`` kind BAAS, scale 18) when an
opened or created account is on it: nobody sends that asset's creation (one that does gets
``exists``). A partner's point asset is never opened for it (its scale is the
partner's choice): it sends that ``CreateAsset`` itself, before using point role accounts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from business.identity.core import decode_partner, open_wallet_account
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    ASSET_INDEX_PARTNER_MIN,
    ID_MAX,
    Mode,
    account_id,
    ledger_number,
    mode_of_ledger,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import (
    PARTNER_PREFIX,
    ZERO16,
    Owner,
    OwnerKind,
    PartnerStatus,
    Role,
    ScopeResult,
    decode_owner,
    encode_owner,
    link_key,
    owner_key,
)
from business.ledger.model import (
    BAAS_SCALE,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    TransferFlags,
    account_key,
    asset_key,
    decode_transfer,
    transfer_key,
)
from node.consensus.state_machine import Overlay, StateView, Write

__all__ = [
    "PLATFORM",
    "WALLET_ACCOUNT_CODE",
    "Proposer",
    "Scope",
    "Unapplied",
    "check_scope",
    "role_account_code",
]

PLATFORM = ZERO16  # the proposer id of the platform's own operations (the test-mode faucet)
WALLET_ACCOUNT_CODE = 1  # the ledger account code (type) of a wallet's account
_ROLE_CODE_BASE = 0x100  # a role account's code: base + Role
_POST_OR_VOID = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
S = ScopeResult
# Each mode's BAAS ledger, computed once: every checked operation opens an _Opening.
_BAAS_LEDGER = {mode: ledger_number(mode, ASSET_INDEX_BAAS) for mode in Mode}


def role_account_code(role: Role) -> int:
    return _ROLE_CODE_BASE + int(role)


@dataclass(frozen=True, slots=True)
class Proposer:
    """Who proposes an operation, as the gateway authenticated it."""

    partner: bytes  # 16: ids.partner_id, or PLATFORM
    mode: Mode
    user_refs: tuple[bytes, ...] = ()  # 32 each: the partner's linked users it may credit


@dataclass(frozen=True, slots=True)
class Scope:
    """An operation in scope: what to run before its events, and the owner writes."""

    prelude: tuple[Event, ...]  # assets and accounts opened on first use, in this order
    writes: tuple[Write, ...]  # owner records (id/o/, id/w/), applied with the operation


@dataclass(slots=True)
class Unapplied:
    """What earlier operations of the same entry create whose ledger events have not run yet
    (the apply checks every operation of an entry first, then runs their events): seen here so
    that a check never depends on how operations were split into entries. Mutable, and only
    inside one apply."""

    accounts: set[int] = field(default_factory=set)
    assets: set[int] = field(default_factory=set)  # ledger numbers
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> debit, credit

    def add(self, events: Sequence[Event]) -> None:
        """Record an admitted operation's events (its opened accounts included)."""
        for e in events:
            if type(e) is CreateAccount:
                self.accounts.add(e.id)
            elif type(e) is CreateAsset:
                self.assets.add(e.ledger)
            elif type(e) is CreateTransfer and e.flags & TransferFlags.PENDING:
                self.pending[e.id] = (e.debit_account_id, e.credit_account_id)


def check_scope(
    view: StateView,
    proposer: Proposer,
    record_id: bytes,
    events: Sequence[Event],
    now_ms: int,
    earlier: Unapplied | None = None,
) -> ScopeResult | Scope:
    """``Scope`` when ``proposer`` may run ``events``, else the first refusal (no writes).

    ``earlier``: what earlier operations of the same entry create (not run yet), so nothing is
    opened twice and a post or void sees a pending transfer created just before it.
    """
    earlier = earlier or Unapplied()
    layer = Overlay(view)
    point_ledger = _check_proposer(layer, proposer)
    if isinstance(point_ledger, ScopeResult):
        return point_ledger
    wallets: list[bytes] = []
    for ref in proposer.user_refs:
        raw = layer.get(link_key(proposer.partner, proposer.mode, ref))
        if raw is None or proposer.partner == PLATFORM:
            return S.USER_NOT_LINKED
        wallets.append(raw[:20])
    code = _check_creations(layer, proposer, record_id, events, point_ledger)
    if code is not None:
        return code
    opening = _Opening(layer, proposer.mode, earlier, now_ms)
    for e in events:
        if type(e) is CreateAccount:
            opening.ledger(e.ledger)
    for e in events:
        if type(e) is not CreateTransfer:
            continue
        if e.flags & _POST_OR_VOID:
            code = _check_resolution(layer, proposer, e, earlier)
        else:
            code = _check_side(opening, proposer, e.debit_account_id, e.ledger, (), debit=True)
            code = code or _check_side(
                opening, proposer, e.credit_account_id, e.ledger, wallets, debit=False
            )
        if code is not None:
            return code
    return Scope(opening.prelude(), tuple(layer.writes.items()))


def _check_proposer(view: StateView, proposer: Proposer) -> ScopeResult | int | None:
    """The refusal, or the proposer's point ledger in the mode (None: the platform)."""
    if proposer.partner == PLATFORM:
        return None
    raw = view.get(PARTNER_PREFIX + proposer.partner)
    facts = None if raw is None else _partner_facts(raw)
    if facts is None or proposer.mode not in facts[2]:
        return S.PARTNER_NOT_FOUND
    if facts[0] != PartnerStatus.ACTIVE:
        return S.PARTNER_NOT_ACTIVE
    return ledger_number(proposer.mode, facts[1])


@functools.lru_cache(maxsize=1024)
def _partner_facts(raw: bytes) -> tuple[PartnerStatus, int, frozenset[Mode]]:
    """Status, point asset index and modes of a stored partner record. Cached by its bytes
    (a pure function of them): decoding a record with its roles costs ~40 us, and every
    operation of a partner reads the same record."""
    status, asset_index, roles = decode_partner(raw)
    return status, asset_index, frozenset(r.mode for r in roles)


def _own(owner: Owner | None, proposer: Proposer) -> bool:
    if owner is None or owner.mode != proposer.mode:
        return False
    if proposer.partner == PLATFORM:
        return owner.kind == OwnerKind.PLATFORM
    return owner.kind == OwnerKind.PARTNER and owner.owner == proposer.partner


def _owner(view: StateView, account: int) -> Owner | None:
    raw = view.get(owner_key(account)) if 0 < account < ID_MAX else None
    return None if raw is None else decode_owner_cached(raw)


# Owners are frozen values of their bytes, and the same few accounts (a partner's roles) are
# read by most operations: decoding (two enum lookups) is most of the cost of a read. The
# approval check (approvals.py) decodes the same debited accounts' owners through it again.
decode_owner_cached = functools.lru_cache(maxsize=4096)(decode_owner)


def _check_creations(
    layer: Overlay,
    proposer: Proposer,
    record_id: bytes,
    events: Sequence[Event],
    point_ledger: int | None,
) -> ScopeResult | None:
    """Assets and accounts the operation creates; records the owners of new accounts."""
    for e in events:
        if type(e) is CreateAsset and not _asset_allowed(e, proposer, point_ledger):
            return S.ASSET_NOT_ALLOWED
    accounts = [(i, e) for i, e in enumerate(events) if type(e) is CreateAccount]
    for i, e in accounts:
        owner = _owner(layer, e.id)
        derived = e.id == account_id(record_id, i)
        if not derived and not (_own(owner, proposer) and owner and owner.ledger == e.ledger):
            return S.ACCOUNT_ID_NOT_DERIVED
    for _, e in accounts:
        if e.ledger == 0 or mode_of_ledger(e.ledger) != proposer.mode:
            return S.LEDGER_NOT_FOUND
    for _, e in accounts:
        if not e.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and not _issuer_of(
            e.ledger, proposer, point_ledger
        ):
            return S.ACCOUNT_WOULD_MINT
    for _, e in accounts:
        if layer.get(owner_key(e.id)) is None:
            platform = proposer.partner == PLATFORM
            kind = OwnerKind.PLATFORM if platform else OwnerKind.PARTNER
            who = b"" if platform else proposer.partner
            layer.writes[owner_key(e.id)] = encode_owner(Owner(kind, proposer.mode, e.ledger, who))
    return None


def _issuer_of(ledger: int, proposer: Proposer, point_ledger: int | None) -> bool:
    """Whether ``proposer`` may hold an account on ``ledger`` that goes negative (mints)."""
    if proposer.partner == PLATFORM:
        return ledger != ledger_number(Mode.LIVE, ASSET_INDEX_BAAS)
    return ledger == point_ledger


def _asset_allowed(e: CreateAsset, proposer: Proposer, point_ledger: int | None) -> bool:
    if e.ledger == 0 or mode_of_ledger(e.ledger) != proposer.mode:
        return False
    if proposer.partner == PLATFORM:
        return e.ledger >> 1 < ASSET_INDEX_PARTNER_MIN
    return e.ledger == point_ledger and e.kind == AssetKind.POINT


def _check_resolution(
    view: StateView, proposer: Proposer, e: CreateTransfer, earlier: Unapplied
) -> ScopeResult | None:
    """A post or void: the pending transfer's accounts must be the proposer's or wallets'."""
    accounts = [a for a in (e.debit_account_id, e.credit_account_id) if a]
    raw = view.get(transfer_key(e.pending_id)) if 0 < e.pending_id < ID_MAX else None
    found = None if raw is None else decode_transfer(e.pending_id, raw)
    if found is not None and not isinstance(found, str):
        accounts += [found.debit_account_id, found.credit_account_id]
    accounts += earlier.pending.get(e.pending_id, ())
    for account in accounts:
        owner = _owner(view, account)
        wallet = owner is not None and owner.kind == OwnerKind.WALLET
        if not _own(owner, proposer) and not (wallet and owner and owner.mode == proposer.mode):
            return S.ACCOUNT_NOT_FOUND
    return None


def _check_side(
    opening: _Opening,
    proposer: Proposer,
    account: int,
    ledger: int,
    wallets: Sequence[bytes],
    *,
    debit: bool,
) -> ScopeResult | None:
    owner = _owner(opening.view, account)
    funds = proposer.partner == PLATFORM and not debit and owner and owner.kind == OwnerKind.PARTNER
    if _own(owner, proposer) or (funds and owner and owner.mode == proposer.mode):
        assert owner is not None
        if owner.role:  # a role account from onboarding: opened on first use
            opening.account(account, owner.ledger, Role(owner.role))
        return None
    if owner is not None and owner.kind == OwnerKind.WALLET and owner.mode == proposer.mode:
        if debit or owner.owner in wallets:
            opening.account(account, owner.ledger, None)
            return None
        return S.ACCOUNT_NOT_FOUND
    if owner is None and ledger and mode_of_ledger(ledger) == proposer.mode:
        for wallet in wallets:  # a linked wallet's account on a ledger it never used
            mode = proposer.mode
            if account == wallet_account_id(wallet_id(wallet, mode), mode, ledger):
                _, writes = open_wallet_account(opening.view, mode, wallet, ledger, opening.now_ms)
                opening.view.writes.update(writes)
                opening.account(account, ledger, None)
                return None
    return S.ACCOUNT_NOT_FOUND


class _Opening:
    """The assets and accounts one operation opens on first use (mutable inside one check)."""

    def __init__(self, view: Overlay, mode: Mode, earlier: Unapplied, now_ms: int) -> None:
        self.view = view
        self.now_ms = now_ms
        self._baas = _BAAS_LEDGER[mode]
        self._earlier = earlier
        self._assets: list[Event] = []
        self._accounts: dict[int, Event] = {}

    def account(self, account: int, ledger: int, role: Role | None) -> None:
        if account in self._accounts or account in self._earlier.accounts:
            return
        if self.view.get(account_key(account)) is not None:
            return
        if role is None:
            code, flags = WALLET_ACCOUNT_CODE, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        else:  # the issuance account of points mints (goes negative); every other holds value
            code = role_account_code(role)
            mints = role == Role.ISSUANCE and ledger != self._baas
            flags = AccountFlags(0) if mints else AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        self._accounts[account] = CreateAccount(account, ledger, code, flags=flags)
        self.ledger(ledger)

    def ledger(self, ledger: int) -> None:
        """An account on ``ledger`` will be created: open the mode's BAAS asset if missing."""
        if ledger == self._baas and not self._assets and self._baas_missing():
            self._assets.append(CreateAsset(self._baas, AssetKind.BAAS, BAAS_SCALE))

    def _baas_missing(self) -> bool:
        missing = self.view.get(asset_key(self._baas)) is None
        return missing and self._baas not in self._earlier.assets

    def prelude(self) -> tuple[Event, ...]:
        return (*self._assets, *self._accounts.values())
