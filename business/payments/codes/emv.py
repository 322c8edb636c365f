"""EMVCo merchant-presented QR payloads, any network's: TLV read and write, CRC, field checks.

A payload is a string of data objects ``ID LL VALUE``: a two-digit id, a two-digit length
``01``..``99`` counting *characters*, then that many characters. Ids 26-51 (merchant account
information), 62 (additional data), 64 (alternate language) and 80-99 (unreserved) are
templates whose value is itself a TLV string; inside 62, ids 50-99 are templates again.
``00`` (format indicator, "01") comes first and ``63`` (the CRC) last; every other id may
appear in any order but at most once per level. The CRC is CRC-16/CCITT-FALSE (polynomial
0x1021, initial 0xFFFF, no reflection, no final xor) over the UTF-8 bytes of everything before
its value, *including* the ``6304`` of the CRC object itself, written as four uppercase hex
digits. The standard library's :func:`binascii.crc_hqx` is exactly this CRC when seeded with
0xFFFF (its check value for ``123456789`` is 0x29B1, tested).

:func:`decode` is this module's reader: it checks the whole string's size and characters,
every id and length, the order of ``00`` and ``63``, duplicates at every level, the CRC, and
the format of the EMVCo root fields it knows, and refuses anything else with
:class:`~node.errors.InvalidRequest` whose ``code`` is one :class:`Refusal` and whose
``param`` names the data object (``"62.05"``). Values are "ans" (printable ASCII, 0x20-0x7E)
except under template 64, which carries a merchant's name in another script in UTF-8.

The reader is liberal on display lengths other networks exceed in the field (a published
Argentinian example has a 26-character name where EMVCo says 25): it enforces the TLV limit
of 99 there, while :mod:`business.payments.codes.merchant`, the writer of *our* payloads,
enforces EMVCo's 25 and 15. :func:`encode` writes any list of data objects (used to
reproduce published payloads byte for byte) and appends the CRC.
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.errors import InvalidRequest

__all__ = [
    "PAYLOAD_CHARS_MAX",
    "DataObject",
    "Payload",
    "Refusal",
    "crc16",
    "decode",
    "encode",
    "is_template",
]

PAYLOAD_CHARS_MAX = 512  # EMVCo: a payload "should not exceed 512 alphanumeric characters"
VALUE_CHARS_MAX = 99  # a two-digit length
AMOUNT_CHARS_MAX = 13
TAG_FORMAT, TAG_INITIATION, TAG_CATEGORY, TAG_CURRENCY, TAG_AMOUNT = "00", "01", "52", "53", "54"
TAG_TIP, TAG_TIP_FIXED, TAG_TIP_PERCENT = "55", "56", "57"
TAG_COUNTRY, TAG_NAME, TAG_CITY, TAG_POSTAL = "58", "59", "60", "61"
TAG_ADDITIONAL, TAG_CRC, TAG_LANGUAGE = "62", "63", "64"
MANDATORY = (TAG_CATEGORY, TAG_CURRENCY, TAG_COUNTRY, TAG_NAME, TAG_CITY)
CRC_HEADER = TAG_CRC + "04"

_AMOUNT = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", re.ASCII)
_HEX4 = re.compile(r"[0-9A-F]{4}", re.ASCII)


class Refusal(str, enum.Enum):
    """Why a payload was refused: the ``code`` of the :class:`InvalidRequest` raised.

    Member order is the precedence: the reader checks in this order (the TLV structure in one
    left-to-right scan, depth first), so one input always fails the same way.
    """

    PAYLOAD_INVALID = "qr_payload_invalid"  # not a string, empty, or over 512 characters
    TLV_TRUNCATED = "qr_tlv_truncated"  # fewer characters left than an id, length or value
    TAG_INVALID = "qr_tag_invalid"  # an id that is not two digits
    LENGTH_INVALID = "qr_length_invalid"  # a length that is not two digits or is 00
    TAG_DUPLICATED = "qr_tag_duplicated"  # the same id twice at one level
    CHARSET_INVALID = "qr_charset_invalid"  # a character outside "ans" (or 64's printable)
    FORMAT_INDICATOR_INVALID = "qr_format_indicator_invalid"  # 00 missing, not first, not 01
    CRC_MISSING = "qr_crc_missing"  # 63 absent, not last, or not 4 uppercase hex digits
    CRC_MISMATCH = "qr_crc_mismatch"  # the CRC does not match the payload
    FIELD_MISSING = "qr_field_missing"  # a mandatory root field (52, 53, 58, 59, 60) absent
    FIELD_INVALID = "qr_field_invalid"  # a known field's value is out of its format
    # Refusals of our network's payloads (business.payments.codes.merchant):
    NETWORK_TEMPLATE_MISSING = "qr_network_template_missing"  # no 26-51 with our GUID
    NETWORK_TEMPLATE_DUPLICATED = "qr_network_template_duplicated"
    NETWORK_FIELD_INVALID = "qr_network_field_invalid"  # a field of our template or its use
    SHAPE_INVALID = "qr_shape_invalid"  # static with an amount, dynamic without one, ...


def refuse(reason: Refusal, detail: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(detail, code=reason.value, param=param)


@dataclass(frozen=True, slots=True)
class DataObject:
    """One ``ID LL VALUE``; a template's ``children`` are its value, parsed (else empty)."""

    tag: str
    value: str
    children: tuple[DataObject, ...] = ()


@dataclass(frozen=True, slots=True)
class Payload:
    """A decoded payload: the root data objects in their order, ``00`` first, ``63`` last."""

    objects: tuple[DataObject, ...]

    def get(self, tag: str) -> DataObject | None:
        return next((o for o in self.objects if o.tag == tag), None)

    def value(self, tag: str) -> str | None:
        o = self.get(tag)
        return None if o is None else o.value


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc_hqx`` is the unreflected 0x1021 CRC, seed 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def is_template(tag: str, parent: str | None) -> bool:
    """Whether data object ``tag`` under ``parent`` (None at the root) holds nested TLV."""
    n = int(tag)
    if parent is None:
        return 26 <= n <= 51 or n in (62, 64) or 80 <= n <= 99
    return parent == TAG_ADDITIONAL and 50 <= n <= 99


def _tlv(tag: str, value: str) -> str:
    if len(tag) != 2 or not tag.isascii() or not tag.isdigit():
        raise refuse(Refusal.TAG_INVALID, f"id {tag!r} is not two digits", tag)
    if not 0 < len(value) <= VALUE_CHARS_MAX:
        raise refuse(Refusal.LENGTH_INVALID, f"value of {tag} is not 1..99 characters", tag)
    return f"{tag}{len(value):02d}{value}"


def encode(objects: Sequence[DataObject]) -> str:
    """The payload of ``objects`` (in their order, templates from their ``children`` when
    given) with ``6304`` and its CRC appended; checked by decoding it back."""
    body = "".join(_write(o) for o in objects) + CRC_HEADER
    payload = body + f"{crc16(body.encode()):04X}"
    decode(payload)  # the writer's output must pass the reader: never emit what we refuse
    return payload


def _write(o: DataObject) -> str:
    if o.children:
        return _tlv(o.tag, "".join(_write(c) for c in o.children))
    return _tlv(o.tag, o.value)


def decode(payload: object) -> Payload:
    """The data objects of ``payload``, every check passed; else a typed refusal."""
    if not isinstance(payload, str) or not 0 < len(payload) <= PAYLOAD_CHARS_MAX:
        raise refuse(Refusal.PAYLOAD_INVALID, f"a payload is 1..{PAYLOAD_CHARS_MAX} characters")
    objects = _parse(payload, None)
    _check_charset(objects, None, ans=True)
    _check_order(objects)
    body, crc = payload[:-4], payload[-4:]
    if f"{crc16(body.encode()):04X}" != crc:
        raise refuse(Refusal.CRC_MISMATCH, "the CRC does not match the payload", TAG_CRC)
    _check_fields(objects)
    return Payload(objects)


def _parse(text: str, parent: str | None) -> tuple[DataObject, ...]:
    out: list[DataObject] = []
    seen: set[str] = set()
    i = 0
    while i < len(text):
        where = parent or "root"
        if len(text) - i < 4:
            raise refuse(Refusal.TLV_TRUNCATED, f"{where}: a data object header is cut", parent)
        tag, length = text[i : i + 2], text[i + 2 : i + 4]
        param = tag if parent is None else f"{parent}.{tag}"
        if not (tag.isascii() and tag.isdigit()):
            raise refuse(Refusal.TAG_INVALID, f"{where}: id {tag!r} is not two digits", parent)
        if not (length.isascii() and length.isdigit()) or length == "00":
            raise refuse(Refusal.LENGTH_INVALID, f"{param}: length {length!r} is not 01..99", param)
        end = i + 4 + int(length)
        if end > len(text):
            raise refuse(Refusal.TLV_TRUNCATED, f"{param}: the value is cut", param)
        if tag in seen:
            raise refuse(Refusal.TAG_DUPLICATED, f"{param} appears twice", param)
        seen.add(tag)
        value = text[i + 4 : end]
        nested = _parse(value, param) if is_template(tag, parent) else ()
        out.append(DataObject(tag, value, nested))
        i = end
    return tuple(out)


def _check_charset(objects: tuple[DataObject, ...], parent: str | None, *, ans: bool) -> None:
    for o in objects:
        param = o.tag if parent is None else f"{parent}.{o.tag}"
        if o.children:
            # Template 64 carries a name in another script: any printable character there.
            _check_charset(o.children, param, ans=ans and param != TAG_LANGUAGE)
        elif not (all(" " <= c <= "~" for c in o.value) if ans else o.value.isprintable()):
            raise refuse(Refusal.CHARSET_INVALID, f"{param} has a character out of set", param)


def _check_order(objects: tuple[DataObject, ...]) -> None:
    first = objects[0]
    if first.tag != TAG_FORMAT or first.value != "01":
        raise refuse(Refusal.FORMAT_INDICATOR_INVALID, "00 must come first and be 01", "00")
    last = objects[-1]
    if last.tag != TAG_CRC or not _HEX4.fullmatch(last.value):
        raise refuse(Refusal.CRC_MISSING, "63 must come last: 4 uppercase hex digits", "63")


def _digits(value: str, size: int) -> bool:
    return len(value) == size and value.isascii() and value.isdigit()


def is_amount(value: str) -> bool:
    """EMVCo's amount format: up to 13 characters, digits and at most one ".", not zero."""
    return (
        len(value) <= AMOUNT_CHARS_MAX
        and _AMOUNT.fullmatch(value) is not None
        and any(c not in "0." for c in value)
    )


# Root fields the reader knows, and the format each must have when present.
_FORMATS: dict[str, Callable[[str], bool]] = {
    TAG_INITIATION: lambda v: v in ("11", "12"),
    TAG_CATEGORY: lambda v: _digits(v, 4),
    TAG_CURRENCY: lambda v: _digits(v, 3),
    TAG_AMOUNT: is_amount,
    TAG_TIP: lambda v: v in ("01", "02", "03"),
    TAG_TIP_FIXED: is_amount,
    TAG_TIP_PERCENT: lambda v: is_amount(v) and len(v) <= 5,
    TAG_COUNTRY: lambda v: len(v) == 2 and v.isascii() and v.isupper() and v.isalpha(),
}


def _check_fields(objects: tuple[DataObject, ...]) -> None:
    tags = {o.tag for o in objects}
    for tag in MANDATORY:
        if tag not in tags:
            raise refuse(Refusal.FIELD_MISSING, f"{tag} is mandatory", tag)
    for o in objects:
        check = _FORMATS.get(o.tag)
        if check is not None and not check(o.value):
            raise refuse(Refusal.FIELD_INVALID, f"{o.tag} has an invalid value", o.tag)
