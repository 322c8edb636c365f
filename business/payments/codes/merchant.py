"""Our network's merchant-presented QR: what a partner's terminal shows and a payer's app reads.

A :class:`MerchantQr` is either **static** (point of initiation ``11``: printed once, the payer
enters the amount; no amount, reference or expiry) or **dynamic** (``12``: one payment, with
the amount in minor units, one reference and an expiry in Unix seconds). :func:`encode_merchant`
writes it as an EMVCo payload (:mod:`business.payments.codes.emv`); :func:`decode_merchant`
reads one back, refusing with a named :class:`~business.payments.codes.emv.Refusal`.

How the asset is carried (BAAS and partner points have no ISO 4217 code): EMVCo makes ``53``
mandatory and ISO 4217 numeric, so ``53`` is ``999``, ISO 4217's XXX, "transactions where no
currency is involved" -- a card or bank wallet that reads our QR sees no currency it can pay in,
rather than mistaking BAAS for a fiat amount. What ``53`` would have said is in our own
unreserved template (we write ``80``; EMVCo's 80-99 are free for such use and also open with a
GUID in ``00``), while the payee is in our merchant account template (we write ``26``; a reader
finds both by :data:`NETWORK_GUID` among 26-51 and 80-99, so a QR that also carries a card
network's templates still works). Both templates open with sub-id ``00`` = :data:`NETWORK_GUID`,
a hyphenless UUID (EMVCo allows an AID, a UUID or a reverse domain; we own no domain, and a
random UUID is unique without one). One template could not hold it all: a value is at most 99
characters, and the GUID, merchant, ledger, scale and expiry need up to 106.

=========  ===================================================================================
26 ``01``  layout version of both templates, ``1``; another is refused (``unsupported_format``)
26 ``02``  the merchant: the partner's 16-byte id (``business.identity.ids.partner_id``), 32
           lowercase hex digits
80 ``01``  the ledger (decimal u32): the asset *and* the mode, since a ledger's parity is its
           mode (``business.identity.ids.ledger_number``): a test QR is never paid on a live one
80 ``02``  the asset's scale (decimal places, 0..18): ``54`` becomes integer minor units with
           it, exactly; the payment route must check it equals the asset's registered scale
80 ``03``  dynamic only: the expiry, Unix seconds
=========  ===================================================================================

``54`` is EMVCo's decimal string of at most 13 characters: the integer minor units divided by
``10**scale`` written with no trailing fractional zeros (``150`` at scale 2 is ``1.5``), never
through a float. The reference is ``62``/``05``, the "reference label" (at most 25 characters).
The QR is not authenticated and need not be: whoever can replace a printed QR can show their
own; what makes a dynamic QR single use and expiring is the payment route, which finds the
reference the merchant issued and checks amount, expiry and use there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from business.identity.ids import ID_MAX, U32_MAX
from business.payments.codes.emv import (
    AMOUNT_CHARS_MAX,
    TAG_ADDITIONAL,
    TAG_AMOUNT,
    TAG_CATEGORY,
    TAG_CITY,
    TAG_COUNTRY,
    TAG_CURRENCY,
    TAG_FORMAT,
    TAG_INITIATION,
    TAG_NAME,
    DataObject,
    Payload,
    Refusal,
    decode,
    encode,
    refuse,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "CURRENCY_NONE",
    "NETWORK_GUID",
    "MerchantQr",
    "decode_merchant",
    "encode_merchant",
    "format_emv_amount",
    "parse_emv_amount",
]

NETWORK_GUID = "FF6DA5BC634D4CDE80EF77DCA18E4F53"
TEMPLATE_VERSION = "1"
MERCHANT_TAG = "26"  # the ids we write; a reader looks for the GUID in 26-51 and 80-99
ASSET_TAG = "80"
CURRENCY_NONE = "999"  # ISO 4217 XXX: no currency involved (the asset is in our template)
STATIC, DYNAMIC = "11", "12"
SCALE_MAX = 18
NAME_CHARS_MAX = 25  # EMVCo 59
CITY_CHARS_MAX = 15  # EMVCo 60
REFERENCE_CHARS_MAX = 25  # EMVCo 62 sub-ids
REFERENCE_TAG = "05"  # "reference label" inside 62
SUB_GUID = "00"
SUB_VERSION, SUB_MERCHANT = "01", "02"  # in the merchant account template
SUB_LEDGER, SUB_SCALE, SUB_EXPIRY = "01", "02", "03"  # in the asset template
EXPIRY_MAX = (1 << 64) - 1  # the identity and ledger entries hold Unix seconds as u64


@dataclass(frozen=True, slots=True)
class MerchantQr:
    """The fields of one merchant-presented QR; construction checks every one (typed)."""

    merchant: bytes  # 16: the partner's id
    ledger: int  # u32, not 0: asset and mode
    scale: int  # the asset's decimal places
    name: str  # 59, at most 25 characters
    city: str  # 60, at most 15 characters
    country: str  # 58, ISO 3166-1 alpha-2
    category: str = "0000"  # 52, the merchant category code (MCC)
    amount: int | None = None  # minor units; dynamic only
    reference: str | None = None  # 62/05; dynamic only
    expiry: int | None = None  # Unix s; dynamic only

    def __post_init__(self) -> None:
        if not isinstance(self.merchant, bytes) or len(self.merchant) != 16:
            raise _invalid("merchant must be a 16-byte partner id", "merchant")
        if type(self.ledger) is not int or not 0 < self.ledger <= U32_MAX:
            raise _invalid("ledger must be a u32 other than 0", "ledger")
        if type(self.scale) is not int or not 0 <= self.scale <= SCALE_MAX:
            raise _invalid(f"scale must be 0..{SCALE_MAX}", "scale")
        _check_text(self.name, NAME_CHARS_MAX, "name")
        _check_text(self.city, CITY_CHARS_MAX, "city")
        if not _fits(self.country, _COUNTRY):
            raise _invalid("country must be two uppercase letters (ISO 3166-1)", "country")
        if not _fits(self.category, _CATEGORY):
            raise _invalid("category must be four digits (an MCC)", "category")
        dynamic = (self.amount, self.reference, self.expiry)
        if any(v is None for v in dynamic) and any(v is not None for v in dynamic):
            raise _invalid("amount, reference and expiry come together (a dynamic QR)", "amount")
        if self.amount is not None:
            format_emv_amount(self.amount, self.scale)
        if self.reference is not None:
            _check_text(self.reference, REFERENCE_CHARS_MAX, "reference")
        expiry = self.expiry
        if expiry is not None and (type(expiry) is not int or not 0 < expiry <= EXPIRY_MAX):
            raise _invalid("expiry must be Unix seconds, a u64 other than 0", "expiry")

    @property
    def dynamic(self) -> bool:
        return self.amount is not None


_COUNTRY = re.compile(r"[A-Z]{2}")
_CATEGORY = re.compile(r"[0-9]{4}")


def _fits(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _invalid(detail: str, param: str) -> InvalidRequest:
    return InvalidRequest(detail, code="field_invalid", param=param)


def _check_text(value: object, chars_max: int, param: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= chars_max:
        raise _invalid(f"{param} must be 1..{chars_max} characters", param)
    if not all(" " <= c <= "~" for c in value):
        raise _invalid(f"{param} must be printable ASCII (EMVCo's ans set)", param)


def format_emv_amount(amount: int, scale: int) -> str:
    """``amount`` minor units at ``scale`` as EMVCo's amount string, exactly (no float)."""
    if type(amount) is not int or not 0 < amount <= ID_MAX:
        raise InvalidRequest("amount must be a positive integer", code="amount_invalid")
    unit: int = 10**scale
    whole, frac = divmod(amount, unit)
    text = str(whole)
    if frac:
        text += "." + str(frac).rjust(scale, "0").rstrip("0")
    if len(text) > AMOUNT_CHARS_MAX:
        raise InvalidRequest(
            f"amount needs more than EMVCo's {AMOUNT_CHARS_MAX} characters", code="amount_invalid"
        )
    return text


def parse_emv_amount(text: str, scale: int) -> int:
    """The integer minor units of an EMVCo amount string (already format-checked) at ``scale``;
    refused if it has more decimals than the asset."""
    whole, _, frac = text.partition(".")
    if len(frac) > scale:
        raise refuse(Refusal.NETWORK_FIELD_INVALID, "54 has more decimals than the asset", "54")
    unit: int = 10**scale
    return int(whole or "0") * unit + int(frac.ljust(scale, "0") or "0")


def encode_merchant(qr: MerchantQr) -> str:
    """The EMVCo payload of ``qr``, CRC included."""
    guid = DataObject(SUB_GUID, NETWORK_GUID)
    payee = (
        guid,
        DataObject(SUB_VERSION, TEMPLATE_VERSION),
        DataObject(SUB_MERCHANT, qr.merchant.hex()),
    )
    asset = [guid, DataObject(SUB_LEDGER, str(qr.ledger)), DataObject(SUB_SCALE, str(qr.scale))]
    if qr.expiry is not None:
        asset.append(DataObject(SUB_EXPIRY, str(qr.expiry)))
    objects = [
        DataObject(TAG_FORMAT, "01"),
        DataObject(TAG_INITIATION, DYNAMIC if qr.dynamic else STATIC),
        DataObject(MERCHANT_TAG, "", payee),
        DataObject(TAG_CATEGORY, qr.category),
        DataObject(TAG_CURRENCY, CURRENCY_NONE),
    ]
    if qr.amount is not None:
        objects.append(DataObject(TAG_AMOUNT, format_emv_amount(qr.amount, qr.scale)))
    objects += [
        DataObject(TAG_COUNTRY, qr.country),
        DataObject(TAG_NAME, qr.name),
        DataObject(TAG_CITY, qr.city),
    ]
    if qr.reference is not None:
        objects.append(DataObject(TAG_ADDITIONAL, "", (DataObject(REFERENCE_TAG, qr.reference),)))
    objects.append(DataObject(ASSET_TAG, "", tuple(asset)))
    payload = encode(objects)
    if decode_merchant(payload) != qr:  # paired check: what we write reads back the same
        raise AssertionError("a merchant QR did not survive its own reader")
    return payload


def decode_merchant(payload: object) -> MerchantQr:
    """Our network's fields in ``payload``; any EMVCo or network refusal is typed."""
    p = decode(payload)
    tag, sub = _network_template(p, 26, 51)
    if sub.get(SUB_VERSION) != TEMPLATE_VERSION:
        raise UnsupportedFormat(
            "unknown version of the network template", code="qr_version_unknown", param=tag
        )
    atag, asset = _network_template(p, 80, 99)
    if p.value(TAG_CURRENCY) != CURRENCY_NONE:
        raise refuse(Refusal.NETWORK_FIELD_INVALID, "53 must be 999 (XXX)", TAG_CURRENCY)
    scale = _decimal(asset, atag, SUB_SCALE, SCALE_MAX, allow_zero=True)
    fields: dict[str, object] = {
        "merchant": _hex16(sub, tag),
        "ledger": _decimal(asset, atag, SUB_LEDGER, U32_MAX),
        "scale": scale,
        "name": p.value(TAG_NAME),
        "city": p.value(TAG_CITY),
        "country": p.value(TAG_COUNTRY),
        "category": p.value(TAG_CATEGORY),
    }
    amount, reference = p.value(TAG_AMOUNT), _reference(p)
    present = [v is not None for v in (amount, reference, asset.get(SUB_EXPIRY))]
    initiation = p.value(TAG_INITIATION)
    if not (
        (initiation == STATIC and not any(present)) or (initiation == DYNAMIC and all(present))
    ):
        raise refuse(
            Refusal.SHAPE_INVALID, "01 11 has no amount, reference, expiry; 01 12 has all", "01"
        )
    if amount is not None:
        fields["amount"] = parse_emv_amount(amount, scale)
        fields["reference"] = reference
        fields["expiry"] = _decimal(asset, atag, SUB_EXPIRY, EXPIRY_MAX)
    try:
        return MerchantQr(**fields)  # type: ignore[arg-type]
    except InvalidRequest as exc:  # e.g. a 26-character name: another network's, not ours
        raise refuse(Refusal.NETWORK_FIELD_INVALID, exc.detail, exc.param) from exc


def _network_template(p: Payload, tag_min: int, tag_max: int) -> tuple[str, dict[str, str]]:
    ours = [
        o
        for o in p.objects
        if tag_min <= int(o.tag) <= tag_max
        and any(c.tag == SUB_GUID and c.value == NETWORK_GUID for c in o.children)
    ]
    where = f"{tag_min}-{tag_max}"
    if not ours:
        raise refuse(Refusal.NETWORK_TEMPLATE_MISSING, f"no template of this network in {where}")
    if len(ours) > 1:
        raise refuse(Refusal.NETWORK_TEMPLATE_DUPLICATED, f"two in {where}", ours[1].tag)
    return ours[0].tag, {c.tag: c.value for c in ours[0].children}


def _reference(p: Payload) -> str | None:
    extra = p.get(TAG_ADDITIONAL)
    if extra is None:
        return None
    return next((c.value for c in extra.children if c.tag == REFERENCE_TAG), None)


def _hex16(sub: dict[str, str], tag: str) -> bytes:
    value = sub.get(SUB_MERCHANT, "")
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise refuse(Refusal.NETWORK_FIELD_INVALID, "merchant: 32 lowercase hex", f"{tag}.02")
    return bytes.fromhex(value)


def _decimal(
    sub: dict[str, str], tag: str, key: str, value_max: int, *, allow_zero: bool = False
) -> int:
    """A canonical decimal (no sign, no leading zero) in range, else a refusal naming it."""
    value = sub.get(key, "")
    canonical = value.isascii() and value.isdigit() and (value == "0" or value[0] != "0")
    if not canonical or not (0 if allow_zero else 1) <= int(value) <= value_max:
        raise refuse(Refusal.NETWORK_FIELD_INVALID, f"{tag}.{key} is out of range", f"{tag}.{key}")
    return int(value)
