"""The identity state machine: partners, wallets, signed links, one-time codes, the audit trail.

Theory of operation
===================

A pure, deterministic state machine behind :class:`node.consensus.state_machine.StateMachine`
(prefix ``id/``). :meth:`IdentityMachine.apply` takes one committed entry, its log position
(only the leader-stamped ``leader_time_ms`` is used as time) and a ``get``-only view, and
returns an :class:`~node.consensus.state_machine.ApplyOutcome` whose code is a result enum
value (member order = precedence, :mod:`business.identity.model`) and whose writes are all
under ``id/``. No clock, no I/O, no randomness: signatures are recovered from the entry's bytes
(:mod:`business.identity.eip712`), so every replica reaches the same verdict.

Entry types (feature version :data:`~business.identity.model.IDENTITY_FEATURE_VERSION`)
---------------------------------------------------------------------------------------
* ``partner.put`` -- onboard or update a partner: opaque id, status, and per mode a list of
  named role accounts (issuance, reserve, fees, ...; each on BAAS or the partner's own point
  ledger). The first put allocates the partner's point asset index (one ledger per mode,
  :func:`business.identity.ids.ledger_number`) from the counter tokens take theirs from too
  (:func:`allocate_asset_index`). Roles may be added, never removed (a ledger
  account is forever; dropping its owner would orphan its balance). Only an operator may
  onboard or change the status; a partner credential may add roles to its own partner. Each
  role account's id is derived (:func:`~business.identity.ids.partner_account_id`) and its
  owner recorded, so approvals know whose account it is. Checks: ``malformed``,
  ``actor_not_allowed``, ``role_must_not_be_removed``, ``assets_exhausted``; ``exists`` when
  nothing changes.
* ``wallet.link`` -- a partner's user reference (:func:`~business.identity.ids.user_ref`,
  never the raw user id) -> the user's wallet address, carrying the user's EIP-712 ``Link``
  signature over exactly (partner, mode, user_ref, wallet, deadline, nonce). Checks in
  precedence: ``malformed``, ``actor_not_allowed`` (a partner credential acting for another
  partner), ``signature_invalid``, ``signer_mismatch`` (the signer is not the wallet); then
  *stickiness*: a (wallet, nonce) already judged with the same signed fields answers what it
  got then (``ok`` as ``exists``; for an unlink as ``not_linked``), with other fields
  ``nonce_used``; then ``deadline_expired`` (log time at or past the deadline),
  ``deadline_too_far`` (``link_deadline_s_max``), ``partner_not_found`` (also: no account in
  this mode), ``partner_not_active``, ``exists_with_different_wallet`` (that reference is
  linked to another wallet: the partner must unlink first), ``exists`` (already linked to
  this wallet). The verdict on a verified (wallet, nonce) is stored, so a retry never changes
  an outcome; a failure before the signer is verified is not stored (else anyone could burn a
  user's nonce with a bad signature claiming their address). ``exists_with_different_*``
  only ever compares within one partner and mode: the key is (partner, mode, user_ref).
* ``wallet.unlink`` -- by the user (a signed ``Unlink`` with the same fields and checks;
  ``link_not_found`` unless the reference is linked to that very wallet), or by the partner
  or an operator (no signature; ``not_linked`` if nothing is linked, a success so a retry
  answers the same). Letting the partner unlink is safe for the user: a link only lets the
  partner *credit* the wallet through its reference; the wallet, its accounts and balances
  stay the user's, and linking the reference again needs a wallet holder's signature.
* ``code.issue`` -- a user issues a one-time code for a later debit without a signature per
  operation (a barcode at a till): the entry holds the code's hash, the ledger, an amount
  limit and an expiry, signed (``CodeIssue``) by the wallet. Checks: ``malformed``,
  ``signature_invalid``, ``signer_mismatch``, ``exists`` (same hash and fields: a retry),
  ``code_exists`` (hash taken), ``ledger_wrong_mode``, ``expiry_passed``, ``expiry_too_far``.
  A code is consumed by :func:`business.identity.approvals.check_debits`.

Wallets
-------
A wallet is an Ethereum address in one mode (``id/w/<mode><address>``), created on its first
link, first code, or first credit (:func:`open_wallet_account`, which the ledger-ops apply
calls before crediting a wallet on a ledger it has no account on yet: it returns the derived
account id and the owner record to write; the caller adds the ledger's ``CreateAccount``).
The same address in the other mode is another wallet with other accounts.

Audit trail
-----------
Every configuration change that succeeded (a partner put that changed something, a link, an
unlink) appends one entry -- actor kind, credential id, actor's partner, log time, entry type,
the target partner and an opaque summary (SHA-256 of the entry body) -- to two scopes: the
partner's and the platform's (operators see every change), each per mode like every other
object (a link shows in its mode only, a partner put in both). Scope ``s`` in mode ``m`` keeps
a count at ``id/ah/<s><m>`` and entry ``n`` at ``id/ae/<s><m><n>``, so
:func:`business.identity.views.list_audit` pages newest first with point ``get`` reads only
(no scans), bounded by the page limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from business.identity import eip712
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    ASSET_INDEX_MAX,
    ASSET_INDEX_PARTNER_MIN,
    Mode,
    derive,
    ledger_number,
    mode_of_ledger,
    partner_account_id,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import (
    CODE_PREFIX,
    IDENTITY_FEATURE_VERSION,
    META_KEY,
    NONCE_PREFIX,
    PARTNER_PREFIX,
    PLATFORM_SCOPE,
    VALUE_VERSION,
    Actor,
    ActorKind,
    AssetRef,
    CodeIssueEntry,
    CodeResult,
    IdentityConfig,
    LinkEntry,
    LinkResult,
    Malformed,
    Owner,
    OwnerKind,
    PartnerPut,
    PartnerResult,
    PartnerStatus,
    Role,
    RoleAccount,
    StoredCode,
    UnlinkEntry,
    audit_entry_key,
    audit_head_key,
    decode_code,
    encode_code,
    encode_owner,
    link_key,
    owner_key,
    wallet_key,
)
from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, StateView, Write
from node.errors import CorruptEntry, InvalidRequest, UnsupportedFormat

__all__ = [
    "ENTRY_TYPES",
    "IdentityMachine",
    "PartnerRecord",
    "allocate_asset_index",
    "decode_partner",
    "open_wallet_account",
    "platform_account",
]

ENTRY_TYPES = ("partner.put", "wallet.link", "wallet.unlink", "code.issue")
TAG_AUDIT_SUMMARY = b"baas/audit-summary/v1"
TAG_SIGNED_FIELDS = b"baas/signed-fields/v1"
MS_PER_S = 1000

PartnerRecord = tuple[PartnerStatus, int, tuple[RoleAccount, ...]]  # status, asset index, roles


def encode_partner(
    status: PartnerStatus, asset_index: int, roles: tuple[RoleAccount, ...]
) -> bytes:
    raw: bytes = msgpack.packb(
        [VALUE_VERSION, int(status), asset_index, [[r.mode, r.role, r.asset] for r in roles]]
    )
    return raw


def decode_partner(raw: bytes) -> PartnerRecord:
    try:
        version, status, asset_index, roles = msgpack.unpackb(raw)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptEntry("stored partner is not a partner record") from exc
    if version != VALUE_VERSION:
        raise UnsupportedFormat("unknown partner record version")
    return (
        PartnerStatus(status),
        asset_index,
        tuple(RoleAccount(Mode(m), Role(r), AssetRef(a)) for m, r, a in roles),
    )


def role_ledger(mode: Mode, asset: AssetRef, asset_index: int) -> int:
    return ledger_number(mode, ASSET_INDEX_BAAS if asset == AssetRef.BAAS else asset_index)


class IdentityMachine:
    """The identity core. Stateless between entries: all state is in the view."""

    prefix = b"id/"
    entry_types: Mapping[str, int] = dict.fromkeys(ENTRY_TYPES, IDENTITY_FEATURE_VERSION)

    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self._apply: dict[str, Callable[[Mapping[str, Any], int, StateView], _Outcome]] = {
            "partner.put": self._partner_put,
            "wallet.link": self._link,
            "wallet.unlink": self._unlink,
            "code.issue": self._code_issue,
        }

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        handler = self._apply.get(entry.type)
        if handler is None:
            raise InvalidRequest(f"not an identity entry: {entry.type}")
        try:
            code, detail, writes = handler(entry.body, position.leader_time_ms, view)
        except Malformed as exc:
            return ApplyOutcome("malformed", {"reason": str(exc)})
        # Only a change is audited: "exists" and "not_linked" changed nothing.
        if code.value == "ok" and entry.type != "code.issue":
            writes.update(self._audit(entry, position.leader_time_ms, view))
        return ApplyOutcome(code.value, detail, tuple(writes.items()))

    # --- partners ---------------------------------------------------------------------------

    def _partner_put(self, body: Mapping[str, Any], now_ms: int, view: StateView) -> _Outcome:
        e = PartnerPut.from_body(body, self.config.roles_max)
        for mode in Mode:
            if sum(1 for r in e.roles if r.mode == mode) > self.config.roles_max:
                raise Malformed(f"at most {self.config.roles_max} roles per mode")
        raw = view.get(PARTNER_PREFIX + e.partner)
        old = None if raw is None else decode_partner(raw)
        if e.actor.kind == ActorKind.USER or (
            e.actor.kind == ActorKind.PARTNER
            and (e.actor.partner != e.partner or old is None or old[0] != e.status)
        ):
            return PartnerResult.ACTOR_NOT_ALLOWED, {}, {}
        writes: dict[bytes, bytes | None] = {}
        if old is None:
            allocated = allocate_asset_index(view)
            if allocated is None:
                return PartnerResult.ASSETS_EXHAUSTED, {}, {}
            asset_index, (meta_key, meta) = allocated
            writes[meta_key] = meta
            old_roles: frozenset[RoleAccount] = frozenset()
        else:
            asset_index = old[1]
            old_roles = frozenset(old[2])
            if not old_roles <= frozenset(e.roles):
                return PartnerResult.ROLE_MUST_NOT_BE_REMOVED, {}, {}
            if old[0] == e.status and old_roles == frozenset(e.roles):
                return PartnerResult.EXISTS, {"asset_index": asset_index}, {}
        writes[PARTNER_PREFIX + e.partner] = encode_partner(e.status, asset_index, e.roles)
        accounts = []
        for r in e.roles:
            if r in old_roles:
                continue
            ledger = role_ledger(r.mode, r.asset, asset_index)
            account = partner_account_id(e.partner, r.mode, r.role.name.lower(), ledger)
            owner = Owner(OwnerKind.PARTNER, r.mode, ledger, e.partner, int(r.role))
            writes[owner_key(account)] = encode_owner(owner)
            accounts.append([int(r.mode), r.role.name.lower(), ledger, account.to_bytes(16, "big")])
        return PartnerResult.OK, {"asset_index": asset_index, "accounts": accounts}, writes

    # --- links ------------------------------------------------------------------------------

    def _link(self, body: Mapping[str, Any], now_ms: int, view: StateView) -> _Outcome:
        e = LinkEntry.from_body(body)
        return self._signed_link(e, eip712.Link, now_ms, view, unlink=False)

    def _unlink(self, body: Mapping[str, Any], now_ms: int, view: StateView) -> _Outcome:
        e = UnlinkEntry.from_body(body)
        if e.link is not None:
            return self._signed_link(e.link, eip712.Unlink, now_ms, view, unlink=True)
        if e.actor.kind == ActorKind.USER or (
            e.actor.kind == ActorKind.PARTNER and e.actor.partner != e.partner
        ):
            return LinkResult.ACTOR_NOT_ALLOWED, {}, {}
        if _partner_in_mode(view, e.partner, e.mode) is None:
            return LinkResult.PARTNER_NOT_FOUND, {}, {}
        key = link_key(e.partner, e.mode, e.user_ref)
        if view.get(key) is None:
            return LinkResult.NOT_LINKED, {}, {}
        return LinkResult.OK, {}, {key: None}

    def _signed_link(
        self,
        e: LinkEntry,
        kind: type[eip712.Link],
        now_ms: int,
        view: StateView,
        *,
        unlink: bool,
    ) -> _Outcome:
        if e.actor.kind == ActorKind.PARTNER and e.actor.partner != e.partner:
            return LinkResult.ACTOR_NOT_ALLOWED, {}, {}
        message = kind(e.partner, e.mode, e.user_ref, e.wallet, e.deadline, e.nonce)
        signer = eip712.recover_signer(message, self.config.chain_id, e.signature)
        if signer is None:
            return LinkResult.SIGNATURE_INVALID, {}, {}
        if signer != e.wallet:
            return LinkResult.SIGNER_MISMATCH, {}, {}
        fields = derive(TAG_SIGNED_FIELDS, message.struct_hash())
        nonce_key = NONCE_PREFIX + e.wallet + e.nonce
        judged = view.get(nonce_key)
        if judged is not None:
            if judged[1:] != fields:
                return LinkResult.NONCE_USED, {}, {}
            stored = _CODE_BY_BYTE.get(judged[0])
            if stored is None:
                raise CorruptEntry("stored link verdict has an unknown result code")
            if stored == LinkResult.OK:  # the retry of a success answers as a success
                stored = LinkResult.NOT_LINKED if unlink else LinkResult.EXISTS
            return stored, {}, {}
        code, writes = self._judge_link(e, now_ms, view, unlink=unlink)
        writes[nonce_key] = bytes((_BYTE_BY_CODE[code],)) + fields
        return code, {}, writes

    def _judge_link(
        self, e: LinkEntry, now_ms: int, view: StateView, *, unlink: bool
    ) -> tuple[LinkResult, dict[bytes, bytes | None]]:
        deadline_ms = e.deadline * MS_PER_S
        if now_ms >= deadline_ms:
            return LinkResult.DEADLINE_EXPIRED, {}
        if deadline_ms - now_ms > self.config.link_deadline_s_max * MS_PER_S:
            return LinkResult.DEADLINE_TOO_FAR, {}
        partner = _partner_in_mode(view, e.partner, e.mode)
        if partner is None:
            return LinkResult.PARTNER_NOT_FOUND, {}
        if not unlink and partner[0] != PartnerStatus.ACTIVE:
            return LinkResult.PARTNER_NOT_ACTIVE, {}
        key = link_key(e.partner, e.mode, e.user_ref)
        linked = view.get(key)
        if unlink:
            if linked is None or linked[:20] != e.wallet:
                return LinkResult.LINK_NOT_FOUND, {}
            return LinkResult.OK, {key: None}
        if linked is not None:
            if linked[:20] != e.wallet:
                return LinkResult.EXISTS_WITH_DIFFERENT_WALLET, {}
            return LinkResult.EXISTS, {}
        writes: dict[bytes, bytes | None] = {key: e.wallet + now_ms.to_bytes(8, "big")}
        writes.update(_wallet_writes(view, e.mode, e.wallet, now_ms))
        return LinkResult.OK, writes

    # --- one-time codes ---------------------------------------------------------------------

    def _code_issue(self, body: Mapping[str, Any], now_ms: int, view: StateView) -> _Outcome:
        e = CodeIssueEntry.from_body(body)
        message = eip712.CodeIssue(
            e.mode, e.code_hash, e.ledger, e.amount_limit, e.expiry, e.wallet
        )
        signer = eip712.recover_signer(message, self.config.chain_id, e.signature)
        if signer is None:
            return CodeResult.SIGNATURE_INVALID, {}, {}
        if signer != e.wallet:
            return CodeResult.SIGNER_MISMATCH, {}, {}
        key = CODE_PREFIX + e.code_hash
        raw = view.get(key)
        if raw is not None:
            c = decode_code(raw)
            same = (c.mode, c.wallet, c.ledger, c.amount_limit, c.expiry) == (
                e.mode,
                e.wallet,
                e.ledger,
                e.amount_limit,
                e.expiry,
            )
            return (CodeResult.EXISTS if same else CodeResult.CODE_EXISTS), {}, {}
        if mode_of_ledger(e.ledger) != e.mode:
            return CodeResult.LEDGER_WRONG_MODE, {}, {}
        expiry_ms = e.expiry * MS_PER_S
        if now_ms >= expiry_ms:
            return CodeResult.EXPIRY_PASSED, {}, {}
        if expiry_ms - now_ms > self.config.code_expiry_s_max * MS_PER_S:
            return CodeResult.EXPIRY_TOO_FAR, {}, {}
        stored = StoredCode(e.mode, e.wallet, e.ledger, e.amount_limit, e.expiry, bytes(32))
        writes: dict[bytes, bytes | None] = {key: encode_code(stored)}
        writes.update(_wallet_writes(view, e.mode, e.wallet, now_ms))
        return CodeResult.OK, {}, writes

    # --- audit ------------------------------------------------------------------------------

    def _audit(self, entry: AppEntry, now_ms: int, view: StateView) -> dict[bytes, bytes | None]:
        actor = Actor.from_body(entry.body.get("actor"))
        target = entry.body["partner"]
        summary = derive(TAG_AUDIT_SUMMARY, entry.type.encode(), msgpack.packb(dict(entry.body)))
        record: bytes = msgpack.packb(
            [
                VALUE_VERSION,
                int(actor.kind),
                actor.credential,
                actor.partner,
                now_ms,
                entry.type,
                target,
                summary,
            ]
        )
        # A link lives in one mode; a partner's configuration spans both, so it shows in both.
        modes = list(Mode) if entry.type == "partner.put" else [Mode(entry.body["mode"])]
        writes: dict[bytes, bytes | None] = {}
        for scope in (target, PLATFORM_SCOPE):
            for mode in modes:
                head = view.get(audit_head_key(scope, mode))
                count = 0 if head is None else int.from_bytes(head, "big")
                writes[audit_entry_key(scope, mode, count)] = record
                writes[audit_head_key(scope, mode)] = (count + 1).to_bytes(8, "big")
        return writes


_Outcome = tuple[Any, dict[str, Any], dict[bytes, bytes | None]]
# The stored verdict of a signed (wallet, nonce): one byte per LinkResult, in member order.
_BYTE_BY_CODE = {code: i for i, code in enumerate(LinkResult)}
_CODE_BY_BYTE = dict(enumerate(LinkResult))


def _partner_in_mode(view: StateView, partner: bytes, mode: Mode) -> PartnerRecord | None:
    """The partner if it is onboarded in ``mode`` (has an account there): in the other mode it
    does not exist, like every object of one mode seen from the other."""
    raw = view.get(PARTNER_PREFIX + partner)
    if raw is None:
        return None
    record = decode_partner(raw)
    return record if any(r.mode == mode for r in record[2]) else None


def _next_asset_index(view: StateView) -> int:
    raw = view.get(META_KEY)
    if raw is None:
        return ASSET_INDEX_PARTNER_MIN
    if raw[0] != VALUE_VERSION or len(raw) != 5:
        raise UnsupportedFormat("unknown identity meta version")
    return int.from_bytes(raw[1:], "big")


def allocate_asset_index(view: StateView) -> tuple[int, Write] | None:
    """The next free asset index and the write that takes it, or None when they are spent.

    One counter for every partner asset, points (allocated at onboarding) and tokens
    (allocated when a partner registers one, log feature 12, node/consensus/bridge_ops.py), so
    no two assets ever share a ledger number. The caller keeps the write only if the asset is
    created."""
    index = _next_asset_index(view)
    if index > ASSET_INDEX_MAX:
        return None
    return index, (META_KEY, bytes((VALUE_VERSION,)) + (index + 1).to_bytes(4, "big"))


def _wallet_writes(
    view: StateView, mode: Mode, wallet: bytes, now_ms: int
) -> dict[bytes, bytes | None]:
    key = wallet_key(mode, wallet)
    if view.get(key) is not None:
        return {}
    return {key: now_ms.to_bytes(8, "big")}


def open_wallet_account(
    view: StateView, mode: Mode, wallet: bytes, ledger: int, now_ms: int
) -> tuple[int, tuple[Write, ...]]:
    """The wallet's account on ``ledger`` and the writes that register it (none if known).

    Called by the ledger-ops apply before it credits a wallet: the writes record the wallet
    (if new) and the account's owner, so a later debit of the account needs this wallet's
    approval. The caller adds the ledger ``CreateAccount`` (flag
    ``debits_must_not_exceed_credits``) when the writes are not empty.
    """
    if mode_of_ledger(ledger) != mode:
        raise InvalidRequest("the ledger belongs to the other mode", code="ledger_wrong_mode")
    account = wallet_account_id(wallet_id(wallet, mode), mode, ledger)
    key = owner_key(account)
    if view.get(key) is not None:
        return account, ()
    writes = dict(_wallet_writes(view, mode, wallet, now_ms))
    writes[key] = encode_owner(Owner(OwnerKind.WALLET, mode, ledger, wallet))
    return account, tuple(writes.items())


def platform_account(mode: Mode, ledger: int, account: int) -> Write:
    """The owner write of a platform account (the test-mode faucet, platform fees)."""
    if mode_of_ledger(ledger) != mode:
        raise InvalidRequest("the ledger belongs to the other mode", code="ledger_wrong_mode")
    return owner_key(account), encode_owner(Owner(OwnerKind.PLATFORM, mode, ledger, b""))
