"""The Bridge's vocabulary: requests, result codes, notices, stored records, bounds, key layout.

Everything here is data. Requests are frozen dataclasses checked for shape when built (a bad
field is :class:`~node.errors.InvalidRequest`, a typed 4xx before anything reaches the log);
the result codes are one ``str`` enum whose member order is the precedence (each request kind
checks the subset it needs, in that order, see :mod:`business.bridge.core`). Stored values are
versioned msgpack lists under ``br/``; amounts travel in them as 16-byte big-endian fields
(msgpack integers stop at 64 bits). A value with an unknown version is refused with
:class:`~node.errors.UnsupportedFormat`, one that does not decode with
:class:`~node.errors.CorruptEntry`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from business.identity.ids import derive
from node.errors import ConfigError, CorruptEntry, InvalidRequest, UnsupportedFormat

__all__ = [
    "AMOUNT_MAX",
    "DAY_MS",
    "EVENT_RESERVE_LOW",
    "NEVER_DAY",
    "AccountCode",
    "AssetKindRef",
    "AssetRecord",
    "BridgeConfig",
    "BridgeResult",
    "DefinePoints",
    "Direction",
    "ExpirePoints",
    "FundLiquidity",
    "Issuance",
    "IssuePoints",
    "Lot",
    "LotOrigin",
    "PolicyRecord",
    "Quote",
    "RedeemPoints",
    "RegisterToken",
    "Request",
    "ReserveLow",
    "ReserveLowRecord",
    "ReversePoints",
    "SetPolicy",
    "SetReserveThreshold",
    "Swap",
    "SwapEntry",
    "TopUpReserve",
    "TransferCode",
]

AMOUNT_MAX = (1 << 128) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
DAY_MS = 86_400_000
NEVER_DAY = U32_MAX  # the expiry day of points without a validity period
BPS_DENOMINATOR = 10_000
SCALE_MAX = 18
VALUE_VERSION = 1
TAG_QUOTE = b"baas/bridge-quote/v1"


class BridgeResult(str, enum.Enum):
    """The outcome of a Bridge request; member order is the precedence of the checks."""

    OK = "ok"
    EXISTS = "exists"  # a success that changed nothing (the same definition or policy again)
    # the request itself
    QUOTE_ALTERED = "quote_altered"
    QUOTE_OTHER_USER = "quote_other_user"
    BOUND_EXCEEDED = "bound_exceeded"  # a field beyond a BridgeConfig bound
    LEDGER_WRONG_MODE = "ledger_wrong_mode"
    # the asset
    ASSET_NOT_FOUND = "asset_not_found"
    ASSET_FOREIGN = "asset_foreign"
    ASSET_KIND_MISMATCH = "asset_kind_mismatch"
    LEDGER_TAKEN = "ledger_taken"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    # a token whose (mode, chain, ERC-20 address) is registered already, by any partner: a
    # deposit of that contract must credit exactly one asset
    TOKEN_ADDRESS_TAKEN = "token_address_taken"
    ISSUANCE_NOT_FOUND = "issuance_not_found"
    FAUCET_LIVE_MODE = "faucet_live_mode"
    FAUCET_AMOUNT_EXCEEDED = "faucet_amount_exceeded"
    # quotes and swaps
    QUOTE_EXPIRED = "quote_expired"
    POLICY_NOT_FOUND = "policy_not_found"
    POLICY_DISABLED = "policy_disabled"
    POLICY_VERSION_CHANGED = "policy_version_changed"
    BELOW_MIN = "below_min"
    ABOVE_MAX = "above_max"
    QUOTE_TERMS_MISMATCH = "quote_terms_mismatch"
    USER_WINDOW_LIMIT = "user_window_limit"
    PARTNER_WINDOW_LIMIT = "partner_window_limit"
    # lots
    REVERSAL_EXCEEDS_UNSPENT = "reversal_exceeds_unspent"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    LOTS_PER_SPEND_EXCEEDED = "lots_per_spend_exceeded"
    LOTS_FULL = "lots_full"
    # the ledger's verdict on the chain (mapped from its result codes)
    RESERVE_EXHAUSTED = "reserve_exhausted"
    LIQUIDITY_EXHAUSTED = "liquidity_exhausted"
    LEDGER_REFUSED = "ledger_refused"

    @property
    def succeeded(self) -> bool:
        return self in (BridgeResult.OK, BridgeResult.EXISTS)


class Direction(enum.IntEnum):
    IN = 1  # the partner's asset (points, tokens) in, BAAS out
    OUT = 2  # BAAS in, the partner's asset out


class AssetKindRef(enum.IntEnum):
    POINT = 2  # the ledger's AssetKind values
    TOKEN = 3


class LotOrigin(enum.IntEnum):
    """Why a user holds a lot; a partner may only reverse what it ISSUED."""

    ISSUED = 1
    BOUGHT = 2  # received in a swap BAAS -> points


class AccountCode(enum.IntEnum):
    """The ledger ``code`` (account type) of every account the Bridge creates."""

    WALLET = 1
    ISSUANCE = 11  # 10 + identity's Role value
    RESERVE = 12
    FEES = 13
    LIQUIDITY = 14
    BREAKAGE = 15


class TransferCode(enum.IntEnum):
    """The ledger ``code`` (reason) of every transfer the Bridge makes."""

    ISSUE = 101
    REDEEM = 102
    REVERSE = 103
    EXPIRE = 104
    SWAP = 105
    SWAP_FEE = 106
    RESERVE_TOP_UP = 107
    LIQUIDITY_FUND = 108


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Hard bounds of the Bridge core, validated at construction (part of the log format
    once wired: every replica must refuse alike)."""

    lots_per_spend_max: int = 8  # lots one redemption or swap may touch
    lots_per_wallet_max: int = 32  # lots per (wallet account, asset), expired ones included
    validity_days_max: int = 3650
    window_buckets_max: int = 8  # the ring of window buckets per user and per partner
    window_s_max: int = 366 * 86_400
    quote_ttl_ms_max: int = 120_000  # how long a quote may live
    expiry_wallets_per_call_max: int = 32  # expiry transfers in one ExpirePoints (<= 63)
    expiry_days_scan_max: int = 366  # expiry days walked in one ExpirePoints
    expiry_entries_scan_max: int = 1024  # bucket entries (wallets) read in one ExpirePoints
    expiry_page_ids_max: int = 256  # wallet accounts per stored expiry page
    faucet_amount_max: int = 10**27  # test mode: what one faucet call may mint
    code_chars_max: int = 16
    tokens_per_partner_max: int = 16  # tokens one partner registers in one mode
    # the chain the tokens' ERC-20 addresses are on (a token is found by (mode, chain,
    # address)); the node sets identity's EIP-712 chain id, the one chain it knows today
    chain_id: int = 31337

    def __post_init__(self) -> None:
        for name, low, high in (
            ("lots_per_spend_max", 1, 1024),
            ("lots_per_wallet_max", 2, 4096),
            ("validity_days_max", 1, 100_000),
            ("window_buckets_max", 1, 1024),
            ("window_s_max", 1, 10 * 366 * 86_400),
            ("quote_ttl_ms_max", 1, 86_400_000),
            ("expiry_wallets_per_call_max", 1, 63),
            ("expiry_days_scan_max", 1, 100_000),
            ("expiry_entries_scan_max", 1, 1_000_000),
            ("expiry_page_ids_max", 1, 4096),
            ("faucet_amount_max", 1, AMOUNT_MAX),
            ("code_chars_max", 1, 64),
            ("tokens_per_partner_max", 1, 1024),
            ("chain_id", 1, U64_MAX),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"bridge {name} must be an integer in {low}..{high}")


# --- request shape checks -----------------------------------------------------------------


def _int(obj: object, name: str, low: int, high: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(
            f"{type(obj).__name__}.{name} must be an integer in {low}..{high}",
            code="field_invalid",
            param=name,
        )


def _bytes(obj: object, name: str, size: int) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidRequest(
            f"{type(obj).__name__}.{name} must be {size} bytes", code="field_invalid", param=name
        )


def _op(obj: object) -> None:
    _bytes(obj, "op", 32)
    _bytes(obj, "partner", 16)
    _int(obj, "ledger", 1, U32_MAX)


def _code(obj: object, name: str) -> None:
    value = getattr(obj, name)
    # Formance's asset regex, without the scale suffix: the code is a name, not a number.
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or not value[0].isascii()
        or not value[0].isupper()
        or not all(c.isascii() and (c.isupper() or c.isdigit() or c == "_") for c in value)
    ):
        raise InvalidRequest(
            f"{name} must be upper-case ASCII letters, digits and _", code="field_invalid",
            param=name,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DefinePoints:
    """A partner defines its point asset on ``ledger`` (its point ledger in one mode)."""

    op: bytes  # 32: the operation id (identity.ids.operation_id); ledger ids derive from it
    partner: bytes  # 16
    ledger: int
    code: str
    scale: int
    validity_days: int = 0  # 0: points never expire

    def __post_init__(self) -> None:
        _op(self)
        _code(self, "code")
        _int(self, "scale", 0, SCALE_MAX)
        _int(self, "validity_days", 0, U32_MAX)


@dataclass(frozen=True, slots=True)
class RegisterToken:
    """A partner registers a token: symbol, decimals (<= 18), its ERC-20 contract address."""

    op: bytes
    partner: bytes
    ledger: int
    symbol: str
    decimals: int
    address: bytes  # 20

    def __post_init__(self) -> None:
        _op(self)
        _code(self, "symbol")
        _int(self, "decimals", 0, SCALE_MAX)
        _bytes(self, "address", 20)


@dataclass(frozen=True, slots=True)
class IssuePoints:
    op: bytes
    partner: bytes
    ledger: int
    wallet_account: int  # identity.open_wallet_account's id on ``ledger``
    amount: int

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "wallet_account", 1, AMOUNT_MAX - 1)
        _int(self, "amount", 1, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class RedeemPoints:
    """The user spends points at the partner (needs the user's approval: it debits them)."""

    op: bytes
    partner: bytes
    ledger: int
    wallet_account: int
    amount: int

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "wallet_account", 1, AMOUNT_MAX - 1)
        _int(self, "amount", 1, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class ReversePoints:
    """The partner takes back (part of) one of its issuances, up to its unspent amount."""

    op: bytes
    partner: bytes
    ledger: int
    issuance: bytes  # 32: the op id of the IssuePoints
    amount: int

    def __post_init__(self) -> None:
        _op(self)
        _bytes(self, "issuance", 32)
        _int(self, "amount", 1, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class ExpirePoints:
    """Move expired lots of one point asset to its breakage account (bounded; call again)."""

    op: bytes
    partner: bytes
    ledger: int

    def __post_init__(self) -> None:
        _op(self)


@dataclass(frozen=True, slots=True)
class FundLiquidity:
    """Fund the partner's liquidity account of ``ledger``: points from its issuance account,
    tokens from the test-mode faucet (live tokens come with on-chain deposits)."""

    op: bytes
    partner: bytes
    ledger: int
    amount: int

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "amount", 1, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class TopUpReserve:
    """Top up the partner's BAAS reserve on ``ledger`` (the BAAS ledger of a mode) from
    ``source``: 0 is the test-mode faucet, else an account the partner owns."""

    op: bytes
    partner: bytes
    ledger: int
    amount: int
    source: int = 0

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "amount", 1, AMOUNT_MAX)
        _int(self, "source", 0, AMOUNT_MAX - 1)


@dataclass(frozen=True, slots=True)
class SetReserveThreshold:
    op: bytes
    partner: bytes
    ledger: int  # the BAAS ledger of the mode
    threshold: int

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "threshold", 0, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """The swap policy of one asset (``ledger``). Sizes and window limits are in the asset's
    units; the rate is BAAS units per asset unit, ``rate_num / rate_den``; the fee is in BAAS
    units. ``actor`` (16 bytes: the credential) goes into the audit entry."""

    op: bytes
    partner: bytes
    ledger: int
    baas_ledger: int
    rate_num: int
    rate_den: int
    swap_min: int
    swap_max: int
    window_s: int
    user_window_max: int
    partner_window_max: int
    fee_bps: int
    fee_min: int
    enabled: bool
    actor: bytes

    def __post_init__(self) -> None:
        _op(self)
        _int(self, "baas_ledger", 1, U32_MAX)
        _int(self, "rate_num", 1, AMOUNT_MAX)
        _int(self, "rate_den", 1, AMOUNT_MAX)
        _int(self, "swap_min", 1, AMOUNT_MAX)
        _int(self, "swap_max", self.swap_min, AMOUNT_MAX)
        _int(self, "window_s", 1, U32_MAX)
        _int(self, "user_window_max", 0, AMOUNT_MAX)
        _int(self, "partner_window_max", 0, AMOUNT_MAX)
        _int(self, "fee_bps", 0, BPS_DENOMINATOR - 1)
        _int(self, "fee_min", 0, AMOUNT_MAX)
        if type(self.enabled) is not bool:
            raise InvalidRequest("SetPolicy.enabled must be a bool", code="field_invalid")
        _bytes(self, "actor", 16)


@dataclass(frozen=True, slots=True)
class Quote:
    """The terms of one swap, bound to its user, partner, asset and direction.

    ``amount_in`` is what the user gives (asset units for IN, BAAS for OUT), ``amount_out``
    what they get, ``fee`` the BAAS fee inside them (see the arithmetic in
    :mod:`business.bridge.core`). :meth:`digest` is what the user's approval covers.
    """

    partner: bytes
    ledger: int
    baas_ledger: int
    wallet: bytes  # 16: the user's wallet id (identity.ids.wallet_id)
    direction: Direction
    amount_in: int
    amount_out: int
    fee: int
    rate_num: int
    rate_den: int
    policy_version: int
    issued_ms: int
    expires_ms: int

    def __post_init__(self) -> None:
        _bytes(self, "partner", 16)
        _bytes(self, "wallet", 16)
        _int(self, "ledger", 1, U32_MAX)
        _int(self, "baas_ledger", 1, U32_MAX)
        if self.direction not in (Direction.IN, Direction.OUT):
            raise InvalidRequest("Quote.direction must be IN or OUT", code="field_invalid")
        for name in ("amount_in", "amount_out", "fee", "rate_num", "rate_den"):
            _int(self, name, 0, AMOUNT_MAX)
        _int(self, "policy_version", 1, U32_MAX)
        _int(self, "issued_ms", 0, U64_MAX)
        _int(self, "expires_ms", 0, U64_MAX)

    def digest(self) -> bytes:
        """SHA-256 over every field, domain-separated: what the user approves."""
        return derive(
            TAG_QUOTE,
            self.partner,
            self.ledger.to_bytes(4, "big"),
            self.baas_ledger.to_bytes(4, "big"),
            self.wallet,
            bytes((int(self.direction),)),
            *(
                v.to_bytes(16, "big")
                for v in (self.amount_in, self.amount_out, self.fee, self.rate_num, self.rate_den)
            ),
            self.policy_version.to_bytes(4, "big"),
            self.issued_ms.to_bytes(8, "big"),
            self.expires_ms.to_bytes(8, "big"),
        )


@dataclass(frozen=True, slots=True)
class Swap:
    """Execute ``quote`` for the user whose wallet is ``wallet`` (the authenticated user; their
    accounts derive from it); ``quote_digest`` is the digest the user approved."""

    op: bytes
    partner: bytes
    ledger: int
    wallet: bytes
    quote: Quote
    quote_digest: bytes

    def __post_init__(self) -> None:
        _op(self)
        _bytes(self, "wallet", 16)
        if not isinstance(self.quote, Quote):
            raise InvalidRequest("Swap.quote must be a Quote", code="field_invalid")
        _bytes(self, "quote_digest", 32)


Request = (
    DefinePoints
    | RegisterToken
    | IssuePoints
    | RedeemPoints
    | ReversePoints
    | ExpirePoints
    | FundLiquidity
    | TopUpReserve
    | SetReserveThreshold
    | SetPolicy
    | Swap
)


@dataclass(frozen=True, slots=True)
class ReserveLow:
    """A notice: the partner's reserve fell below its threshold (metrics now, webhooks later)."""

    partner: bytes
    ledger: int
    level: int
    threshold: int


EVENT_RESERVE_LOW = "reserve.low"  # the event type a webhook outbox delivers
TAG_EVENT = b"baas/bridge-event/v1"


def event_id(kind: str, op: bytes) -> bytes:
    """The opaque id of the event ``kind`` an operation raised (at most one of each kind per
    operation): derived, so every replica names it alike and a receiver can deduplicate."""
    return derive(TAG_EVENT, kind.encode(), op)


# --- stored records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetRecord:
    partner: bytes
    kind: int  # AssetKindRef
    scale: int
    code: str  # point code or token symbol
    validity_days: int  # points; 0 for tokens
    address: bytes  # tokens: the ERC-20 contract (20); points: b""
    start_day: int  # the day it was defined: where the expiry cursor starts


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    version: int
    baas_ledger: int
    rate_num: int
    rate_den: int
    swap_min: int
    swap_max: int
    window_s: int
    user_window_max: int
    partner_window_max: int
    fee_bps: int
    fee_min: int
    enabled: bool
    changed_ms: int


@dataclass(frozen=True, slots=True)
class Lot:
    expiry_day: int  # valid while the log day is before it; NEVER_DAY: no expiry
    origin: int  # LotOrigin
    amount: int


@dataclass(frozen=True, slots=True)
class Issuance:
    partner: bytes
    ledger: int
    wallet_account: int
    expiry_day: int  # the lot it went into
    amount: int
    reversed: int


@dataclass(frozen=True, slots=True)
class SwapEntry:
    """One swap in its partner's index (feature 11): what a list shows and filters on. The
    amounts are the quote's (a failed swap moved nothing); ``result`` its sticky code."""

    wallet: bytes  # 16: the user's wallet id
    user_ref: bytes  # 32: the partner's user reference (identity.ids.user_ref), or b""
    ledger: int
    direction: int  # Direction
    amount_in: int
    amount_out: int
    fee: int
    policy_version: int
    quote_digest: bytes  # 32
    result: str


@dataclass(frozen=True, slots=True)
class ReserveLowRecord:
    """The last ``reserve.low`` event of one reserve (feature 11) and how many it raised: the
    event (``event``, type :data:`EVENT_RESERVE_LOW`, object: the reserve) is what a webhook
    outbox will deliver; the record is what the reserve read shows."""

    event: bytes  # 32: event_id(EVENT_RESERVE_LOW, op)
    op: bytes  # 32: the operation that crossed the threshold
    created_ms: int  # its log time
    level: int
    threshold: int
    count: int  # reserve.low events this reserve raised, ever


# --- key layout: everything under br/ ----------------------------------------------------

PREFIX = b"br/"
OP_PREFIX = b"br/op/"  # + op id -> the result code (sticky)
ASSET_PREFIX = b"br/as/"  # + ledger u32 -> AssetRecord
POLICY_PREFIX = b"br/po/"  # + ledger -> PolicyRecord (current)
POLICY_AUDIT_PREFIX = b"br/pa/"  # + ledger + version u32 -> the change (audit)
LOTS_PREFIX = b"br/lt/"  # + ledger + wallet account u128 -> [Lot]
ISSUANCE_PREFIX = b"br/is/"  # + op id -> Issuance
WINDOW_USER_PREFIX = b"br/wu/"  # + ledger + wallet account -> ring of buckets
WINDOW_PARTNER_PREFIX = b"br/wp/"  # + ledger -> ring of buckets
RESERVE_PREFIX = b"br/rs/"  # + BAAS ledger + partner -> (threshold, low)
EXPIRY_HEAD_PREFIX = b"br/xh/"  # + ledger + day u32 -> page count
EXPIRY_PAGE_PREFIX = b"br/xp/"  # + ledger + day + page u32 -> wallet accounts
EXPIRY_CURSOR_PREFIX = b"br/xc/"  # + ledger -> (day, page, offset)
# From log feature 11 (node/consensus/bridge_ops.py: SWAP_INDEX_FEATURE_VERSION):
SWAP_INDEX_PREFIX = b"br/sw/"  # + partner + mode u8 + log ms u64 + op -> SwapEntry
RESERVE_LOW_PREFIX = b"br/rl/"  # + BAAS ledger + partner -> ReserveLowRecord (the last one)
# Tokens (written by RegisterToken; on the log from feature 12, node/consensus/bridge_ops.py):
TOKEN_ADDRESS_PREFIX = b"br/ta/"  # + mode u8 + chain id u64 + address20 -> (ledger, partner)
TOKEN_LIST_PREFIX = b"br/tl/"  # + partner + mode u8 -> [ledger, ...] in registration order


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def _u128(v: int) -> bytes:
    return v.to_bytes(16, "big")


def asset_key(ledger: int) -> bytes:
    return ASSET_PREFIX + _u32(ledger)


def policy_key(ledger: int) -> bytes:
    return POLICY_PREFIX + _u32(ledger)


def policy_audit_key(ledger: int, version: int) -> bytes:
    return POLICY_AUDIT_PREFIX + _u32(ledger) + _u32(version)


def lots_key(ledger: int, wallet_account: int) -> bytes:
    return LOTS_PREFIX + _u32(ledger) + _u128(wallet_account)


def window_user_key(ledger: int, wallet_account: int) -> bytes:
    return WINDOW_USER_PREFIX + _u32(ledger) + _u128(wallet_account)


def window_partner_key(ledger: int) -> bytes:
    return WINDOW_PARTNER_PREFIX + _u32(ledger)


def reserve_key(baas_ledger: int, partner: bytes) -> bytes:
    return RESERVE_PREFIX + _u32(baas_ledger) + partner


def expiry_head_key(ledger: int, day: int) -> bytes:
    return EXPIRY_HEAD_PREFIX + _u32(ledger) + _u32(day)


def expiry_page_key(ledger: int, day: int, page: int) -> bytes:
    return EXPIRY_PAGE_PREFIX + _u32(ledger) + _u32(day) + _u32(page)


def expiry_cursor_key(ledger: int) -> bytes:
    return EXPIRY_CURSOR_PREFIX + _u32(ledger)


def swap_index_prefix(partner: bytes, mode: int) -> bytes:
    """Where one partner's swaps of one mode are listed, in log-time order."""
    return SWAP_INDEX_PREFIX + partner + bytes((mode,))


def swap_index_key(partner: bytes, mode: int, log_ms: int, op: bytes) -> bytes:
    return swap_index_prefix(partner, mode) + log_ms.to_bytes(8, "big") + op


def reserve_low_key(baas_ledger: int, partner: bytes) -> bytes:
    return RESERVE_LOW_PREFIX + _u32(baas_ledger) + partner


def token_address_key(mode: int, chain_id: int, address: bytes) -> bytes:
    """Where a token is found by its contract: what a chain deposit of it will resolve."""
    return TOKEN_ADDRESS_PREFIX + bytes((mode,)) + chain_id.to_bytes(8, "big") + address


def token_list_key(partner: bytes, mode: int) -> bytes:
    return TOKEN_LIST_PREFIX + partner + bytes((mode,))


# --- value encodings: versioned msgpack, amounts as 16 bytes ------------------------------


def pack(*fields: Any) -> bytes:
    raw: bytes = msgpack.packb([VALUE_VERSION, *fields])
    return raw


def unpack(raw: bytes, what: str, count: int) -> list[Any]:
    try:
        value = msgpack.unpackb(raw)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptEntry(f"stored {what} does not decode") from exc
    if not isinstance(value, list) or not value or value[0] != VALUE_VERSION:
        raise UnsupportedFormat(f"unknown {what} value version")
    if len(value) != count + 1:
        raise CorruptEntry(f"stored {what} has {len(value) - 1} fields, expected {count}")
    return value[1:]


def amount_of(raw: object) -> int:
    if not isinstance(raw, bytes) or len(raw) != 16:
        raise CorruptEntry("a stored amount is not 16 bytes")
    return int.from_bytes(raw, "big")


def encode_asset(a: AssetRecord) -> bytes:
    return pack(a.partner, a.kind, a.scale, a.code, a.validity_days, a.address, a.start_day)


def decode_asset(raw: bytes) -> AssetRecord:
    return AssetRecord(*unpack(raw, "asset", 7))


_POLICY_FIELDS = (
    "version", "baas_ledger", "rate_num", "rate_den", "swap_min", "swap_max", "window_s",
    "user_window_max", "partner_window_max", "fee_bps", "fee_min", "enabled", "changed_ms",
)  # fmt: skip
_POLICY_AMOUNTS = frozenset(
    {"rate_num", "rate_den", "swap_min", "swap_max", "user_window_max", "partner_window_max",
     "fee_min"}
)  # fmt: skip


def encode_policy(p: PolicyRecord) -> bytes:
    return pack(
        *(_u128(getattr(p, n)) if n in _POLICY_AMOUNTS else getattr(p, n) for n in _POLICY_FIELDS)
    )


def decode_policy(raw: bytes) -> PolicyRecord:
    fields = unpack(raw, "policy", len(_POLICY_FIELDS))
    values: dict[str, Any] = {
        n: amount_of(v) if n in _POLICY_AMOUNTS else v
        for n, v in zip(_POLICY_FIELDS, fields, strict=True)
    }
    return PolicyRecord(**values)


def encode_lots(lots: list[Lot]) -> bytes:
    return pack([[lot.expiry_day, lot.origin, _u128(lot.amount)] for lot in lots])


def decode_lots(raw: bytes | None) -> list[Lot]:
    if raw is None:
        return []
    (items,) = unpack(raw, "lots", 1)
    return [Lot(day, origin, amount_of(amount)) for day, origin, amount in items]


def encode_issuance(i: Issuance) -> bytes:
    return pack(
        i.partner, i.ledger, _u128(i.wallet_account), i.expiry_day, _u128(i.amount),
        _u128(i.reversed),
    )  # fmt: skip


def decode_issuance(raw: bytes) -> Issuance:
    partner, ledger, account, day, amount, reversed_ = unpack(raw, "issuance", 6)
    return Issuance(
        partner, ledger, amount_of(account), day, amount_of(amount), amount_of(reversed_)
    )


def encode_swap_entry(e: SwapEntry) -> bytes:
    return pack(
        e.wallet, e.user_ref, e.ledger, e.direction, _u128(e.amount_in), _u128(e.amount_out),
        _u128(e.fee), e.policy_version, e.quote_digest, e.result,
    )  # fmt: skip


def decode_swap_entry(raw: bytes) -> SwapEntry:
    wallet, ref, ledger, direction, a_in, a_out, fee, version, digest, result = unpack(
        raw, "swap entry", 10
    )
    return SwapEntry(
        wallet, ref, ledger, direction, amount_of(a_in), amount_of(a_out), amount_of(fee),
        version, digest, result,
    )  # fmt: skip


def encode_reserve_low(r: ReserveLowRecord) -> bytes:
    return pack(r.event, r.op, r.created_ms, _u128(r.level), _u128(r.threshold), r.count)


def decode_reserve_low(raw: bytes) -> ReserveLowRecord:
    event, op, created_ms, level, threshold, count = unpack(raw, "reserve low", 6)
    return ReserveLowRecord(event, op, created_ms, amount_of(level), amount_of(threshold), count)


def encode_ring(ring: list[tuple[int, int]]) -> bytes:
    return pack([[epoch, _u128(amount)] for epoch, amount in ring])


def decode_ring(raw: bytes | None) -> list[tuple[int, int]]:
    if raw is None:
        return []
    (items,) = unpack(raw, "window ring", 1)
    return [(epoch, amount_of(amount)) for epoch, amount in items]
