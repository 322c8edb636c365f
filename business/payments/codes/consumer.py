"""Consumer-presented one-time codes: the digits a user's app shows at a till, scanned once.

A code is 44 decimal digits, shown as a Code 128 barcode and as a QR (both carry exactly the
digits; :mod:`business.payments.codes.images` draws them)::

    47 1 M SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS C
    |  | |  39 digits: the secret, 16 random bytes as  +- Luhn check digit over the 43 before
    |  | |  a zero-padded decimal (< 2^128)
    |  | +- mode: 0 test, 1 live (ids.Mode)
    |  +--- layout version, 1
    +------ this network's prefix (WeChat Pay's codes start 10-15, Alipay's 25-30: a till that
            takes several wallets routes on the first two digits)

**Entropy.** The secret is 128 uniformly random bits (the caller draws them with
``secrets.token_bytes(16)``; this module stays pure and takes them as input). That is the
floor ``business.identity.ids.code_hash`` sets for any one-time code: it is a bearer secret.
Guessing one of ``n`` live codes takes about ``2^128 / n`` tries, so the per-merchant lockout
after wrong guesses (:mod:`business.payments.core`: ``guesses_max`` per window) is defence in
depth, not the protection.

**How it maps to the identity machine.** The code's *bytes* are the 16 secret bytes, so the
hash the wallet signs in ``code.issue`` (``CodeIssue.code_hash``) and the state stores
(``id/c/<hash>``) is ``ids.code_hash(secret)``: :attr:`ConsumerCode.code_hash`. A till that
scans the digits parses them (:func:`parse_consumer_code`) and hands
``CodeApproval(code.secret)`` to the operation; ``approvals.check_debits`` hashes it and finds
the code. The digits, the secret and the prefix are never stored: only the hash is.
:func:`code_issue_message` builds the ``CodeIssue`` the wallet signs, binding the code to the
wallet, the ledger (asset and mode), an amount limit and a short expiry
(:attr:`ConsumerCodeConfig.validity_s_max`).

**Why a Luhn check digit.** Scanners check their own symbology (Code 128's mod-103 sum, QR's
Reed-Solomon); the check digit is for a cashier who types the digits when the scan fails. It
lets the till say "typo" at once, before any lookup, so a slip of the finger never counts as
a wrong guess toward the lockout. Luhn (ISO/IEC 7812-1, as on card numbers) catches every
single-digit error and every adjacent transposition except 09/90, and tills already know it.
A truncated MAC would need a key at every till and buys nothing here: the secret's 128 bits
already make forgery hopeless, and the check digit is not meant to resist an attacker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from business.identity.eip712 import CodeIssue
from business.identity.ids import Mode, code_hash, mode_of_ledger
from node.errors import ConfigError, InvalidRequest

__all__ = [
    "CODE_DIGITS",
    "NETWORK_PREFIX",
    "ConsumerCode",
    "ConsumerCodeConfig",
    "ConsumerRefusal",
    "code_issue_message",
    "luhn_digit",
    "parse_consumer_code",
]

NETWORK_PREFIX = "47"
LAYOUT_VERSION = "1"
SECRET_BYTES = 16
SECRET_DIGITS = len(str((1 << (8 * SECRET_BYTES)) - 1))  # 39
CODE_DIGITS = len(NETWORK_PREFIX) + 2 + SECRET_DIGITS + 1  # 44
TYPED_CHARS_MAX = 64  # digits plus the spaces an app shows between groups


class ConsumerRefusal(str, enum.Enum):
    """Why scanned or typed digits are not one of our codes; member order is the precedence."""

    CHARSET = "code_charset_invalid"  # not digits (spaces between groups are allowed)
    LENGTH = "code_length_invalid"  # not 44 digits
    PREFIX = "code_prefix_unknown"  # not this network's prefix: another wallet's code
    VERSION = "code_version_unknown"  # a layout this reader does not know
    MODE = "code_mode_invalid"  # the mode digit is neither 0 nor 1
    CHECK_DIGIT = "code_check_digit_invalid"  # a typo: no lookup, no guess counted
    SECRET_RANGE = "code_secret_invalid"  # the 39 digits exceed 2^128 - 1


@dataclass(frozen=True, slots=True)
class ConsumerCodeConfig:
    """Bounds of consumer codes (part of the payment config)."""

    # A code shown at a till lives minutes, not the 30 days ``code.issue`` itself allows.
    validity_s_max: int = 300

    def __post_init__(self) -> None:
        if type(self.validity_s_max) is not int or not 1 <= self.validity_s_max <= 3600:
            raise ConfigError("validity_s_max must be 1..3600 seconds")


@dataclass(frozen=True, slots=True)
class ConsumerCode:
    """One code: its mode and 16 secret bytes; the digits and the hash follow from them."""

    mode: Mode
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise InvalidRequest(f"a code secret is {SECRET_BYTES} bytes", code="field_invalid")
        Mode(self.mode)

    @property
    def digits(self) -> str:
        secret = str(int.from_bytes(self.secret, "big")).rjust(SECRET_DIGITS, "0")
        body = f"{NETWORK_PREFIX}{LAYOUT_VERSION}{int(self.mode)}{secret}"
        return body + str(luhn_digit(body))

    @property
    def code_hash(self) -> bytes:
        """What ``code.issue`` carries and the state keeps (``ids.code_hash`` of the secret)."""
        return code_hash(self.secret)

    def grouped(self) -> str:
        """The digits in groups of four, as an app shows them for typing."""
        d = self.digits
        return " ".join(d[i : i + 4] for i in range(0, len(d), 4))


def luhn_digit(body: str) -> int:
    """The Luhn check digit to append to the decimal string ``body``."""
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:  # the digit left of the check digit is doubled, and every second one on
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10


def _refuse(reason: ConsumerRefusal, detail: str) -> InvalidRequest:
    return InvalidRequest(detail, code=reason.value, param="code")


def parse_consumer_code(text: object) -> ConsumerCode:
    """The code in scanned or typed ``text``, or a typed refusal naming the reason."""
    if not isinstance(text, str) or len(text) > TYPED_CHARS_MAX:
        raise _refuse(ConsumerRefusal.CHARSET, "a code is a string of digits")
    digits = text.replace(" ", "")
    if not all("0" <= c <= "9" for c in digits):
        raise _refuse(ConsumerRefusal.CHARSET, "a code is ASCII digits, spaces between groups")
    if len(digits) != CODE_DIGITS:
        raise _refuse(ConsumerRefusal.LENGTH, f"a code is {CODE_DIGITS} digits")
    p = len(NETWORK_PREFIX)
    if digits[:p] != NETWORK_PREFIX:
        raise _refuse(ConsumerRefusal.PREFIX, "not a code of this network")
    if digits[p] != LAYOUT_VERSION:
        raise _refuse(ConsumerRefusal.VERSION, "unknown code layout")
    if digits[p + 1] not in "01":
        raise _refuse(ConsumerRefusal.MODE, "the mode digit is 0 (test) or 1 (live)")
    if luhn_digit(digits[:-1]) != int(digits[-1]):
        raise _refuse(ConsumerRefusal.CHECK_DIGIT, "the check digit is wrong: a typo?")
    secret = int(digits[p + 2 : -1])
    if secret >> (8 * SECRET_BYTES):
        raise _refuse(ConsumerRefusal.SECRET_RANGE, "the secret digits exceed 2^128 - 1")
    code = ConsumerCode(Mode(int(digits[p + 1])), secret.to_bytes(SECRET_BYTES, "big"))
    if code.digits != digits:  # paired check: the parse is the inverse of the layout
        raise AssertionError("a consumer code did not survive its own layout")
    return code


def code_issue_message(
    code: ConsumerCode,
    *,
    wallet: bytes,
    ledger: int,
    amount_limit: int,
    now_s: int,
    validity_s: int,
    config: ConsumerCodeConfig,
) -> CodeIssue:
    """The ``CodeIssue`` the wallet signs for ``code``: one wallet, one ledger, at most
    ``amount_limit``, expiring ``validity_s`` after ``now_s`` (the caller's clock)."""
    if mode_of_ledger(ledger) != code.mode:
        raise InvalidRequest("the ledger belongs to the other mode", code="ledger_wrong_mode")
    if type(validity_s) is not int or not 0 < validity_s <= config.validity_s_max:
        raise InvalidRequest(
            f"validity_s must be 1..{config.validity_s_max}",
            code="field_invalid",
            param="validity_s",
        )
    if type(amount_limit) is not int or amount_limit <= 0:
        raise InvalidRequest("amount_limit must be positive", code="amount_invalid")
    expiry = now_s + validity_s
    return CodeIssue(int(code.mode), code.code_hash, ledger, amount_limit, expiry, wallet)
