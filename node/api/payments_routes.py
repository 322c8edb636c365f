"""The node's payments reads: a payment, a merchant's payments, an order, listings, the outbox.

Like the Bridge's reads (:mod:`node.api.bridge_routes`, over the same
:class:`~node.api.ledger_routes.LedgerReads`), every node answers from its own applied state
with no consensus round; amounts and account ids are strings of digits, ids hex. These
internal routes take the partner as a parameter and answer another partner's objects as not
found (the core's own reads, :mod:`business.payments.views`); the gateway's Payment API
authenticates the partner. States are read at ``now_ms`` (default this node's clock), so an
authorised payment past its window reads ``expired`` before any sweep ran.

* ``GET /internal/v1/payments/payments/{id}?partner=`` -> the payment (merchant, ledger,
  wallet account, amounts, refunds, fee, state)
* ``GET /internal/v1/payments/partners/{partner}/payments?mode=0|1&limit=&starting_after=``
  -> the merchant's payments, newest first (``{object: "list", data, has_more}``), at most
  :data:`LIST_LIMIT_MAX` per page (Stripe's bound)
* ``GET /internal/v1/payments/orders/{id}?partner=`` -> the order (listing, quantity, state)
* ``GET /internal/v1/payments/listings?text=&partner=&ledger=&price_min=&price_max=
  &in_stock=&after=&limit=`` -> a page of the Market search
  (:func:`~business.payments.views.search_listings`: a bounded scan; ``resume_after`` to go
  on); ``GET .../listings/{id}`` -> one listing
* ``GET /internal/v1/payments/events?after=&limit=`` -> the outbox (:mod:`business.payments.
  outbox`) in order after sequence number ``after``: each event's ``id``, ``seq``, ``type``
  (``payment.captured``, ...), ``object``, ``log_time_ms``, and whose it is: ``partner`` and
  ``ledger`` (the payment's, an order's payment's, the reserve's; the deliverer routes on
  them and takes the mode from the ledger), and the head (``acked``,
  ``dropped``, ``next``): the deliverer's cursor, kept on the log
* ``GET /internal/v1/payments/digest`` -> ``{"applied_index", "digest", "keys"}`` over ``pm/``
* ``POST /internal/v1/payments/ack`` ``{"upto": n}`` (JSON) -> ``{"code", "detail"}`` once the
  ``payments.ack`` entry is applied on this node (any node: proposed through the leader on
  the shared leader route, :class:`~node.anchoring.forwarding.ForwardingProposer`), the
  deliverer's acknowledgement; ``POST .../ack/propose`` the leader's side of it (msgpack
  ``{entry}``, leader only: 503 ``not_leader`` elsewhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
from aiohttp import web

from business.ledger.views import get_transfer
from business.payments.model import (
    LISTING_PREFIX,
    PARTNER_PAYMENTS_PREFIX,
    PREFIX,
    Listing,
    PaymentRecord,
    PaymentState,
    decode_payment,
    listing_key,
    payment_key,
)
from business.payments.outbox import (
    EVENT_PREFIX,
    PAYMENTS_ACK,
    Event,
    EventType,
    decode_event,
    event_key,
    read_head,
)
from business.payments.views import (
    ListingQuery,
    get_listing,
    get_order,
    get_payment,
    payments_state_digest,
    search_listings,
)
from node.anchoring.forwarding import ForwardingProposer, outcome_body
from node.api.bridge_routes import _applied, _hex, _int, _view, capped
from node.api.identity_routes import read_forwarded
from node.api.ledger_routes import LEDGER_READS, LedgerReads
from node.api.wire import MSGPACK
from node.consensus.payments_ops import PAYMENTS_CONFIG
from node.consensus.state_machine import AppEntry, Applied, StateView
from node.errors import InvalidRequest, NotFound, NotLeader, OperationFailed

__all__ = [
    "LIST_LIMIT_MAX",
    "PAYMENTS_ACK_PROPOSE_PATH",
    "PAYMENTS_PATH",
    "AckRoutes",
    "add_ack_routes",
    "add_payments_routes",
]

PAYMENTS_PATH = "/internal/v1/payments"
PAYMENTS_ACK_PATH = PAYMENTS_PATH + "/ack"
PAYMENTS_ACK_PROPOSE_PATH = PAYMENTS_ACK_PATH + "/propose"
LIST_LIMIT_MAX = 100
EVENTS_LIMIT_MAX = 1000
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_AMOUNT_MAX = (1 << 128) - 1


def _now_ms(request: web.Request) -> int:
    return _int(request.query.get("now_ms"), "now_ms", 0, _U64_MAX, int(time.time() * 1000))


def _partner(request: web.Request) -> bytes:
    raw = request.match_info.get("partner") or request.query.get("partner")
    return _hex(raw, "partner", 16)


def payment_doc(payment: bytes, p: PaymentRecord, state: PaymentState) -> dict[str, Any]:
    return {
        "object": "payment",
        "id": payment.hex(),
        "partner": p.partner.hex(),
        "ledger": p.ledger,
        "wallet_account": str(p.wallet_account),
        "amount": str(p.amount),
        "captured": str(p.captured),
        "refunded": str(p.refunded),
        "refunds": p.refunds,
        "fee": str(p.fee),
        "state": state.name.lower(),
    }


def listing_doc(listing: bytes, x: Listing) -> dict[str, Any]:
    return {
        "object": "listing",
        "id": listing.hex(),
        "partner": x.partner.hex(),
        "ledger": x.ledger,
        "price": str(x.price),
        "stock": x.stock,
        "active": x.active,
        "title": x.title,
        "description": x.description,
    }


async def get_payment_route(request: web.Request) -> web.Response:
    payment = _hex(request.match_info["id"], "id", 32)
    partner, now_ms = _partner(request), _now_ms(request)
    applied = await _applied(request)
    found = get_payment(_view(request), partner, payment, now_ms)
    if found is None:
        raise NotFound("no such payment on this node", code="payment_not_found")
    return web.json_response({**payment_doc(payment, *found), "applied_index": applied})


async def list_payments_route(request: web.Request) -> web.Response:
    partner, now_ms = _partner(request), _now_ms(request)
    mode = _int(request.query.get("mode"), "mode", 0, 1)
    limit = _int(request.query.get("limit"), "limit", 1, LIST_LIMIT_MAX, default=10)
    reads: LedgerReads = request.app[LEDGER_READS]
    if reads.read_range_at is None:
        raise OperationFailed("this node serves no lists", code="not_enabled")
    view = reads.view()
    start = PARTNER_PAYMENTS_PREFIX + partner + bytes((mode,))
    stop = start + b"\xff" * 41
    after = request.query.get("starting_after")
    if after is not None:
        cursor = get_payment(view, partner, _hex(after, "starting_after", 32), now_ms)
        transfer = None if cursor is None else get_transfer(view, cursor[0].pending)
        if transfer is None:
            raise InvalidRequest(
                "starting_after is no payment", code="field_invalid", param="starting_after"
            )
        stop = start + transfer.timestamp.to_bytes(8, "big")  # newest first: the older ones

    def walk(items: Iterator[tuple[bytes, bytes]]) -> tuple[list[bytes], bool]:
        ids: list[bytes] = []
        for key, _ in items:
            if len(ids) == limit:
                return ids, True
            ids.append(key[-32:])
        return ids, False

    applied, (ids, has_more) = await asyncio.to_thread(
        reads.read_range_at, start, stop, walk, reverse=True
    )
    data = []
    for payment in ids:  # live reads: a payment listed is never removed
        found = get_payment(view, partner, payment, now_ms)
        if found is not None:
            data.append(payment_doc(payment, *found))
    return web.json_response(
        {"object": "list", "data": data, "has_more": has_more, "applied_index": applied}
    )


async def get_order_route(request: web.Request) -> web.Response:
    order = _hex(request.match_info["id"], "id", 32)
    partner, now_ms = _partner(request), _now_ms(request)
    applied = await _applied(request)
    found = get_order(_view(request), partner, order, now_ms)
    if found is None:
        raise NotFound("no such order on this node", code="order_not_found")
    o, state = found
    return web.json_response(
        {
            "object": "order",
            "id": order.hex(),
            "listing": o.listing.hex(),
            "merchant": o.merchant.hex(),
            "quantity": o.quantity,
            "state": state.name.lower(),
            "payment": order.hex(),  # an order and its payment share the operation id
            "applied_index": applied,
        }
    )


async def get_listing_route(request: web.Request) -> web.Response:
    listing = _hex(request.match_info["id"], "id", 16)
    applied = await _applied(request)
    found = get_listing(_view(request), listing)
    if found is None:
        raise NotFound("no such listing on this node", code="listing_not_found")
    return web.json_response({**listing_doc(listing, found), "applied_index": applied})


class _Scan:
    """One pinned range read as the ``RangeView`` the search takes (it scans once)."""

    def __init__(self, items: Iterator[tuple[bytes, bytes]]) -> None:
        self._items = items

    def get(self, key: bytes) -> bytes | None:
        raise OperationFailed("the listing search only scans")

    def scan(
        self, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        if reverse:
            raise OperationFailed("the listing search scans forward")
        return (kv for kv in self._items if start <= kv[0] < stop)


async def search_listings_route(request: web.Request) -> web.Response:
    q = request.query
    partner = q.get("partner")
    in_stock = q.get("in_stock", "false")
    if in_stock not in ("true", "false"):
        raise InvalidRequest("in_stock is true or false", code="field_invalid", param="in_stock")
    query = ListingQuery(
        text=q.get("text", "")[: PAYMENTS_CONFIG.title_chars_max],
        partner=None if partner is None else _hex(partner, "partner", 16),
        ledger=None if "ledger" not in q else _int(q["ledger"], "ledger", 1, _U32_MAX),
        price_min=_int(q.get("price_min"), "price_min", 0, _AMOUNT_MAX, default=0),
        price_max=None
        if "price_max" not in q
        else _int(q["price_max"], "price_max", 0, _AMOUNT_MAX),
        in_stock=in_stock == "true",
        after=None if "after" not in q else _hex(q["after"], "after", 16),
        limit=_int(q.get("limit"), "limit", 1, PAYMENTS_CONFIG.search_limit_max, default=10),
    )
    reads: LedgerReads = request.app[LEDGER_READS]
    if reads.read_range_at is None:
        raise OperationFailed("this node serves no lists", code="not_enabled")
    start = LISTING_PREFIX if query.after is None else listing_key(query.after) + b"\x00"
    stop = LISTING_PREFIX[:-1] + bytes([LISTING_PREFIX[-1] + 1])
    applied, page = await asyncio.to_thread(
        reads.read_range_at,
        start,
        stop,
        lambda items: search_listings(_Scan(items), query, PAYMENTS_CONFIG),
    )
    return web.json_response(
        {
            "object": "list",
            "data": [listing_doc(lid, x) for lid, x in page.listings],
            "has_more": page.resume_after is not None,
            "resume_after": None if page.resume_after is None else page.resume_after.hex(),
            "applied_index": applied,
        }
    )


def event_owner(view: StateView, e: Event) -> tuple[bytes, int]:
    """The partner and ledger an event concerns (16 zero bytes and 0 if its object is gone)."""
    if e.type is EventType.RESERVE_LOW:  # object: the partner id + the BAAS ledger u32
        return e.object[:16], int.from_bytes(e.object[16:20], "big")
    raw = view.get(payment_key(e.object))  # an order and its payment share the id
    if raw is None:
        return bytes(16), 0
    p = decode_payment(raw)
    return p.partner, p.ledger


async def list_events_route(request: web.Request) -> web.Response:
    after = _int(request.query.get("after"), "after", 0, _U64_MAX, default=0)
    limit = _int(request.query.get("limit"), "limit", 1, EVENTS_LIMIT_MAX, default=100)
    reads: LedgerReads = request.app[LEDGER_READS]
    view = reads.view()

    def walk(items: Iterator[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, raw in items:
            if key < event_key(after + 1):
                continue
            e = decode_event(key, raw)
            partner, ledger = event_owner(view, e)
            out.append(
                {
                    "id": e.id.hex(),
                    "seq": e.seq,
                    "type": e.type.api_name,
                    "object": e.object.hex(),
                    "log_time_ms": e.log_time_ms,
                    "partner": partner.hex(),
                    "ledger": ledger,
                }
            )
            if len(out) == limit:
                break
        return out

    if reads.read_range_at is not None:  # start at the cursor, not at the oldest event
        stop = EVENT_PREFIX[:-1] + bytes([EVENT_PREFIX[-1] + 1])
        applied, data = await asyncio.to_thread(
            reads.read_range_at, event_key(after + 1), stop, walk
        )
    else:
        applied, data = await asyncio.to_thread(reads.read_at, EVENT_PREFIX, walk)
    head = read_head(view)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "has_more": bool(data) and data[-1]["seq"] < head.next_seq - 1,
            "acked": head.acked_seq,
            "dropped": head.dropped,
            "next": head.next_seq,
            "applied_index": applied,
        }
    )


async def get_digest_route(request: web.Request) -> web.Response:
    reads: LedgerReads = request.app[LEDGER_READS]

    def digest(items: Iterator[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        held = list(capped(items, reads.digest_keys_max, "payments"))
        return len(held), payments_state_digest(held)

    applied, (keys, value) = await asyncio.to_thread(reads.read_at, PREFIX, digest)
    return web.json_response({"applied_index": applied, "digest": value.hex(), "keys": keys})


def add_payments_routes(app: web.Application) -> None:
    """The payments reads, over the ledger reads' state (add_ledger_routes first)."""
    app.router.add_get(PAYMENTS_PATH + "/payments/{id}", get_payment_route)
    app.router.add_get(PAYMENTS_PATH + "/partners/{partner}/payments", list_payments_route)
    app.router.add_get(PAYMENTS_PATH + "/orders/{id}", get_order_route)
    app.router.add_get(PAYMENTS_PATH + "/listings", search_listings_route)
    app.router.add_get(PAYMENTS_PATH + "/listings/{id}", get_listing_route)
    app.router.add_get(PAYMENTS_PATH + "/events", list_events_route)
    app.router.add_get(PAYMENTS_PATH + "/digest", get_digest_route)


@dataclass(frozen=True, slots=True)
class AckRoutes:
    proposer: ForwardingProposer  # local on the leader, else forwarded to it
    propose_local: Callable[[AppEntry], Awaitable[Applied]]  # on this node's own log
    is_leader: Callable[[], bool]
    propose_timeout_s: float


ACK_ROUTES = web.AppKey("payments_ack_routes", AckRoutes)


async def post_ack(request: web.Request) -> web.Response:
    """Any node: the deliverer acknowledges the outbox up to ``upto``, through the leader."""
    routes = request.app[ACK_ROUTES]
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest("body must be JSON {upto}") from exc
    upto = body.get("upto") if isinstance(body, dict) else None
    if type(upto) is not int or not 0 <= upto <= _U64_MAX:
        raise InvalidRequest("upto is an event sequence number", param="upto")
    entry = AppEntry(PAYMENTS_ACK, {"upto": upto})
    outcome = await routes.proposer.propose(entry, timeout_s=routes.propose_timeout_s)
    return web.json_response({"code": outcome.code, "detail": dict(outcome.detail)})


async def post_ack_propose(request: web.Request) -> web.Response:
    """Leader only: append a forwarded ``payments.ack``, answer once applied."""
    routes = request.app[ACK_ROUTES]
    entry = await read_forwarded(request, {PAYMENTS_ACK})
    if not routes.is_leader():
        raise NotLeader("this node is not the leader")
    reply = outcome_body(await routes.propose_local(entry))
    return web.Response(body=msgpack.packb(reply, use_bin_type=True), content_type=MSGPACK)


def add_ack_routes(app: web.Application, routes: AckRoutes) -> None:
    """The deliverer's acknowledgement (needs the node's log: registered by node/main.py)."""
    app[ACK_ROUTES] = routes
    app.router.add_post(PAYMENTS_ACK_PATH, post_ack)
    app.router.add_post(PAYMENTS_ACK_PROPOSE_PATH, post_ack_propose)
