"""Amounts as they travel in JSON: strings of decimal digits, never numbers, never floats.

JSON numbers lose precision above 2^53 and ``rfc8785`` refuses them, so every amount (and
every u128 id the API shows as a number) crosses the HTTP edge as a string of ASCII digits.
:func:`parse_amount` is strict on purpose: a leading ``+`` or ``-``, spaces, exponents,
fractions, underscores, non-ASCII digits, leading zeros and anything above ``2^128 - 1`` are
refused with :class:`~node.errors.InvalidRequest` (code ``amount_invalid``, the offending
``param`` named in the detail), so bad input is a typed 4xx before it can reach the ledger.
"""

from __future__ import annotations

from node.errors import InvalidRequest

__all__ = ["AMOUNT_DIGITS_MAX", "AMOUNT_MAX", "format_amount", "format_units", "parse_amount"]

AMOUNT_MAX = (1 << 128) - 1
AMOUNT_DIGITS_MAX = len(str(AMOUNT_MAX))  # 39
_DIGITS = frozenset("0123456789")


def parse_amount(text: object, *, param: str = "amount", allow_zero: bool = False) -> int:
    """The integer a JSON string of digits names; refuses everything else (typed)."""
    if not isinstance(text, str):
        # bool is an int subclass and floats lose digits: only strings are amounts.
        raise InvalidRequest(f"{param} must be a string of digits", code="amount_invalid")
    if not text or len(text) > AMOUNT_DIGITS_MAX or not _DIGITS.issuperset(text):
        raise InvalidRequest(
            f"{param} must be 1 to {AMOUNT_DIGITS_MAX} ASCII digits", code="amount_invalid"
        )
    if len(text) > 1 and text[0] == "0":
        raise InvalidRequest(f"{param} must not have leading zeros", code="amount_invalid")
    value = int(text)
    if value > AMOUNT_MAX:
        raise InvalidRequest(f"{param} exceeds 2^128-1", code="amount_invalid")
    if value == 0 and not allow_zero:
        raise InvalidRequest(f"{param} must not be zero", code="amount_invalid")
    return value


def format_amount(value: int) -> str:
    """The JSON form of an amount: its decimal digits (the inverse of :func:`parse_amount`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= AMOUNT_MAX:
        raise InvalidRequest("an amount is an integer in 0..2^128-1", code="amount_invalid")
    return str(value)


def format_units(value: int, scale: int) -> str:
    """A human display of ``value`` minor units at ``scale`` decimals (``1500``, 2 -> ``15.00``).

    For display only: the API and the ledger always carry the integer minor units.
    """
    digits = format_amount(value)
    if not 0 <= scale <= 18:
        raise InvalidRequest("scale is 0..18", code="scale_invalid")
    if scale == 0:
        return digits
    digits = digits.rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"
