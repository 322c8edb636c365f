"""The Payment and Market API's part of the OpenAPI document (gateway/payments_routes.py).

Kept beside :mod:`gateway.openapi`, which imports it last: it adds its schemas and paths to
the one document with that module's helpers, so the payments routes are described in the same
closed, validated contract as every other route.
"""

from __future__ import annotations

from typing import Any

from business.payments.codes import PAYLOAD_CHARS_MAX, Refusal
from gateway.openapi import (
    _APPROVALS,
    _IDEMPOTENCY_HEADER,
    _LEDGER_ERRORS,
    _LEDGER_KEY,
    _LIMIT,
    _SIGNED_ERRORS,
    AMOUNT,
    DIGITS,
    HEX64,
    PATHS,
    SCHEMAS,
    UINT,
    USER_ID,
    Schema,
    _closed,
    _json,
    _ledger_write,
    _list_of,
    _operation,
    _path_param,
    _ref,
    _string_query,
    request_preview,
)

__all__: list[str] = []

_LIVEMODE: Schema = {"type": "boolean"}
_ASSET: Schema = {
    "type": "string",
    "pattern": "^(baas|[A-Z][A-Z0-9_]{0,63})$",
    "description": "baas, or your point asset's code",
}
_ASSET_OUT: Schema = {"enum": ["baas", "points"]}
_PAY_ID: Schema = {"type": "string", "pattern": "^pay_[0-9a-f]{64}$"}
_ORDER_ID: Schema = {"type": "string", "pattern": "^ord_[0-9a-f]{64}$"}
_LISTING_ID: Schema = {"type": "string", "pattern": "^lst_[0-9a-f]{32}$"}
_INTENT_ID: Schema = {"type": "string", "pattern": "^pi_[0-9a-f]{64}$"}
_STATIC_QR_ID: Schema = {"type": "string", "pattern": "^sqr_[0-9a-f]{64}$"}
_PAYLOAD: Schema = {
    "type": "string",
    "description": "the EMVCo merchant-presented payload (docs/payment-codes.md)",
}
# The display fields every merchant QR carries (EMVCo 59, 60, 58, 52).
_QR_SHOWN: dict[str, Schema] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 25},
    "city": {"type": "string", "minLength": 1, "maxLength": 15},
    "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    "category": {"type": "string", "pattern": "^[0-9]{4}$"},
}
# The decoder's named refusals (business/payments/codes/emv.py Refusal) and the version one:
# each a 400 of POST /v1/qr/decode (param payload) and of a payment's qr (param qr).
QR_REFUSAL_CODES = (*(r.value for r in Refusal), "qr_version_unknown")
_WINDOW: Schema = {"type": "integer", "minimum": 1, "maximum": 7 * 86_400}
_STATUS: Schema = {"enum": ["authorised", "captured", "refunded", "voided", "expired"]}
_ORDER_STATUS: Schema = {
    "enum": ["authorised", "fulfilled", "refunded", "cancelled", "expired", "lapsed"]
}


def _preview(kind: str, name: str, inner: str) -> Schema:
    return request_preview(kind, name, inner, "the payments request", "business/payments/wire.py")


_PAYMENT_FIELDS: dict[str, Schema] = {
    "id": _PAY_ID,
    "object": {"const": "payment"},
    "livemode": _LIVEMODE,
    "status": {"oneOf": [_STATUS, {"const": "preview"}]},
    "asset": _ASSET_OUT,
    "ledger": {"type": "integer", "minimum": 1},
    "amount": AMOUNT,
    "amount_captured": DIGITS,
    "amount_refunded": DIGITS,
    "refunds": UINT,
    "fee": {**DIGITS, "description": "the platform's fee taken at capture"},
    "operation": {**HEX64, "description": "the authorisation's record: /v1/records/{operation}"},
}
_LISTING_SET: dict[str, Schema] = {
    "title": {"type": "string", "maxLength": 120},
    "description": {"type": "string", "maxLength": 2000},
    "price": AMOUNT,
    "asset": _ASSET,
    "stock": {"type": "integer", "minimum": 0, "maximum": 4294967295},
    "active": {"type": "boolean"},
}

SCHEMAS.update(
    {
        "PaymentIntentCreate": _closed(
            {
                "amount": AMOUNT,
                "asset": _ASSET,
                "reference": {"type": "string", "minLength": 1, "maxLength": 25},
                "expires_at": {
                    **UINT,
                    "description": "Unix seconds (absolute: a retry is the same intent)",
                },
                **_QR_SHOWN,
            },
            required=["amount", "reference", "expires_at", "name", "city"],
        ),
        "PaymentIntent": _closed(
            {
                "id": _INTENT_ID,
                "object": {"const": "payment_intent"},
                "livemode": _LIVEMODE,
                "amount": AMOUNT,
                "asset": _ASSET,
                "reference": {"type": "string"},
                "expires_at": UINT,
                "payload": _PAYLOAD,
                "qr_svg": {"type": "string"},
                "qr_png": {"type": "string"},
            }
        ),
        "StaticQrCreate": _closed({"asset": _ASSET, **_QR_SHOWN}, required=["name", "city"]),
        "StaticQr": _closed(
            {
                "id": _STATIC_QR_ID,
                "object": {"const": "static_qr"},
                "livemode": _LIVEMODE,
                "asset": _ASSET,
                **_QR_SHOWN,
                "payload": _PAYLOAD,
                "qr_svg": {"type": "string"},
                "qr_png": {"type": "string"},
            }
        ),
        "QrDecode": _closed(
            {"payload": {**_PAYLOAD, "minLength": 1, "maxLength": PAYLOAD_CHARS_MAX}}
        ),
        "QrDecoded": _closed(
            {
                "object": {"const": "qr_decoded"},
                "type": {"enum": ["static", "dynamic"]},
                "merchant": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{32}$",
                    "description": "the payee partner's id",
                },
                "yours": {
                    "type": "boolean",
                    "description": "your QR in the credential's mode: you can be paid by it",
                },
                "livemode": _LIVEMODE,
                "asset": _ASSET_OUT,
                "ledger": {"type": "integer", "minimum": 1},
                "scale": {"type": "integer", "minimum": 0, "maximum": 18},
                "amount": {"oneOf": [AMOUNT, {"type": "null"}]},
                "reference": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                "expires_at": {"oneOf": [UINT, {"type": "null"}]},
                "name": {"type": "string"},
                "city": {"type": "string"},
                "country": {"type": "string"},
                "category": {"type": "string"},
            }
        ),
        "PaymentCreate": _closed(
            {
                "qr": {"type": "string", "description": "a scanned merchant QR of yours"},
                "user": USER_ID,
                "amount": AMOUNT,
                "asset": _ASSET,
                "code": {
                    "type": "string",
                    "description": "a scanned consumer one-time code "
                    "(44 digits): the user's approval",
                },
                "capture": {"type": "boolean", "description": "with a code: capture at once"},
                "capture_window_s": _WINDOW,
                "approvals": _APPROVALS,
            },
            required=[],  # one of qr, amount (server side) or code: the route says which
        ),
        "Payment": _closed(_PAYMENT_FIELDS),
        "PaymentList": _list_of("Payment", "/v1/payments"),
        "PaymentPreview": _preview("payment_preview", "payment", "Payment"),
        "PaymentCapture": _closed({"amount": AMOUNT}),
        "PaymentVoid": _closed({}),
        "PaymentRefund": _closed({"amount": AMOUNT}),
        "MarketListingSet": _closed(_LISTING_SET, required=["title", "price", "stock"]),
        "MarketListing": _closed(
            {
                "id": _LISTING_ID,
                "object": {"const": "market_listing"},
                "livemode": _LIVEMODE,
                "partner": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "asset": _ASSET_OUT,
                "ledger": {"type": "integer", "minimum": 1},
                "price": AMOUNT,
                "stock": UINT,
                "active": {"type": "boolean"},
                "title": {"type": "string"},
                "description": {"type": "string"},
            }
        ),
        "MarketListingSearch": _closed(
            {
                "object": {"const": "search_result"},
                "data": {"type": "array", "items": _ref("MarketListing")},
                "has_more": {"type": "boolean"},
                "next_page": {"oneOf": [_LISTING_ID, {"type": "null"}]},
                "url": {"const": "/v1/market/listings"},
            }
        ),
        "MarketOrderCreate": _closed(
            {
                "listing": _LISTING_ID,
                "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
                "user": USER_ID,
                "capture_window_s": _WINDOW,
                "approvals": _APPROVALS,
            },
            required=["listing", "quantity", "user"],  # without approvals: approval_required
        ),
        "MarketOrder": _closed(
            {
                "id": _ORDER_ID,
                "object": {"const": "market_order"},
                "livemode": _LIVEMODE,
                "status": {"oneOf": [_ORDER_STATUS, {"const": "preview"}]},
                "listing": _LISTING_ID,
                "merchant": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "quantity": {"type": "integer", "minimum": 1},
                "payment": {"oneOf": [_ref("Payment"), {"type": "null"}]},
            }
        ),
        "MarketOrderPreview": _preview("market_order_preview", "order", "MarketOrder"),
        "MarketOrderStep": _closed({}),
    }
)


def _read(operation_id: str, summary: str, answer: str, param: Schema) -> Schema:
    return _operation(
        operation_id,
        summary,
        {200: _json(answer, "found")},
        (*_SIGNED_ERRORS, 403, 404),
        parameters=[param],
    )


def _image(
    operation_id: str, media: str, what: str = "intent", path: Schema | None = None
) -> Schema:
    return _operation(
        operation_id,
        f"The {what}'s QR as {media} (segno)",
        # OpenAPI 3.1: a binary body has no JSON schema, only its media type.
        {200: {"description": "the image", "content": {media: {}}}},
        (*_SIGNED_ERRORS, 404),
        parameters=[path or _INTENT_PATH],
    )


def _decode_operation() -> Schema:
    operation = _operation(
        "decodeQr",
        "Decode a scanned merchant QR payload of this network (its text: images are decoded "
        "on the device): its fields, or the decoder's named refusal",
        {200: _json("QrDecoded", "the payload's fields")},
        _SIGNED_ERRORS,
        body="QrDecode",
    )
    operation["description"] = (
        "A refused payload is 400 with param `payload` and one of these codes: "
        + ", ".join(f"`{code}`" for code in QR_REFUSAL_CODES)
        + " (docs/payment-codes.md)."
    )
    return operation


def _previewing(operation_id: str, summary: str, answer: str, body: str) -> Schema:
    return _operation(
        operation_id,
        summary,
        {200: _json(answer, "the preview", _IDEMPOTENCY_HEADER)},
        _LEDGER_ERRORS,
        body=body,
        parameters=[_LEDGER_KEY],
    )


_INTENT_PATH = _path_param("id", "the intent id (pi_...)")
_STATIC_QR_PATH = _path_param("id", "the static QR id (sqr_...)")
_PAY_PATH = _path_param("id", "the payment id (pay_...)")
_ORDER_PATH = _path_param("id", "the order id (ord_...)")
_LISTING_PATH = _path_param("id", "the listing id (lst_...)")
_Q: dict[str, Any] = {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}

PATHS.update(
    {
        "/v1/payment_intents": {
            "post": _ledger_write(
                "createPaymentIntent",
                "A dynamic merchant QR of yours: amount, asset, reference, expiry",
                "PaymentIntent",
                "PaymentIntentCreate",
            )
        },
        "/v1/payment_intents/{id}": {
            "get": _read("getPaymentIntent", "One of your intents", "PaymentIntent", _INTENT_PATH)
        },
        "/v1/payment_intents/{id}/qr.svg": {"get": _image("getPaymentIntentSvg", "image/svg+xml")},
        "/v1/payment_intents/{id}/qr.png": {"get": _image("getPaymentIntentPng", "image/png")},
        "/v1/qr/static": {
            "post": _ledger_write(
                "createStaticQr",
                "A static merchant QR of yours (reusable; the payer enters the amount): asset "
                "and display fields, no amount, reference or expiry",
                "StaticQr",
                "StaticQrCreate",
            )
        },
        "/v1/qr/static/{id}": {
            "get": _read("getStaticQr", "One of your static QRs", "StaticQr", _STATIC_QR_PATH)
        },
        "/v1/qr/static/{id}/qr.svg": {
            "get": _image("getStaticQrSvg", "image/svg+xml", "static QR", _STATIC_QR_PATH)
        },
        "/v1/qr/static/{id}/qr.png": {
            "get": _image("getStaticQrPng", "image/png", "static QR", _STATIC_QR_PATH)
        },
        "/v1/qr/decode": {"post": _decode_operation()},
        "/v1/payments/preview": {
            "post": _previewing(
                "previewPayment",
                "What an authorisation with this body and Idempotency-Key will be, and the "
                "EIP-712 Approve the user signs: nothing is proposed",
                "PaymentPreview",
                "PaymentCreate",
            )
        },
        "/v1/payments": {
            "post": _ledger_write(
                "createPayment",
                "Authorise a payment to you: from a scanned QR of yours or server side with "
                "the user's approval, or from a scanned consumer one-time code",
                "Payment",
                "PaymentCreate",
            ),
            "get": _operation(
                "listPayments",
                "Your payments of the credential's mode, newest first",
                {200: _json("PaymentList", "a page of payments")},
                (*_SIGNED_ERRORS, 404),
                parameters=[
                    _LIMIT,
                    _string_query(
                        "starting_after", "the last payment id of the previous page", _PAY_ID
                    ),
                ],
            ),
        },
        "/v1/payments/{id}": {
            "get": _read("getPayment", "One of your payments", "Payment", _PAY_PATH)
        },
        "/v1/payments/{id}/capture": {
            "post": _ledger_write(
                "capturePayment",
                "Capture (part of) an authorised payment; the rest is released",
                "Payment",
                "PaymentCapture",
                parameters=[_PAY_PATH],
            )
        },
        "/v1/payments/{id}/void": {
            "post": _ledger_write(
                "voidPayment",
                "Release an authorised payment",
                "Payment",
                "PaymentVoid",
                parameters=[_PAY_PATH],
            )
        },
        "/v1/payments/{id}/refunds": {
            "post": _ledger_write(
                "refundPayment",
                "Refund (part of) a captured payment: the refunds never above the capture",
                "Payment",
                "PaymentRefund",
                parameters=[_PAY_PATH],
            )
        },
        "/v1/market/listings": {
            "post": _ledger_write(
                "createMarketListing",
                "List a product or service in the Market (its id derives from your key)",
                "MarketListing",
                "MarketListingSet",
            ),
            "get": _operation(
                "searchMarketListings",
                "Search the Market across partners (a bounded scan: next_page goes on)",
                {200: _json("MarketListingSearch", "a page")},
                (*_SIGNED_ERRORS, 403, 404),
                parameters=[
                    _LIMIT,
                    _string_query(
                        "text",
                        "words in the title or description",
                        {"type": "string", "maxLength": 120},
                    ),
                    _string_query(
                        "partner",
                        "a partner id (32 hex)",
                        {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    ),
                    _string_query("asset", "baas or your point asset's code", _ASSET),
                    _string_query("price_min", "minor units", _Q),
                    _string_query("price_max", "minor units", _Q),
                    _string_query("in_stock", "true or false", {"enum": ["true", "false"]}),
                    _string_query("page", "the next_page of the previous page", _LISTING_ID),
                ],
            ),
        },
        "/v1/market/listings/{id}": {
            "get": _read(
                "getMarketListing", "A listing (any partner's)", "MarketListing", _LISTING_PATH
            ),
            "post": _ledger_write(
                "updateMarketListing",
                "Replace one of your listings",
                "MarketListing",
                "MarketListingSet",
                parameters=[_LISTING_PATH],
            ),
        },
        "/v1/market/orders/preview": {
            "post": _previewing(
                "previewMarketOrder",
                "What an order with this body and Idempotency-Key will be, and the EIP-712 "
                "Approve the user signs",
                "MarketOrderPreview",
                "MarketOrderCreate",
            )
        },
        "/v1/market/orders": {
            "post": _ledger_write(
                "createMarketOrder",
                "Your linked user orders a listing: stock reserved, payment authorised",
                "MarketOrder",
                "MarketOrderCreate",
            )
        },
        "/v1/market/orders/{id}": {
            "get": _read(
                "getMarketOrder", "An order of one of your listings", "MarketOrder", _ORDER_PATH
            ),
        },
        "/v1/market/orders/{id}/fulfil": {
            "post": _ledger_write(
                "fulfilMarketOrder",
                "Capture the order's payment in full",
                "MarketOrder",
                "MarketOrderStep",
                parameters=[_ORDER_PATH],
            )
        },
        "/v1/market/orders/{id}/cancel": {
            "post": _ledger_write(
                "cancelMarketOrder",
                "Void the order's payment; its stock comes back",
                "MarketOrder",
                "MarketOrderStep",
                parameters=[_ORDER_PATH],
            )
        },
        "/v1/market/orders/{id}/refunds": {
            "post": _ledger_write(
                "refundMarketOrder",
                "Refund (part of) a fulfilled order",
                "MarketOrder",
                "PaymentRefund",
                parameters=[_ORDER_PATH],
            )
        },
    }
)
