"""``baas-bench-dashboard``: the dashboard's targets (issue 16), measured in Debian's chromium.

    baas-bench-dashboard [--runs 5] [--out bench-results/bench-dashboard.json]

Starts a 5-node cluster + gateway on the embedded chain in a temporary directory, writes a
few records and fetches a receipt, signs an operator in (password + TOTP), onboards a partner
and signs its dashboard admin in (the partner pages in test mode) and, at desktop size
(1440x900), measures with Playwright driving ``/usr/lib/chromium/chromium`` (never a
downloaded browser):

* every page's time to interactive (the navigation's ``domInteractive``) and to ``load``,
  ``--runs`` loads each: median and max. Target: interactive within 1 s.
* the receipt verified in the page: the page's own elapsed time, the part of it spent waiting
  for the chain (one JSON-RPC batch: one round trip) and the rest. Target: the rest within
  100 ms ("100 ms plus one chain RPC round trip").
* every page's assets (everything it loaded), gzip-compressed. Target: at most 300 KB each.

The JSON (``"format": 1``) holds every number, the load average at the start and the end (the
machine is shared: note it with every number) and the verdict per target; exit status 1 when a
target is missed. The helpers here (launching chromium, signing in, counting compressed bytes,
fetching a receipt) are also what ``tests/test_dashboard_browser.py`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyotp
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from gateway.dashboard.operators import new_operator, save_operators
from gateway.dashboard.partner_users import PartnerUser, new_partner_user, save_partner_users
from tools.client import PartnerClient
from tools.cluster_init import OPERATORS_FILE, PARTNER_USERS_FILE, init_cluster
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

__all__ = [
    "CHROMIUM",
    "PAGE_ASSETS_BYTES_MAX",
    "PARTNER_PAGES",
    "fetch_receipt",
    "launch_chromium",
    "main",
    "page_assets_bytes",
    "sign_in",
    "sign_in_partner",
]

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's binary (not the /usr/bin wrapper)
DESKTOP = {"width": 1440, "height": 900}
PAGE_ASSETS_BYTES_MAX = 300 * 1024
INTERACTIVE_MS_MAX = 1000.0
VERIFY_LOCAL_MS_MAX = 100.0
PASSWORD = "bench password, long enough"
DONE = "#verdict[data-outcome=ok], #verdict[data-outcome=failed], #verdict[data-outcome=pending]"
PAGES = ("signin", "operator/nodes", "operator/anchors", "operator/moves", "verify")
# A partner admin's pages in test mode (the partner onboarded, nothing defined yet).
PARTNER_PAGES = tuple(
    f"partner/test/{slug}"
    for slug in (
        "overview",
        "points",
        "reserve",
        "policy",
        "swaps",
        "payments",
        "market",
        "orders",
        "webhooks",
        "credentials",
    )
)
BENCH_PARTNER = "bench-p"


def launch_chromium(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium (./dev setup)")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def page_assets_bytes(page: Page, url: str) -> int:
    """Go to ``url``; the gzip-compressed bytes of everything the page loaded."""
    responses: list[Any] = []

    def record(response: Any) -> None:  # a function: Playwright tags the listeners it wraps
        responses.append(response)

    page.on("response", record)
    page.goto(url)
    page.wait_for_load_state("load")
    page.remove_listener("response", record)
    return sum(len(gzip.compress(r.body())) for r in responses if not 300 <= r.status < 400)


def sign_in(page: Page, name: str, password: str, code: str) -> None:
    """Fill and send the sign-in form the page shows."""
    page.fill("#name", name)
    page.fill("#password", password)
    page.fill("#totp", code)
    page.click("main button[type=submit]")
    page.wait_for_load_state("load")


def sign_in_partner(page: Page, base: str, user: PartnerUser) -> None:
    """Sign a partner user in (password + TOTP) and wait until the gateway serves its partner
    (one onboarded a moment ago is served from the gateway's next keyring reload)."""
    page.goto(f"{base}/dashboard/partner/signin")
    page.fill("#partner", user.partner)
    sign_in(page, user.name, PASSWORD, pyotp.TOTP(user.totp_secret).now())
    deadline = time.monotonic() + 60
    while "partner_not_found" in page.content() or not page.url.endswith("/overview"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the partner pages did not open: {page.url}")
        time.sleep(1)
        page.goto(f"{base}/dashboard/partner/test/overview")


async def fetch_receipt(gateway_url: str, credentials: dict[str, str], timeout_s: float) -> str:
    """Write three records as a partner and return the first one's receipt (JSON text)."""
    async with PartnerClient(
        gateway_url, credentials["api_key"], bytes.fromhex(credentials["secret_hex"])
    ) as client:
        ids = []
        for i in range(3):
            answer = await client.put_record({"order": i, "note": "dashboard"})
            if answer.status != 201:
                raise RuntimeError(f"write refused: {answer}")
            ids.append(answer.body["record_id"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = await client.request("GET", f"/v1/records/{ids[0]}/receipt")
            if answer.status == 200:
                return json.dumps(answer.body, indent=2, sort_keys=True)
            await asyncio.sleep(0.5)
    raise TimeoutError(f"no receipt within {timeout_s} s")


def _timings(page: Page) -> tuple[float, float]:
    entry = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return [n.domInteractive, n.loadEventEnd]; }"
    )
    return float(entry[0]), float(entry[1])


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def run_pages(
    page: Page, base: str, chain_url: str, runs: int, names: Sequence[str] = PAGES
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        url = f"{base}/dashboard/{name}"
        if name == "verify":
            url += "?" + urllib.parse.urlencode({"rpc": chain_url})
        interactive, loaded, sizes = [], [], []
        for _ in range(runs):
            sizes.append(page_assets_bytes(page, url))
            i, ld = _timings(page)
            interactive.append(i)
            loaded.append(ld)
        results[name] = {
            "interactive_ms": _stats(interactive),
            "load_ms": _stats(loaded),
            "compressed_bytes": max(sizes),
        }
    return results


def run_verify(page: Page, receipt: str, runs: int) -> dict[str, Any]:
    elapsed, chain, local, trips = [], [], [], []
    for _ in range(runs):
        page.fill("#receipt", receipt)
        page.click("#verify-button")
        page.locator(DONE).wait_for()
        outcome = page.locator("#verdict").get_attribute("data-outcome")
        if outcome != "ok":
            raise RuntimeError(f"the receipt did not verify: {page.inner_text('#steps')}")
        timing = page.locator("#timing")
        total = float(timing.get_attribute("data-elapsed-ms") or 0)
        waited = float(timing.get_attribute("data-chain-ms") or 0)
        elapsed.append(total)
        chain.append(waited)
        local.append(total - waited)
        trips.append(int(timing.get_attribute("data-round-trips") or 0))
    return {
        "elapsed_ms": _stats(elapsed),
        "chain_wait_ms": _stats(chain),
        "local_ms": _stats(local),
        "chain_round_trips": max(trips),
    }


def run(runs: int) -> dict[str, Any]:
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        layout = init_cluster(Path(tmp) / "cluster", partners=("shop-a",), chain="embedded")
        operator = new_operator("bench", PASSWORD)
        save_operators(Path(layout.directory) / OPERATORS_FILE, {"bench": operator})
        with LocalCluster(layout) as cluster:
            cluster.start()
            assert cluster.chain_url is not None
            onboard_partner(layout, BENCH_PARTNER)
            user = new_partner_user(BENCH_PARTNER, "bench", "admin", PASSWORD)
            save_partner_users(Path(layout.directory) / PARTNER_USERS_FILE, {user.key: user})
            receipt = asyncio.run(
                fetch_receipt(layout.gateway_url, layout.partners["shop-a"], timeout_s=60)
            )
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(f"{layout.gateway_url}/dashboard/signin")
                sign_in(page, "bench", PASSWORD, pyotp.TOTP(operator.totp_secret).now())
                pages = run_pages(page, layout.gateway_url, cluster.chain_url, runs)
                verify = run_verify(page, receipt, runs)
                partner = browser.new_page(viewport={"width": 1440, "height": 900})
                sign_in_partner(partner, layout.gateway_url, user)
                pages.update(
                    run_pages(partner, layout.gateway_url, cluster.chain_url, runs, PARTNER_PAGES)
                )
                browser.close()
    worst_interactive = max(p["interactive_ms"]["max"] for p in pages.values())
    biggest = max(p["compressed_bytes"] for p in pages.values())
    return {
        "format": 1,
        "viewport": DESKTOP,
        "runs": runs,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "pages": pages,
        "verify": verify,
        "targets": {
            "interactive_within_1s": worst_interactive <= INTERACTIVE_MS_MAX,
            "verify_local_within_100ms": verify["local_ms"]["max"] <= VERIFY_LOCAL_MS_MAX,
            "verify_one_round_trip": verify["chain_round_trips"] == 1,
            "pages_within_300kb": biggest <= PAGE_ASSETS_BYTES_MAX,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-bench-dashboard", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="loads per page (default 5)")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench-results/...)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        print("baas-bench-dashboard: --runs must be positive", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench-results") / f"bench-dashboard-{stamp}.json"
    document = run(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"pages": document["pages"], "verify": document["verify"]}, indent=2))
    print(f"targets: {document['targets']}\nresults: {out}")
    return 0 if all(document["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
