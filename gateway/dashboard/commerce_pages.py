"""The partner pages' HTML for payments, the Market (listings and orders) and webhooks.

Functions from the partner API's own objects (as :mod:`gateway.payments_routes` and
:mod:`gateway.webhook_routes` answer them) to a page string, in the partner pages' layout
(:mod:`.partner_pages`): the mode in every path, change forms (CSRF token, idempotency key)
for admins only, a refusal shown with its problem code.

Webhook endpoints and deliveries are drawn from whatever ``status`` the API's objects carry,
so a new status (e.g. disabled after failing) shows without a change here; an action on an
endpoint is one row of :data:`ENDPOINT_ACTIONS`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from business.payments.model import PaymentState
from gateway.dashboard.pages import _table, e, problem_box
from gateway.dashboard.partner_pages import (
    PartnerView,
    _facts,
    _form,
    _input,
    _partner_page,
    partner_path,
    utc_time,
)

__all__ = [
    "ENDPOINT_ACTIONS",
    "PAYMENT_STATUSES",
    "deliveries_section",
    "market_page",
    "orders_page",
    "payments_page",
    "webhooks_page",
]

# The statuses a payment reads as (the API's ``status``: business.payments' state names).
PAYMENT_STATUSES: Sequence[str] = tuple(s.name.lower() for s in PaymentState)
# An endpoint action: (path under webhooks/, button text, the endpoint statuses it is for).
ENDPOINT_ACTIONS: Sequence[tuple[str, str, frozenset[str] | None]] = (
    ("rotate", "Rotate the secret", None),
    ("delete", "Delete", None),
)


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{name}" value="{e(value)}">'


def _amount(form_id: str, label: str, value: str = "") -> str:
    """A digits field whose id is unique on a page of many forms."""
    name = "amount"
    return (
        f'<label for="{form_id}-{name}">{e(label)}</label>'
        f'<input id="{form_id}-{name}" name="{name}" type="text" value="{e(value)}" '
        'inputmode="numeric" pattern="[0-9]+" required>'
    )


def _next_link(here: str, query: Mapping[str, str], link_id: str) -> str:
    href = f"{here}?{urllib.parse.urlencode(query)}"
    return f'<p><a href="{e(href)}" id="{link_id}" rel="next">Next (older)</a></p>'


def _secret_box(endpoint_id: str, secret: str) -> str:
    return (
        '<div class="secret" role="status" id="new-secret"><p><strong>Signing secret of '
        f"<code>{e(endpoint_id)}</code></strong>. It is shown this once; store it where your "
        f'webhook receiver checks signatures:</p><p><code id="secret-value">{e(secret)}</code>'
        "</p></div>"
    )


# -- payments --------------------------------------------------------------------------------


def _payment_facts(payment: Mapping[str, Any], element_id: str) -> str:
    return _facts(
        (
            ("Payment", payment["id"]),
            ("Status", payment["status"]),
            ("Asset", payment["asset"]),
            ("Amount", payment["amount"]),
            ("Captured", payment["amount_captured"]),
            ("Refunded", payment["amount_refunded"]),
            ("Refunds", payment["refunds"]),
            ("Fee", payment["fee"]),
        ),
        element_id,
    )


def _payment_forms(view: PartnerView, payment: Mapping[str, Any]) -> str:
    """Capture (partial), void and refund (partial) for an admin; the API decides which the
    payment's state allows, and a refusal comes back with its code."""
    pid = _hidden("id", payment["id"])
    status = payment["status"]
    body = ""
    if status == "authorised":
        body += "<h2>Capture</h2>" + _form(
            view, "payments/capture",
            pid + _amount("capture-form", "Amount to capture (the rest is released)",
                          payment["amount"]),
            "Capture", "capture-form",
        )  # fmt: skip
        body += "<h2>Void</h2>" + _form(
            view, "payments/void", pid + "<p>Release the whole hold; nothing is paid.</p>",
            "Void the payment", "void-form",
        )  # fmt: skip
    if status == "captured":  # "refunded" is refunded in full
        body += _refund_form(view, "payments/refund", pid, payment, "refund-form")
    return body


def _refund_form(
    view: PartnerView, action: str, hidden: str, payment: Mapping[str, Any], form_id: str
) -> str:
    left = int(payment["amount_captured"]) - int(payment["amount_refunded"])
    return "<h2>Refund</h2>" + _form(
        view, action, hidden + _amount(form_id, f"Amount to refund (at most {left})"),
        "Refund", form_id,
    )  # fmt: skip


def payments_page(
    view: PartnerView,
    payment: Mapping[str, Any] | None,
    order_id: str | None,
    listing: Mapping[str, Any] | None,
    status: str,
    problems: Sequence[tuple[str, str]] = (),
) -> str:
    """One payment (``payment``: its facts, its order's link, an admin's actions) and a page
    of the payments list (``listing``: newest first) filtered to ``status`` ("" for any)."""
    here = partner_path(view.mode, "payments")
    body = "".join(problem_box(*p) for p in problems)
    if payment is not None:
        body += f'<section id="payment"><h2>Payment {e(payment["id"][:16])}&hellip;</h2>'
        body += _payment_facts(payment, "payment-facts")
        if order_id is not None:
            link = f"{partner_path(view.mode, 'orders')}?id={e(order_id)}"
            body += (
                f'<p>This payment is a Market order\'s: <a href="{link}" id="payment-order">'
                "the order</a> moves it.</p>"
            )
        else:
            body += _payment_forms(view, payment)
        body += (
            "<p>The API counts a payment's refunds and their sum; each refund is its own "
            "operation on the log.</p></section>"
        )
    options = "".join(
        f'<option value="{v}"{" selected" if status == v else ""}>{v or "any"}</option>'
        for v in ("", *PAYMENT_STATUSES)
    )
    body += (
        f'<h2>Payments</h2><form method="get" action="{here}" class="card" id="payment-filters">'
        f'<label for="status">Status</label><select id="status" name="status">{options}</select>'
        '<button type="submit">Filter</button></form>'
    )
    if listing is not None:
        shown = [p for p in listing["data"] if not status or p["status"] == status]
        if shown:
            rows = (
                (
                    f'<a href="{here}?id={e(p["id"])}"><code>{e(p["id"][:13])}&hellip;</code></a>',
                    e(p["status"]), e(p["asset"]), e(p["amount"]), e(p["amount_captured"]),
                    e(p["amount_refunded"]),
                )
                for p in shown
            )  # fmt: skip
            headers = ("Payment", "Status", "Asset", "Amount", "Captured", "Refunded")
            table = _table("Payments, newest first", headers, rows)
            body += f'<div id="payments-list">{table}</div>'
        else:
            body += '<p id="payments-list">No payment matches on this page.</p>'
        if listing["has_more"] and listing["data"]:
            query = {"status": status} if status else {}
            body += _next_link(
                here, {**query, "starting_after": listing["data"][-1]["id"]}, "payments-next"
            )
    return _partner_page(view, "Payments", body)


# -- the Market: listings --------------------------------------------------------------------


def _listing_fields(form_id: str, listing: Mapping[str, Any] | None, point_code: str) -> str:
    def field(name: str, label: str, value: str, extra: str = "") -> str:
        return (
            f'<label for="{form_id}-{name}">{e(label)}</label>'
            f'<input id="{form_id}-{name}" name="{name}" value="{e(value)}" {extra}>'
        )

    digits = 'inputmode="numeric" pattern="[0-9]+" required'
    active = listing is None or bool(listing["active"])
    fields = field("title", "Title", listing["title"] if listing else "", "required")
    fields += field("description", "Description", listing["description"] if listing else "")
    fields += field("price", "Price (smallest unit)", listing["price"] if listing else "", digits)
    fields += field("stock", "Stock", str(listing["stock"]) if listing else "", digits)
    if listing is not None:  # a replace names the asset again; the listing keeps its own
        fields += _hidden("asset", "baas" if listing["asset"] == "baas" else point_code)
    else:
        choices = [("baas", "BAAS")] + ([(point_code, point_code)] if point_code else [])
        options = "".join(f'<option value="{e(v)}">{e(t)}</option>' for v, t in choices)
        fields += (
            f'<label for="{form_id}-asset">Asset</label>'
            f'<select id="{form_id}-asset" name="asset">{options}</select>'
        )
    fields += (
        f'<label class="check"><input type="checkbox" name="active" id="{form_id}-active" '
        f'value="true"{" checked" if active else ""}> Active (shown in the Market)</label>'
    )
    return fields


def market_page(
    view: PartnerView,
    result: Mapping[str, Any] | None,
    point_code: str,
    problems: Sequence[tuple[str, str]] = (),
) -> str:
    """The partner's listings (``result``: a page of the Market search for this partner), a
    form to list something, and one to edit each listing (admins)."""
    here = partner_path(view.mode, "market")
    body = "".join(problem_box(*p) for p in problems)
    body += "<h2>New listing</h2>" + _form(
        view, "market/listings", _listing_fields("new-listing", None, point_code),
        "Create the listing", "new-listing",
    )  # fmt: skip
    if result is not None:
        listings = result["data"]
        if listings:
            rows = (
                (
                    f"<code>{e(x['id'])}</code>", e(x["title"]), e(x["asset"]), e(x["price"]),
                    e(x["stock"]), "yes" if x["active"] else "no",
                )
                for x in listings
            )  # fmt: skip
            headers = ("Listing", "Title", "Asset", "Price", "Stock", "Active")
            body += f'<div id="listings">{_table("Your listings", headers, rows)}</div>'
        else:
            body += '<p id="listings">No listing of yours on this page.</p>'
        for x in listings:
            edit = f"edit-{x['id']}"
            body += _form(
                view, "market/listings/update",
                _hidden("id", x["id"]) + f"<h2>Edit {e(x['title'])}</h2>"
                + _listing_fields(edit, x, point_code),
                f"Save {x['title']}", edit,
            )  # fmt: skip
        if result["has_more"] and result["next_page"]:
            body += _next_link(here, {"page": result["next_page"]}, "listings-next")
    return _partner_page(view, "Market", body)


# -- the Market: orders ----------------------------------------------------------------------


def _order_forms(view: PartnerView, order: Mapping[str, Any]) -> str:
    oid = _hidden("id", order["id"])
    status = order["status"]
    body = ""
    if status == "authorised":
        body += "<h2>Fulfil or cancel</h2>" + _form(
            view, "orders/fulfil", oid + "<p>Capture the whole payment: you ship.</p>",
            "Fulfil the order", "fulfil-form",
        ) + _form(
            view, "orders/cancel", oid + "<p>Release the payment; the stock comes back.</p>",
            "Cancel the order", "cancel-form",
        )  # fmt: skip
    if status == "fulfilled" and order["payment"] is not None:  # "refunded": in full
        body += _refund_form(view, "orders/refund", oid, order["payment"], "order-refund-form")
    return body


def orders_page(
    view: PartnerView,
    order: Mapping[str, Any] | None,
    orders: Sequence[Mapping[str, Any]] | None,
    cursor: str | None,
    problems: Sequence[tuple[str, str]] = (),
) -> str:
    """One order (its facts, its payment's, an admin's actions) and the orders among a page
    of the partner's newest payments (``cursor``: the last payment read, to go on from)."""
    here = partner_path(view.mode, "orders")
    body = "".join(problem_box(*p) for p in problems)
    if order is not None:
        body += f'<section id="order"><h2>Order {e(order["id"][:16])}&hellip;</h2>'
        body += _facts(
            (
                ("Order", order["id"]),
                ("Status", order["status"]),
                ("Listing", order["listing"]),
                ("Quantity", order["quantity"]),
            ),
            "order-facts",
        )
        if order["payment"] is not None:
            body += "<h3>Its payment</h3>" + _payment_facts(order["payment"], "order-payment")
        body += _order_forms(view, order) + "</section>"
    if orders is not None:
        if orders:
            rows = (
                (
                    f'<a href="{here}?id={e(o["id"])}"><code>{e(o["id"][:13])}&hellip;</code></a>',
                    e(o["status"]), f"<code>{e(o['listing'])}</code>", e(o["quantity"]),
                    e(o["payment"]["amount"] if o["payment"] else ""),
                )
                for o in orders
            )  # fmt: skip
            headers = ("Order", "Status", "Listing", "Quantity", "Amount")
            body += f'<div id="orders-list">{_table("Orders, newest first", headers, rows)}</div>'
        else:
            body += '<p id="orders-list">No order among these payments.</p>'
        if cursor is not None:
            body += _next_link(here, {"starting_after": cursor}, "orders-next")
    return _partner_page(view, "Orders", body)


# -- webhooks --------------------------------------------------------------------------------


def _endpoint_row(view: PartnerView, x: Mapping[str, Any]) -> tuple[str, ...]:
    here = partner_path(view.mode, "webhooks")
    actions = "".join(
        _form(
            view,
            f"webhooks/{path}",
            _hidden(
                "endpoint_id", x["id"]
            ),  # not "endpoint": the page after it lists no deliveries
            f"{text} ({x['id']})",
            f"{path}-{x['id']}",
        )
        for path, text, statuses in ENDPOINT_ACTIONS
        if statuses is None or x["status"] in statuses
    )
    return (
        f'<a href="{here}?endpoint={e(x["id"])}"><code>{e(x["id"])}</code></a>',
        e(x["url"]),
        e(", ".join(x["enabled_events"])),
        e(x["status"]),
        e(x["secrets_live"]),
        e(utc_time(int(x["created_ms"]))),
        actions,
    )


def webhooks_page(
    view: PartnerView,
    endpoints: Sequence[Mapping[str, Any]],
    event_types: Sequence[str],
    new_secret: tuple[str, str] | None = None,
    deliveries: str = "",
) -> str:
    """The partner's endpoints in this mode, the add form, a secret made this once, and one
    endpoint's deliveries (``deliveries``: :func:`deliveries_section`'s HTML)."""
    body = "" if new_secret is None else _secret_box(*new_secret)
    headers = ("Endpoint", "URL", "Events", "Status", "Live secrets", "Created", "")
    rows = [_endpoint_row(view, x) for x in endpoints]
    if rows:
        body += f'<div id="endpoints">{_table("Webhook endpoints", headers, rows)}</div>'
    else:
        body += '<p id="endpoints">No webhook endpoint in this mode yet.</p>'
    choices = "".join(
        f'<label class="check"><input type="checkbox" name="event:{e(t)}" value="on" '
        f'id="event-{e(t)}"> {e(t)}</label>'
        for t in event_types
    )
    body += "<h2>Add an endpoint</h2>" + _form(
        view, "webhooks/add",
        _input("url", "URL (https)", extra='type="url" required')
        + '<fieldset><legend>Events (none ticked: every event)</legend>' + choices
        + "</fieldset>",
        "Add the endpoint", "add-endpoint",
    )  # fmt: skip
    return _partner_page(view, "Webhooks", body + deliveries)


def deliveries_section(
    view: PartnerView,
    endpoint_id: str,
    listing: Mapping[str, Any] | None,
    problems: Sequence[tuple[str, str]] = (),
) -> str:
    """One endpoint's deliveries, newest first: status, attempts, the next attempt, resend."""
    here = partner_path(view.mode, "webhooks")
    body = f'<section id="deliveries"><h2>Deliveries to <code>{e(endpoint_id)}</code></h2>'
    body += "".join(problem_box(*p) for p in problems)
    if listing is not None:
        rows = []
        for d in listing["data"]:
            attempts = "; ".join(
                f"{utc_time(int(a['at_ms']))}: {a['status']}"
                + (f" ({a['error']})" if a["error"] else "")
                for a in d["attempts"]
            )
            next_at = d["next_attempt_ms"]
            rows.append(
                (
                    f"<code>{e(d['id'])}</code>", e(d["event"][:16]), e(d["status"]),
                    e(d["attempts_total"]), f'<span class="why">{e(attempts)}</span>',
                    e("" if next_at is None else utc_time(int(next_at))),
                    e(d["reason"] or ""),
                    _form(view, "webhooks/resend", _hidden("endpoint", endpoint_id)
                          + _hidden("delivery", d["id"]), f"Resend {d['id']}",
                          f"resend-{d['id']}"),
                )
            )  # fmt: skip
        headers = ("Delivery", "Event", "Status", "Attempts", "Tried", "Next attempt", "Reason",
                   "")  # fmt: skip
        if rows:
            body += _table("Deliveries, newest first", headers, rows)
        else:
            body += "<p>No delivery to this endpoint yet.</p>"
        if listing["has_more"] and listing["data"]:
            query = {"endpoint": endpoint_id, "starting_after": listing["data"][-1]["id"]}
            body += _next_link(here, query, "deliveries-next")
    return body + "</section>"
