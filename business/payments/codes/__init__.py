"""Payment codes: what a till or a phone shows so a user can pay a partner, and how it is read.

Theory of operation. Two directions, both pure functions of their inputs (no clock, no I/O, no
randomness of their own; the caller draws secrets and passes the time):

* **Merchant-presented** (the payer's app scans the partner's screen or sticker):
  :class:`MerchantQr` -> :func:`encode_merchant` -> an EMVCo MPM payload string ->
  :func:`qr_png` / :func:`qr_svg`. The payer's side runs :func:`decode_merchant`, which runs
  the generic EMVCo reader (:func:`decode_emv`: every length, id, duplicate, character, the
  ``00``-first and ``63``-last order and the CRC-16/CCITT-FALSE) and then reads our two
  templates. A static QR names the payee and the asset; a dynamic one adds the amount, a
  reference (``62``/``05``) and an expiry. The payment route (not here) makes a dynamic QR single
  use by finding its reference among those the partner issued.
* **Consumer-presented** (the partner's till scans the user's phone): the app draws 16 random
  bytes, builds :class:`ConsumerCode`, has the wallet sign :func:`code_issue_message` (a
  ``code.issue`` entry in the identity machine: the code's hash, wallet, ledger, amount limit,
  expiry), and shows :func:`barcode_png` / :func:`qr_png` of its 44 digits. The till runs
  :func:`parse_consumer_code` and passes the secret as a ``CodeApproval``; the identity
  machine's ``check_debits`` hashes it (``ids.code_hash``) and consumes the stored code once.

Every refusal is a :class:`~node.errors.InvalidRequest` (a 400) whose ``code`` is one member of
:class:`Refusal` (QR payloads) or :class:`ConsumerRefusal` (consumer codes), and whose
``param`` names the offending data object; an unknown layout version is
:class:`~node.errors.UnsupportedFormat`. Writers check their output with their own reader
before returning it, so nothing we emit is something we would refuse. docs/payment-codes.md
has the payload layout and the reasons for the choices.
"""

from business.payments.codes.consumer import (
    CODE_DIGITS,
    NETWORK_PREFIX,
    ConsumerCode,
    ConsumerCodeConfig,
    ConsumerRefusal,
    code_issue_message,
    parse_consumer_code,
)
from business.payments.codes.emv import PAYLOAD_CHARS_MAX, DataObject, Payload, Refusal, crc16
from business.payments.codes.emv import decode as decode_emv
from business.payments.codes.emv import encode as encode_emv
from business.payments.codes.images import barcode_png, barcode_svg, qr_png, qr_svg
from business.payments.codes.merchant import (
    CURRENCY_NONE,
    NETWORK_GUID,
    MerchantQr,
    decode_merchant,
    encode_merchant,
    format_emv_amount,
    parse_emv_amount,
)

__all__ = [
    "CODE_DIGITS",
    "CURRENCY_NONE",
    "NETWORK_GUID",
    "NETWORK_PREFIX",
    "PAYLOAD_CHARS_MAX",
    "ConsumerCode",
    "ConsumerCodeConfig",
    "ConsumerRefusal",
    "DataObject",
    "MerchantQr",
    "Payload",
    "Refusal",
    "barcode_png",
    "barcode_svg",
    "code_issue_message",
    "crc16",
    "decode_emv",
    "decode_merchant",
    "encode_emv",
    "encode_merchant",
    "format_emv_amount",
    "parse_consumer_code",
    "parse_emv_amount",
    "qr_png",
    "qr_svg",
]
