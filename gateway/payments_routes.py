"""The Payment and Market API on the gateway: merchant QR intents, payments (two-phase, from a
scanned merchant QR, a consumer one-time code or server side), captures, voids, refunds, and
the Market's listings and orders (issue 14, items 1-5 and 7 over HTTP).

Every route is signed and served in the credential's mode, in the Bridge API's conventions
(:mod:`gateway.bridge_routes`, whose operation path this module shares: ``request_operation``,
``write_operation``, ``preview``, ``sealed_request``): objects with ``id``, ``object`` and
``livemode``, amounts as strings of digits, problems with a stable ``code`` and ``param``, a
required ``Idempotency-Key`` on every write (the operation's record id derives from it: a
retry is answered the first outcome, 200), and another partner's or the other mode's objects
answered as not found. docs/payments-guide.md is the partner's guide.

How a write travels: the route builds one payments request (:mod:`business.payments.model`)
whose op id is the record id and proposes it as a ``ledger.ops`` operation carrying ``pm``
(log feature 9); the state machine (node/consensus/payments_ops.py) checks who may do it, runs
the payments core, checks the user's approval of the debit of their wallet (an authorisation
or an order) and applies all or nothing. Its result code is the operation's sticky outcome,
mapped to a problem by :data:`PAYMENT_PROBLEMS`. Ids: ``pay_``/``ord_`` + the operation's
record id (an order and its payment share it), ``lst_`` + a listing's 16-byte id,
``pi_`` + an intent's record id; a capture, void or refund answers the payment (or order) it
moved and names its own operation.

Routes (``{asset}`` is ``baas`` or your point asset's code):

* ``POST /v1/payment_intents`` ``{"amount", "asset"?, "reference", "expires_at", "name",
  "city", "country"?, "category"?}`` -> 201 a dynamic merchant QR: the EMVCo payload
  (:mod:`business.payments.codes.merchant`), kept as a sealed record of yours;
  ``GET /v1/payment_intents/{id}`` and ``.../qr.svg`` / ``.../qr.png`` (segno);
* ``POST /v1/qr/static`` ``{"asset"?, "name", "city", "country"?, "category"?}`` -> 201 a
  static merchant QR (reusable, the payer enters the amount: no amount, reference or expiry),
  a sealed record of yours like an intent; ``GET /v1/qr/static/{id}``, ``.../qr.svg`` /
  ``.../qr.png``. Its own resource, not an intent without an amount: an intent is one payment
  (single use, expiring), a static QR any number of them;
* ``POST /v1/qr/decode`` ``{"payload"}`` -> the fields of any merchant QR of this network
  (``yours`` says whether you could be paid by it), or the decoder's named refusal (400);
* ``POST /v1/payments/preview`` and ``POST /v1/payments``: authorise (a pending transfer from
  the user's wallet, held ``capture_window_s``) from ``{"qr", "user", "amount"?}`` (a scanned
  merchant QR of yours; the amount only for a static one), or ``{"amount", "asset"?, "user"}``
  (server side), with the user's ``approvals`` (their EIP-712 signature over the previewed
  digest); or ``{"code", "amount", "asset"?, "capture"?}`` (a consumer one-time code the till
  scanned: the code itself is the approval, no preview). A dynamic QR is single use: its
  payment's record id derives from the QR's reference, so a second payment of the same QR is
  the first one's retry (same body) or ``idempotency_key_reused`` (409);
* ``POST /v1/payments/{id}/capture`` ``{"amount"}`` (partial: the rest is released),
  ``POST .../void`` ``{}``, ``POST .../refunds`` ``{"amount"}`` (partial; the refunds' sum
  never above the captured amount) -> the payment after it;
* ``GET /v1/payments/{id}``; ``GET /v1/payments?limit=&starting_after=`` -> a Stripe list of
  your payments in the mode, newest first;
* ``POST /v1/market/listings`` (a new listing) and ``POST /v1/market/listings/{id}`` (replace
  yours) ``{"title", "description"?, "price", "asset"?, "stock", "active"?}``;
  ``GET /v1/market/listings/{id}`` (any partner's: listings are public partner data);
  ``GET /v1/market/listings?text=&partner=&asset=&price_min=&price_max=&in_stock=&limit=
  &page=`` -> a page of the search across partners (a bounded scan: ``has_more``
  with ``next_page`` to go on; the page holds the credential's mode's listings only);
* ``POST /v1/market/orders/preview`` and ``POST /v1/market/orders`` ``{"listing", "quantity",
  "user", "approvals", "capture_window_s"?}`` -> the order (stock reserved, its payment
  authorised to the listing's partner); ``GET /v1/market/orders/{id}`` (the merchant's);
  ``POST /v1/market/orders/{id}/fulfil`` (capture in full), ``.../cancel`` (void, stock back),
  ``.../refunds`` ``{"amount"}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    ledger_number,
    mode_of_ledger,
    operation_id,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import ApprovalResult
from business.ledger.model import BAAS_SCALE, U32_MAX
from business.payments import (
    Authorise,
    CancelOrder,
    Capture,
    FulfilOrder,
    PaymentResult,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    Void,
    encode_request,
)
from business.payments.codes import (
    MerchantQr,
    decode_merchant,
    encode_merchant,
    parse_consumer_code,
    qr_png,
    qr_svg,
)
from business.payments.model import PaymentsConfig
from gateway.bridge_routes import (
    Done,
    Op,
    answer,
    point_asset,
    preview,
    request_operation,
    sealed_request,
    user_approvals,
    write_operation,
)
from gateway.ledger_routes import (
    SCOPE_PROBLEMS,
    LedgerContext,
    LedgerRefused,
    amount_param,
    approvals_param,
    gateway_state,
    hex_param,
    int_param,
    ledger_context,
    ledger_doc,
    linked_wallet,
    read_body,
    require_idempotency_key,
    user_id_param,
)
from gateway.node_client import WriteItem, error_from_problem
from gateway.record_codec import canonical_record, sealed_wire
from node.errors import InvalidRequest, NotFound, OperationFailed, UnsupportedFormat

__all__ = [
    "INTENT_PREFIX",
    "LISTING_PREFIX",
    "ORDER_PREFIX",
    "PAYMENT_PREFIX",
    "PAYMENT_PROBLEMS",
    "STATIC_QR_PREFIX",
    "add_payments_routes",
    "listings_page",
    "order_object",
    "order_step",
    "payment_object",
    "payment_problem",
    "payment_step",
    "payments_page",
    "put_listing",
    "read_order",
    "read_payment",
]

PAYMENT_PREFIX = "pay_"
ORDER_PREFIX = "ord_"
LISTING_PREFIX = "lst_"
INTENT_PREFIX = "pi_"
STATIC_QR_PREFIX = "sqr_"
_INTERNAL = "/internal/v1/payments"
# The core's bounds, as the log applies them (node/consensus/payments_ops.PAYMENTS_CONFIG):
# the routes refuse what the core would refuse ``bound_exceeded``, before the log.
_CONFIG = PaymentsConfig()
LIST_LIMIT_MAX = 100  # node/api/payments_routes.LIST_LIMIT_MAX (Stripe's bound)
_APPROVAL_CODES = frozenset(c.value for c in ApprovalResult) - {"ok"}

R = PaymentResult
# Payments result -> (HTTP status, problem code, the request field at fault). Every refusal is
# sticky (the operation's outcome): a retry under the same key answers the same. Another
# partner's payment, order or asset is not found, never "foreign": nothing is revealed.
PAYMENT_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    R.BOUND_EXCEEDED.value: (400, "bound_exceeded", None),
    R.NOT_PLATFORM.value: (403, "not_platform", None),
    R.MERCHANT_LOCKED_OUT.value: (429, "merchant_locked_out", "code"),
    R.CODE_UNKNOWN.value: (404, "code_unknown", "code"),
    R.CODE_WRONG_MODE.value: (404, "code_unknown", "code"),
    R.CODE_USED.value: (409, "code_used", "code"),
    R.CODE_EXPIRED.value: (409, "code_expired", "code"),
    R.CODE_LEDGER_MISMATCH.value: (400, "code_asset_mismatch", "asset"),
    R.CODE_LIMIT_EXCEEDED.value: (402, "code_limit_exceeded", "amount"),
    R.CODE_MISMATCH.value: (400, "code_mismatch", "code"),
    R.ASSET_NOT_FOUND.value: (404, "asset_not_found", "asset"),
    R.ASSET_FOREIGN.value: (404, "asset_not_found", "asset"),
    R.LISTING_NOT_FOUND.value: (404, "listing_not_found", "listing"),
    R.LISTING_FOREIGN.value: (404, "listing_not_found", "id"),
    R.LISTING_INACTIVE.value: (409, "listing_inactive", "listing"),
    R.LISTINGS_FULL.value: (409, "listings_full", None),
    R.SOLD_OUT.value: (409, "sold_out", "quantity"),
    R.ORDER_EXISTS.value: (409, "order_exists", None),
    R.ORDER_NOT_FOUND.value: (404, "order_not_found", "id"),
    R.ORDER_NOT_FULFILLED.value: (409, "order_not_fulfilled", "id"),
    R.ORDER_ALREADY_FULFILLED.value: (409, "order_already_fulfilled", "id"),
    R.ORDER_CANCELLED.value: (409, "order_cancelled", "id"),
    R.ORDER_EXPIRED.value: (409, "order_expired", "id"),
    R.ORDER_NOT_EXPIRED.value: (409, "order_not_expired", "id"),
    R.ORDER_FULLY_REFUNDED.value: (409, "order_fully_refunded", "id"),
    R.PAYMENT_OF_ORDER.value: (409, "payment_of_order", "id"),
    R.PAYMENT_EXISTS.value: (409, "payment_exists", None),
    R.PAYMENT_NOT_FOUND.value: (404, "payment_not_found", "id"),
    R.PAYMENT_VOIDED.value: (409, "payment_voided", "id"),
    R.PAYMENT_EXPIRED.value: (409, "payment_expired", "id"),
    R.PAYMENT_NOT_CAPTURED.value: (409, "payment_not_captured", "id"),
    R.PAYMENT_ALREADY_CAPTURED.value: (409, "payment_already_captured", "id"),
    R.PAYMENT_FULLY_REFUNDED.value: (409, "payment_fully_refunded", "id"),
    R.AMOUNT_EXCEEDS_AUTHORISED.value: (409, "amount_exceeds_authorised", "amount"),
    R.REFUND_EXCEEDS_CAPTURED.value: (409, "refund_exceeds_captured", "amount"),
    R.REFUNDS_FULL.value: (409, "refunds_full", "id"),
    R.INSUFFICIENT_FUNDS.value: (402, "insufficient_funds", "amount"),
    R.MERCHANT_INSUFFICIENT_FUNDS.value: (402, "merchant_insufficient_funds", "amount"),
    R.LEDGER_REFUSED.value: (409, "ledger_refused", None),
    "role_missing": (409, "role_missing", None),
    "ledger_not_found": (404, "asset_not_found", "asset"),
}


def payment_problem(code: str) -> LedgerRefused:
    """The problem for a refusal code (a payments result, a scope or an approval refusal). A
    payments result first: the core's code checks (``code_used``, ``code_expired``, ...) share
    their names with identity's approval refusals, and mean the same about the scanned code."""
    if code in _APPROVAL_CODES and code not in PAYMENT_PROBLEMS:
        return LedgerRefused(
            f"the user's approval was refused: {code}", code=code, status=403, param="approvals"
        )
    status, name, param = (
        PAYMENT_PROBLEMS.get(code) or SCOPE_PROBLEMS.get(code) or (409, code, None)
    )
    return LedgerRefused(f"the payment was refused: {code}", code=name, status=status, param=param)


# --- who and what ----------------------------------------------------------------------------


def _writing(request: web.Request) -> tuple[Any, LedgerContext, str]:
    return gateway_state(request), ledger_context(request), require_idempotency_key(request)


def _livemode(ctx: LedgerContext) -> bool:
    return ctx.mode == Mode.LIVE


async def _asset(state: Any, ctx: LedgerContext, code: Any) -> tuple[int, int]:
    """(ledger, scale) of ``baas`` or your point asset named ``code`` in this mode."""
    if code == "baas":
        return ledger_number(ctx.mode, ASSET_INDEX_BAAS), BAAS_SCALE
    if not isinstance(code, str):
        raise InvalidRequest("asset is baas or your point asset's code", param="asset")
    ledger, doc = await point_asset(state, ctx, code)
    return ledger, int(doc["scale"])


def _asset_name(ctx: LedgerContext, ledger: int) -> str:
    return _asset_name_in(ctx.mode, ledger)


def _asset_name_in(mode: Mode, ledger: int) -> str:
    return "baas" if ledger == ledger_number(mode, ASSET_INDEX_BAAS) else "points"


async def _wallet_account(
    state: Any, ctx: LedgerContext, user: str, ledger: int
) -> tuple[bytes, int, tuple[bytes, ...]]:
    """The linked user's wallet address, their account on ``ledger`` and their user ref."""
    address = await linked_wallet(state, ctx, user, "user")
    account = wallet_account_id(wallet_id(address, ctx.mode), ctx.mode, ledger)
    return address, account, (user_ref(ctx.pid16, ctx.mode, user),)


def _window(body: dict[str, Any]) -> int:
    return int_param(
        body.get("capture_window_s", _CONFIG.capture_window_s_max),
        "capture_window_s",
        1,
        _CONFIG.capture_window_s_max,
    )


def _op(
    state: Any,
    ctx: LedgerContext,
    kind: str,
    key: str,
    body: dict[str, Any],
    make: Callable[[bytes], Any],
    approvals: bytes | None = None,
    refs: tuple[bytes, ...] = (),
) -> Op:
    """One payments request on the Bridge's operation path (its wire form in ``pm``); the
    request's own shape checks as a 400."""
    return request_operation(
        state, ctx, kind, key, body, make, approvals, refs, encode=encode_request, field="pm"
    )


async def _write(state: Any, ctx: LedgerContext, op: Op) -> Done:
    return await write_operation(state, ctx, op, payment_problem)


def _object_id(raw: str, prefix: str, size: int) -> bytes:
    return hex_param(raw, "id", size, size, prefix=prefix)


# --- reads -----------------------------------------------------------------------------------


async def _payment_doc(state: Any, ctx: LedgerContext, payment: bytes) -> dict[str, Any]:
    """The node's payment of yours in this mode (404 ``payment_not_found`` otherwise)."""
    path = f"{_INTERNAL}/payments/{payment.hex()}?partner={ctx.pid16.hex()}"
    doc = await ledger_doc(state, ctx, path)
    if doc is None or mode_of_ledger(int(doc["ledger"])) != ctx.mode:
        raise NotFound("no such payment", code="payment_not_found", param="id")
    return doc


def _payment_object(ctx: LedgerContext, doc: dict[str, Any]) -> dict[str, Any]:
    return payment_object(ctx.mode, doc)


def payment_object(mode: Mode, doc: dict[str, Any]) -> dict[str, Any]:
    """A payment as the API shows it, from the node's read (also the webhooks' payload)."""
    ledger = int(doc["ledger"])
    return {
        "id": PAYMENT_PREFIX + doc["id"],
        "object": "payment",
        "livemode": mode == Mode.LIVE,
        "status": doc["state"],
        "asset": _asset_name_in(mode, ledger),
        "ledger": ledger,
        "amount": doc["amount"],
        "amount_captured": doc["captured"],
        "amount_refunded": doc["refunded"],
        "refunds": int(doc["refunds"]),
        "fee": doc["fee"],
        "operation": doc["id"],
    }


async def read_payment(state: Any, ctx: LedgerContext, raw_id: str) -> dict[str, Any]:
    """``GET /v1/payments/{id}``: your payment in this mode (404 ``payment_not_found``)."""
    payment = _object_id(raw_id, PAYMENT_PREFIX, 32)
    return _payment_object(ctx, await _payment_doc(state, ctx, payment))


async def get_payment(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    return web.json_response(await read_payment(state, ctx, request.match_info["id"]))


async def list_payments(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    q = request.query
    return web.json_response(
        await payments_page(state, ctx, q.get("limit", "10"), q.get("starting_after"))
    )


async def payments_page(
    state: Any, ctx: LedgerContext, raw_limit: str, cursor: str | None
) -> dict[str, Any]:
    """Your payments in this mode, newest first (the node's ``pm/pp/`` index)."""
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1..{LIST_LIMIT_MAX}", param="limit")
    query = f"mode={int(ctx.mode)}&limit={int(raw_limit)}"
    if cursor is not None:
        after = hex_param(cursor, "starting_after", 32, 32, prefix=PAYMENT_PREFIX)
        await _payment_doc(state, ctx, after)  # not yours, or the other mode's: 404
        query += f"&starting_after={after.hex()}"
    page = await ledger_doc(state, ctx, f"{_INTERNAL}/partners/{ctx.pid16.hex()}/payments?{query}")
    if page is None:
        raise OperationFailed("no node answered the list", code="ledger_list_unavailable")
    return {
        "object": "list",
        "data": [_payment_object(ctx, doc) for doc in page["data"]],
        "has_more": bool(page["has_more"]),
        "url": "/v1/payments",
    }


# --- merchant QRs: dynamic (payment intents) and static ----------------------------------


_INTENT_KIND = "payments.intent"
_STATIC_KIND = "payments.static_qr"
_QR_FIELDS = {"asset", "name", "city", "country", "category"}


async def _issue_qr(
    request: web.Request, kind: str, fields: set[str], required: set[str],
    dynamic: Callable[[dict[str, Any]], tuple[int, str, int] | None],
) -> tuple[LedgerContext, bytes, dict[str, Any], bool]:  # fmt: skip
    """A merchant QR of yours: the EMVCo payload, kept as a sealed record (a plain record: it
    moves nothing; the payment that pays it is the operation). ``dynamic`` checks the body's
    (amount, reference, expiry) of a dynamic QR, None for a static one. Answers (context,
    record id, the sealed body with its payload, replayed)."""
    state, ctx, key = _writing(request)
    body = await read_body(request, fields | _QR_FIELDS, required | {"name", "city"})
    amount, reference, expiry = dynamic(body) or (None, None, None)
    ledger, scale = await _asset(state, ctx, body.get("asset", "baas"))
    try:
        payload = encode_merchant(
            MerchantQr(
                ctx.pid16, ledger, scale, body["name"], body["city"], body.get("country", "ZZ"),
                body.get("category", "0000"), amount, reference, expiry,
            )
        )  # fmt: skip
    except InvalidRequest as exc:  # EMVCo's amount has at most 13 characters at the scale
        raise InvalidRequest(exc.detail, code=exc.code, param=exc.param or "amount") from exc
    record_id = operation_id(ctx.pid16, ctx.mode, kind, key)
    sealed = {**body, "asset": body.get("asset", "baas"), "payload": payload}
    plaintext = canonical_record(
        {"object": "payments_operation", "kind": kind, "livemode": _livemode(ctx),
         "request": sealed},
        state.config.limits.record_json_bytes_max,
    )  # fmt: skip
    item = WriteItem(sealed_wire(ctx.partner, record_id, plaintext), ctx.deadline, ctx.request_id)
    with state.reserve(ctx.partner.partner_id, 1):
        (result,) = await state.nodes.write_records([item])
    if not result.get("ok"):
        raise error_from_problem(int(result.get("status", 503)), result)
    return ctx, record_id, sealed, bool(result.get("replayed"))


def _issued(shown: dict[str, Any], replayed: bool, request: web.Request) -> web.Response:
    status = 200 if replayed else 201
    key = require_idempotency_key(request)
    return web.json_response(shown, status=status, headers={"Idempotency-Key": key})


def _intent_terms(body: dict[str, Any]) -> tuple[int, str, int]:
    amount = amount_param(body["amount"], "amount")
    expires_at = int_param(body["expires_at"], "expires_at", 1, 2**63 - 1)
    if expires_at <= int(time.time()):
        raise InvalidRequest("expires_at is in the past", param="expires_at")
    return amount, body["reference"], expires_at


async def post_intent(request: web.Request) -> web.Response:
    """A dynamic QR of yours. ``expires_at`` is absolute (Unix s) so that a retry is the same
    record."""
    terms = {"amount", "reference", "expires_at"}
    ctx, record_id, sealed, replayed = await _issue_qr(
        request, _INTENT_KIND, terms, terms, _intent_terms
    )
    return _issued(_intent_object(ctx, record_id, sealed), replayed, request)


def _qr_object(
    ctx: LedgerContext, prefix: str, record_id: bytes, body: dict[str, Any], shown: dict[str, Any]
) -> dict[str, Any]:
    """A stored QR as the API shows it: ``shown`` are its kind's own fields."""
    qr_id = prefix + record_id.hex()
    collection = "/v1/payment_intents" if prefix == INTENT_PREFIX else "/v1/qr/static"
    return {
        "id": qr_id,
        "object": "payment_intent" if prefix == INTENT_PREFIX else "static_qr",
        "livemode": _livemode(ctx),
        "asset": body.get("asset", "baas"),
        **shown,
        "payload": body["payload"],
        "qr_svg": f"{collection}/{qr_id}/qr.svg",
        "qr_png": f"{collection}/{qr_id}/qr.png",
    }


def _intent_object(ctx: LedgerContext, record_id: bytes, body: dict[str, Any]) -> dict[str, Any]:
    terms = {name: body[name] for name in ("amount", "reference", "expires_at")}
    return _qr_object(ctx, INTENT_PREFIX, record_id, body, terms)


async def post_static_qr(request: web.Request) -> web.Response:
    """A static QR of yours (reusable; the payer enters the amount): no amount, reference or
    expiry in it, so those fields are unknown here (400 ``parameter_unknown``)."""
    ctx, record_id, sealed, replayed = await _issue_qr(
        request, _STATIC_KIND, set(), set(), lambda body: None
    )
    return _issued(_static_object(ctx, record_id, sealed), replayed, request)


def _static_object(ctx: LedgerContext, record_id: bytes, body: dict[str, Any]) -> dict[str, Any]:
    shown = {
        "name": body["name"],
        "city": body["city"],
        "country": body.get("country", "ZZ"),
        "category": body.get("category", "0000"),
    }
    return _qr_object(ctx, STATIC_QR_PREFIX, record_id, body, shown)


_Shown = Callable[[LedgerContext, bytes, dict[str, Any]], dict[str, Any]]
_STORED: dict[str, tuple[str, _Shown, str, str]] = {
    # prefix -> (record kind, its object, not-found code, what it is)
    INTENT_PREFIX: (_INTENT_KIND, _intent_object, "payment_intent_not_found", "payment intent"),
    STATIC_QR_PREFIX: (_STATIC_KIND, _static_object, "static_qr_not_found", "static QR"),
}


async def _stored_qr(request: web.Request, prefix: str) -> dict[str, Any]:
    """One of your QRs in this mode (an intent or a static QR, by ``prefix``), else 404."""
    state, ctx = gateway_state(request), ledger_context(request)
    kind, shown, missing, what = _STORED[prefix]
    record_id = _object_id(request.match_info["id"], prefix, 32)
    body = await sealed_request(state, ctx, record_id, kind)
    if body is None:
        raise NotFound(f"no such {what}", code=missing, param="id")
    return shown(ctx, record_id, body)


_Handler = Callable[[web.Request], Awaitable[web.Response]]


def _qr_reads(prefix: str) -> tuple[_Handler, _Handler, _Handler]:
    """The JSON, SVG and PNG reads of one kind of stored QR."""

    async def read(request: web.Request) -> web.Response:
        return web.json_response(await _stored_qr(request, prefix))

    async def svg(request: web.Request) -> web.Response:
        payload = (await _stored_qr(request, prefix))["payload"]
        return web.Response(body=qr_svg(payload), content_type="image/svg+xml")

    async def png(request: web.Request) -> web.Response:
        payload = (await _stored_qr(request, prefix))["payload"]
        return web.Response(body=qr_png(payload), content_type="image/png")

    return read, svg, png


get_intent, get_intent_svg, get_intent_png = _qr_reads(INTENT_PREFIX)
get_static_qr, get_static_qr_svg, get_static_qr_png = _qr_reads(STATIC_QR_PREFIX)


async def post_qr_decode(request: web.Request) -> web.Response:
    """The fields of a scanned merchant QR of this network (any partner's), or the decoder's
    named refusal (400, param ``payload``): a wallet or a merchant's backend checks a code
    before paying. The text only: images are decoded on the device, never here. The decoder
    refuses more than ``PAYLOAD_CHARS_MAX`` characters before reading any of them."""
    ctx = ledger_context(request)
    body = await read_body(request, {"payload"}, {"payload"})
    try:
        qr = decode_merchant(body["payload"])
    except (InvalidRequest, UnsupportedFormat) as exc:  # the reason's code, about the payload
        raise InvalidRequest(exc.detail, code=exc.code, param="payload") from exc
    mode = mode_of_ledger(qr.ledger)
    return web.json_response(
        {
            "object": "qr_decoded",
            "type": "dynamic" if qr.dynamic else "static",
            "merchant": qr.merchant.hex(),
            "yours": qr.merchant == ctx.pid16 and mode == ctx.mode,
            "livemode": mode == Mode.LIVE,
            "asset": _asset_name_in(mode, qr.ledger),
            "ledger": qr.ledger,
            "scale": qr.scale,
            "amount": None if qr.amount is None else str(qr.amount),
            "reference": qr.reference,
            "expires_at": qr.expiry,
            "name": qr.name,
            "city": qr.city,
            "country": qr.country,
            "category": qr.category,
        }
    )


# --- payments --------------------------------------------------------------------------------

_PAY_FIELDS = {"qr", "user", "amount", "asset", "code", "capture", "capture_window_s"}


async def _authorise_op(
    request: web.Request, approve: bool
) -> tuple[Any, LedgerContext, str, Op, bytes | None]:
    """The payment a body asks for (module docstring), and the wallet that must sign it (None
    for a consumer code: the code is the approval)."""
    state, ctx, key = _writing(request)
    allowed = _PAY_FIELDS | {"approvals"} if approve else _PAY_FIELDS
    body = await read_body(request, allowed, set())
    window = _window(body)
    if "code" in body:
        return state, ctx, key, await _code_op(state, ctx, key, body, window), None
    if "capture" in body:
        raise InvalidRequest("capture goes with a consumer code", param="capture")
    if "user" not in body:
        raise InvalidRequest("user is required", code="parameter_missing", param="user")
    user = user_id_param(body["user"], "user")
    kind, ledger, amount = "payments.authorise", 0, 0
    if "qr" in body:
        kind, key, ledger, amount = _scanned(ctx, key, body)
    else:
        if "amount" not in body:
            raise InvalidRequest("amount is required", code="parameter_missing", param="amount")
        amount = amount_param(body["amount"], "amount")
        ledger, _ = await _asset(state, ctx, body.get("asset", "baas"))
    approvals = user_approvals(body) if approve else None
    address, account, refs = await _wallet_account(state, ctx, user, ledger)

    def make(rid: bytes) -> Authorise:
        return Authorise(rid, ctx.pid16, ledger, account, amount, window)

    op = _op(state, ctx, kind, key, body, make, approvals, refs)
    return state, ctx, key, op, address


def _scanned(ctx: LedgerContext, key: str, body: dict[str, Any]) -> tuple[str, str, int, int]:
    """(kind, key, ledger, amount) of a payment of a scanned merchant QR of yours. A dynamic
    QR's payment takes its record id from the QR's reference (single use); a static one's
    from the Idempotency-Key, with the amount in the body."""
    try:
        qr = decode_merchant(body["qr"])
    except (InvalidRequest, UnsupportedFormat) as exc:  # the reason's code, about the qr
        raise InvalidRequest(exc.detail, code=exc.code, param="qr") from exc
    if qr.merchant != ctx.pid16 or mode_of_ledger(qr.ledger) != ctx.mode:
        raise NotFound("not a QR of yours in this mode", code="qr_not_yours", param="qr")
    if qr.ledger == ledger_number(ctx.mode, ASSET_INDEX_BAAS) and qr.scale != BAAS_SCALE:
        # A dynamic QR's amount is read at its scale: BAAS's is fixed, so another is not ours.
        # (A point asset's scale is on the log; the QR's is not checked against it here.)
        raise InvalidRequest(
            f"a BAAS QR has scale {BAAS_SCALE}", code="qr_network_field_invalid", param="qr"
        )
    if not qr.dynamic:
        if "amount" not in body:
            raise InvalidRequest(
                "a static QR's payment names its amount", code="parameter_missing", param="amount"
            )
        return "payments.authorise", key, qr.ledger, amount_param(body["amount"], "amount")
    if "amount" in body:
        raise InvalidRequest("a dynamic QR carries its amount", param="amount")
    assert qr.expiry is not None and qr.reference is not None and qr.amount is not None
    if qr.expiry <= int(time.time()):
        raise LedgerRefused("the QR has expired", code="qr_expired", status=409, param="qr")
    return "payments.qr", qr.reference, qr.ledger, qr.amount


async def _code_op(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any], window: int
) -> Op:
    """A consumer-presented code the till scanned: RedeemCode with the code as the approval."""
    for name in ("qr", "user"):
        if name in body:
            raise InvalidRequest(f"{name} does not go with a consumer code", param=name)
    if "amount" not in body:
        raise InvalidRequest("amount is required", code="parameter_missing", param="amount")
    try:
        code = parse_consumer_code(body["code"])
    except InvalidRequest as exc:
        raise InvalidRequest(exc.detail, code=exc.code, param="code") from exc
    if code.mode != ctx.mode:  # the other mode's code names nothing here
        raise NotFound("no such code in this mode", code="code_unknown", param="code")
    amount = amount_param(body["amount"], "amount")
    capture = body.get("capture", False)
    if type(capture) is not bool:
        raise InvalidRequest("capture is true or false", param="capture")
    ledger, _ = await _asset(state, ctx, body.get("asset", "baas"))
    approvals = approvals_param([{"code": code.secret.hex()}])
    sealed = {k: v for k, v in body.items() if k != "code"}  # the secret never in a record

    def make(rid: bytes) -> RedeemCode:
        return RedeemCode(rid, ctx.pid16, ledger, code.code_hash, amount, capture, window)

    return _op(state, ctx, "payments.code", key, sealed, make, approvals)


async def post_payment_preview(request: web.Request) -> web.Response:
    _, ctx, key, op, address = await _authorise_op(request, approve=False)
    if address is None:
        raise InvalidRequest("a consumer code needs no preview: it is the approval", param="code")
    shown = _authorised_object(ctx, op, "preview")
    return preview(ctx, key, op, address, "payment_preview", {"payment": shown})


async def post_payment(request: web.Request) -> web.Response:
    state, ctx, key, op, _ = await _authorise_op(request, approve=True)
    done = await _write(state, ctx, op)
    # The freshest node's read (the coordinating node applied it): the payment as it is now.
    doc = await _payment_doc(state, ctx, op.record_id)
    return answer(done, _payment_object(ctx, doc), key)


def _authorised_object(ctx: LedgerContext, op: Op, status: str) -> dict[str, Any]:
    """A payment as its preview shows it (nothing applied yet)."""
    r = op.request
    ledger = int(r.ledger)
    return {
        "id": PAYMENT_PREFIX + op.record_id.hex(),
        "object": "payment",
        "livemode": _livemode(ctx),
        "status": status,
        "asset": _asset_name(ctx, ledger),
        "ledger": ledger,
        "amount": str(r.amount),
        "amount_captured": "0",
        "amount_refunded": "0",
        "refunds": 0,
        "fee": "0",
        "operation": op.record_id.hex(),
    }


# A step's operation kind -> (its body's fields, its request from (record id, partner, the
# payment or order it moves, amount)).
Step = tuple[frozenset[str], Callable[[bytes, bytes, bytes, int], Any]]
PAYMENT_STEPS: dict[str, Step] = {
    "payments.capture": (frozenset({"amount"}), Capture),
    "payments.void": (frozenset(), lambda rid, pid, payment, _: Void(rid, pid, payment)),
    "payments.refund": (frozenset({"amount"}), Refund),
}


async def _payment_step(request: web.Request, kind: str) -> web.Response:
    state, ctx, key = _writing(request)
    fields = set(PAYMENT_STEPS[kind][0])
    body = await read_body(request, fields, fields)
    done, shown = await payment_step(state, ctx, key, kind, request.match_info["id"], body)
    return answer(done, shown, key)


async def payment_step(
    state: Any, ctx: LedgerContext, key: str, kind: str, raw_id: str, body: dict[str, Any]
) -> tuple[Done, dict[str, Any]]:
    """A capture, void or refund (``kind`` of :data:`PAYMENT_STEPS`) of one of your payments:
    its own operation; answered the payment after it. ``body`` holds the step's fields."""
    fields, make = PAYMENT_STEPS[kind]
    payment = _object_id(raw_id, PAYMENT_PREFIX, 32)
    amount = amount_param(body["amount"], "amount") if "amount" in fields else 0
    await _payment_doc(state, ctx, payment)  # another partner's, or the other mode's: 404
    body = {**body, "payment": payment.hex()}  # the sealed record names what it moved
    op = _op(state, ctx, kind, key, body, lambda rid: make(rid, ctx.pid16, payment, amount))
    done = await _write(state, ctx, op)
    return done, _payment_object(ctx, await _payment_doc(state, ctx, payment))


async def post_capture(request: web.Request) -> web.Response:
    return await _payment_step(request, "payments.capture")


async def post_void(request: web.Request) -> web.Response:
    return await _payment_step(request, "payments.void")


async def post_refund(request: web.Request) -> web.Response:
    return await _payment_step(request, "payments.refund")


# --- the Market: listings --------------------------------------------------------------------

_LISTING_FIELDS = {"title", "description", "price", "asset", "stock", "active"}
_LISTING_KIND = "market.listing"


def _listing_object(ctx: LedgerContext, doc: dict[str, Any]) -> dict[str, Any]:
    ledger = int(doc["ledger"])
    return {
        "id": LISTING_PREFIX + doc["id"],
        "object": "market_listing",
        "livemode": _livemode(ctx),
        "partner": doc["partner"],
        "asset": _asset_name(ctx, ledger),
        "ledger": ledger,
        "price": doc["price"],
        "stock": int(doc["stock"]),
        "active": bool(doc["active"]),
        "title": doc["title"],
        "description": doc["description"],
    }


async def _put_listing(request: web.Request, listing: bytes | None) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, _LISTING_FIELDS, {"title", "price", "stock"})
    done, shown = await put_listing(state, ctx, key, body, listing)
    return answer(done, shown, key)


async def put_listing(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any], listing: bytes | None
) -> tuple[Done, dict[str, Any]]:
    """A new listing (``listing`` None) or a replaced one of yours, from the API's body."""
    title, description = body["title"], body.get("description", "")
    for name, text, chars_max in (
        ("title", title, _CONFIG.title_chars_max),
        ("description", description, _CONFIG.description_chars_max),
    ):
        if not isinstance(text, str) or len(text) > chars_max:
            raise InvalidRequest(f"{name} is text of at most {chars_max} characters", param=name)
    price = amount_param(body["price"], "price")
    stock = int_param(body["stock"], "stock", 0, U32_MAX)
    active = body.get("active", True)
    if type(active) is not bool:
        raise InvalidRequest("active is true or false", param="active")
    ledger, _ = await _asset(state, ctx, body.get("asset", "baas"))
    if listing is None:  # a new listing: its id derives from your key (16 bytes of its op id)
        listing = operation_id(ctx.pid16, ctx.mode, "market.listing-id", key)[:16]
    else:
        await _listing_doc(state, ctx, listing, own=True)
    chosen = listing

    def make(rid: bytes) -> PutListing:
        return PutListing(rid, ctx.pid16, chosen, ledger, price, stock, active, title, description)

    sealed = {**body, "listing": listing.hex()}
    done = await _write(state, ctx, _op(state, ctx, _LISTING_KIND, key, sealed, make))
    return done, _listing_object(ctx, await _listing_doc(state, ctx, listing))


async def _listing_doc(
    state: Any, ctx: LedgerContext, listing: bytes, own: bool = False
) -> dict[str, Any]:
    """A listing of this mode (``own``: of yours), else 404 ``listing_not_found``."""
    doc = await ledger_doc(state, ctx, f"{_INTERNAL}/listings/{listing.hex()}")
    if (
        doc is None
        or mode_of_ledger(int(doc["ledger"])) != ctx.mode
        or (own and doc["partner"] != ctx.pid16.hex())
    ):
        raise NotFound("no such listing", code="listing_not_found", param="id")
    return doc


async def post_listing(request: web.Request) -> web.Response:
    return await _put_listing(request, None)


async def post_listing_update(request: web.Request) -> web.Response:
    return await _put_listing(request, _object_id(request.match_info["id"], LISTING_PREFIX, 16))


async def get_listing(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    listing = _object_id(request.match_info["id"], LISTING_PREFIX, 16)
    return web.json_response(_listing_object(ctx, await _listing_doc(state, ctx, listing)))


def _digits_query(q: Any, name: str) -> int | None:
    raw = q.get(name)
    if raw is None:
        return None
    if raw != "0":
        return amount_param(raw, name)
    return 0


async def search_listings(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    return web.json_response(await listings_page(state, ctx, request.query))


async def listings_page(state: Any, ctx: LedgerContext, q: Mapping[str, str]) -> dict[str, Any]:
    """A page of the Market search (module docstring): the node scans a bounded range; the
    page holds this mode's listings; ``next_page`` goes on from where the scan stopped."""
    raw_limit = q.get("limit", "10")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _CONFIG.search_limit_max:
        raise InvalidRequest(f"limit must be 1..{_CONFIG.search_limit_max}", param="limit")
    parts = [f"limit={int(raw_limit)}"]
    text = q.get("text")
    if text is not None:
        if len(text) > _CONFIG.title_chars_max:
            raise InvalidRequest("text is too long", param="text")
        parts.append("text=" + _quote(text))
    if "partner" in q:
        parts.append("partner=" + hex_param(q["partner"], "partner", 16, 16).hex())
    if "asset" in q:
        ledger, _ = await _asset(state, ctx, q["asset"])
        parts.append(f"ledger={ledger}")
    for name in ("price_min", "price_max"):
        value = _digits_query(q, name)
        if value is not None:
            parts.append(f"{name}={value}")
    if "in_stock" in q:
        if q["in_stock"] not in ("true", "false"):
            raise InvalidRequest("in_stock is true or false", param="in_stock")
        parts.append(f"in_stock={q['in_stock']}")
    if "page" in q:  # the previous page's next_page: where its scan stopped
        after = hex_param(q["page"], "page", 16, 16, prefix=LISTING_PREFIX)
        parts.append(f"after={after.hex()}")
    page = await ledger_doc(state, ctx, f"{_INTERNAL}/listings?" + "&".join(parts))
    if page is None:
        raise OperationFailed("no node answered the search", code="ledger_list_unavailable")
    data = [d for d in page["data"] if mode_of_ledger(int(d["ledger"])) == ctx.mode]
    resume = page.get("resume_after")
    return {
        "object": "search_result",
        "data": [_listing_object(ctx, d) for d in data],
        "has_more": resume is not None,
        "next_page": None if resume is None else LISTING_PREFIX + resume,
        "url": "/v1/market/listings",
    }


def _quote(text: str) -> str:
    return quote(text, safe="")


# --- the Market: orders ----------------------------------------------------------------------

_ORDER_FIELDS = {"listing", "quantity", "user", "capture_window_s"}


async def _order_op(
    request: web.Request, approve: bool
) -> tuple[Any, LedgerContext, str, Op, bytes, dict[str, Any]]:
    state, ctx, key = _writing(request)
    allowed = _ORDER_FIELDS | {"approvals"} if approve else _ORDER_FIELDS
    body = await read_body(request, allowed, {"listing", "quantity", "user"})
    listing = hex_param(body["listing"], "listing", 16, 16, prefix=LISTING_PREFIX)
    quantity = int_param(body["quantity"], "quantity", 1, _CONFIG.order_quantity_max)
    user = user_id_param(body["user"], "user")
    window = _window(body)
    approvals = user_approvals(body) if approve else None
    try:
        doc = await _listing_doc(state, ctx, listing)
    except NotFound as exc:
        raise NotFound(exc.detail, code=exc.code, param="listing") from exc
    address, account, refs = await _wallet_account(state, ctx, user, int(doc["ledger"]))

    def make(rid: bytes) -> PlaceOrder:
        return PlaceOrder(rid, ctx.pid16, listing, account, quantity, window)

    op = _op(state, ctx, "market.order", key, body, make, approvals, refs)
    return state, ctx, key, op, address, doc


def _order_object(ctx: LedgerContext, doc: dict[str, Any], payment: dict[str, Any] | None,
                  status: str | None = None) -> dict[str, Any]:  # fmt: skip
    return order_object(ctx.mode, doc, payment, status)


def order_object(
    mode: Mode, doc: dict[str, Any], payment: dict[str, Any] | None, status: str | None = None
) -> dict[str, Any]:
    """An order as the API shows it, with its payment (also the webhooks' payload)."""
    return {
        "id": ORDER_PREFIX + doc["id"],
        "object": "market_order",
        "livemode": mode == Mode.LIVE,
        "status": status or doc["state"],
        "listing": LISTING_PREFIX + doc["listing"],
        "merchant": doc["merchant"],
        "quantity": int(doc["quantity"]),
        "payment": None if payment is None else payment_object(mode, payment),
    }


async def post_order_preview(request: web.Request) -> web.Response:
    _, ctx, key, op, address, listing = await _order_op(request, approve=False)
    r = op.request
    shown = {
        "id": ORDER_PREFIX + op.record_id.hex(),
        "object": "market_order",
        "livemode": _livemode(ctx),
        "status": "preview",
        "listing": LISTING_PREFIX + listing["id"],
        "merchant": listing["partner"],
        "quantity": r.quantity,
        "payment": None,
    }
    return preview(ctx, key, op, address, "market_order_preview", {"order": shown})


async def _order_doc(
    state: Any, ctx: LedgerContext, order: bytes, partner: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The order and its payment as ``partner`` (the merchant) sees them, in this mode."""
    doc = await ledger_doc(state, ctx, f"{_INTERNAL}/orders/{order.hex()}?partner={partner}")
    pay = await ledger_doc(state, ctx, f"{_INTERNAL}/payments/{order.hex()}?partner={partner}")
    if doc is None or pay is None or mode_of_ledger(int(pay["ledger"])) != ctx.mode:
        raise NotFound("no such order", code="order_not_found", param="id")
    return doc, pay


async def post_order(request: web.Request) -> web.Response:
    state, ctx, key, op, _, listing = await _order_op(request, approve=True)
    done = await _write(state, ctx, op)
    doc, pay = await _order_doc(state, ctx, op.record_id, listing["partner"])
    return answer(done, _order_object(ctx, doc, pay), key)


async def read_order(state: Any, ctx: LedgerContext, raw_id: str) -> dict[str, Any]:
    """``GET /v1/market/orders/{id}``: an order of yours (its merchant) in this mode."""
    order = _object_id(raw_id, ORDER_PREFIX, 32)
    doc, pay = await _order_doc(state, ctx, order, ctx.pid16.hex())
    return _order_object(ctx, doc, pay)


async def get_order(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    return web.json_response(await read_order(state, ctx, request.match_info["id"]))


ORDER_STEPS: dict[str, Step] = {
    "market.fulfil": (frozenset(), lambda rid, pid, order, _: FulfilOrder(rid, pid, order)),
    "market.cancel": (frozenset(), lambda rid, pid, order, _: CancelOrder(rid, pid, order)),
    "market.refund": (frozenset({"amount"}), RefundOrder),
}


async def _order_step(request: web.Request, kind: str) -> web.Response:
    state, ctx, key = _writing(request)
    fields = set(ORDER_STEPS[kind][0])
    body = await read_body(request, fields, fields)
    done, shown = await order_step(state, ctx, key, kind, request.match_info["id"], body)
    return answer(done, shown, key)


async def order_step(
    state: Any, ctx: LedgerContext, key: str, kind: str, raw_id: str, body: dict[str, Any]
) -> tuple[Done, dict[str, Any]]:
    """Fulfil, cancel or refund (``kind`` of :data:`ORDER_STEPS`) one of your orders (you are
    its listing's partner); answered the order after it."""
    fields, make = ORDER_STEPS[kind]
    order = _object_id(raw_id, ORDER_PREFIX, 32)
    amount = amount_param(body["amount"], "amount") if "amount" in fields else 0
    await _order_doc(state, ctx, order, ctx.pid16.hex())  # not yours: 404
    body = {**body, "order": order.hex()}
    op = _op(state, ctx, kind, key, body, lambda rid: make(rid, ctx.pid16, order, amount))
    done = await _write(state, ctx, op)
    doc, pay = await _order_doc(state, ctx, order, ctx.pid16.hex())
    return done, _order_object(ctx, doc, pay)


async def post_fulfil(request: web.Request) -> web.Response:
    return await _order_step(request, "market.fulfil")


async def post_cancel(request: web.Request) -> web.Response:
    return await _order_step(request, "market.cancel")


async def post_order_refund(request: web.Request) -> web.Response:
    return await _order_step(request, "market.refund")


def add_payments_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/payment_intents", post_intent)
    r.add_get("/v1/payment_intents/{id}", get_intent)
    r.add_get("/v1/payment_intents/{id}/qr.svg", get_intent_svg)
    r.add_get("/v1/payment_intents/{id}/qr.png", get_intent_png)
    r.add_post("/v1/qr/static", post_static_qr)
    r.add_get("/v1/qr/static/{id}", get_static_qr)
    r.add_get("/v1/qr/static/{id}/qr.svg", get_static_qr_svg)
    r.add_get("/v1/qr/static/{id}/qr.png", get_static_qr_png)
    r.add_post("/v1/qr/decode", post_qr_decode)
    r.add_post("/v1/payments/preview", post_payment_preview)
    r.add_post("/v1/payments", post_payment)
    r.add_get("/v1/payments", list_payments)
    r.add_get("/v1/payments/{id}", get_payment)
    r.add_post("/v1/payments/{id}/capture", post_capture)
    r.add_post("/v1/payments/{id}/void", post_void)
    r.add_post("/v1/payments/{id}/refunds", post_refund)
    r.add_post("/v1/market/listings", post_listing)
    r.add_get("/v1/market/listings", search_listings)
    r.add_get("/v1/market/listings/{id}", get_listing)
    r.add_post("/v1/market/listings/{id}", post_listing_update)
    r.add_post("/v1/market/orders/preview", post_order_preview)
    r.add_post("/v1/market/orders", post_order)
    r.add_get("/v1/market/orders/{id}", get_order)
    r.add_post("/v1/market/orders/{id}/fulfil", post_fulfil)
    r.add_post("/v1/market/orders/{id}/cancel", post_cancel)
    r.add_post("/v1/market/orders/{id}/refunds", post_order_refund)
