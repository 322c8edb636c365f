"""The ledger's vocabulary: events, result codes, stored records, bounds and their encodings.

Everything here is data: frozen dataclasses for the events a batch carries and the records a
read returns, ``str`` enums for the result codes (their member order IS the precedence, see
:mod:`business.ledger.core`), the key layout under ``lg/`` and the versioned fixed-width
``struct`` encodings of every stored value. Amounts and ids are u128 integers, stored as
16-byte big-endian fields; a value whose first byte is an unknown version is refused with
:class:`~node.errors.UnsupportedFormat`, a wrong length with :class:`~node.errors.CorruptEntry`.
An event cannot be built with a field outside its width (u128 ids and amounts, u32 ledger and
timeout, u16 code and flags): :class:`~node.errors.InvalidRequest`, code ``field_invalid``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from node.errors import ConfigError, CorruptEntry, InvalidRequest, UnsupportedFormat

__all__ = [
    "AMOUNT_MAX",
    "ID_MAX",
    "SCALE_MAX",
    "Account",
    "AccountBalance",
    "AccountFlags",
    "AccountResult",
    "Asset",
    "AssetKind",
    "AssetResult",
    "CreateAccount",
    "CreateAsset",
    "CreateTransfer",
    "Event",
    "LedgerConfig",
    "LedgerTotals",
    "PendingStatus",
    "Result",
    "ResultCode",
    "Transfer",
    "TransferFlags",
    "TransferResult",
]

U16_MAX = (1 << 16) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
ID_MAX = (1 << 128) - 1  # ids 0 and 2^128-1 are refused (TigerBeetle reserves both)
AMOUNT_MAX = ID_MAX  # on a post: "the full pending amount"
SCALE_MAX = 18  # no token has more decimals than ETH's 18
BAAS_SCALE = 18  # BAAS is kept in its 18-decimal on-chain unit
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


class AccountFlags(enum.IntFlag):
    """TigerBeetle's account flag bits (``imported`` = 16 is not supported: reserved)."""

    LINKED = 1
    DEBITS_MUST_NOT_EXCEED_CREDITS = 2
    CREDITS_MUST_NOT_EXCEED_DEBITS = 4
    HISTORY = 8
    CLOSED = 32


class TransferFlags(enum.IntFlag):
    """TigerBeetle's transfer flag bits (closing_* = 64/128 and imported = 256 are reserved)."""

    LINKED = 1
    PENDING = 2
    POST_PENDING_TRANSFER = 4
    VOID_PENDING_TRANSFER = 8
    BALANCING_DEBIT = 16
    BALANCING_CREDIT = 32


ACCOUNT_FLAGS_KNOWN = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
    | AccountFlags.CLOSED
)
TRANSFER_FLAGS_KNOWN = 63


class AssetKind(enum.IntEnum):
    BAAS = 1
    POINT = 2
    TOKEN = 3


class PendingStatus(enum.IntEnum):
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class AssetResult(str, enum.Enum):
    """Outcome of a :class:`CreateAsset`; member order is the precedence."""

    OK = "ok"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    KIND_INVALID = "kind_invalid"
    SCALE_EXCEEDS_MAX = "scale_exceeds_max"
    SCALE_MUST_BE_18_FOR_BAAS = "scale_must_be_18_for_baas"
    EXISTS_WITH_DIFFERENT_KIND = "exists_with_different_kind"
    EXISTS_WITH_DIFFERENT_SCALE = "exists_with_different_scale"
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = "exists_with_different_user_data_128"
    EXISTS = "exists"


class AccountResult(str, enum.Enum):
    """Outcome of a :class:`CreateAccount`; member order is the precedence."""

    OK = "ok"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    RESERVED_FLAG = "reserved_flag"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    ID_MUST_NOT_BE_INT_MAX = "id_must_not_be_int_max"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = "exists_with_different_user_data_128"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS = "exists"
    LEDGER_NOT_FOUND = "ledger_not_found"


class TransferResult(str, enum.Enum):
    """Outcome of a :class:`CreateTransfer`; member order is the precedence."""

    OK = "ok"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    RESERVED_FLAG = "reserved_flag"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    ID_MUST_NOT_BE_INT_MAX = "id_must_not_be_int_max"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = "exists_with_different_user_data_128"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS = "exists"
    ID_ALREADY_FAILED = "id_already_failed"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "debit_account_id_must_not_be_zero"
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = "debit_account_id_must_not_be_int_max"
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "credit_account_id_must_not_be_zero"
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = "credit_account_id_must_not_be_int_max"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    PENDING_ID_MUST_BE_ZERO = "pending_id_must_be_zero"
    PENDING_ID_MUST_NOT_BE_ZERO = "pending_id_must_not_be_zero"
    PENDING_ID_MUST_NOT_BE_INT_MAX = "pending_id_must_not_be_int_max"
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    AMOUNT_MUST_NOT_BE_ZERO = "amount_must_not_be_zero"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    LEDGER_NOT_FOUND = "ledger_not_found"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = "accounts_must_have_the_same_ledger"
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = (
        "transfer_must_have_the_same_ledger_as_accounts"
    )
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = (
        "pending_transfer_has_different_debit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = (
        "pending_transfer_has_different_credit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = "pending_transfer_has_different_ledger"
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = "pending_transfer_has_different_code"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    DEBIT_ACCOUNT_ALREADY_CLOSED = "debit_account_already_closed"
    CREDIT_ACCOUNT_ALREADY_CLOSED = "credit_account_already_closed"
    OVERFLOWS_DEBITS_PENDING = "overflows_debits_pending"
    OVERFLOWS_CREDITS_PENDING = "overflows_credits_pending"
    OVERFLOWS_DEBITS_POSTED = "overflows_debits_posted"
    OVERFLOWS_CREDITS_POSTED = "overflows_credits_posted"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_CREDITS = "overflows_credits"
    OVERFLOWS_TIMEOUT = "overflows_timeout"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"


ResultCode = AssetResult | AccountResult | TransferResult

# Failures that depend on state which may change later: recorded, so a retry of the same id
# gets ID_ALREADY_FAILED instead of a different outcome (TigerBeetle's "transient" errors,
# plus our ledger_not_found and the balance overflows, which a later release could undo).
TRANSIENT_TRANSFER_RESULTS = frozenset(
    {
        TransferResult.LEDGER_NOT_FOUND,
        TransferResult.DEBIT_ACCOUNT_NOT_FOUND,
        TransferResult.CREDIT_ACCOUNT_NOT_FOUND,
        TransferResult.PENDING_TRANSFER_NOT_FOUND,
        TransferResult.DEBIT_ACCOUNT_ALREADY_CLOSED,
        TransferResult.CREDIT_ACCOUNT_ALREADY_CLOSED,
        TransferResult.OVERFLOWS_DEBITS_PENDING,
        TransferResult.OVERFLOWS_CREDITS_PENDING,
        TransferResult.OVERFLOWS_DEBITS_POSTED,
        TransferResult.OVERFLOWS_CREDITS_POSTED,
        TransferResult.OVERFLOWS_DEBITS,
        TransferResult.OVERFLOWS_CREDITS,
        TransferResult.EXCEEDS_CREDITS,
        TransferResult.EXCEEDS_DEBITS,
    }
)


def _check_widths(event: object, widths: tuple[tuple[str, int], ...]) -> None:
    """Every field an integer of its width: an event that exists is well formed.

    IntEnum / IntFlag members are stored as plain ints; bools, floats, strings, negatives
    and values beyond the width raise :class:`~node.errors.InvalidRequest`. Values in range
    but wrong for the ledger (id 0, unknown flags, ...) are the core's result codes.
    """
    for name, high in widths:
        value = getattr(event, name)
        if type(value) is not int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequest(
                    f"{type(event).__name__}.{name} must be an integer", code="field_invalid"
                )
            object.__setattr__(event, name, int(value))
        if not 0 <= value <= high:
            raise InvalidRequest(
                f"{type(event).__name__}.{name} must be in 0..{high}", code="field_invalid"
            )


@dataclass(frozen=True, slots=True)
class CreateAsset:
    """Register ``ledger`` as one asset. ``user_data_128``: the issuer's opaque id (or 0)."""

    ledger: int
    kind: int
    scale: int
    user_data_128: int = 0

    def __post_init__(self) -> None:
        _check_widths(self, _ASSET_WIDTHS)


@dataclass(frozen=True, slots=True)
class CreateAccount:
    id: int
    ledger: int
    code: int
    flags: int = 0
    user_data_128: int = 0

    def __post_init__(self) -> None:
        _check_widths(self, _ACCOUNT_WIDTHS)


@dataclass(frozen=True, slots=True)
class CreateTransfer:
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    ledger: int
    code: int
    flags: int = 0
    pending_id: int = 0
    timeout: int = 0  # seconds, pending transfers only
    user_data_128: int = 0

    def __post_init__(self) -> None:
        _check_widths(self, _TRANSFER_WIDTHS)


_ASSET_WIDTHS = (("ledger", U32_MAX), ("kind", 255), ("scale", 255), ("user_data_128", ID_MAX))
_ACCOUNT_WIDTHS = (
    ("id", ID_MAX),
    ("ledger", U32_MAX),
    ("code", U16_MAX),
    ("flags", U16_MAX),
    ("user_data_128", ID_MAX),
)
_TRANSFER_WIDTHS = (
    ("id", ID_MAX),
    ("debit_account_id", ID_MAX),
    ("credit_account_id", ID_MAX),
    ("amount", AMOUNT_MAX),
    ("ledger", U32_MAX),
    ("code", U16_MAX),
    ("flags", U16_MAX),
    ("pending_id", ID_MAX),
    ("timeout", U32_MAX),
    ("user_data_128", ID_MAX),
)


Event = CreateAsset | CreateAccount | CreateTransfer


@dataclass(frozen=True, slots=True)
class Result:
    """One event's outcome. ``timestamp``: the event's log timestamp (ns, unique, increasing);
    ``amount``: what a transfer actually moved or reserved (balancing clamps, partial posts)."""

    code: ResultCode
    timestamp: int
    amount: int = 0

    @property
    def succeeded(self) -> bool:
        return self.code.value in ("ok", "exists")


@dataclass(frozen=True, slots=True)
class Asset:
    ledger: int
    kind: AssetKind
    scale: int
    user_data_128: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    ledger: int
    code: int
    flags: int
    user_data_128: int
    timestamp: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class Transfer:
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int
    user_data_128: int
    timeout: int
    ledger: int
    code: int
    flags: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account's balances just after the event stamped ``timestamp`` (history accounts)."""

    timestamp: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """Per ledger running sums over all its accounts; balanced means debits == credits."""

    ledger: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @property
    def balanced(self) -> bool:
        return (
            self.debits_posted == self.credits_posted
            and self.debits_pending == self.credits_pending
        )


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Hard bounds of the ledger core, validated at construction."""

    events_per_batch_max: int = 8190  # TigerBeetle's batch size
    expiry_releases_max: int = 4096  # pending transfers released per log time
    expiry_seconds_scan_max: int = 3600  # empty expiry buckets walked per log time
    expiry_page_ids_max: int = 256  # transfer ids per stored expiry page

    def __post_init__(self) -> None:
        for name, low, high in (
            ("events_per_batch_max", 1, 100_000),
            ("expiry_releases_max", 1, 1_000_000),
            ("expiry_seconds_scan_max", 1, 10_000_000),
            ("expiry_page_ids_max", 1, 4096),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"ledger {name} must be an integer in {low}..{high}")


# --- key layout (all under one prefix, so the node applies them in one batch) ---------------

PREFIX = b"lg/"
META_KEY = b"lg/m"
ASSET_PREFIX = b"lg/as/"  # + ledger u32
ACCOUNT_PREFIX = b"lg/a/"  # + account id u128
TRANSFER_PREFIX = b"lg/t/"  # + transfer id u128: a transfer, or a sticky failure
PENDING_PREFIX = b"lg/ps/"  # + pending transfer id: its status
ACCOUNT_TRANSFERS_PREFIX = b"lg/at/"  # + account id + timestamp u64 -> transfer id
BALANCES_PREFIX = b"lg/ab/"  # + account id + timestamp u64 -> balances (history accounts)
TOTALS_PREFIX = b"lg/lt/"  # + ledger u32 -> running sums
EXPIRY_HEAD_PREFIX = b"lg/xh/"  # + second u64 -> page count
EXPIRY_PAGE_PREFIX = b"lg/xp/"  # + second u64 + page u32 -> transfer ids
# Written by the node's operations entry (node/consensus/ledger_ops.py), not by Ledger.apply:
OUTCOME_PREFIX = b"lg/o/"  # + record id (32 bytes) -> the operation's first outcome
APPROVALS_PREFIX = b"lg/ap/"  # + record id -> the operation's opaque approvals, as proposed


def u128(value: int) -> bytes:
    return value.to_bytes(16, "big")


def asset_key(ledger: int) -> bytes:
    return ASSET_PREFIX + ledger.to_bytes(4, "big")


def account_key(account_id: int) -> bytes:
    return ACCOUNT_PREFIX + account_id.to_bytes(16, "big")


def transfer_key(transfer_id: int) -> bytes:
    return TRANSFER_PREFIX + transfer_id.to_bytes(16, "big")


def pending_key(transfer_id: int) -> bytes:
    return PENDING_PREFIX + transfer_id.to_bytes(16, "big")


def totals_key(ledger: int) -> bytes:
    return TOTALS_PREFIX + ledger.to_bytes(4, "big")


def outcome_key(record_id: bytes) -> bytes:
    return OUTCOME_PREFIX + record_id


def approvals_key(record_id: bytes) -> bytes:
    return APPROVALS_PREFIX + record_id


def expiry_head_key(second: int) -> bytes:
    return EXPIRY_HEAD_PREFIX + second.to_bytes(8, "big")


def expiry_page_key(second: int, page: int) -> bytes:
    return EXPIRY_PAGE_PREFIX + second.to_bytes(8, "big") + page.to_bytes(4, "big")


# --- value encodings: version byte first, fixed width ---------------------------------------

VALUE_VERSION = 1
FAILED_VERSION = 0x81  # a sticky failure stored under a transfer id: version + result code
STATE_LAYOUT_VERSION = 1
ASSET_V1 = struct.Struct(">BBB16sQ")  # version, kind, scale, user_data_128, timestamp
ACCOUNT_V1 = struct.Struct(">BIHH16sQ16s16s16s16s")  # + dp, dpo, cp, cpo
ACCOUNT_HEAD_V1 = struct.Struct(">BIHH16sQ")  # the immutable part: version .. timestamp
TRANSFER_V1 = struct.Struct(">B16s16s16s16s16sIIHHQ")
PENDING_V1 = struct.Struct(">BB")
BALANCE_V1 = struct.Struct(">B16s16s16s16s")
TOTALS_V1 = struct.Struct(">B32s32s32s32s")  # sums over many u128 balances need more bits
# layout version, last timestamp, last swept log time (ms), sweep cursor second/page/offset
META_V1 = struct.Struct(">BQQQII")
EXPIRY_HEAD_V1 = struct.Struct(">BI")
INDEX_V1 = struct.Struct(">B16s")  # account-transfer index value: the transfer id


def _unpack(layout: struct.Struct, raw: bytes, what: str) -> tuple[object, ...]:
    if not raw or raw[0] != VALUE_VERSION:
        raise UnsupportedFormat(f"unknown {what} value version")
    if len(raw) != layout.size:
        raise CorruptEntry(f"{what} value has {len(raw)} bytes, expected {layout.size}")
    return layout.unpack(raw)


def _int(raw: object) -> int:
    assert isinstance(raw, bytes)
    return int.from_bytes(raw, "big")


def encode_asset(asset: Asset) -> bytes:
    return ASSET_V1.pack(
        VALUE_VERSION, asset.kind, asset.scale, u128(asset.user_data_128), asset.timestamp
    )


def decode_asset(ledger: int, raw: bytes) -> Asset:
    _, kind, scale, user_data, timestamp = _unpack(ASSET_V1, raw, "asset")
    assert isinstance(kind, int) and isinstance(scale, int) and isinstance(timestamp, int)
    if kind not in AssetKind._value2member_map_ or scale > SCALE_MAX:
        raise CorruptEntry("stored asset has an invalid kind or scale")
    return Asset(ledger, AssetKind(kind), scale, _int(user_data), timestamp)


def encode_account(account: Account) -> bytes:
    return ACCOUNT_V1.pack(
        VALUE_VERSION,
        account.ledger,
        account.code,
        account.flags,
        u128(account.user_data_128),
        account.timestamp,
        u128(account.debits_pending),
        u128(account.debits_posted),
        u128(account.credits_pending),
        u128(account.credits_posted),
    )


def decode_account(account_id: int, raw: bytes) -> Account:
    _, ledger, code, flags, ud, ts, dp, dpo, cp, cpo = _unpack(ACCOUNT_V1, raw, "account")
    assert isinstance(ledger, int) and isinstance(code, int) and isinstance(flags, int)
    assert isinstance(ts, int)
    return Account(
        account_id, ledger, code, flags, _int(ud), ts, _int(dp), _int(dpo), _int(cp), _int(cpo)
    )


def encode_transfer(transfer: Transfer) -> bytes:
    return TRANSFER_V1.pack(
        VALUE_VERSION,
        u128(transfer.debit_account_id),
        u128(transfer.credit_account_id),
        u128(transfer.amount),
        u128(transfer.pending_id),
        u128(transfer.user_data_128),
        transfer.timeout,
        transfer.ledger,
        transfer.code,
        transfer.flags,
        transfer.timestamp,
    )


def decode_transfer(transfer_id: int, raw: bytes) -> Transfer | TransferResult:
    """The stored transfer, or the sticky result code of an id that failed."""
    if raw and raw[0] == FAILED_VERSION:
        try:
            return TransferResult(raw[1:].decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptEntry("stored failure has an unknown result code") from exc
    _, dr, cr, amount, pid, ud, timeout, ledger, code, flags, ts = _unpack(
        TRANSFER_V1, raw, "transfer"
    )
    assert isinstance(timeout, int) and isinstance(ledger, int) and isinstance(code, int)
    assert isinstance(flags, int) and isinstance(ts, int)
    return Transfer(
        transfer_id,
        _int(dr),
        _int(cr),
        _int(amount),
        _int(pid),
        _int(ud),
        timeout,
        ledger,
        code,
        flags,
        ts,
    )


def encode_failure(code: TransferResult) -> bytes:
    return bytes([FAILED_VERSION]) + code.value.encode("ascii")


def encode_balance(balance: AccountBalance) -> bytes:
    return BALANCE_V1.pack(
        VALUE_VERSION,
        u128(balance.debits_pending),
        u128(balance.debits_posted),
        u128(balance.credits_pending),
        u128(balance.credits_posted),
    )


def decode_balance(timestamp: int, raw: bytes) -> AccountBalance:
    _, dp, dpo, cp, cpo = _unpack(BALANCE_V1, raw, "balance")
    return AccountBalance(timestamp, _int(dp), _int(dpo), _int(cp), _int(cpo))


def encode_totals(totals: LedgerTotals) -> bytes:
    return TOTALS_V1.pack(
        VALUE_VERSION,
        totals.debits_posted.to_bytes(32, "big"),
        totals.credits_posted.to_bytes(32, "big"),
        totals.debits_pending.to_bytes(32, "big"),
        totals.credits_pending.to_bytes(32, "big"),
    )


def decode_totals(ledger: int, raw: bytes) -> LedgerTotals:
    _, dpo, cpo, dp, cp = _unpack(TOTALS_V1, raw, "totals")
    return LedgerTotals(ledger, _int(dpo), _int(cpo), _int(dp), _int(cp))


def decode_pending_status(raw: bytes) -> PendingStatus:
    _, status = _unpack(PENDING_V1, raw, "pending status")
    assert isinstance(status, int)
    if status not in PendingStatus._value2member_map_:
        raise CorruptEntry("stored pending status is unknown")
    return PendingStatus(status)


def decode_index(raw: bytes) -> int:
    _, transfer_id = _unpack(INDEX_V1, raw, "account transfer index")
    return _int(transfer_id)
