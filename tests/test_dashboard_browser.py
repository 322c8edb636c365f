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
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest
from chains import free_port
from nodeapi import running_cluster
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright
from verifier_page import variants, verify_in_form
from web3 import Web3

from gateway.dashboard.operators import Operator, new_operator, save_operators
from node.anchoring.registry import RegistryReader
from node.merkle.verify import verify_receipt
from tools.bench_dashboard import (
    CHROMIUM,
    PAGE_ASSETS_BYTES_MAX,
    PAGES,
    fetch_receipt,
    launch_chromium,
    page_assets_bytes,
    run_pages,
    run_verify,
    sign_in,
)
from tools.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
VERIFIER = ROOT / "gateway" / "dashboard" / "static" / "verifier.html"
SIZES: dict[str, ViewportSize] = {
    "phone": {"width": 390, "height": 844},
    "desktop": {"width": 1440, "height": 900},
}
PASSWORD = "correct horse battery staple"


@dataclass
class Env:
    cluster: LocalCluster
    browser: Browser
    operators: dict[str, Operator]
    receipt: str
    hosts_seen: set[str] = field(default_factory=set)
    rpc_urls_named: set[str] = field(default_factory=set)  # chain RPCs a test typed in

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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium (./dev)"
    assert AXE.exists(), "axe-core is missing: npm ci in tests/browser (./dev setup)"
    with running_cluster(tmp_path_factory.mktemp("dashboard"), chain="embedded") as cluster:
        names = ("phone-op", "desk-op", "watch-op", "bench-op")
        operators = {name: new_operator(name, PASSWORD) for name in names}
        save_operators(Path(cluster.layout.directory) / "secrets" / "operators.json", operators)
        # Before Playwright starts: its sync API runs an event loop in this thread.
        layout = cluster.layout
        receipt = asyncio.run(fetch_receipt(layout.gateway_url, layout.partners["shop-a"], 60))
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
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
    """Go to ``url``; fail if the page loaded over 300 KB of compressed assets."""
    total = page_assets_bytes(page, url)
    assert total <= PAGE_ASSETS_BYTES_MAX, f"{url}: {total} compressed bytes"
    return total


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
    sign_in(page, name, PASSWORD, wrong_code(secret))
    problem = page.locator(".problem")
    assert "signin_failed" in problem.inner_text()
    assert "Failed attempts: 1 of 5" in problem.inner_text()
    check_accessibility(page, "sign-in refused")
    shot(page, "signin-refused", size)
    sign_in(page, name, PASSWORD, pyotp.TOTP(secret).now())
    assert page.url.endswith("/dashboard/operator/nodes"), page.url
    assert page.locator("#nodes-summary").inner_text() == "5 of 5 nodes up."
    roles = [page.locator("tbody tr").nth(i).locator("td").nth(2).inner_text() for i in range(5)]
    assert roles.count("leader") == 1 and roles.count("follower") == 4
    peers = page.locator("tbody tr", has_text="node-1").locator("td").nth(9).inner_text()
    assert peers == "4: node-2, node-3, node-4, node-5", peers
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
    load(page, f"{env.base}/dashboard/operator/moves")
    for caption in ("Repair (the leader", "Scrubbing (every node"):
        assert page.locator("table", has_text=caption).locator("tbody tr").count() == 5
    load(page, f"{env.base}/dashboard/operator/anchors")
    facts = page.locator("#anchor-facts").inner_text()
    assert "Latest anchored batch" in facts and env.chain_url in facts
    assert page.locator("table", has_text="Latest anchors").locator("tbody tr").count() >= 1
    page.click("header button")  # sign out
    page.wait_for_load_state("load")
    assert page.url.endswith("/dashboard/signin")
    context.close()


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
    steps = verify_in_form(page, env.receipt)
    assert page.locator("#verdict").get_attribute("data-outcome") == "ok"
    assert [(name, outcome) for name, (outcome, _) in steps.items()] == [
        (s.name, s.outcome.value) for s in expected.steps
    ]
    assert page.locator("#timing").get_attribute("data-round-trips") == "1"
    check_accessibility(page, "verifier")
    shot(page, "verify-ok", size)
    steps = verify_in_form(page, _tampered(env.receipt))
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-outcome") == "failed"
    assert 'failed at step "inclusion in anchored root"' in verdict.inner_text()
    assert steps["inclusion in anchored root"][0] == "failed"
    assert steps["leaf data"][0] == "ok"  # still well-formed: only its hash changed
    check_accessibility(page, "verifier, failed")
    shot(page, "verify-failed", size)
    context.close()


def test_the_page_and_verify_receipt_agree_on_changed_receipts(env: Env) -> None:
    assert env.cluster.chain_contract is not None
    reader = RegistryReader(Web3(Web3.HTTPProvider(env.chain_url)), env.cluster.chain_contract)
    page = env.context("desktop").new_page()
    load(page, f"{env.base}/dashboard/verify?{urllib.parse.urlencode({'rpc': env.chain_url})}")
    for what, text in variants(env.receipt).items():
        expected = verify_receipt(text, reader)
        steps = verify_in_form(page, text)
        assert page.locator("#verdict").get_attribute("data-outcome") == "failed", what
        got = [(name, outcome) for name, (outcome, _) in steps.items()]
        assert got == [(s.name, s.outcome.value) for s in expected.steps], what
        first = expected.first_failure
        assert first is not None
        # The same words, but for the JSON parsers' own messages.
        words = "not JSON:" if what == "not json" else first.detail
        assert words in steps[first.name][1], (what, first.detail, steps[first.name][1])


def test_the_self_contained_verifier_works_opened_from_disk(env: Env) -> None:
    context = env.context("desktop")
    page = context.new_page()
    query = urllib.parse.urlencode(
        {"rpc": env.chain_url, "contract": env.cluster.chain_contract or ""}
    )
    page.goto(f"{VERIFIER.as_uri()}?{query}")
    steps = verify_in_form(page, env.receipt)
    assert page.locator("#verdict").get_attribute("data-outcome") == "ok", steps
    shot(page, "verify-file", "desktop")
    # Naming another registry than the receipt's fails the anchor step, as --contract does.
    page.fill("#contract", "0x" + "11" * 20)
    steps = verify_in_form(page, env.receipt)
    assert steps["anchor on chain"][0] == "failed"
    # A chain that does not answer is a clear failure, and the later chain steps say why
    # they were not checked.
    page.fill("#contract", "")
    dead_rpc = f"http://127.0.0.1:{free_port()}"
    env.rpc_urls_named.add(dead_rpc)
    page.fill("#rpc", dead_rpc)
    steps = verify_in_form(page, env.receipt)
    assert steps["inclusion in anchored root"][0] == "ok"
    assert steps["anchor on chain"][0] == "failed"
    assert "cannot reach the chain" in steps["anchor on chain"][1]
    outcome, text = steps["latest anchor on chain"]
    assert outcome == "skipped" and "not checked: the chain could not be read" in text
    shot(page, "verify-no-chain", "desktop")
    context.close()


def test_no_page_requested_another_host(env: Env) -> None:
    allowed = {env.base, _origin(env.chain_url), "file", *env.rpc_urls_named}
    assert env.hosts_seen, "no request was recorded"
    assert env.hosts_seen <= allowed, env.hosts_seen - allowed


def test_the_bench_measures_the_targets(env: Env) -> None:
    """baas-bench-dashboard's measuring, once, on this cluster (its numbers: see its JSON)."""
    page = env.context("desktop").new_page()
    page.goto(f"{env.base}/dashboard/signin")
    sign_in(page, "bench-op", PASSWORD, pyotp.TOTP(env.operators["bench-op"].totp_secret).now())
    pages = run_pages(page, env.base, env.chain_url, runs=1)
    assert set(pages) == set(PAGES)
    assert all(0 < p["compressed_bytes"] <= PAGE_ASSETS_BYTES_MAX for p in pages.values())
    assert all(p["interactive_ms"]["max"] > 0 for p in pages.values())
    verify = run_verify(page, env.receipt, runs=1)
    assert verify["chain_round_trips"] == 1
    assert 0 <= verify["local_ms"]["max"] <= verify["elapsed_ms"]["max"]


def test_a_killed_node_shows_down(env: Env) -> None:
    name = "watch-op"  # signed in for the first time: its code of this time step is unused
    context = env.context("desktop")
    page = context.new_page()
    page.goto(f"{env.base}/dashboard/signin")
    sign_in(page, name, PASSWORD, pyotp.TOTP(env.operators[name].totp_secret).now())
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
