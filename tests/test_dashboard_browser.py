"""The dashboard in a real browser: Playwright driving Debian's chromium (headless, never a
downloaded browser) against a real 5-node cluster, its gateway and the embedded chain, at
phone (390x844) and desktop (1440x900) sizes.

* an operator signs in with password + TOTP; a wrong code is refused and counted on the page;
* the operator pages show the cluster; a node killed shows as down;
* a receipt fetched from the gateway verifies in the page, step for step as
  ``verify_receipt`` says, and a tampered one shows "failed" at its step; the self-contained
  verifier opened via ``file://`` verifies too;
* axe-core finds no serious or critical violation on any page; no page requests a host other
  than the gateway and the chain; no page is over 300 KB of compressed assets.

One cluster and one browser serve the whole module (the tests run in file order; the node is
killed last). Screenshots go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from nodeapi import partner_client, running_cluster
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright
from web3 import Web3

from gateway.dashboard.operators import Operator, new_operator, save_operators
from node.anchoring.registry import RegistryReader
from node.merkle.verify import verify_receipt
from tools.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
VERIFIER = ROOT / "gateway" / "dashboard" / "static" / "verifier.html"
CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's binary (not the /usr/bin wrapper)
SIZES: dict[str, ViewportSize] = {
    "phone": {"width": 390, "height": 844},
    "desktop": {"width": 1440, "height": 900},
}
PASSWORD = "correct horse battery staple"
PAGE_ASSETS_BYTES_MAX = 300 * 1024
DONE = "#verdict[data-outcome=ok], #verdict[data-outcome=failed], #verdict[data-outcome=pending]"


@dataclass
class Env:
    cluster: LocalCluster
    browser: Browser
    operators: dict[str, Operator]
    receipt: str
    hosts_seen: set[str] = field(default_factory=set)

    @property
    def base(self) -> str:
        return self.cluster.layout.gateway_url

    @property
    def chain_url(self) -> str:
        assert self.cluster.chain_url is not None
        return self.cluster.chain_url

    def context(self, size: str) -> BrowserContext:
        context = self.browser.new_context(viewport=SIZES[size])
        context.on("request", lambda r: self.hosts_seen.add(_origin(r.url)))
        return context


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return "file" if parts.scheme == "file" else f"{parts.scheme}://{parts.netloc}"


async def _receipt(cluster: LocalCluster) -> str:
    async with partner_client(cluster, "shop-a") as client:
        ids = []
        for i in range(3):
            answer = await client.put_record({"order": i, "note": "dashboard test"})
            assert answer.status == 201, answer
            ids.append(answer.body["record_id"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = await client.request("GET", f"/v1/records/{ids[0]}/receipt")
            if answer.status == 200:
                return json.dumps(answer.body, indent=2, sort_keys=True)
            await asyncio.sleep(0.5)
    raise AssertionError("no receipt within 60 s")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium (./dev)"
    assert AXE.exists(), "axe-core is missing: npm ci in tests/browser (./dev setup)"
    with running_cluster(tmp_path_factory.mktemp("dashboard"), chain="embedded") as cluster:
        names = ("phone-op", "desk-op", "watch-op")
        operators = {name: new_operator(name, PASSWORD) for name in names}
        save_operators(Path(cluster.layout.directory) / "secrets" / "operators.json", operators)
        # Before Playwright starts: its sync API runs an event loop in this thread.
        receipt = asyncio.run(_receipt(cluster))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                yield Env(cluster, browser, operators, receipt)
            finally:
                browser.close()


def shot(page: Page, name: str, size: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{size}.png"), full_page=True)


def check_accessibility(page: Page, what: str) -> None:
    # Injected through the DevTools protocol, which the page's CSP does not govern.
    page.evaluate(AXE.read_text() + "\n;0")
    result = page.evaluate("() => axe.run(document)")
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{what}: {bad}"


def load(page: Page, url: str) -> int:
    """Go to ``url``; the compressed bytes of everything the page loaded."""
    responses: list[Any] = []

    def record(response: Any) -> None:  # a function: Playwright tags listeners it wraps
        responses.append(response)

    page.on("response", record)
    page.goto(url)
    page.wait_for_load_state("load")
    page.remove_listener("response", record)
    total = 0
    for response in responses:
        if 300 <= response.status < 400:
            continue
        total += len(gzip.compress(response.body()))
    assert total <= PAGE_ASSETS_BYTES_MAX, f"{url}: {total} compressed bytes"
    return total


def sign_in(env: Env, page: Page, name: str, code: str) -> None:
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.fill("#totp", code)
    page.click("main button[type=submit]")
    page.wait_for_load_state("load")


def wrong_code(secret: str) -> str:
    now = pyotp.TOTP(secret).now()
    return f"{(int(now) + 500_000) % 1_000_000:06d}"


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_operator_signs_in_with_totp_and_sees_every_operator_page(env: Env, size: str) -> None:
    name = "phone-op" if size == "phone" else "desk-op"
    secret = env.operators[name].totp_secret
    context = env.context(size)
    page = context.new_page()
    load(page, f"{env.base}/dashboard/")
    assert page.url.endswith("/dashboard/signin")
    check_accessibility(page, "sign-in")
    shot(page, "signin", size)
    sign_in(env, page, name, wrong_code(secret))
    problem = page.locator(".problem")
    assert "signin_failed" in problem.inner_text()
    assert "Failed attempts: 1 of 5" in problem.inner_text()
    check_accessibility(page, "sign-in refused")
    shot(page, "signin-refused", size)
    sign_in(env, page, name, pyotp.TOTP(secret).now())
    assert page.url.endswith("/dashboard/operator/nodes"), page.url
    assert page.locator("#nodes-summary").inner_text() == "5 of 5 nodes up."
    roles = [page.locator("tbody tr").nth(i).locator("td").nth(2).inner_text() for i in range(5)]
    assert roles.count("leader") == 1 and roles.count("follower") == 4
    for path, name_ in (
        ("/dashboard/operator/nodes", "nodes"),
        ("/dashboard/operator/anchors", "anchors"),
        ("/dashboard/operator/moves", "moves"),
        ("/dashboard/operator/no-such-page", "not-found"),
    ):
        load(page, env.base + path)
        check_accessibility(page, name_)
        shot(page, name_, size)
    assert "not_found" in page.locator(".problem").inner_text()
    load(page, f"{env.base}/dashboard/operator/anchors")
    facts = page.locator("#anchor-facts").inner_text()
    assert "Latest anchored batch" in facts and env.chain_url in facts
    assert page.locator("table", has_text="Latest anchors").locator("tbody tr").count() >= 1
    page.click("header button")  # sign out
    page.wait_for_load_state("load")
    assert page.url.endswith("/dashboard/signin")
    context.close()


def _verify(page: Page, receipt: str) -> dict[str, tuple[str, str]]:
    page.fill("#receipt", receipt)
    page.click("#verify-button")
    page.locator(DONE).wait_for()
    steps = page.locator("#steps li")
    return {
        steps.nth(i).get_attribute("data-step") or "": (
            steps.nth(i).get_attribute("data-outcome") or "",
            steps.nth(i).inner_text(),
        )
        for i in range(steps.count())
    }


def _tampered(receipt: str) -> str:
    document = json.loads(receipt)
    leaf = document["leaf_data"]
    document["leaf_data"] = leaf[:-2] + ("00" if leaf[-2:] != "00" else "01")
    return json.dumps(document)


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_a_receipt_verifies_in_the_page_and_a_tampered_one_fails(env: Env, size: str) -> None:
    assert env.cluster.chain_contract is not None
    reader = RegistryReader(Web3(Web3.HTTPProvider(env.chain_url)), env.cluster.chain_contract)
    expected = verify_receipt(env.receipt, reader)
    assert expected.ok, expected
    context = env.context(size)
    page = context.new_page()
    query = urllib.parse.urlencode({"rpc": env.chain_url})
    load(page, f"{env.base}/dashboard/verify?{query}")
    steps = _verify(page, env.receipt)
    assert page.locator("#verdict").get_attribute("data-outcome") == "ok"
    assert [(name, outcome) for name, (outcome, _) in steps.items()] == [
        (s.name, s.outcome.value) for s in expected.steps
    ]
    assert page.locator("#timing").get_attribute("data-round-trips") == "1"
    check_accessibility(page, "verifier")
    shot(page, "verify-ok", size)
    steps = _verify(page, _tampered(env.receipt))
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-outcome") == "failed"
    assert 'failed at step "inclusion in anchored root"' in verdict.inner_text()
    assert steps["inclusion in anchored root"][0] == "failed"
    assert steps["leaf data"][0] == "ok"  # still well-formed: only its hash changed
    check_accessibility(page, "verifier, failed")
    shot(page, "verify-failed", size)
    context.close()


def test_the_self_contained_verifier_works_opened_from_disk(env: Env) -> None:
    context = env.context("desktop")
    page = context.new_page()
    query = urllib.parse.urlencode(
        {"rpc": env.chain_url, "contract": env.cluster.chain_contract or ""}
    )
    page.goto(f"{VERIFIER.as_uri()}?{query}")
    steps = _verify(page, env.receipt)
    assert page.locator("#verdict").get_attribute("data-outcome") == "ok", steps
    shot(page, "verify-file", "desktop")
    # Naming another registry than the receipt's fails the anchor step, as --contract does.
    page.fill("#contract", "0x" + "11" * 20)
    steps = _verify(page, env.receipt)
    assert steps["anchor on chain"][0] == "failed"
    context.close()


def test_no_page_requested_another_host(env: Env) -> None:
    allowed = {env.base, _origin(env.chain_url), "file"}
    assert env.hosts_seen, "no request was recorded"
    assert env.hosts_seen <= allowed, env.hosts_seen - allowed


def test_a_killed_node_shows_down(env: Env) -> None:
    name = "watch-op"  # signed in for the first time: its code of this time step is unused
    context = env.context("desktop")
    page = context.new_page()
    page.goto(f"{env.base}/dashboard/signin")
    sign_in(env, page, name, pyotp.TOTP(env.operators[name].totp_secret).now())
    assert page.url.endswith("/dashboard/operator/nodes"), page.url
    env.cluster.kill("node-5")
    deadline = time.monotonic() + 30
    row = page.locator("tbody tr", has_text="node-5")
    while time.monotonic() < deadline:
        page.reload()
        if "down" in row.inner_text():
            break
        time.sleep(0.5)
    assert "down" in row.inner_text(), row.inner_text()
    assert page.locator("#nodes-summary").inner_text() == "4 of 5 nodes up."
    shot(page, "node-down", "desktop")
    context.close()
