"""The partner pages for payments, the Market and webhooks without a browser and without nodes:
the pages drawn from the API's own objects (an admin's forms by state, a viewer's none, the
status filter, paging, a delivery's attempts), and the real gateway over HTTP: webhook
endpoints added (the secret shown once), rotated, deleted and kept to their mode and partner;
a viewer's every change refused 403; bad input refused with the API's problem codes before any
node call; an unreachable cluster said so on every page. What needs nodes (a payment captured
and refunded, a listing made) is in the browser test, tests/test_dashboard_partner_browser.py;
reads are also checked here against one node's real payments read API over a real LevelDB
state (test_payments_node.py's): a payment, the list, an order among them, the listings, and
another partner's or the other mode's payment and order the API's 404."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
from aiohttp import web
from bridgeopskit import rid
from identitykit import OTHER_SHOP, SHOP
from inprocess_gateway import gateway_without_nodes
from paymentsopskit import shop_world
from test_dashboard_partner import PASSWORD, _csrf, _key, _partner_signin
from test_payments_node import pay, reads

from business.identity.ids import partner_id
from business.payments.delivery import Attempt, Delivery, Status
from gateway.dashboard.commerce_pages import (
    deliveries_section,
    market_page,
    orders_page,
    payments_page,
    webhooks_page,
)
from gateway.dashboard.partner_pages import PartnerView
from gateway.dashboard.partner_users import new_partner_user, save_partner_users
from gateway.dashboard.sessions import Session
from gateway.webhook_routes import delivery_object
from node.api.ledger_routes import add_ledger_routes
from node.api.payments_routes import add_payments_routes
from node.api.problem import problem_middleware

ADMIN = Session("s", "tok", "shop-a/pat", "partner_admin", 0, 0, "shop-a")
VIEWER = Session("s", "tok", "shop-a/val", "partner_viewer", 0, 0, "shop-a")
URL = "https://hooks.example.com/in"


def _view(session: Session, slug: str) -> PartnerView:
    return PartnerView(session, "shop-a", session.role == "partner_admin", "test", slug)


def _main(html: str) -> str:
    """The page's own content (the header holds the sign-out form)."""
    return html.split("<main")[-1]


def _payment(n: int, status: str, captured: str = "0", refunded: str = "0") -> dict[str, Any]:
    return {
        "id": f"pay_{n:064x}", "object": "payment", "livemode": False, "status": status,
        "asset": "baas", "ledger": 2, "amount": "1000", "amount_captured": captured,
        "amount_refunded": refunded, "refunds": 1 if refunded != "0" else 0, "fee": "0",
        "operation": f"{n:064x}",
    }  # fmt: skip


def test_a_payments_page_offers_what_its_state_allows_and_a_viewer_nothing() -> None:
    authorised = payments_page(_view(ADMIN, "payments"), _payment(1, "authorised"), None, None, "")
    assert 'id="capture-form"' in authorised and 'id="void-form"' in authorised
    assert 'id="refund-form"' not in authorised
    assert 'name="csrf" value="tok"' in authorised and 'name="key"' in authorised
    assert 'value="1000"' in authorised  # capture defaults to the whole amount
    captured = payments_page(
        _view(ADMIN, "payments"), _payment(1, "captured", "600", "100"), None, None, ""
    )
    assert 'id="refund-form"' in captured and "at most 500" in captured
    assert 'id="capture-form"' not in captured and 'id="void-form"' not in captured
    facts = re.search(r'<dl class="facts" id="payment-facts">.*?</dl>', captured)
    assert facts is not None and "<dt>Captured</dt><dd>600</dd>" in facts.group(0)
    assert "<dt>Refunded</dt><dd>100</dd><dt>Refunds</dt><dd>1</dd>" in facts.group(0)
    done = payments_page(_view(ADMIN, "payments"), _payment(1, "refunded", "600", "600"),
                         None, None, "")  # fmt: skip
    assert 'method="post"' not in _main(done)
    # An order's payment is moved by its order: a link, no payment form.
    of_order = payments_page(
        _view(ADMIN, "payments"), _payment(1, "authorised"), "ord_" + "1" * 64, None, ""
    )
    assert 'id="payment-order"' in of_order and 'id="capture-form"' not in of_order
    viewed = payments_page(_view(VIEWER, "payments"), _payment(1, "authorised"), None, None, "")
    assert 'method="post"' not in _main(viewed) and "payment-facts" in viewed


def test_the_payments_list_filters_by_status_and_pages_on_from_the_last_read() -> None:
    listing = {"object": "list", "has_more": True,
               "data": [_payment(3, "captured", "5"), _payment(2, "authorised"),
                        _payment(1, "voided")]}  # fmt: skip
    html = payments_page(_view(VIEWER, "payments"), None, None, listing, "authorised")
    here = "/dashboard/partner/test/payments"
    assert f'href="{here}?id=pay_{2:064x}"' in html
    assert f"pay_{3:064x}" not in html and f'href="{here}?id=pay_{1:064x}"' not in html
    assert '<option value="authorised" selected>' in html
    next_link = re.search(r'href="([^"]+)" id="payments-next"', html)
    assert next_link is not None  # from the last payment READ, not the last shown
    assert next_link.group(1) == f"{here}?status=authorised&amp;starting_after=pay_{1:064x}"
    none = payments_page(_view(VIEWER, "payments"), None, None, listing, "expired")
    assert "No payment matches on this page." in none
    last = payments_page(_view(VIEWER, "payments"), None, None, {**listing, "has_more": False}, "")
    assert "payments-next" not in last and f"pay_{1:064x}" in last


def test_the_market_and_orders_pages() -> None:
    listing = {
        "id": "lst_" + "ab" * 16, "object": "market_listing", "livemode": False,
        "partner": "00" * 16, "asset": "points", "ledger": 3, "price": "250", "stock": 4,
        "active": False, "title": "Mug <b>", "description": "blue",
    }  # fmt: skip
    result = {"object": "search_result", "data": [listing], "has_more": True,
              "next_page": "lst_" + "cd" * 16}  # fmt: skip
    html = market_page(_view(ADMIN, "market"), result, "PTS", [])
    assert "Mug &lt;b&gt;" in html and "Mug <b>" not in html
    edit = re.search(rf'<form[^>]+id="edit-{listing["id"]}".*?</form>', html)
    assert edit is not None
    assert 'name="price" value="250"' in edit.group(0) and 'name="stock" value="4"' in edit.group(0)
    assert 'name="active"' in edit.group(0) and "checked" not in edit.group(0)
    assert f'name="id" value="{listing["id"]}"' in edit.group(0)
    assert 'name="asset" value="PTS"' in edit.group(0)  # a points listing stays in points
    assert '<option value="PTS">PTS</option>' in html  # a new listing may be priced in points
    assert 'id="listings-next"' in html and f"page=lst_{'cd' * 16}" in html
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # every field's label points at one input
    assert 'method="post"' not in _main(market_page(_view(VIEWER, "market"), result, "PTS", []))

    order = {
        "id": "ord_" + "1" * 64, "object": "market_order", "livemode": False,
        "status": "authorised", "listing": listing["id"], "merchant": "00" * 16, "quantity": 2,
        "payment": _payment(1, "authorised"),
    }  # fmt: skip
    page = orders_page(_view(ADMIN, "orders"), order, [order], "pay_" + "2" * 64)
    assert 'id="fulfil-form"' in page and 'id="cancel-form"' in page
    assert 'id="order-refund-form"' not in page and "order-payment" in page
    assert 'href="/dashboard/partner/test/orders?id=ord_' in page
    assert "starting_after=pay_" + "2" * 64 in page
    fulfilled = {**order, "status": "fulfilled", "payment": _payment(1, "captured", "1000")}
    page = orders_page(_view(ADMIN, "orders"), fulfilled, [], None)
    assert 'id="order-refund-form"' in page and 'id="fulfil-form"' not in page
    assert "No order among these payments." in page and "orders-next" not in page
    assert 'method="post"' not in _main(orders_page(_view(VIEWER, "orders"), order, [order], None))


def test_webhook_pages_show_any_status_the_api_gives_and_a_deliverys_attempts() -> None:
    endpoint = {
        "id": "we_0123456789abcdef", "object": "webhook_endpoint", "url": URL,
        "livemode": False, "enabled_events": ["payment.captured"], "status": "disabled",
        "created_ms": 0, "secrets_live": 1,
    }  # fmt: skip
    html = webhooks_page(_view(ADMIN, "webhooks"), [endpoint], ["payment.captured"])
    assert "<td>disabled</td>" in html  # a status the API may add is shown as given
    assert 'id="rotate-we_0123456789abcdef"' in html and 'id="delete-we_0123456789abcdef"' in html
    assert 'name="event:payment.captured"' in html and "new-secret" not in html
    made = webhooks_page(_view(ADMIN, "webhooks"), [], [], ("we_1", "whsec_" + "ab" * 32))
    assert 'id="secret-value">whsec_' in made and "No webhook endpoint in this mode yet." in made
    delivery = Delivery(
        7, 3, bytes(16), endpoint["id"], b"{}", 0, Status.PENDING, 90_000_000, 2, 2,
        (Attempt(60_000, 500, "", 12), Attempt(61_000, 0, "refused", 3)),
    )  # fmt: skip
    shown = {"object": "list", "has_more": True, "data": [delivery_object(delivery)]}
    section = deliveries_section(_view(ADMIN, "webhooks"), endpoint["id"], shown)
    assert "<code>whd_7</code>" in section and "<td>pending</td>" in section
    assert "1970-01-01 00:01:00 UTC: 500; 1970-01-01 00:01:01 UTC: 0 (refused)" in section
    assert "1970-01-02 01:00:00 UTC" in section  # the next attempt
    assert 'id="resend-whd_7"' in section and "starting_after=whd_7" in section
    viewer = deliveries_section(_view(VIEWER, "webhooks"), endpoint["id"], shown)
    assert 'method="post"' not in _main(viewer)


# -- the real gateway, over HTTP (no nodes) --------------------------------------------------


async def _signed_in(http: aiohttp.ClientSession, base: str, user: Any, step: int = 0) -> None:
    """``step`` 1: the next 30-second code (accepted too; each code signs in once)."""
    code = pyotp.TOTP(user.totp_secret).at(time.time() + 30 * step)
    status, _, _ = await _partner_signin(http, base, user.partner, user.name, code)
    assert status == 303


async def test_webhook_endpoints_from_the_pages_secret_once_modes_and_partners_apart(
    tmp_path: Path,
) -> None:
    async with gateway_without_nodes(tmp_path, dashboard={"signin_failures_max": 50}) as layout:
        users = {
            u.key: u
            for u in (
                new_partner_user("shop-a", "pat", "admin", PASSWORD),
                new_partner_user("shop-b", "bo", "admin", PASSWORD),
            )
        }
        save_partner_users(Path(layout.directory) / "secrets" / "partner_users.json", users)
        base = layout.gateway_url
        test_page = f"{base}/dashboard/partner/test/webhooks"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _signed_in(http, base, users["shop-a/pat"])
            async with http.get(test_page) as r:
                page = await r.text()
                assert r.status == 200 and "No webhook endpoint in this mode yet." in page
            form = {"csrf": _csrf(page), "key": _key(page), "url": "http://127.0.0.1/x",
                    "event:payment.captured": "on"}  # fmt: skip
            async with http.post(f"{test_page}/add", data=form) as r:
                refused = await r.text()  # the API's SSRF rule, its code shown
                assert r.status == 400 and "webhook_url_forbidden" in refused
            form = {**form, "url": URL, "event:payment.refunded": "on"}
            async with http.post(f"{test_page}/add", data=form) as r:
                added = await r.text()
                assert r.status == 200, added
            endpoint = re.search(r"Added (we_[0-9a-f]+)\.", added)
            secret = re.search(r'id="secret-value">(whsec_[0-9a-f]{64})<', added)
            assert endpoint and secret, added[-2000:]
            endpoint_id = endpoint.group(1)
            assert "payment.captured, payment.refunded" in added
            async with http.get(test_page) as r:
                again = await r.text()
                assert endpoint_id in again and secret.group(1) not in again  # shown once
            # Its deliveries: this gateway does not deliver, and says so with the API's code.
            async with http.get(test_page, params={"endpoint": endpoint_id}) as r:
                assert r.status == 503 and "webhooks_not_delivered_here" in await r.text()
            # Rotate: a new secret, once; the old one still live for the overlap.
            form = {"csrf": _csrf(again), "key": _key(again), "endpoint_id": endpoint_id}
            async with http.post(f"{test_page}/rotate", data=form) as r:
                rotated = await r.text()
                assert r.status == 200, rotated
            fresh = re.search(r'id="secret-value">(whsec_[0-9a-f]{64})<', rotated)
            assert fresh and fresh.group(1) != secret.group(1)
            assert f"<td>{endpoint_id}" not in rotated and "<td>2</td>" in rotated  # 2 live
            # The live page shows none of it, and refuses to touch it: the API's 404.
            live = f"{base}/dashboard/partner/live/webhooks"
            async with http.get(live) as r:
                live_page = await r.text()
                assert endpoint_id not in live_page and "live mode" in live_page
            form = {"csrf": _csrf(live_page), "key": "k1", "endpoint_id": endpoint_id}
            async with http.post(f"{live}/delete", data=form) as r:
                assert r.status == 404 and "webhook_endpoint_not_found" in await r.text()
            async with http.get(live, params={"endpoint": endpoint_id}) as r:
                assert r.status == 404 and "webhook_endpoint_not_found" in await r.text()

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _signed_in(http, base, users["shop-b/bo"])
            async with http.get(test_page) as r:
                other = await r.text()
                assert endpoint_id not in other
            for action in ("delete", "rotate"):
                form = {"csrf": _csrf(other), "key": "k2", "endpoint_id": endpoint_id}
                async with http.post(f"{test_page}/{action}", data=form) as r:
                    assert r.status == 404 and "webhook_endpoint_not_found" in await r.text()

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _signed_in(http, base, users["shop-a/pat"], step=1)
            async with http.get(test_page) as r:
                page = await r.text()
            form = {"csrf": _csrf(page), "key": "k3", "endpoint_id": endpoint_id}
            async with http.post(f"{test_page}/delete", data=form) as r:
                deleted = await r.text()
                assert r.status == 200 and f"Deleted {endpoint_id}." in deleted, deleted[-3000:]
                assert "No webhook endpoint in this mode yet." in deleted
            form = {"csrf": _csrf(page), "key": "k4", "endpoint": "we_x", "delivery": "whd_1"}
            async with http.post(f"{test_page}/resend", data=form) as r:
                assert r.status == 503 and "webhooks_not_delivered_here" in await r.text()


async def test_a_viewer_changes_nothing_and_bad_input_is_refused_before_any_node(
    tmp_path: Path,
) -> None:
    async with gateway_without_nodes(tmp_path, dashboard={"signin_failures_max": 50}) as layout:
        pat = new_partner_user("shop-a", "pat", "admin", PASSWORD)
        val = new_partner_user("shop-a", "val", "viewer", PASSWORD)
        save_partner_users(Path(layout.directory) / "secrets" / "partner_users.json",
                           {pat.key: pat, val.key: val})  # fmt: skip
        base = layout.gateway_url
        test = f"{base}/dashboard/partner/test"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _signed_in(http, base, val)
            for slug in ("payments", "market", "orders", "webhooks"):
                async with http.get(f"{test}/{slug}") as r:
                    page = await r.text()
                    assert 'method="post"' not in page.split("<main")[-1], slug
                    assert f'href="/dashboard/partner/test/{slug}" aria-current="page"' in page
            token = _csrf(page)
            for action in ("payments/capture", "payments/void", "payments/refund",
                           "market/listings", "market/listings/update", "orders/fulfil",
                           "orders/cancel", "orders/refund", "webhooks/add", "webhooks/delete",
                           "webhooks/rotate", "webhooks/resend"):  # fmt: skip
                form = {"csrf": token, "key": "v1", "id": "pay_" + "1" * 64, "amount": "5"}
                async with http.post(f"{test}/{action}", data=form) as r:
                    assert r.status == 403 and "role_read_only" in await r.text(), action
                async with http.post(f"{test}/{action}", data={**form, "csrf": "x"}) as r:
                    assert r.status == 401 and "csrf_token_invalid" in await r.text(), action

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _signed_in(http, base, pat)
            # No node answers: every page says so with a problem code, never a blank page.
            for slug, form_id in (("payments", "payment-filters"), ("market", "new-listing"),
                                  ("orders", "orders"), ("webhooks", "add-endpoint")):  # fmt: skip
                async with http.get(f"{test}/{slug}") as r:
                    page = await r.text()
                    if slug != "webhooks":  # endpoints live in the keyring, no node needed
                        assert r.status >= 500 and 'class="problem"' in page, slug
                    assert form_id in page, slug
            token = _csrf(page)
            # Ids, cursors and filters are the API's params, refused with its words; a page's
            # other reads still run (here: no node answers them), so the worst status stands.
            for path, query, said in (
                ("payments", {"id": "pay_12"}, "id must be pay_hex"),
                ("payments", {"status": "paid"}, "status is one of authorised, captured"),
                ("payments", {"starting_after": "pay_zz"}, "starting_after must be pay_hex"),
                ("orders", {"id": "ord_12"}, "id must be ord_hex"),
                ("orders", {"starting_after": "x"}, "starting_after must be pay_hex"),
            ):
                async with http.get(f"{test}/{path}", params=query) as r:
                    page = await r.text()
                    assert r.status >= 400 and '<code class="code">invalid_request' in page
                    assert said in page, (path, query, page[-1500:])
            async with http.get(f"{test}/payments", params={"status": "paid"}) as r:
                assert r.status == 400  # refused before the list is asked
            good_id = "pay_" + "1" * 64
            for action, form, code in (
                ("payments/capture", {"id": "pay_1", "amount": "5"}, "must be pay_hex"),
                ("payments/capture", {"id": good_id, "amount": "5x"}, "amount_invalid"),
                ("payments/refund", {"id": good_id, "amount": "0"}, "amount_invalid"),
                ("orders/refund", {"id": "ord_" + "1" * 64, "amount": ""}, "amount_invalid"),
                ("orders/fulfil", {"id": good_id}, "invalid_request"),  # a payment id: no order
                ("market/listings", {"title": "T", "price": "-1", "stock": "1"},
                 "amount_invalid"),
                ("market/listings", {"title": "T", "price": "1", "stock": "x"},
                 "stock must be a whole"),
                ("market/listings/update", {"id": "lst_1", "title": "T", "price": "1",
                                            "stock": "1"}, "must be lst_hex"),
            ):  # fmt: skip
                data = {"csrf": token, "key": f"k-{action}-{code}", **form}
                async with http.post(f"{test}/{action}", data=data) as r:
                    page = await r.text()
                    assert r.status == 400 and code in page, (action, form, page[-1500:])
                    assert 'class="problem"' in page


async def test_pages_read_a_nodes_real_payments_state_and_another_partners_ids_are_404(
    tmp_path: Path,
) -> None:
    """One node's payments read API (its routes over a real LevelDB state built by the node's
    dispatcher) on the first node's address; the other four never answer."""
    assert (partner_id("demo-shop"), partner_id("other-shop")) == (SHOP, OTHER_SHOP)
    node = shop_world(tmp_path / "db")
    try:
        pay(node)  # 100 captured 5 of 10, 101 voided, 102 authorised; 108 an order of 105's
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, reads(node))
        add_payments_routes(app)
        partners = ("demo-shop", "other-shop")
        async with gateway_without_nodes(tmp_path / "gw", partners=partners) as layout:
            runner = web.AppRunner(app)
            await runner.setup()
            first = layout.nodes[0]
            await web.TCPSite(runner, first.host, first.http_port).start()
            try:
                await _read_pages(layout)
            finally:
                await runner.cleanup()
    finally:
        node.close()


def _rid(n: int) -> str:
    return rid(n).hex()


async def _read_pages(layout: Any) -> None:
    users = [new_partner_user(p, "pat", "admin", PASSWORD) for p in ("demo-shop", "other-shop")]
    save_partner_users(Path(layout.directory) / "secrets" / "partner_users.json",
                       {u.key: u for u in users})  # fmt: skip
    base = layout.gateway_url
    test = f"{base}/dashboard/partner/test"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await _signed_in(http, base, users[0])
        async with http.get(f"{test}/payments") as r:
            page = await r.text()
            assert r.status == 200, page[-1500:]
        listed = re.findall(r'\?id=pay_([0-9a-f]{64})"', page)
        assert listed == [_rid(108), _rid(102), _rid(101), _rid(100)]  # newest first
        async with http.get(f"{test}/payments", params={"status": "voided"}) as r:
            assert re.findall(r'\?id=pay_([0-9a-f]{64})"', await r.text()) == [_rid(101)]
        async with http.get(f"{test}/payments", params={"id": f"pay_{_rid(100)}"}) as r:
            page = await r.text()
            assert r.status == 200 and "<dt>Captured</dt><dd>5</dd>" in page
            assert 'id="refund-form"' in page and "at most 5" in page
        async with http.get(f"{test}/payments", params={"id": f"pay_{_rid(108)}"}) as r:
            page = await r.text()  # an order's payment: a link to the order, no capture
            assert 'id="payment-order"' in page and 'id="capture-form"' not in page
        async with http.get(f"{test}/orders") as r:
            page = await r.text()
            assert r.status == 200 and re.findall(r'\?id=(ord_[0-9a-f]{64})"', page) == [
                f"ord_{_rid(108)}"
            ]
        async with http.get(f"{test}/orders", params={"id": f"ord_{_rid(108)}"}) as r:
            page = await r.text()
            assert r.status == 200 and "<dt>Quantity</dt><dd>1</dd>" in page
        async with http.get(f"{test}/market") as r:
            page = await r.text()
            assert r.status == 200, re.findall(r'class="problem".{0,300}', page)
            assert all(t in page for t in ("Blue mug", "Red mug", "Tea"))
        live = f"{base}/dashboard/partner/live"
        async with http.get(f"{live}/payments", params={"id": f"pay_{_rid(100)}"}) as r:
            page = await r.text()
            assert r.status == 404 and "payment_not_found" in page and _rid(101) not in page
        async with http.get(f"{live}/market") as r:
            assert "Blue mug" not in await r.text()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await _signed_in(http, base, users[1])
        async with http.get(f"{test}/payments", params={"id": f"pay_{_rid(100)}"}) as r:
            page = await r.text()
            assert r.status == 404 and "payment_not_found" in page
            assert "No payment matches on this page." in page
        async with http.get(f"{test}/orders", params={"id": f"ord_{_rid(108)}"}) as r:
            assert r.status == 404 and "order_not_found" in await r.text()
        async with http.get(f"{test}/market") as r:
            assert "Blue mug" not in await r.text()
