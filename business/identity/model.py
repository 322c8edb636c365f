"""The identity core's vocabulary: entries, result codes, stored records, bounds, key layout.

Everything here is data. Entries are frozen dataclasses with a msgpack body form (``to_body``
and ``from_body``; a body that does not decode gives the reason as a string, so apply can
answer ``malformed`` identically on every node instead of raising). Result codes are ``str``
enums whose member order is the precedence (see :mod:`business.identity.core`). Stored values
are versioned: a fixed-width ``struct`` where the shape is fixed, versioned msgpack where it
is a list. All state lives under ``id/``; it holds opaque ids (16/32-byte hashes, addresses),
integer amounts, log times and result codes, never a name or a partner's own user id.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from business.identity.ids import Mode
from node.errors import ConfigError, CorruptEntry, UnsupportedFormat

__all__ = [
    "BRIDGE_ROLES",
    "DEFAULT_ROLES",
    "IDENTITY_FEATURE_VERSION",
    "ONBOARDING_ROLES",
    "PAYMENT_ROLES",
    "Actor",
    "ActorKind",
    "ApprovalResult",
    "AssetRef",
    "CodeIssueEntry",
    "CodeResult",
    "IdentityConfig",
    "LinkEntry",
    "LinkResult",
    "Owner",
    "OwnerKind",
    "PartnerPut",
    "PartnerResult",
    "PartnerStatus",
    "Role",
    "RoleAccount",
    "ScopeResult",
    "UnlinkEntry",
]

# The feature version that introduces the identity entry types (the node picks when to enable
# it; another machine takes 6).
IDENTITY_FEATURE_VERSION = 7
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1
VALUE_VERSION = 1
SIGNATURE_BYTES_MAX = 128
ZERO16 = bytes(16)


class ActorKind(enum.IntEnum):
    OPERATOR = 1  # an operator key / the operator command
    PARTNER = 2  # a partner's API credential
    USER = 3  # a user's own key (the entry carries their signature)


class PartnerStatus(enum.IntEnum):
    ACTIVE = 1
    SUSPENDED = 2  # no new links; the partner's accounts stay as they are


class Role(enum.IntEnum):
    """A partner's system accounts, by what the Bridge and payments will use them for."""

    ISSUANCE = 1  # mints the partner's points (its "@world")
    RESERVE = 2  # pre-funded BAAS backing swaps
    FEES = 3
    LIQUIDITY = 4
    BREAKAGE = 5  # receives expired points
    SETTLEMENT = 6  # merchant settlement of payments (in BAAS)
    POINT_SETTLEMENT = 7  # merchant settlement of payments in its own points (one role, one asset)


class AssetRef(enum.IntEnum):
    """Which ledger a role's account is on, in the entry's mode."""

    BAAS = 1
    POINTS = 2  # the partner's own point asset (its ledger is allocated at onboarding)


class OwnerKind(enum.IntEnum):
    WALLET = 1
    PARTNER = 2
    PLATFORM = 3


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """Hard bounds of the identity core, validated at construction."""

    chain_id: int = 31337  # the EIP-712 domain's chainId
    roles_max: int = 16  # role accounts per partner and mode
    link_deadline_s_max: int = 7 * 86_400  # how far past the log time a signed deadline may be
    code_expiry_s_max: int = 30 * 86_400  # how long a one-time code may live
    approvals_max: int = 16  # approvals (signatures or codes) in one operation's blob
    debits_max: int = 8190  # ledger events one approval check looks at
    audit_list_limit_max: int = 100  # audit entries per page

    def __post_init__(self) -> None:
        for name, low, high in (
            ("chain_id", 1, U64_MAX),
            ("roles_max", 1, 64),
            ("link_deadline_s_max", 1, 366 * 86_400),
            ("code_expiry_s_max", 1, 366 * 86_400),
            ("approvals_max", 1, 256),
            ("debits_max", 1, 100_000),
            ("audit_list_limit_max", 1, 1000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"identity {name} must be an integer in {low}..{high}")


# --- result codes: member order is the precedence ---------------------------------------------


class PartnerResult(str, enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"
    ACTOR_NOT_ALLOWED = "actor_not_allowed"
    ROLE_MUST_NOT_BE_REMOVED = "role_must_not_be_removed"
    ASSETS_EXHAUSTED = "assets_exhausted"
    EXISTS = "exists"


class LinkResult(str, enum.Enum):
    """Outcome of ``wallet.link`` and ``wallet.unlink``."""

    OK = "ok"
    MALFORMED = "malformed"
    ACTOR_NOT_ALLOWED = "actor_not_allowed"
    SIGNATURE_INVALID = "signature_invalid"
    SIGNER_MISMATCH = "signer_mismatch"
    # (here: a signed (wallet, nonce) already judged with the same fields -> that outcome)
    NONCE_USED = "nonce_used"
    DEADLINE_EXPIRED = "deadline_expired"
    DEADLINE_TOO_FAR = "deadline_too_far"
    PARTNER_NOT_FOUND = "partner_not_found"
    PARTNER_NOT_ACTIVE = "partner_not_active"
    EXISTS_WITH_DIFFERENT_WALLET = "exists_with_different_wallet"
    LINK_NOT_FOUND = "link_not_found"
    EXISTS = "exists"  # link: already linked to this wallet (success)
    NOT_LINKED = "not_linked"  # unlink by the partner: nothing to unlink (success)


class CodeResult(str, enum.Enum):
    """Outcome of ``code.issue``."""

    OK = "ok"
    MALFORMED = "malformed"
    SIGNATURE_INVALID = "signature_invalid"
    SIGNER_MISMATCH = "signer_mismatch"
    EXISTS = "exists"  # the same code issued with the same fields (a retry)
    CODE_EXISTS = "code_exists"  # that code hash is taken by different fields
    LEDGER_WRONG_MODE = "ledger_wrong_mode"
    EXPIRY_PASSED = "expiry_passed"
    EXPIRY_TOO_FAR = "expiry_too_far"


class ApprovalResult(str, enum.Enum):
    """Outcome of :func:`business.identity.approvals.check_debits`."""

    OK = "ok"
    APPROVALS_MALFORMED = "approvals_malformed"
    DEBIT_ACCOUNT_UNOWNED = "debit_account_unowned"
    DEBIT_ACCOUNT_FOREIGN = "debit_account_foreign"
    RULE_NOT_APPLICABLE = "rule_not_applicable"
    RULE_CAP_EXCEEDED = "rule_cap_exceeded"
    APPROVAL_SIGNATURE_INVALID = "approval_signature_invalid"
    APPROVAL_SIGNER_MISMATCH = "approval_signer_mismatch"
    APPROVAL_EXPIRED = "approval_expired"
    CODE_UNKNOWN = "code_unknown"
    CODE_WRONG_MODE = "code_wrong_mode"
    CODE_USED = "code_used"
    CODE_EXPIRED = "code_expired"
    CODE_LEDGER_MISMATCH = "code_ledger_mismatch"
    CODE_LIMIT_EXCEEDED = "code_limit_exceeded"
    APPROVAL_UNUSED = "approval_unused"
    APPROVAL_MISSING = "approval_missing"


class ScopeResult(str, enum.Enum):
    """Outcome of :func:`business.identity.scope.check_scope`: may this proposer touch these
    accounts and assets at all (before any approval is looked at)? Member order is the
    precedence. Cross-partner and cross-mode answers are ``account_not_found`` /
    ``ledger_not_found``, never a code that tells another partner's account from no account.
    """

    OK = "ok"
    PROPOSER_MISSING = "proposer_missing"  # events without the gateway's pt/md (feature 7+)
    PARTNER_NOT_FOUND = "partner_not_found"  # the proposer is not onboarded in this mode
    PARTNER_NOT_ACTIVE = "partner_not_active"
    USER_NOT_LINKED = "user_not_linked"  # a user reference (``ur``) the partner has not linked
    ASSET_NOT_ALLOWED = "asset_not_allowed"  # CreateAsset on a ledger not the proposer's
    ACCOUNT_ID_NOT_DERIVED = "account_id_not_derived"  # CreateAccount with a chosen id
    LEDGER_NOT_FOUND = "ledger_not_found"  # a ledger of the other mode
    ACCOUNT_WOULD_MINT = "account_would_mint"  # may go negative on a ledger not the proposer's
    ACCOUNT_NOT_FOUND = "account_not_found"  # not the proposer's, nor a wallet it may touch
    # a Bridge request (feature 8) needs a role account the partner was not given (add it
    # with a partner.put: roles may be added)
    ROLE_MISSING = "role_missing"
    # from log feature 9: raw ledger events making or resolving a payments transfer (codes
    # 201-203 are the payments core's own; node/consensus/payments_ops.py)
    TRANSFER_CODE_RESERVED = "transfer_code_reserved"


# Every code that refuses a whole ledger operation before its events run: stored as each
# event's result in the operation's outcome (business/ledger/outcome.py accepts them).
REFUSAL_CODES = frozenset(
    c.value for kind in (ScopeResult, ApprovalResult) for c in kind if c.value != "ok"
)


# The codes that are successes (the HTTP edge maps every other code to a 4xx problem).
SUCCESS_CODES = frozenset(
    {
        PartnerResult.OK,
        PartnerResult.EXISTS,
        LinkResult.OK,
        LinkResult.EXISTS,
        LinkResult.NOT_LINKED,
        CodeResult.OK,
        CodeResult.EXISTS,
    }
)


# --- entries ----------------------------------------------------------------------------------


class Malformed(Exception):
    """A body field is missing or out of range (internal: apply answers ``malformed``)."""


def _bytes(body: Mapping[str, Any], name: str, size: int) -> bytes:
    value = body.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise Malformed(f"{name} must be {size} bytes")
    return value


def _int(body: Mapping[str, Any], name: str, high: int, low: int = 0) -> int:
    value = body.get(name)
    if type(value) is not int or not low <= value <= high:
        raise Malformed(f"{name} must be an integer in {low}..{high}")
    return value


def _signature(body: Mapping[str, Any]) -> bytes:
    # Any short byte string: a wrong length is the state machine's signature_invalid, not
    # malformed, so a client sees which part of its request was wrong.
    value = body.get("signature")
    if not isinstance(value, bytes) or len(value) > SIGNATURE_BYTES_MAX:
        raise Malformed("signature must be bytes")
    return value


def _enum(body: Mapping[str, Any], name: str, kind: type[enum.IntEnum]) -> Any:
    value = body.get(name)
    if type(value) is not int or value not in kind._value2member_map_:
        raise Malformed(f"{name} is not a known {kind.__name__}")
    return kind(value)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: the kind, an opaque credential id, and for a partner its id."""

    kind: ActorKind
    credential: bytes  # 16: a hash of the credential or operator key id, never a secret
    partner: bytes = ZERO16  # 16: the partner a partner credential belongs to

    def to_body(self) -> dict[str, Any]:
        return {"k": int(self.kind), "c": self.credential, "p": self.partner}

    @classmethod
    def from_body(cls, raw: Any) -> Actor:
        if not isinstance(raw, dict):
            raise Malformed("actor must be a map")
        kind = _enum(raw, "k", ActorKind)
        partner = _bytes(raw, "p", 16)
        if (kind == ActorKind.PARTNER) != (partner != ZERO16):
            raise Malformed("a partner actor names its partner, no other actor does")
        return cls(kind, _bytes(raw, "c", 16), partner)


@dataclass(frozen=True, slots=True)
class RoleAccount:
    """One system account a partner asks for: in ``mode``, for ``role``, on ``asset``."""

    mode: Mode
    role: Role
    asset: AssetRef


# The system accounts every partner gets at onboarding, in both modes (roles may be added
# later, never removed): points issuance and breakage on its own point ledger, BAAS reserve
# and fees.
DEFAULT_ROLES = tuple(
    RoleAccount(mode, role, asset)
    for mode in Mode
    for role, asset in (
        (Role.ISSUANCE, AssetRef.POINTS),
        (Role.RESERVE, AssetRef.BAAS),
        (Role.FEES, AssetRef.BAAS),
        (Role.BREAKAGE, AssetRef.POINTS),
    )
)
# What the Bridge (log feature 8) needs beyond them: the liquidity account of the partner's
# point asset (what it pays out in swaps BAAS -> points). Kept apart from DEFAULT_ROLES so
# the entries of logs before feature 8 (and their fixtures) stay byte for byte what they were.
BRIDGE_ROLES = tuple(RoleAccount(mode, Role.LIQUIDITY, AssetRef.POINTS) for mode in Mode)
# What payments (log feature 9) needs: the merchant's settlement accounts, where authorised
# payments land and refunds and the platform fee come from, in BAAS and in its own points.
PAYMENT_ROLES = tuple(
    RoleAccount(mode, role, asset)
    for mode in Mode
    for role, asset in (
        (Role.SETTLEMENT, AssetRef.BAAS),
        (Role.POINT_SETTLEMENT, AssetRef.POINTS),
    )
)
# What onboarding gives a partner now; an older partner adds BRIDGE_ROLES and PAYMENT_ROLES
# with a partner.put (the logs' fixtures onboard with the roles of their time).
ONBOARDING_ROLES = DEFAULT_ROLES + BRIDGE_ROLES + PAYMENT_ROLES


@dataclass(frozen=True, slots=True)
class PartnerPut:
    """``partner.put``: onboard a partner or update it (roles may only be added)."""

    partner: bytes  # 16, ids.partner_id
    status: PartnerStatus
    roles: tuple[RoleAccount, ...]
    actor: Actor

    def to_body(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "status": int(self.status),
            "roles": [[int(r.mode), int(r.role), int(r.asset)] for r in self.roles],
            "actor": self.actor.to_body(),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], roles_max: int) -> PartnerPut:
        raw_roles = body.get("roles")
        if not isinstance(raw_roles, list) or len(raw_roles) > roles_max * len(Mode):
            raise Malformed(f"roles must be a list of at most {roles_max} per mode")
        roles = []
        for item in raw_roles:
            if not isinstance(item, list) or len(item) != 3:
                raise Malformed("a role is [mode, role, asset]")
            fields = dict(zip(("mode", "role", "asset"), item, strict=True))
            roles.append(
                RoleAccount(
                    _enum(fields, "mode", Mode),
                    _enum(fields, "role", Role),
                    _enum(fields, "asset", AssetRef),
                )
            )
        keys = [(r.mode, r.role) for r in roles]
        if len(set(keys)) != len(keys):
            raise Malformed("a role appears twice in one mode")
        return cls(
            _bytes(body, "partner", 16),
            _enum(body, "status", PartnerStatus),
            tuple(sorted(roles, key=lambda r: (r.mode, r.role))),
            Actor.from_body(body.get("actor")),
        )


@dataclass(frozen=True, slots=True)
class LinkEntry:
    """``wallet.link``: the partner's user reference -> the user's wallet, user-signed."""

    partner: bytes  # 16
    mode: Mode
    user_ref: bytes  # 32, ids.user_ref
    wallet: bytes  # 20, the Ethereum address
    deadline: int  # Unix s
    nonce: bytes  # 32
    signature: bytes  # 65, EIP-712 over Link (or Unlink) with exactly these fields
    actor: Actor

    def to_body(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "mode": int(self.mode),
            "user_ref": self.user_ref,
            "wallet": self.wallet,
            "deadline": self.deadline,
            "nonce": self.nonce,
            "signature": self.signature,
            "actor": self.actor.to_body(),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LinkEntry:
        return cls(
            _bytes(body, "partner", 16),
            _enum(body, "mode", Mode),
            _bytes(body, "user_ref", 32),
            _bytes(body, "wallet", 20),
            _int(body, "deadline", U64_MAX),
            _bytes(body, "nonce", 32),
            _signature(body),
            Actor.from_body(body.get("actor")),
        )


@dataclass(frozen=True, slots=True)
class UnlinkEntry:
    """``wallet.unlink``: by the user (signed ``link`` fields) or by the partner (no signature:
    ``link`` is None; unlinking never moves value, see docs/threat-model.md)."""

    partner: bytes
    mode: Mode
    user_ref: bytes
    actor: Actor
    link: LinkEntry | None  # the user-signed form, or None when the partner unlinks

    def to_body(self) -> dict[str, Any]:
        if self.link is not None:
            return {**self.link.to_body(), "by": "user"}
        return {
            "partner": self.partner,
            "mode": int(self.mode),
            "user_ref": self.user_ref,
            "actor": self.actor.to_body(),
            "by": "partner",
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> UnlinkEntry:
        by = body.get("by")
        if by == "user":
            link = LinkEntry.from_body(body)
            return cls(link.partner, link.mode, link.user_ref, link.actor, link)
        if by != "partner":
            raise Malformed('by must be "user" or "partner"')
        return cls(
            _bytes(body, "partner", 16),
            _enum(body, "mode", Mode),
            _bytes(body, "user_ref", 32),
            Actor.from_body(body.get("actor")),
            None,
        )


@dataclass(frozen=True, slots=True)
class CodeIssueEntry:
    """``code.issue``: a user issues a one-time code that approves one debit later."""

    mode: Mode
    wallet: bytes  # 20
    code_hash: bytes  # 32, ids.code_hash of the code (the code itself never enters the log)
    ledger: int
    amount_limit: int  # the most the code may debit, in the ledger's unit
    expiry: int  # Unix s
    signature: bytes

    def to_body(self) -> dict[str, Any]:
        return {
            "mode": int(self.mode),
            "wallet": self.wallet,
            "code_hash": self.code_hash,
            "ledger": self.ledger,
            "amount_limit": self.amount_limit.to_bytes(16, "big"),
            "expiry": self.expiry,
            "signature": self.signature,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CodeIssueEntry:
        limit = _bytes(body, "amount_limit", 16)
        amount_limit = int.from_bytes(limit, "big")
        if amount_limit == 0:
            raise Malformed("amount_limit must not be zero")
        return cls(
            _enum(body, "mode", Mode),
            _bytes(body, "wallet", 20),
            _bytes(body, "code_hash", 32),
            _int(body, "ledger", U32_MAX, 1),
            amount_limit,
            _int(body, "expiry", U64_MAX),
            _signature(body),
        )


# --- stored records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns a ledger account: a wallet (its address), a partner (its id) or the platform."""

    kind: OwnerKind
    mode: Mode
    ledger: int
    owner: bytes  # 20-byte address for a wallet, 16-byte partner id, b"" for the platform
    role: int = 0  # a partner account's Role


_OWNER_V1 = struct.Struct(">BBBIB20sB")  # version, kind, mode, ledger, owner length, owner, role


def encode_owner(o: Owner) -> bytes:
    return _OWNER_V1.pack(
        VALUE_VERSION, o.kind, o.mode, o.ledger, len(o.owner), o.owner.ljust(20, b"\0"), o.role
    )


def decode_owner(raw: bytes) -> Owner:
    if not raw or raw[0] != VALUE_VERSION:
        raise UnsupportedFormat("unknown account owner version")
    if len(raw) != _OWNER_V1.size:
        raise CorruptEntry("stored account owner has the wrong length")
    _, kind, mode, ledger, size, owner, role = _OWNER_V1.unpack(raw)
    return Owner(OwnerKind(kind), Mode(mode), ledger, owner[:size], role)


_CODE_V1 = struct.Struct(">BB20sI16sQ32s")  # version, mode, wallet, ledger, limit, expiry, used_by


@dataclass(frozen=True, slots=True)
class StoredCode:
    mode: Mode
    wallet: bytes
    ledger: int
    amount_limit: int
    expiry: int
    used_by: bytes  # 32: the digest of the operation that consumed it, zeros while unused


def encode_code(c: StoredCode) -> bytes:
    return _CODE_V1.pack(
        VALUE_VERSION,
        c.mode,
        c.wallet,
        c.ledger,
        c.amount_limit.to_bytes(16, "big"),
        c.expiry,
        c.used_by,
    )


def decode_code(raw: bytes) -> StoredCode:
    if not raw or raw[0] != VALUE_VERSION:
        raise UnsupportedFormat("unknown one-time code version")
    if len(raw) != _CODE_V1.size:
        raise CorruptEntry("stored one-time code has the wrong length")
    _, mode, wallet, ledger, limit, expiry, used_by = _CODE_V1.unpack(raw)
    return StoredCode(Mode(mode), wallet, ledger, int.from_bytes(limit, "big"), expiry, used_by)


# --- key layout -------------------------------------------------------------------------------

PREFIX = b"id/"
META_KEY = b"id/m"  # version, next partner asset index
PARTNER_PREFIX = b"id/p/"  # + partner16 -> partner record
OWNER_PREFIX = b"id/o/"  # + account u128 -> Owner
LINK_PREFIX = b"id/l/"  # + partner16 + mode + user_ref32 -> wallet20 + linked at (ms)
NONCE_PREFIX = b"id/n/"  # + wallet20 + nonce32 -> judged result + fields digest
WALLET_PREFIX = b"id/w/"  # + mode + wallet20 -> created at (ms)
CODE_PREFIX = b"id/c/"  # + code hash32 -> StoredCode
AUDIT_HEAD_PREFIX = b"id/ah/"  # + scope16 + mode -> entry count u64
AUDIT_ENTRY_PREFIX = b"id/ae/"  # + scope16 + mode + seq u64 -> audit entry
PLATFORM_SCOPE = ZERO16  # the operator's audit scope: every change


def owner_key(account: int) -> bytes:
    return OWNER_PREFIX + account.to_bytes(16, "big")


def link_key(partner: bytes, mode: Mode, user_ref: bytes) -> bytes:
    return LINK_PREFIX + partner + bytes((mode,)) + user_ref


def wallet_key(mode: Mode, wallet: bytes) -> bytes:
    return WALLET_PREFIX + bytes((mode,)) + wallet


def audit_head_key(scope: bytes, mode: Mode) -> bytes:
    return AUDIT_HEAD_PREFIX + scope + bytes((mode,))


def audit_entry_key(scope: bytes, mode: Mode, seq: int) -> bytes:
    return AUDIT_ENTRY_PREFIX + scope + bytes((mode,)) + seq.to_bytes(8, "big")
