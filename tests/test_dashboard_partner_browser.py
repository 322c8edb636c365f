"""The partner pages in a real browser: Playwright driving Debian's chromium (headless, never a
downloaded browser) against a real 5-node cluster and its gateway.

* a partner's admin signs in with password + TOTP (desktop, 1440x900), defines its points,
  issues them to a linked user, tops its reserve up from the test faucet, sets a swap policy
  (seeing the live quote preview as it types), sees a swap its user made through the Bridge API
  (``BridgeClient`` + the user's ``UserWallet`` signature) in the swaps list (hidden by the
  ``failed`` status filter; its row links to the one-swap view) and in the overview's swap
  volume, adds an API credential (the secret
  shown once) and retires it; switched to live mode, none of the test objects shows;
* a viewer (phone, 390x844) sees every page without a form, and a change it sends anyway is
  refused 403 ``role_read_only``;
* the admin, at both sizes, sees a payment the test made through the Payment API (the user's
  signature), captures part of it, refunds part (a refund above what is left is refused with
  ``refund_exceeds_captured`` on the page), creates a Market listing and edits its stock, sees
  the Orders page, adds a webhook endpoint and sees its signing secret once; an order its
  user placed through the API (the user's signature) is fulfilled and partly refunded from
  its page, whose payment's page links to it; none of it shows in live mode;
* another partner's admin asking for the swap or the payment, or naming the first partner's
  API key, gets the API's 404 (``swap_not_found``, ``payment_not_found``, ``unknown_api_key``);
* axe-core finds no serious or critical violation on any partner page; no page requests a host
  other than the gateway; no page is over 300 KB of compressed assets.

One cluster and one browser serve the module (tests in file order). Screenshots go to
``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyotp
import pytest
from nodeapi import running_cluster
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from test_dashboard_browser import SIZES, check_accessibility, load, shot

from gateway.dashboard.partner_users import PartnerUser, new_partner_user, save_partner_users
from tools.bench_dashboard import CHROMIUM, launch_chromium
from tools.client import PartnerClient
from tools.cluster_init import PARTNER_USERS_FILE
from tools.ledger_client import BridgeClient, LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

PARTNER = "shop-p"
OTHER = "shop-q"  # another partner: its session must reach none of shop-p's objects
PASSWORD = "partner password, long enough"
USER_ID = "user-1"
CODE = "PTS"
PAY = 3 * 10**17  # BAAS units the user pays (of the 9.9 * 10^18 its swap got)
URL = "https://hooks.example.com/baas"
T = TypeVar("T")


@dataclass
class Env:
    cluster: LocalCluster
    browser: Browser
    users: dict[str, PartnerUser]
    credentials: dict[str, tuple[str, bytes]]
    wallet: UserWallet
    hosts_seen: set[str] = field(default_factory=set)
    swap_id: str = ""
    payment_ids: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.cluster.layout.gateway_url

    def context(self, size: str) -> BrowserContext:
        context = self.browser.new_context(viewport=SIZES[size])
        context.on("request", lambda r: self.hosts_seen.add(_origin(r.url)))
        return context

    def page_url(self, mode: str, slug: str) -> str:
        return f"{self.base}/dashboard/partner/{mode}/{slug}"


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def off_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on its own loop in another thread: Playwright's sync API runs a loop here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _ledger(env_base: str, credential: tuple[str, bytes]) -> PartnerClient:
    return PartnerClient(env_base, credential[0], credential[1])


async def _link_user(base: str, credential: tuple[str, bytes], wallet: UserWallet) -> None:
    """Wait for the gateway to serve the new partner (its keyring reload), then link the
    user's wallet with the user's signature."""
    async with _ledger(base, credential) as http:
        client = LedgerClient(http, attempts_max=3)
        link = wallet.link(PARTNER, livemode=False, user_id=USER_ID,
                           deadline=int(time.time()) + 600)  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            got = await client.call("POST", "/v1/wallets/links", link, key="link-1")
            if got.status in (200, 201):
                return
            assert got.status in (401, 503) and time.monotonic() < deadline, got
            await asyncio.sleep(0.5)


async def _swap(base: str, credential: tuple[str, bytes], wallet: UserWallet) -> str:
    async with _ledger(base, credential) as http:
        bridge = BridgeClient(LedgerClient(http, attempts_max=3))
        quote = await bridge.quote(CODE, USER_ID, "in", "1000")
        assert quote.status == 200, quote
        swap = await bridge.swap(wallet, USER_ID, quote.body, key="swap-1")
        assert swap.status == 201, swap
        return str(swap.body["id"])


async def _payment(base: str, credential: tuple[str, bytes], wallet: UserWallet, key: str) -> str:
    """A server-side payment of the user's BAAS (from the swap) to the partner, authorised
    with the user's signature; 503 until the cluster runs the payments log feature."""
    body = {"amount": str(PAY), "user": USER_ID}
    async with _ledger(base, credential) as http:
        ledger = LedgerClient(http, attempts_max=3)
        deadline = time.monotonic() + 120
        while True:
            paid = await ledger.approved("/v1/payments", body, wallet, key=key)
            if paid.status == 201:
                assert paid.body["status"] == "authorised", paid
                return str(paid.body["id"])
            assert paid.status == 503 and time.monotonic() < deadline, paid
            await asyncio.sleep(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium (./dev)"
    with running_cluster(tmp_path_factory.mktemp("partnerpages"), chain="none") as cluster:
        layout = cluster.layout
        credentials = onboard_partner(layout, PARTNER)
        onboard_partner(layout, OTHER)
        users = {
            "admin": new_partner_user(PARTNER, "pat", "admin", PASSWORD),
            "viewer": new_partner_user(PARTNER, "val", "viewer", PASSWORD),
            "other": new_partner_user(OTHER, "quinn", "admin", PASSWORD),
        }
        save_partner_users(
            Path(layout.directory) / PARTNER_USERS_FILE, {u.key: u for u in users.values()}
        )
        wallet = UserWallet(bytes([7] * 32))
        asyncio.run(_link_user(layout.gateway_url, credentials["test"], wallet))
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                yield Env(cluster, browser, users, credentials, wallet)
            finally:
                browser.close()


def sign_in_partner(env: Env, page: Page, user: PartnerUser, step: int = 0) -> None:
    """``step`` 1: the next 30-second code (accepted too), for a user's second sign-in: each
    code signs in once."""
    load(page, f"{env.base}/dashboard/partner/signin")
    check_accessibility(page, "partner sign-in")
    page.fill("#partner", user.partner)
    page.fill("#name", user.name)
    page.fill("#password", PASSWORD)
    page.fill("#totp", pyotp.TOTP(user.totp_secret).at(time.time() + 30 * step))
    page.click("main button[type=submit]")
    page.wait_for_load_state("load")
    assert page.url.endswith("/dashboard/partner/test/overview"), page.url


def problem_text(page: Page) -> str:
    found = page.locator(".problem")
    return found.inner_text() if found.count() else ""


def submit(page: Page, form: str, fields: dict[str, str], notice: str) -> None:
    """Fill and send ``form``; the page it answers must show ``notice`` and no problem."""
    for name, value in fields.items():
        page.fill(f"{form} [name={name}]", value)
    page.click(f"{form} button[type=submit]")
    page.wait_for_load_state("load")
    assert not problem_text(page), problem_text(page)
    assert notice in page.inner_text("#notice")


def preview_shows(page: Page, text: str) -> None:
    """Wait until the live quote preview says ``text`` (it answers each edit in turn)."""
    page.wait_for_function(
        "(t) => document.getElementById('quote-preview').textContent.includes(t)",
        arg=text,
        timeout=10_000,
    )


def filter_swaps(page: Page, status: str) -> None:
    page.select_option("#status", status)
    page.click("#swap-filters button[type=submit]")
    page.wait_for_load_state("load")
    assert not problem_text(page), problem_text(page)


def define_points(env: Env, page: Page) -> None:
    """The first Bridge write waits for the cluster to run log feature 8 (503 before: refused
    before the log, so a new form, with a new key, is simply sent again)."""
    deadline = time.monotonic() + 120
    while True:
        load(page, env.page_url("test", "points"))
        page.fill("#define-form [name=code]", CODE)
        page.click("#define-form button[type=submit]")
        page.wait_for_load_state("load")
        problem = problem_text(page)
        if not problem:
            break
        assert "feature_not_enabled" in problem or "503" in page.title(), problem
        assert time.monotonic() < deadline, problem
        time.sleep(1)
    assert f"Point asset {CODE} defined." in page.inner_text("#notice")


def test_an_admin_runs_its_partner_from_the_pages(env: Env) -> None:
    size = "desktop"
    context = env.context(size)
    page = context.new_page()
    try:
        sign_in_partner(env, page, env.users["admin"])
        check_accessibility(page, "overview, empty")
        define_points(env, page)
        check_accessibility(page, "points")
        submit(page, "#issue-form", {"user": USER_ID, "amount": "5000"}, f"Issued 5000 {CODE}")
        assert "5000" in page.inner_text("#asset-facts")
        submit(page, "#liquidity-form", {"amount": "3000"}, f"Moved 3000 {CODE}")
        shot(page, "partner-points", size)

        load(page, env.page_url("test", "reserve"))
        submit(page, "#top-up", {"amount": str(10**21)}, f"level {10**21}")
        submit(page, "#threshold-form", {"threshold": str(10**20)}, f"set to {10**20}")
        check_accessibility(page, "reserve")
        shot(page, "partner-reserve", size)

        load(page, env.page_url("test", "policy"))
        policy = {"rate_num": str(10**16), "rate_den": "1", "swap_min": "10", "fee_bps": "100"}
        for name, value in policy.items():
            page.fill(f"#policy-form [name={name}]", value)
        page.fill("#amount_in", "1000")
        # 1000 points at 10^16 each, 1% fee: the Bridge's own arithmetic, shown as typed.
        preview_shows(page, f"You pay 1000, you get {99 * 10**17} (fee {10**17} BAAS units).")
        page.fill("#amount_in", "5")
        preview_shows(page, "Problem below_min:")
        page.fill("#amount_in", "1000")
        preview_shows(page, f"you get {99 * 10**17}")
        check_accessibility(page, "policy")
        shot(page, "partner-policy", size)
        page.click("#policy-form button[type=submit]")
        page.wait_for_load_state("load")
        assert "Policy version 1 saved." in page.inner_text("#notice"), problem_text(page)

        # The user swaps through the partner's platform (the Bridge API, the user's signature).
        env.swap_id = off_thread(_swap(env.base, env.credentials["test"], env.wallet))
        load(page, env.page_url("test", "swaps"))
        listed = page.inner_text("#swaps-list")
        assert USER_ID in listed and "succeeded" in listed and "1000" in listed, listed
        check_accessibility(page, "swaps list")
        shot(page, "partner-swaps-list", size)
        filter_swaps(page, "failed")  # the status filter hides it
        assert "No swap matches." in page.inner_text("#swaps-list")
        assert env.swap_id not in page.content()
        filter_swaps(page, "succeeded")
        page.click(f"#swaps-list a[href$='{env.swap_id}']")  # the row's link: the one swap
        page.wait_for_load_state("load")
        facts = page.inner_text("#swap-facts")
        assert "succeeded" in facts and "1000" in facts and USER_ID in facts, facts
        check_accessibility(page, "swaps")
        shot(page, "partner-swaps", size)

        load(page, env.page_url("test", "overview"))
        assert page.locator("#reserve-chart svg polyline").count() == 1
        assert CODE in page.inner_text("#overview-facts")
        assert not problem_text(page), problem_text(page)
        volume = page.inner_text("#volume-facts")
        assert "Swaps\n1" in volume and "Points volume\n1000" in volume, volume
        assert page.locator("#volume-count-chart svg polyline").count() == 1
        assert page.locator("#volume-truncated").count() == 0
        check_accessibility(page, "overview")
        shot(page, "partner-overview", size)

        load(page, env.page_url("test", "credentials"))
        page.click("#add-credential button[type=submit]")
        page.wait_for_load_state("load")
        secret = page.inner_text("#secret-value")
        assert len(secret) == 64, problem_text(page)
        new_key = page.inner_text("#new-secret code").strip()
        check_accessibility(page, "credentials")
        shot(page, "partner-credentials", size)
        page.reload()
        assert secret not in page.content()  # shown once
        page.click(f"[id='retire-{new_key}'] button[type=submit]")
        page.wait_for_load_state("load")
        assert f"Retired {new_key}" in page.inner_text("#notice"), problem_text(page)

        # Live mode: none of the test objects.
        page.click("#mode-switch")
        page.wait_for_load_state("load")
        assert page.url.endswith("/dashboard/partner/live/credentials")
        assert new_key not in page.content() and env.credentials["test"][0] not in page.content()
        load(page, env.page_url("live", "overview"))
        facts = page.inner_text("#overview-facts")
        assert "none defined yet" in facts and CODE not in facts, facts
        assert "Reserve level (BAAS units)\n0" in facts, facts
        check_accessibility(page, "live overview")
        shot(page, "partner-live-overview", size)
        load(page, env.page_url("live", "swaps") + "?id=" + env.swap_id)
        assert "swap_not_found" in problem_text(page)
        assert page.locator("#swap-facts").count() == 0
        load(page, env.page_url("live", "points"))
        assert page.locator("#define-form").count() == 1  # no asset in live mode
    finally:
        context.close()


def pay_capture_refund(env: Env, page: Page, size: str) -> None:
    payment = off_thread(_payment(env.base, env.credentials["test"], env.wallet, f"pay-{size}"))
    env.payment_ids.append(payment)
    load(page, env.page_url("test", "payments"))
    assert payment in page.inner_html("#payments-list")  # the list's link names it
    check_accessibility(page, "payments list")
    page.click(f"#payments-list a[href$='{payment}']")
    page.wait_for_load_state("load")
    facts = page.inner_text("#payment-facts")
    assert "authorised" in facts and str(PAY) in facts, facts
    check_accessibility(page, "payment")
    shot(page, "partner-payment", size)
    submit(page, "#capture-form", {"amount": str(2 * 10**17)}, f"Captured {2 * 10**17} of")
    assert "captured" in page.inner_text("#payment-facts")
    # A refund above what was captured: the API's refusal, its code on the page.
    page.fill("#refund-form [name=amount]", str(PAY))
    page.click("#refund-form button[type=submit]")
    page.wait_for_load_state("load")
    assert "refund_exceeds_captured" in problem_text(page), problem_text(page)
    check_accessibility(page, "payment refused")
    submit(page, "#refund-form", {"amount": str(10**17)}, f"Refunded {10**17} of {2 * 10**17}")
    facts = page.inner_text("#payment-facts")
    assert f"Refunded\n{10**17}" in facts and "Refunds\n1" in facts, facts
    shot(page, "partner-payment-refunded", size)


def list_and_edit(env: Env, page: Page, size: str) -> str:
    title = f"Beans {size}"
    load(page, env.page_url("test", "market"))
    fields = {"title": title, "description": "1 kg", "price": str(10**17), "stock": "3"}
    submit(page, "#new-listing", fields, f"Listed {title}")
    listing = page.inner_text("#notice").split("(")[-1].rstrip(").")
    assert listing.startswith("lst_") and listing in page.inner_text("#listings")
    edit = f"[id='edit-{listing}']"
    submit(page, edit, {"stock": "7"}, f"Saved {title}: price {10**17}, stock 7")
    check_accessibility(page, "market")
    shot(page, "partner-market", size)
    return listing


async def _order(base: str, credential: tuple[str, bytes], wallet: UserWallet, listing: str) -> str:
    """The user buys one of the listing through the partner's platform (the user's signature)."""
    body = {"listing": listing, "quantity": 1, "user": USER_ID}
    async with _ledger(base, credential) as http:
        ledger = LedgerClient(http, attempts_max=3)
        order = await ledger.approved("/v1/market/orders", body, wallet, key="order-1")
        assert order.status == 201 and order.body["status"] == "authorised", order
        return str(order.body["id"])


def fulfil_and_refund(env: Env, page: Page, listing: str, size: str) -> str:
    order = off_thread(_order(env.base, env.credentials["test"], env.wallet, listing))
    load(page, env.page_url("test", "orders"))
    assert order in page.inner_html("#orders-list")
    check_accessibility(page, "orders")
    page.click(f"#orders-list a[href$='{order}']")
    page.wait_for_load_state("load")
    assert "authorised" in page.inner_text("#order-facts")
    shot(page, "partner-order", size)
    submit(page, "#fulfil-form", {}, "The order is fulfilled.")
    submit(page, "#order-refund-form", {"amount": str(4 * 10**16)}, f"Refunded {4 * 10**16}")
    assert f"Refunded\n{4 * 10**16}" in page.inner_text("#order-payment")
    check_accessibility(page, "order")
    # Its payment's page links to the order and offers no capture of its own.
    load(page, env.page_url("test", "payments") + "?id=pay_" + order.removeprefix("ord_"))
    assert page.locator("#payment-order").count() == 1
    assert page.locator("#capture-form, #refund-form").count() == 0
    return order


def add_endpoint(env: Env, page: Page, size: str) -> str:
    load(page, env.page_url("test", "webhooks"))
    page.check("[id='event-payment.captured']")
    submit(page, "#add-endpoint", {"url": URL}, "Added we_")
    secret = page.inner_text("#secret-value")
    assert secret.startswith("whsec_") and len(secret) == 6 + 64, secret
    endpoint = page.inner_text("#notice").split("Added ")[1].rstrip(".")
    check_accessibility(page, "webhooks")
    shot(page, "partner-webhooks", size)
    page.reload()
    assert secret not in page.content() and endpoint in page.inner_text("#endpoints")  # once
    return endpoint


def test_an_admin_takes_payments_lists_and_adds_a_webhook_at_both_sizes(env: Env) -> None:
    assert env.swap_id, "runs after the admin's test, whose swap gave the user BAAS"
    context = env.context("desktop")
    page = context.new_page()
    try:
        sign_in_partner(env, page, env.users["admin"], step=1)
        endpoints, orders = [], []
        for size in ("desktop", "phone"):
            page.set_viewport_size(SIZES[size])
            pay_capture_refund(env, page, size)
            listing = list_and_edit(env, page, size)
            if not orders:  # one order (the user's balance is the swap's)
                orders.append(fulfil_and_refund(env, page, listing, size))
            endpoints.append(add_endpoint(env, page, size))
            load(page, env.page_url("test", "orders"))
            assert orders[0] in page.inner_html("#orders-list")
            check_accessibility(page, "orders")
            shot(page, "partner-orders", size)
        # Live mode shows none of the test objects.
        for slug, test_objects in (
            ("payments", env.payment_ids),
            ("market", ["Beans desktop", "Beans phone"]),
            ("webhooks", endpoints),
            ("orders", orders),
        ):
            load(page, env.page_url("live", slug))
            for shown in test_objects:
                assert shown not in page.content(), (slug, shown)
            check_accessibility(page, f"live {slug}")
        load(page, env.page_url("live", "payments") + "?id=" + env.payment_ids[0])
        assert "payment_not_found" in problem_text(page)
    finally:
        context.close()


def test_a_viewer_sees_every_page_and_changes_nothing(env: Env) -> None:
    size = "phone"
    context = env.context(size)
    page = context.new_page()
    try:
        sign_in_partner(env, page, env.users["viewer"])
        slugs = ("overview", "points", "reserve", "policy", "swaps", "payments", "market",
                 "orders", "webhooks", "credentials")  # fmt: skip
        for slug in slugs:
            load(page, env.page_url("test", slug))
            assert "role_read_only" not in page.content()
            changes = page.locator("main form[method=post]")
            assert changes.count() == 0, f"{slug}: a viewer sees a change form"
            check_accessibility(page, f"viewer {slug}")
            shot(page, f"partner-viewer-{slug}", size)
        load(page, env.page_url("test", "points"))
        assert CODE in page.inner_text("#asset-facts")
        # A change sent anyway (with the session's CSRF token) is refused with its code.
        answer = page.evaluate(
            """async (url) => {
                const csrf = document.querySelector("input[name=csrf]").value;
                const body = new URLSearchParams({csrf, key: "viewer-1", amount: "5"});
                const r = await fetch(url, {method: "POST", body});
                return [r.status, await r.text()];
            }""",
            env.page_url("test", "reserve/top_up"),
        )
        assert answer[0] == 403 and "role_read_only" in answer[1]
    finally:
        context.close()


def test_another_partners_session_reaches_none_of_it(env: Env) -> None:
    assert env.swap_id, "runs after the admin's test, which made the swap"
    size = "desktop"
    context = env.context(size)
    page = context.new_page()
    try:
        sign_in_partner(env, page, env.users["other"])
        load(page, env.page_url("test", "swaps") + "?id=" + env.swap_id)
        assert "swap_not_found" in problem_text(page)
        assert page.locator("#swap-facts").count() == 0
        assert env.payment_ids, "runs after the payments' test"
        load(page, env.page_url("test", "payments") + "?id=" + env.payment_ids[0])
        assert "payment_not_found" in problem_text(page)
        assert env.payment_ids[0] not in page.inner_text("#payments-list")
        # A refund of shop-p's payment sent anyway: the API's own 404, nothing moved.
        answer = page.evaluate(
            """async ([url, id]) => {
                const csrf = document.querySelector("input[name=csrf]").value;
                const body = new URLSearchParams({csrf, key: "other-2", id, amount: "1"});
                const r = await fetch(url, {method: "POST", body});
                return [r.status, await r.text()];
            }""",
            [env.page_url("test", "payments/refund"), env.payment_ids[0]],
        )
        assert answer[0] == 404 and "payment_not_found" in answer[1]
        load(page, env.page_url("test", "points"))
        assert page.locator("#define-form").count() == 1 and CODE not in page.content()
        load(page, env.page_url("test", "credentials"))
        assert env.credentials["test"][0] not in page.content()
        # shop-p's API key named in a retire form: the keyring's own 404.
        answer = page.evaluate(
            """async ([url, key]) => {
                const csrf = document.querySelector("input[name=csrf]").value;
                const body = new URLSearchParams({csrf, key: "other-1", api_key: key});
                const r = await fetch(url, {method: "POST", body});
                return [r.status, await r.text()];
            }""",
            [env.page_url("test", "credentials/retire"), env.credentials["test"][0]],
        )
        assert answer[0] == 404 and "unknown_api_key" in answer[1]
        shot(page, "partner-other-credentials", size)
    finally:
        context.close()


def test_no_partner_page_requested_another_host(env: Env) -> None:
    assert env.hosts_seen == {env.base}, env.hosts_seen
