"""The payments vocabulary: requests, result codes, states, stored records and their encodings.

Everything here is data: frozen dataclasses for the requests a log entry will carry and the
records the state holds, ``str`` enums for the result codes (their member order IS the
precedence of the checks, see :mod:`business.payments.core`), ``IntEnum`` states and commands
of the two state machines, the key layout under ``pm/`` and versioned msgpack values (amounts
as 16-byte big-endian ``bin``, as the Bridge stores them). A request cannot be built with a
field of the wrong type or width: :class:`~node.errors.InvalidRequest`, code ``field_invalid``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from business.bridge.model import AMOUNT_MAX, BPS_DENOMINATOR, U32_MAX, amount_of, pack, unpack
from node.errors import ConfigError, InvalidRequest

__all__ = [
    "AMOUNT_MAX",
    "BPS_DENOMINATOR",
    "PAYMENTS_FEATURE_VERSION",
    "AccountCode",
    "Authorise",
    "CancelOrder",
    "Capture",
    "Command",
    "ExpireOrder",
    "FulfilOrder",
    "Listing",
    "OrderCommand",
    "OrderRecord",
    "OrderState",
    "PaymentRecord",
    "PaymentResult",
    "PaymentState",
    "PaymentsConfig",
    "PlaceOrder",
    "PutListing",
    "RedeemCode",
    "Refund",
    "RefundOrder",
    "Request",
    "SetFee",
    "TransferCode",
    "Void",
]

# The log feature version from which payments requests ride in ledger operations
# (node/consensus/payments_ops.py) and the outbox's ``payments.ack`` entry exists.
PAYMENTS_FEATURE_VERSION = 9


class PaymentResult(str, enum.Enum):
    """The outcome of a payments request; member order is the precedence of the checks."""

    OK = "ok"
    # the request against the configured bounds
    BOUND_EXCEEDED = "bound_exceeded"
    NOT_PLATFORM = "not_platform"  # an operator's request from a partner
    # consumer-presented codes (RedeemCode)
    MERCHANT_LOCKED_OUT = "merchant_locked_out"
    CODE_UNKNOWN = "code_unknown"
    CODE_WRONG_MODE = "code_wrong_mode"
    CODE_USED = "code_used"
    CODE_EXPIRED = "code_expired"
    CODE_LEDGER_MISMATCH = "code_ledger_mismatch"
    CODE_LIMIT_EXCEEDED = "code_limit_exceeded"
    # the operation's one-time code approval is not the secret of the redeemed code's hash
    # (on the log: checked by node/consensus/payments_ops.py before identity consumes it)
    CODE_MISMATCH = "code_mismatch"
    # the asset: BAAS, or the merchant's own points or token
    ASSET_NOT_FOUND = "asset_not_found"
    ASSET_FOREIGN = "asset_foreign"
    # listings
    LISTING_NOT_FOUND = "listing_not_found"
    LISTING_FOREIGN = "listing_foreign"
    LISTING_INACTIVE = "listing_inactive"
    LISTINGS_FULL = "listings_full"
    SOLD_OUT = "sold_out"
    # the order state machine (refusals of ORDER_TABLE)
    ORDER_EXISTS = "order_exists"
    ORDER_NOT_FOUND = "order_not_found"
    ORDER_NOT_FULFILLED = "order_not_fulfilled"
    ORDER_ALREADY_FULFILLED = "order_already_fulfilled"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_EXPIRED = "order_expired"
    ORDER_NOT_EXPIRED = "order_not_expired"
    ORDER_FULLY_REFUNDED = "order_fully_refunded"
    # a capture, void or refund of an order's payment: the order's own commands do it (so
    # the order's state and its stock follow)
    PAYMENT_OF_ORDER = "payment_of_order"
    # the payment state machine (refusals of PAYMENT_TABLE)
    PAYMENT_EXISTS = "payment_exists"
    PAYMENT_NOT_FOUND = "payment_not_found"
    PAYMENT_VOIDED = "payment_voided"
    PAYMENT_EXPIRED = "payment_expired"
    PAYMENT_NOT_CAPTURED = "payment_not_captured"
    PAYMENT_ALREADY_CAPTURED = "payment_already_captured"
    PAYMENT_FULLY_REFUNDED = "payment_fully_refunded"
    # amounts
    AMOUNT_EXCEEDS_AUTHORISED = "amount_exceeds_authorised"
    REFUND_EXCEEDS_CAPTURED = "refund_exceeds_captured"
    REFUNDS_FULL = "refunds_full"
    # the ledger's verdict on the chain (mapped from its result codes)
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the user's wallet
    MERCHANT_INSUFFICIENT_FUNDS = "merchant_insufficient_funds"  # a refund, the settlement
    LEDGER_REFUSED = "ledger_refused"

    @property
    def succeeded(self) -> bool:
        return self is PaymentResult.OK


class PaymentState(enum.IntEnum):
    """A payment's states. ``EXPIRED`` is never written: it is an authorised payment whose
    pending transfer the ledger holds expired (see :func:`business.payments.core.payment_state`)."""

    AUTHORISED = 1
    CAPTURED = 2  # captured, refunds (if any) below the captured amount
    REFUNDED = 3  # refunds sum to the captured amount
    VOIDED = 4
    EXPIRED = 5


class Command(enum.IntEnum):
    """What a request does to a payment (the columns of the payment table)."""

    AUTHORISE = 1
    CAPTURE = 2
    VOID = 3
    REFUND = 4


class OrderState(enum.IntEnum):
    """An order's states. ``LAPSED`` is never written: an authorised order whose payment
    expired, its stock still held until an :class:`ExpireOrder` releases it."""

    AUTHORISED = 1  # stock reserved, payment authorised
    FULFILLED = 2  # payment captured
    REFUNDED = 3  # payment fully refunded
    CANCELLED = 4  # payment voided, stock released
    EXPIRED = 5  # payment expired, stock released
    LAPSED = 6


class OrderCommand(enum.IntEnum):
    PLACE = 1
    FULFIL = 2
    CANCEL = 3
    EXPIRE = 4
    REFUND = 5


class AccountCode(enum.IntEnum):
    """The ledger ``code`` (account type) of accounts payments creates (the Bridge's values)."""

    WALLET = 1
    FEES = 13
    SETTLEMENT = 16  # 10 + identity's Role.SETTLEMENT


class TransferCode(enum.IntEnum):
    """The ledger ``code`` (reason) of every transfer payments makes."""

    AUTHORISE = 201  # the pending transfer; its post (capture) and void inherit it
    FEE = 202
    REFUND = 203


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """Hard bounds of the payments core, validated at construction (part of the log format
    once wired: every replica must refuse alike)."""

    capture_window_s_max: int = 7 * 86_400  # Stripe's and the card networks' 7 days
    refunds_per_payment_max: int = 16  # refunds one payment may get
    guesses_max: int = 10  # unknown codes a merchant may present per guess window ...
    guess_window_s: int = 3600  # ... then it is locked out until the window ends
    listings_per_partner_max: int = 10_000
    title_chars_max: int = 120
    description_chars_max: int = 2000
    order_quantity_max: int = 1000
    search_scan_max: int = 1000  # listings one search reads, whatever it finds
    search_limit_max: int = 100  # listings one search page returns (Stripe's bound)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("capture_window_s_max", 1, 30 * 86_400),
            ("refunds_per_payment_max", 1, 1024),
            ("guesses_max", 1, 1_000_000),
            ("guess_window_s", 1, 30 * 86_400),
            ("listings_per_partner_max", 1, 10_000_000),
            ("title_chars_max", 1, 1000),
            ("description_chars_max", 1, 100_000),
            ("order_quantity_max", 1, 1_000_000),
            ("search_scan_max", 1, 1_000_000),
            ("search_limit_max", 1, 1000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"payments {name} must be an integer in {low}..{high}")


# --- request shape checks -----------------------------------------------------------------


def _check(obj: object, ints: dict[str, tuple[int, int]], sizes: dict[str, int]) -> None:
    """Every named int within its range and every named bytes of its size, else a 400."""
    for name, (low, high) in ints.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(
                f"{type(obj).__name__}.{name} must be an integer in {low}..{high}",
                code="field_invalid",
                param=name,
            )
    for name, size in sizes.items():
        value = getattr(obj, name)
        if not isinstance(value, bytes) or len(value) != size:
            raise InvalidRequest(
                f"{type(obj).__name__}.{name} must be {size} bytes",
                code="field_invalid",
                param=name,
            )


_OP = {"op": 32, "partner": 16}
_ACCOUNT = (1, AMOUNT_MAX - 1)  # ledger account ids: never 0 or 2^128-1
_AMOUNT = (1, AMOUNT_MAX)


@dataclass(frozen=True, slots=True)
class Authorise:
    """The user (``wallet_account``, their account on ``ledger``) pays ``partner`` up to
    ``amount``: a pending transfer held for ``capture_window_s``. The payment's id is ``op``.
    Needs the user's approval (identity's ``check_debits``: it debits their wallet)."""

    op: bytes
    partner: bytes  # the merchant
    ledger: int
    wallet_account: int
    amount: int
    capture_window_s: int

    def __post_init__(self) -> None:
        _check(
            self,
            {"ledger": (1, U32_MAX), "wallet_account": _ACCOUNT, "amount": _AMOUNT,
             "capture_window_s": (1, U32_MAX)},
            _OP,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RedeemCode:
    """The merchant scanned a consumer-presented code: authorise (``capture``: and capture at
    once) ``amount`` from the wallet the code is bound to. ``code_hash`` is
    ``ids.code_hash`` of the scanned secret; the secret itself travels as the operation's
    ``CodeApproval``, which identity's ``check_debits`` hashes and consumes."""

    op: bytes
    partner: bytes
    ledger: int
    code_hash: bytes
    amount: int
    capture: bool
    capture_window_s: int

    def __post_init__(self) -> None:
        _check(
            self,
            {"ledger": (1, U32_MAX), "amount": _AMOUNT, "capture_window_s": (1, U32_MAX)},
            {**_OP, "code_hash": 32},
        )
        if type(self.capture) is not bool:
            raise InvalidRequest("RedeemCode.capture must be a bool", code="field_invalid")


@dataclass(frozen=True, slots=True)
class Capture:
    """Capture ``amount`` (at most the authorised) of ``payment``; the rest is released."""

    op: bytes
    partner: bytes
    payment: bytes
    amount: int

    def __post_init__(self) -> None:
        _check(self, {"amount": _AMOUNT}, {**_OP, "payment": 32})


@dataclass(frozen=True, slots=True)
class Void:
    op: bytes
    partner: bytes
    payment: bytes

    def __post_init__(self) -> None:
        _check(self, {}, {**_OP, "payment": 32})


@dataclass(frozen=True, slots=True)
class Refund:
    """Give ``amount`` of a captured payment back (the sum never above the captured)."""

    op: bytes
    partner: bytes
    payment: bytes
    amount: int

    def __post_init__(self) -> None:
        _check(self, {"amount": _AMOUNT}, {**_OP, "payment": 32})


@dataclass(frozen=True, slots=True)
class SetFee:
    """The operator sets the platform fee on captures of one ledger (stamped on payments when
    they are authorised). ``partner`` is the operator's scope (all zeros)."""

    op: bytes
    partner: bytes
    ledger: int
    fee_bps: int
    fee_min: int

    def __post_init__(self) -> None:
        _check(
            self,
            {"ledger": (1, U32_MAX), "fee_bps": (0, BPS_DENOMINATOR), "fee_min": (0, AMOUNT_MAX)},
            _OP,
        )


@dataclass(frozen=True, slots=True)
class PutListing:
    """Create or replace ``listing`` (a 16-byte id the partner's key derives). ``stock`` is
    what is available now (reserved units are in orders)."""

    op: bytes
    partner: bytes
    listing: bytes
    ledger: int  # BAAS or the partner's points, in one mode
    price: int
    stock: int
    active: bool
    title: str
    description: str

    def __post_init__(self) -> None:
        _check(
            self,
            {"ledger": (1, U32_MAX), "price": _AMOUNT, "stock": (0, U32_MAX)},
            {**_OP, "listing": 16},
        )
        if type(self.active) is not bool:
            raise InvalidRequest("PutListing.active must be a bool", code="field_invalid")
        for name in ("title", "description"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRequest(f"PutListing.{name} must be text", code="field_invalid")


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """A user orders ``quantity`` of ``listing``: stock reserved and the payment authorised in
    one operation (the order's id and its payment's id are ``op``)."""

    op: bytes
    partner: bytes  # whose app placed it (the listing's partner is the merchant)
    listing: bytes
    wallet_account: int
    quantity: int
    capture_window_s: int

    def __post_init__(self) -> None:
        _check(
            self,
            {"wallet_account": _ACCOUNT, "quantity": (1, U32_MAX),
             "capture_window_s": (1, U32_MAX)},
            {**_OP, "listing": 16},
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _OrderStep:
    """A merchant's step on one of its orders."""

    op: bytes
    partner: bytes  # the merchant (for ExpireOrder: or the platform, all zeros)
    order: bytes

    def __post_init__(self) -> None:
        _check(self, {}, {**_OP, "order": 32})


@dataclass(frozen=True, slots=True)
class FulfilOrder(_OrderStep):
    """Capture the order's payment in full."""


@dataclass(frozen=True, slots=True)
class CancelOrder(_OrderStep):
    """Void the order's payment and return its stock."""


@dataclass(frozen=True, slots=True)
class ExpireOrder(_OrderStep):
    """Return the stock of an order whose payment expired (the merchant's, or a sweep's)."""


@dataclass(frozen=True, slots=True)
class RefundOrder:
    op: bytes
    partner: bytes
    order: bytes
    amount: int

    def __post_init__(self) -> None:
        _check(self, {"amount": _AMOUNT}, {**_OP, "order": 32})


Request = (
    Authorise
    | RedeemCode
    | Capture
    | Void
    | Refund
    | SetFee
    | PutListing
    | PlaceOrder
    | FulfilOrder
    | CancelOrder
    | ExpireOrder
    | RefundOrder
)


# --- stored records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    partner: bytes  # the merchant
    ledger: int
    wallet_account: int
    settlement: int  # the merchant's settlement account on ``ledger``
    pending: int  # the ledger id of the pending transfer
    amount: int  # authorised
    captured: int
    refunded: int
    refunds: int  # how many refunds
    state: PaymentState  # AUTHORISED, CAPTURED, REFUNDED or VOIDED (never EXPIRED)
    fee_bps: int  # the fee schedule stamped at authorisation
    fee_min: int
    fee: int  # the fee taken at capture


@dataclass(frozen=True, slots=True)
class Listing:
    partner: bytes
    ledger: int
    price: int
    stock: int
    active: bool
    title: str
    description: str


@dataclass(frozen=True, slots=True)
class OrderRecord:
    listing: bytes
    merchant: bytes  # the listing's partner
    quantity: int
    state: OrderState  # never LAPSED


# --- key layout (all under one prefix) -------------------------------------------------------

PREFIX = b"pm/"
OP_PREFIX = b"pm/op/"  # + op id -> the result code (sticky)
PAYMENT_PREFIX = b"pm/p/"  # + payment id (32) -> PaymentRecord
FEE_PREFIX = b"pm/fe/"  # + ledger u32 -> (fee_bps, fee_min)
GUESS_PREFIX = b"pm/gu/"  # + partner + mode byte -> (window start ms, wrong guesses)
LISTING_PREFIX = b"pm/li/"  # + listing id (16) -> Listing
LISTING_COUNT_PREFIX = b"pm/lc/"  # + partner -> how many listings it has
ORDER_PREFIX = b"pm/or/"  # + order id (32) -> OrderRecord
# + merchant (16) + mode byte + its pending transfer's timestamp (ns, u64) + payment id (32)
# -> b"": a merchant's payments in time order (written on the log from feature 9)
PARTNER_PAYMENTS_PREFIX = b"pm/pp/"


def payment_key(payment: bytes) -> bytes:
    return PAYMENT_PREFIX + payment


def fee_key(ledger: int) -> bytes:
    return FEE_PREFIX + ledger.to_bytes(4, "big")


def guess_key(partner: bytes, mode: int) -> bytes:
    return GUESS_PREFIX + partner + bytes((mode,))


def partner_payment_key(partner: bytes, mode: int, timestamp_ns: int, payment: bytes) -> bytes:
    return (
        PARTNER_PAYMENTS_PREFIX
        + partner
        + bytes((mode,))
        + timestamp_ns.to_bytes(8, "big")
        + payment
    )


def listing_key(listing: bytes) -> bytes:
    return LISTING_PREFIX + listing


def order_key(order: bytes) -> bytes:
    return ORDER_PREFIX + order


def _u128(value: int) -> bytes:
    return value.to_bytes(16, "big")


def encode_payment(p: PaymentRecord) -> bytes:
    return pack(
        p.partner, p.ledger, _u128(p.wallet_account), _u128(p.settlement), _u128(p.pending),
        _u128(p.amount), _u128(p.captured), _u128(p.refunded), p.refunds, int(p.state),
        p.fee_bps, _u128(p.fee_min), _u128(p.fee),
    )  # fmt: skip


def decode_payment(raw: bytes) -> PaymentRecord:
    f = unpack(raw, "payment", 13)
    return PaymentRecord(
        f[0], f[1], amount_of(f[2]), amount_of(f[3]), amount_of(f[4]), amount_of(f[5]),
        amount_of(f[6]), amount_of(f[7]), f[8], PaymentState(f[9]), f[10], amount_of(f[11]),
        amount_of(f[12]),
    )  # fmt: skip


def encode_listing(x: Listing) -> bytes:
    return pack(x.partner, x.ledger, _u128(x.price), x.stock, x.active, x.title, x.description)


def decode_listing(raw: bytes) -> Listing:
    partner, ledger, price, stock, active, title, description = unpack(raw, "listing", 7)
    return Listing(partner, ledger, amount_of(price), stock, active, title, description)


def encode_order(o: OrderRecord) -> bytes:
    return pack(o.listing, o.merchant, o.quantity, int(o.state))


def decode_order(raw: bytes) -> OrderRecord:
    listing, merchant, quantity, state = unpack(raw, "order", 4)
    return OrderRecord(listing, merchant, quantity, OrderState(state))
