"""The partner pages for payments, the Market and webhooks (issue 16, item 3), acting through
the Payment API's and the webhook API's own cores.

* ``GET /dashboard/partner/{mode}/payments`` (``id``: one payment; ``status``,
  ``starting_after``: the list) and ``POST payments/{capture,void,refund}``;
* ``GET .../market`` (``page``: the search's next page) and ``POST market/listings``,
  ``market/listings/update``;
* ``GET .../orders`` (``id``: one order; ``starting_after``) and
  ``POST orders/{fulfil,cancel,refund}``;
* ``GET .../webhooks`` (``endpoint``: its deliveries; ``starting_after``) and
  ``POST webhooks/{add,delete,rotate,resend}``.

Every read and change calls what the API's route calls (:func:`gateway.payments_routes.
payment_step`, :func:`~gateway.payments_routes.read_order`, :func:`gateway.webhook_routes.
create_endpoint`, ...) with the session's partner and the path's mode, so the checks, problem
codes and 404s for another partner's or mode's objects are the API's. Lists the API does not
have are built from its lists, bounded: the Payments status filter picks from a page of
``PAYMENTS_READ_MAX`` payments; the Orders list is the orders among a page of
``ORDERS_SCAN_MAX`` payments (an order and its payment share their id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.dashboard import commerce_pages as cp
from gateway.dashboard.partner_routes import (
    Acting,
    _acting,
    _asset_or_problem,
    _changing,
    _int_field,
    _text,
)
from gateway.dashboard.routes import _html
from gateway.keyring import PartnerKeys
from gateway.ledger_routes import hex_param
from gateway.payments_routes import (
    LISTING_PREFIX,
    ORDER_PREFIX,
    listings_page,
    order_step,
    payment_step,
    payments_page,
    put_listing,
    read_order,
    read_payment,
)
from gateway.webhook_endpoints import EVENT_TYPES, endpoint_object, remove_endpoint
from gateway.webhook_routes import (
    create_endpoint,
    deliverer_of,
    deliveries_page,
    delivery_number,
    own_endpoint,
    resend_delivery,
    rotate_endpoint,
    write_endpoints,
)
from node.errors import BaasError, InvalidRequest, NotFound

__all__ = ["add_commerce_routes"]

PAYMENTS_READ_MAX = 100  # payments a Payments page reads (the API's page bound)
ORDERS_SCAN_MAX = 20  # payments an Orders page reads, an order read for each
LISTINGS_SHOWN_MAX = 50  # listings a Market page asks the search for
DELIVERIES_SHOWN_MAX = 20  # deliveries an endpoint's page shows

Problems = list[tuple[str, str]]
# A page: (the session's partner and mode, what the last action did, its refusal, the query
# or form naming what to show) -> (HTML, HTTP status).
Draw = Callable[[Acting, str, BaasError | None, Mapping[str, str]], Awaitable[tuple[str, int]]]
Change = Callable[[Acting, dict[str, str], str], Awaitable[str]]


def _refused(problems: Problems, exc: BaasError, status: int) -> int:
    """Note a failed read (shown, never a blank page); the page's status is the worst one."""
    problems.append((exc.code, exc.detail))
    return max(status, getattr(exc, "http_status", 500))


def _asked(asked: Mapping[str, str], name: str) -> str:
    return asked.get(name, "").strip()


# -- payments --------------------------------------------------------------------------------


async def _order_or_none(acting: Acting, operation: str) -> dict[str, Any] | None:
    """The order whose payment this is, or None (most payments are no order's)."""
    try:
        return await read_order(acting.gateway, acting.ctx, ORDER_PREFIX + operation)
    except NotFound:
        return None


async def draw_payments(
    acting: Acting, notice: str, problem: BaasError | None, asked: Mapping[str, str]
) -> tuple[str, int]:
    problems: Problems = []
    status = 200
    payment, order_id = None, None
    if raw := _asked(asked, "id"):
        try:
            payment = await read_payment(acting.gateway, acting.ctx, raw)
            order = await _order_or_none(acting, payment["operation"])
            order_id = None if order is None else order["id"]
        except BaasError as exc:  # another partner's, or the other mode's: the API's 404
            status = _refused(problems, exc, status)
    wanted = _asked(asked, "status")
    listing = None
    try:
        if wanted and wanted not in cp.PAYMENT_STATUSES:
            raise InvalidRequest(
                f"status is one of {', '.join(cp.PAYMENT_STATUSES)}", param="status"
            )
        cursor = _asked(asked, "starting_after") or None
        listing = await payments_page(acting.gateway, acting.ctx, str(PAYMENTS_READ_MAX), cursor)
    except BaasError as exc:
        status = _refused(problems, exc, status)
    view = acting.view("payments", notice, problem)
    return cp.payments_page(view, payment, order_id, listing, wanted, problems), status


async def _payment_step(
    acting: Acting, form: dict[str, str], key: str, kind: str
) -> dict[str, Any]:
    body = {"amount": _text(form, "amount")} if kind != "payments.void" else {}
    _, payment = await payment_step(acting.gateway, acting.ctx, key, kind, _text(form, "id"), body)
    return payment


async def _capture(acting: Acting, form: dict[str, str], key: str) -> str:
    p = await _payment_step(acting, form, key, "payments.capture")
    return f"Captured {p['amount_captured']} of {p['amount']}: the payment is {p['status']}."


async def _void(acting: Acting, form: dict[str, str], key: str) -> str:
    p = await _payment_step(acting, form, key, "payments.void")
    return f"The payment is {p['status']}."


async def _refund(acting: Acting, form: dict[str, str], key: str) -> str:
    p = await _payment_step(acting, form, key, "payments.refund")
    return f"Refunded {p['amount_refunded']} of {p['amount_captured']} in all."


# -- the Market: listings --------------------------------------------------------------------


async def draw_market(
    acting: Acting, notice: str, problem: BaasError | None, asked: Mapping[str, str]
) -> tuple[str, int]:
    problems: Problems = []
    status = 200
    asset, refused = await _asset_or_problem(acting)
    if refused is not None:  # shown; the listings (in BAAS) still are, as on the overview
        problems.append((refused.code, refused.detail))
    query = {"partner": acting.ctx.pid16.hex(), "limit": str(LISTINGS_SHOWN_MAX)}
    if page := _asked(asked, "page"):
        query["page"] = page
    result = None
    try:
        result = await listings_page(acting.gateway, acting.ctx, query)
    except BaasError as exc:
        status = _refused(problems, exc, status)
    code = "" if asset is None else str(asset["code"])
    return cp.market_page(acting.view("market", notice, problem), result, code, problems), status


def _listing_body(form: dict[str, str]) -> dict[str, Any]:
    """The listing form as the API's JSON body (the stock an integer, as the API takes it)."""
    return {
        "title": _text(form, "title"),
        "description": _text(form, "description"),
        "price": _text(form, "price"),
        "asset": _text(form, "asset") or "baas",
        "stock": _int_field(form, "stock"),
        "active": form.get("active") == "true",
    }


async def _new_listing(acting: Acting, form: dict[str, str], key: str) -> str:
    _, listing = await put_listing(acting.gateway, acting.ctx, key, _listing_body(form), None)
    return f"Listed {listing['title']} ({listing['id']})."


async def _update_listing(acting: Acting, form: dict[str, str], key: str) -> str:
    listing_id = hex_param(_text(form, "id"), "id", 16, 16, prefix=LISTING_PREFIX)
    body = _listing_body(form)
    _, listing = await put_listing(acting.gateway, acting.ctx, key, body, listing_id)
    return f"Saved {listing['title']}: price {listing['price']}, stock {listing['stock']}."


# -- the Market: orders ----------------------------------------------------------------------


async def draw_orders(
    acting: Acting, notice: str, problem: BaasError | None, asked: Mapping[str, str]
) -> tuple[str, int]:
    problems: Problems = []
    status = 200
    order = None
    if raw := _asked(asked, "id"):
        try:
            order = await read_order(acting.gateway, acting.ctx, raw)
        except BaasError as exc:
            status = _refused(problems, exc, status)
    orders, cursor = None, None
    try:
        after = _asked(asked, "starting_after") or None
        page = await payments_page(acting.gateway, acting.ctx, str(ORDERS_SCAN_MAX), after)
        found = await asyncio.gather(
            *(_order_or_none(acting, p["operation"]) for p in page["data"])
        )
        orders = [o for o in found if o is not None]
        if page["has_more"] and page["data"]:
            cursor = page["data"][-1]["id"]
    except BaasError as exc:
        status = _refused(problems, exc, status)
    view = acting.view("orders", notice, problem)
    return cp.orders_page(view, order, orders, cursor, problems), status


async def _order_step(acting: Acting, form: dict[str, str], key: str, kind: str) -> dict[str, Any]:
    body = {"amount": _text(form, "amount")} if kind == "market.refund" else {}
    _, order = await order_step(acting.gateway, acting.ctx, key, kind, _text(form, "id"), body)
    return order


async def _fulfil(acting: Acting, form: dict[str, str], key: str) -> str:
    return f"The order is {(await _order_step(acting, form, key, 'market.fulfil'))['status']}."


async def _cancel(acting: Acting, form: dict[str, str], key: str) -> str:
    return f"The order is {(await _order_step(acting, form, key, 'market.cancel'))['status']}."


async def _order_refund(acting: Acting, form: dict[str, str], key: str) -> str:
    order = await _order_step(acting, form, key, "market.refund")
    return f"Refunded {order['payment']['amount_refunded']} of the order in all."


# -- webhooks --------------------------------------------------------------------------------


def _keys_now(acting: Acting) -> PartnerKeys:
    """The partner's keyring entry now (a change on this page replaced it)."""
    return acting.gateway.keyring.partners.get(acting.partner.partner_id, acting.partner)


def _now_ms(acting: Acting) -> int:
    return int(acting.gateway.clock_s() * 1000)


async def draw_webhooks(
    acting: Acting,
    notice: str,
    problem: BaasError | None,
    asked: Mapping[str, str],
    new_secret: tuple[str, str] | None = None,
) -> tuple[str, int]:
    keys, now_ms, status = _keys_now(acting), _now_ms(acting), 200
    endpoints = [
        endpoint_object(x, now_ms) for x in keys.webhook_endpoints if x.mode == acting.mode
    ]
    view = acting.view("webhooks", notice, problem)
    deliveries = ""
    if raw := _asked(asked, "endpoint"):
        problems: Problems = []
        listing = None
        try:
            endpoint = own_endpoint(keys, acting.mode, raw)
            after = _asked(asked, "starting_after")
            before = delivery_number(after, "starting_after") if after else None
            deliverer = deliverer_of(acting.app)
            listing = deliveries_page(deliverer, endpoint, DELIVERIES_SHOWN_MAX, before)
        except BaasError as exc:
            status = _refused(problems, exc, status)
        deliveries = cp.deliveries_section(view, raw, listing, problems)
    events = sorted(EVENT_TYPES)
    return cp.webhooks_page(view, endpoints, events, new_secret, deliveries), status


async def _add_endpoint(acting: Acting, form: dict[str, str]) -> tuple[str, dict[str, Any]]:
    events = [name.removeprefix("event:") for name in form if name.startswith("event:")]
    made = await create_endpoint(
        acting.gateway, _keys_now(acting), acting.mode, _text(form, "url"), events or ["*"]
    )
    return f"Added {made['id']}.", made


async def _rotate(acting: Acting, form: dict[str, str]) -> tuple[str, dict[str, Any]]:
    keys = _keys_now(acting)
    endpoint = own_endpoint(keys, acting.mode, _text(form, "endpoint_id"))
    overlap_s = acting.gateway.config.webhooks.rotation_overlap_s
    rotated = await rotate_endpoint(acting.gateway, keys, endpoint, overlap_s)
    return f"New secret for {rotated['id']}; the old one signs too for {overlap_s} s.", rotated


SecretChange = Callable[[Acting, dict[str, str]], Awaitable[tuple[str, dict[str, Any]]]]


def _secret_poster(change: SecretChange) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An endpoint change that makes a signing secret: the page shows it this once."""

    async def post(request: web.Request) -> web.StreamResponse:
        acting, form, _ = await _changing(request)
        try:
            notice, shown = await change(acting, form)
        except BaasError as exc:
            text, _ = await draw_webhooks(acting, "", exc, {})
            return _html(text, getattr(exc, "http_status", 500))
        secret = (shown["id"], shown["secret"])
        text, status = await draw_webhooks(acting, notice, None, {}, secret)
        return _html(text, status)

    return post


async def _delete_endpoint(acting: Acting, form: dict[str, str], key: str) -> str:
    endpoint = own_endpoint(_keys_now(acting), acting.mode, _text(form, "endpoint_id"))
    await write_endpoints(
        acting.gateway, acting.partner.partner_id, lambda eps: remove_endpoint(eps, endpoint.id)
    )
    return f"Deleted {endpoint.id}."


async def _resend(acting: Acting, form: dict[str, str], key: str) -> str:
    deliverer = deliverer_of(acting.app)
    d = resend_delivery(
        deliverer, _keys_now(acting), acting.mode, _text(form, "delivery"), _now_ms(acting)
    )
    return f"{d['id']} is {d['status']} again."


# -- wiring ----------------------------------------------------------------------------------


def _getter(draw: Draw) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def get(request: web.Request) -> web.StreamResponse:
        text, status = await draw(_acting(request), "", None, request.query)
        return _html(text, status)

    return get


def _poster(draw: Draw, change: Change) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A change's handler: the page it came from (the form names the object shown) with the
    refusal (its problem code and message) or what it did."""

    async def post(request: web.Request) -> web.StreamResponse:
        acting, form, key = await _changing(request)
        try:
            notice = await change(acting, form, key)
        except BaasError as exc:
            text, _ = await draw(acting, "", exc, form)
            return _html(text, getattr(exc, "http_status", 500))
        text, status = await draw(acting, notice, None, form)
        return _html(text, status)

    return post


def add_commerce_routes(app: web.Application, base: str) -> None:
    pages: tuple[tuple[str, Draw], ...] = (
        ("payments", draw_payments),
        ("market", draw_market),
        ("orders", draw_orders),
        ("webhooks", draw_webhooks),
    )
    for slug, draw in pages:
        app.router.add_get(f"{base}/{{mode}}/{slug}", _getter(draw))
    changes: tuple[tuple[str, Draw, Change], ...] = (
        ("payments/capture", draw_payments, _capture),
        ("payments/void", draw_payments, _void),
        ("payments/refund", draw_payments, _refund),
        ("market/listings", draw_market, _new_listing),
        ("market/listings/update", draw_market, _update_listing),
        ("orders/fulfil", draw_orders, _fulfil),
        ("orders/cancel", draw_orders, _cancel),
        ("orders/refund", draw_orders, _order_refund),
        ("webhooks/delete", draw_webhooks, _delete_endpoint),
        ("webhooks/resend", draw_webhooks, _resend),
    )
    for action, draw, change in changes:
        app.router.add_post(f"{base}/{{mode}}/{action}", _poster(draw, change))
    app.router.add_post(f"{base}/{{mode}}/webhooks/add", _secret_poster(_add_endpoint))
    app.router.add_post(f"{base}/{{mode}}/webhooks/rotate", _secret_poster(_rotate))
