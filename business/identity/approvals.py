"""Debit approvals: no operation debits a user's wallet without that user's approval.

The ledger-ops apply (node/consensus/ledger_ops.py, log feature 7) calls :func:`check_debits`
for each created operation with events, after its idempotency lookup and the scope check
(:mod:`business.identity.scope`) and before it runs the operation's ledger events, and runs them
only on ``ok`` -- with the returned writes (a consumed one-time code) in the same atomic unit:
a refused operation consumes nothing here. From log feature 13 the apply also calls
:func:`consume_presented` for every operation that reaches its index put, whatever its
outcome: a code presented on the log is spent (docs/threat-model.md). Because this runs in
the replicated state machine, a compromised gateway cannot debit a wallet: it cannot forge
the user's signature, and every replica checks it (docs/threat-model.md).

What counts as a debit (:func:`debits_of`): every ``CreateTransfer`` of the operation that is
not a post or void of a pending transfer, on its ``debit_account_id`` (a balancing debit for
its full requested amount, a pending transfer for what it reserves). Posts and voids are
exempt by rule: a void gives the reservation back; a post captures at most what the user
approved when the pending transfer was created, and expiry of an approved pending transfer is
the ledger's own sweep (no event at all).

Who may debit which account (the owner map ``id/o/<account>`` kept by
:mod:`business.identity.core`):

* a **wallet** account: with the wallet's approval in the operation's ``approvals`` blob --
  an EIP-712 ``Approve{mode, operation digest, wallet, deadline}`` signature, or a one-time
  code the wallet issued earlier (``code.issue``), consumed here, for one ledger, up to its
  amount limit -- or under a documented rule (below);
* a **partner** account: only in that partner's operations, in its mode;
* a **platform** account: only in platform operations (partner id all zeros), in its mode;
* an account without an owner: never (``debit_account_unowned``).

Rules that debit a wallet without an approval (the issue's documented exceptions), claimed per
debit by the caller with a :class:`RuleClaim`:

* ``REVERSAL``: a partner reversing its own issuance. The transfer must credit that partner's
  ``issuance`` account in the operation's mode, and the sum reversed per (issuance, account)
  must not exceed :meth:`DebitRules.cap` -- the issuance's unspent amount, which only the
  Bridge knows (per-issuance state it will keep; it must lower the cap when it applies);
* ``POINT_EXPIRY``: expired points moved to the partner's ``breakage`` account, capped by the
  lot's expired, unspent amount (again the Bridge's state).

:class:`NoDebitRules` (cap 0) is the hook until the Bridge exists: every rule claim is then
refused with ``rule_cap_exceeded``, so nothing is exempt by accident.

The checks, in precedence (the member order of
:class:`~business.identity.model.ApprovalResult`): the blob decodes and is within
``approvals_max`` (``approvals_malformed``); every debited account has an owner
(``debit_account_unowned``) of the operation's scope and mode (``debit_account_foreign``);
rule claims fit their rule (``rule_not_applicable``) and cap (``rule_cap_exceeded``); every
signature recovers (``approval_signature_invalid``) to the wallet it names
(``approval_signer_mismatch``) and is not expired (``approval_expired``); every code is known
(``code_unknown``), of the mode (``code_wrong_mode``), unused or used by this very operation
(``code_used``), unexpired (``code_expired``), on the ledger of every debit of its wallet
(``code_ledger_mismatch``), within its limit (``code_limit_exceeded``); every approval
approves a wallet the operation debits, at most one per wallet (``approval_unused``); every
debited wallet is approved (``approval_missing``). Each check runs over all items before the
next, so the code does not depend on the order of the blob.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import msgpack

from business.identity import eip712
from business.identity.ids import ID_MAX, Mode, code_hash, derive
from business.identity.model import (
    CODE_PREFIX,
    U64_MAX,
    ZERO16,
    ApprovalResult,
    IdentityConfig,
    Owner,
    OwnerKind,
    Role,
    decode_code,
    encode_code,
    owner_key,
)
from business.identity.scope import decode_owner_cached
from business.ledger.model import CreateTransfer, Event, TransferFlags
from node.consensus.state_machine import StateView, Write
from node.errors import InvalidRequest, InvariantViolation

__all__ = [
    "APPROVALS_VERSION",
    "NO_APPROVALS_DIGEST",
    "CodeApproval",
    "Debit",
    "DebitRule",
    "DebitRules",
    "NoDebitRules",
    "Operation",
    "RuleClaim",
    "SignedApproval",
    "check_debits",
    "consume_presented",
    "debits_of",
    "decode_approvals",
    "encode_approvals",
    "operation_digest",
]

APPROVALS_VERSION = 1
TAG_OPERATION_DIGEST = b"baas/operation-digest/v1"
_KIND_SIGNATURE, _KIND_CODE = 1, 2
DIGEST_BYTES = 32
NO_APPROVALS_DIGEST = b""  # Operation.digest of an operation without approvals (never read)
_NOT_DEBITS = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
R = ApprovalResult


class DebitRule(enum.IntEnum):
    REVERSAL = 1  # a partner reversing its own issuance (credit: its issuance account)
    POINT_EXPIRY = 2  # expired points to the partner's breakage account


_RULE_ROLE = {DebitRule.REVERSAL: Role.ISSUANCE, DebitRule.POINT_EXPIRY: Role.BREAKAGE}


@dataclass(frozen=True, slots=True)
class RuleClaim:
    """The caller's claim that the debit of one event is exempt under ``rule``."""

    rule: DebitRule
    reference: bytes  # the issuance (or point lot) id the Bridge keeps its cap under


@dataclass(frozen=True, slots=True)
class Debit:
    account_id: int
    credit_account_id: int
    amount: int
    claim: RuleClaim | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """What the approval check needs of one operation."""

    # 32: operation_digest(record id, events' wire bytes): what users sign. An operation that
    # carries no approvals may give NO_APPROVALS_DIGEST instead: nothing reads it then.
    digest: bytes
    partner: bytes  # 16: the partner whose operation it is; ZERO16 for the platform
    mode: Mode
    debits: tuple[Debit, ...]


@dataclass(frozen=True, slots=True)
class SignedApproval:
    wallet: bytes  # 20
    deadline: int  # Unix s
    signature: bytes  # 65, EIP-712 Approve{mode, operation, wallet, deadline}


@dataclass(frozen=True, slots=True)
class CodeApproval:
    code: bytes  # the one-time code itself (the state only holds its hash)


Approval = SignedApproval | CodeApproval


class DebitRules(Protocol):
    """The Bridge's hook: how much a rule may still debit from ``account_id``."""

    def cap(
        self, view: StateView, rule: DebitRule, reference: bytes, account_id: int, now_ms: int
    ) -> int: ...


class NoDebitRules:
    """No per-issuance state yet: every rule claim is capped at 0."""

    def cap(
        self, view: StateView, rule: DebitRule, reference: bytes, account_id: int, now_ms: int
    ) -> int:
        return 0


def operation_digest(record_id: bytes, events_wire: bytes) -> bytes:
    """What a user's ``Approve`` signs: the operation's record id and its exact ledger events."""
    if len(record_id) != 32:
        raise InvalidRequest("record id must be 32 bytes", code="field_invalid")
    return derive(TAG_OPERATION_DIGEST, record_id, events_wire)


def debits_of(
    events: Sequence[Event], claims: dict[int, RuleClaim] | None = None
) -> tuple[Debit, ...]:
    """The debits of an operation's events; ``claims`` maps an event index to its rule."""
    claims = claims or {}
    out = []
    for i, e in enumerate(events):
        if type(e) is CreateTransfer and not e.flags & _NOT_DEBITS:
            out.append(Debit(e.debit_account_id, e.credit_account_id, e.amount, claims.get(i)))
        elif i in claims:
            raise InvalidRequest(f"event {i} is not a debit: no rule applies", code="rule_invalid")
    return tuple(out)


def encode_approvals(items: Sequence[Approval]) -> bytes:
    wire = []
    for item in items:
        if isinstance(item, SignedApproval):
            wire.append([_KIND_SIGNATURE, item.wallet, item.deadline, item.signature])
        else:
            wire.append([_KIND_CODE, item.code])
    raw: bytes = msgpack.packb([APPROVALS_VERSION, wire])
    return raw


def decode_approvals(blob: bytes, approvals_max: int) -> list[Approval] | None:
    """The approvals in ``blob``; None if it does not decode or holds too many."""
    if not blob:
        return []
    try:
        version, wire = msgpack.unpackb(blob, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if version != APPROVALS_VERSION or not isinstance(wire, list) or len(wire) > approvals_max:
        return None
    items: list[Approval] = []
    for w in wire:
        if not isinstance(w, list) or not w:
            return None
        if w[0] == _KIND_SIGNATURE and len(w) == 4:
            wallet, deadline, signature = w[1:]
            if not (
                isinstance(wallet, bytes)
                and len(wallet) == 20
                and type(deadline) is int
                and 0 <= deadline <= U64_MAX
                and isinstance(signature, bytes)
            ):
                return None
            items.append(SignedApproval(wallet, deadline, signature))
        elif w[0] == _KIND_CODE and len(w) == 2 and isinstance(w[1], bytes):
            try:
                code_hash(w[1])
            except InvalidRequest:
                return None
            items.append(CodeApproval(w[1]))
        else:
            return None
    return items


def check_debits(
    view: StateView,
    config: IdentityConfig,
    op: Operation,
    approvals: bytes,
    now_ms: int,
    rules: DebitRules,
) -> tuple[ApprovalResult, tuple[Write, ...]]:
    """``ok`` and the writes to apply with the operation, or the first refusal (no writes)."""
    if len(op.debits) > config.debits_max:
        raise InvalidRequest(f"an operation holds at most {config.debits_max} debits")
    items = decode_approvals(approvals, config.approvals_max)
    if items is None:
        return R.APPROVALS_MALFORMED, ()
    owners: list[Owner] = []
    for d in op.debits:
        raw = view.get(owner_key(d.account_id)) if 0 < d.account_id < ID_MAX else None
        if raw is None:
            return R.DEBIT_ACCOUNT_UNOWNED, ()
        owners.append(decode_owner_cached(raw))
    for o in owners:
        if o.mode != op.mode or (
            (o.kind == OwnerKind.PARTNER and o.owner != op.partner)
            or (o.kind == OwnerKind.PLATFORM and op.partner != ZERO16)
        ):
            return R.DEBIT_ACCOUNT_FOREIGN, ()
    code = _check_rules(view, op, owners, now_ms, rules)
    if code is not None:
        return code, ()
    # wallet address -> (ledgers, amount) of the debits that need its approval, in first order
    needed: dict[bytes, tuple[set[int], int]] = {}
    for d, o in zip(op.debits, owners, strict=True):
        if o.kind == OwnerKind.WALLET and d.claim is None:
            ledgers, total = needed.get(o.owner, (set(), 0))
            ledgers.add(o.ledger)
            needed[o.owner] = (ledgers, total + d.amount)
    return _check_approvals(view, op, items, needed, now_ms, config.chain_id)


def _check_rules(
    view: StateView, op: Operation, owners: list[Owner], now_ms: int, rules: DebitRules
) -> ApprovalResult | None:
    claimed: dict[tuple[DebitRule, bytes, int], int] = {}
    for d, o in zip(op.debits, owners, strict=True):
        if d.claim is None:
            continue
        raw = view.get(owner_key(d.credit_account_id)) if 0 < d.credit_account_id < ID_MAX else None
        credit = None if raw is None else decode_owner_cached(raw)
        if (
            o.kind != OwnerKind.WALLET
            or credit is None
            or credit.kind != OwnerKind.PARTNER
            or credit.owner != op.partner
            or credit.mode != op.mode
            or credit.role != _RULE_ROLE[d.claim.rule]
        ):
            return R.RULE_NOT_APPLICABLE
        key = (d.claim.rule, d.claim.reference, d.account_id)
        claimed[key] = claimed.get(key, 0) + d.amount
    for (rule, reference, account), amount in claimed.items():
        if amount > rules.cap(view, rule, reference, account, now_ms):
            return R.RULE_CAP_EXCEEDED
    return None


def _check_approvals(
    view: StateView,
    op: Operation,
    items: list[Approval],
    needed: dict[bytes, tuple[set[int], int]],
    now_ms: int,
    chain_id: int,
) -> tuple[ApprovalResult, tuple[Write, ...]]:
    if not items:  # what the checks below come to without approvals, at no cost
        return (R.APPROVAL_MISSING if needed else R.OK), ()
    if len(op.digest) != DIGEST_BYTES:
        raise InvariantViolation("approvals are checked against the operation's digest")
    signed = [i for i in items if isinstance(i, SignedApproval)]
    signers = [
        eip712.recover_signer(
            eip712.Approve(op.mode, op.digest, s.wallet, s.deadline), chain_id, s.signature
        )
        for s in signed
    ]
    if any(signer is None for signer in signers):
        return R.APPROVAL_SIGNATURE_INVALID, ()
    if any(signer != s.wallet for s, signer in zip(signed, signers, strict=True)):
        return R.APPROVAL_SIGNER_MISMATCH, ()
    if any(now_ms >= s.deadline * 1000 for s in signed):
        return R.APPROVAL_EXPIRED, ()
    approved = [s.wallet for s in signed]
    codes = [(code_hash(i.code), i) for i in items if isinstance(i, CodeApproval)]
    stored = [view.get(CODE_PREFIX + h) for h, _ in codes]
    if any(raw is None for raw in stored):
        return R.CODE_UNKNOWN, ()
    found = [decode_code(raw) for raw in stored if raw is not None]
    if any(c.mode != op.mode for c in found):
        return R.CODE_WRONG_MODE, ()
    if any(c.used_by not in (bytes(32), op.digest) for c in found):
        return R.CODE_USED, ()
    if any(now_ms >= c.expiry * 1000 for c in found):
        return R.CODE_EXPIRED, ()
    for c in found:
        ledgers, _ = needed.get(c.wallet, ({c.ledger}, 0))
        if ledgers != {c.ledger}:
            return R.CODE_LEDGER_MISMATCH, ()
    for c in found:
        if needed.get(c.wallet, (set(), 0))[1] > c.amount_limit:
            return R.CODE_LIMIT_EXCEEDED, ()
    approved += [c.wallet for c in found]
    if len(set(approved)) != len(approved) or not set(approved) <= needed.keys():
        return R.APPROVAL_UNUSED, ()
    if set(approved) != needed.keys():
        return R.APPROVAL_MISSING, ()
    writes = tuple(
        (CODE_PREFIX + h, encode_code(replace(c, used_by=op.digest)))
        for (h, _), c in zip(codes, found, strict=True)
        if c.used_by != op.digest
    )
    return R.OK, writes


def consume_presented(
    view: StateView, approvals: bytes, digest: bytes, approvals_max: int
) -> tuple[Write, ...]:
    """Log feature 13: spend every one-time code ``approvals`` presents, whatever the
    operation's outcome (refused, failed in the ledger, a retry, a conflicting reuse of its
    key): the presentation put the code on the log in clear, so it must not stay valid.

    Each known, still unused code is marked used by ``digest`` (the presenting operation's
    :func:`operation_digest`); a code already used, or unknown, is left alone. A blob that
    does not decode consumes nothing (the approval check refuses it as malformed). Run after
    the operation's own checks: a code used by this very operation stays valid for it, so
    the order only matters to the operations after it in the entry.
    """
    items = decode_approvals(approvals, approvals_max)
    if not items:
        return ()
    writes: list[Write] = []
    seen: set[bytes] = set()
    for item in items:
        if not isinstance(item, CodeApproval):
            continue
        hashed = code_hash(item.code)
        raw = view.get(CODE_PREFIX + hashed)
        if raw is None or hashed in seen:
            continue
        seen.add(hashed)
        stored = decode_code(raw)
        if stored.used_by == bytes(32):
            writes.append((CODE_PREFIX + hashed, encode_code(replace(stored, used_by=digest))))
    return tuple(writes)
