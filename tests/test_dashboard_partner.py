"""The dashboard's partner side without a browser and without nodes: partner users' file and
their command, the quote preview's arithmetic, and the real gateway's partner sign-in and
pages over HTTP (roles, CSRF, a viewer refused, one partner's session never reaching another's
credentials, modes apart, API credentials added and retired through the keyring), the swap
volume's buckets and the Swaps list's page, and the Swaps page's filters checked before any
node call."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from inprocess_gateway import gateway_without_nodes

from business.bridge.core import terms
from business.bridge.model import Direction, PolicyRecord
from gateway.auth import sign_request
from gateway.dashboard.operators import new_operator, save_operators
from gateway.dashboard.partner_pages import (
    DAY_MS,
    HOUR_MS,
    POLICY_DEFAULTS,
    VOLUME_WINDOWS,
    PartnerView,
    SwapVolume,
    overview_page,
    policy_page,
    svg_line_chart,
    swap_volume,
    swaps_page,
    volume_start_ms,
)
from gateway.dashboard.partner_users import (
    load_partner_users,
    new_partner_user,
    save_partner_users,
)
from gateway.dashboard.sessions import Session
from node.errors import InvalidRequest, UnsupportedFormat
from tools import partners_cli
from tools.cluster_init import init_cluster

PASSWORD = "correct horse battery staple"
POLICY = {
    "rate_num": "3", "rate_den": "2", "swap_min": "10", "swap_max": "1000", "window_s": "3600",
    "user_window_max": "0", "partner_window_max": "0", "fee_bps": "100", "fee_min": "1",
    "enabled": "true",
}  # fmt: skip


def test_partner_users_round_trip_and_malformed_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    pat = new_partner_user("shop-a", "pat", "admin", PASSWORD)
    val = new_partner_user("shop-a", "val", "viewer", PASSWORD)
    save_partner_users(path, {pat.key: pat, val.key: val})
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_partner_users(path)
    assert loaded == {"shop-a/pat": pat, "shop-a/val": val}
    assert loaded["shop-a/pat"].password.matches(PASSWORD)
    assert not loaded["shop-a/pat"].password.matches(PASSWORD + "!")
    assert pat.credential_id != new_partner_user("shop-a", "pat", "admin", PASSWORD).credential_id
    assert load_partner_users(tmp_path / "absent.json") == {}
    with pytest.raises(InvalidRequest, match="role"):
        new_partner_user("shop-a", "eve", "owner", PASSWORD)
    with pytest.raises(InvalidRequest) as weak:
        new_partner_user("shop-a", "eve", "admin", "short")
    assert weak.value.code == "weak_password"
    document = json.loads(path.read_text())
    document["users"]["shop-a/pat"]["role"] = "root"
    path.write_text(json.dumps(document))
    with pytest.raises(UnsupportedFormat, match="shop-a/pat"):
        load_partner_users(path)
    document["users"]["shop-a/pat"]["role"] = "admin"
    document["users"]["shop-b/pat"] = document["users"].pop("shop-a/pat")  # key != its partner
    path.write_text(json.dumps(document))
    with pytest.raises(UnsupportedFormat):
        load_partner_users(path)


def test_the_onboarding_command_adds_lists_rotates_and_removes_dashboard_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = init_cluster(tmp_path, partners=("shop-a",), chain="none")
    config = layout.gateway_config_path
    users_file = Path(layout.directory) / "secrets" / "partner_users.json"

    def run(*args: str, stdin: str = "") -> tuple[int, Any]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = partners_cli.main(["--config", config, "dashboard-user", *args])
        out = capsys.readouterr()
        return code, json.loads(out.out) if code == 0 else out.err

    add = ("add", "--partner", "shop-a", "--name", "pat", "--role", "admin", "--password-stdin")
    code, made = run(*add, stdin=PASSWORD + "\n")
    assert code == 0 and made["role"] == "admin" and not made["rotated"]
    user = load_partner_users(users_file)["shop-a/pat"]
    assert made["totp_secret"] == user.totp_secret and user.password.matches(PASSWORD)
    assert made["otpauth_uri"].startswith("otpauth://totp/")
    code, again = run(*add, stdin=PASSWORD + "\n")
    assert code == 0 and again["rotated"] and again["totp_secret"] != made["totp_secret"]
    code, err = run("add", "--partner", "shop-zz", "--name", "x", "--role", "viewer",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert code == 1 and "partner_not_found" in err
    code, listed = run("list", "--partner", "shop-a")
    assert code == 0 and listed["data"] == [
        {"object": "dashboard_user", "partner": "shop-a", "name": "pat", "role": "admin"}
    ]
    assert "secret" not in json.dumps(listed) and "hash" not in json.dumps(listed)
    code, _ = run("remove", "--partner", "shop-a", "--name", "pat")
    assert code == 0 and load_partner_users(users_file) == {}


def test_the_reserve_chart_is_drawn_on_the_server() -> None:
    svg = svg_line_chart("Reserve", [(0, 5), (10, 20), (20, 0)], "c")
    assert "<polyline" in svg and 'role="img"' in svg and "from 5 to 0, highest 20" in svg
    assert "not enough history" in svg_line_chart("Reserve", [(0, 5)], "c")


# -- the real gateway, over HTTP -------------------------------------------------------------


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html[:800]
    return found.group(1)


def _key(html: str) -> str:
    found = re.search(r'name="key" value="([^"]+)"', html)
    assert found is not None, html[:800]
    return found.group(1)


async def _partner_signin(
    http: aiohttp.ClientSession, base: str, partner: str, name: str, code: str
) -> tuple[int, str, str]:
    async with http.get(f"{base}/dashboard/partner/signin") as page:
        token = _csrf(await page.text())
    form = {"csrf": token, "partner": partner, "name": name, "password": PASSWORD, "totp": code}
    async with http.post(
        f"{base}/dashboard/partner/signin", data=form, allow_redirects=False
    ) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


async def _signed_status(base: str, api_key: str, secret_hex: str) -> int:
    """A signed partner request's status: 401 if the credential does not authenticate (the
    nodes are not running, so one that does gets 503 or 404 from further on)."""
    path = "/v1/bridge/reserve"
    ts = str(int(time.time()))
    signature = sign_request(bytes.fromhex(secret_hex), "GET", path, ts, "", b"", "n1")
    headers = {"X-Baas-Key": api_key, "X-Baas-Timestamp": ts, "X-Baas-Signature": signature,
               "X-Baas-Nonce": "n1"}  # fmt: skip
    async with aiohttp.ClientSession() as http, http.get(base + path, headers=headers) as r:
        return r.status


async def test_partner_sign_in_roles_csrf_isolation_and_credentials(tmp_path: Path) -> None:
    async with gateway_without_nodes(tmp_path, dashboard={"signin_failures_max": 50}) as layout:
        secrets_dir = Path(layout.directory) / "secrets"
        users = {
            u.key: u
            for u in (
                new_partner_user("shop-a", "pat", "admin", PASSWORD),
                new_partner_user("shop-a", "val", "viewer", PASSWORD),
            )
        }
        save_partner_users(secrets_dir / "partner_users.json", users)
        alice = new_operator("alice", PASSWORD)
        save_operators(secrets_dir / "operators.json", {"alice": alice})
        base = layout.gateway_url
        pat_totp = pyotp.TOTP(users["shop-a/pat"].totp_secret)
        b_key = layout.partners["shop-b"]["api_key"]

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            test_page = f"{base}/dashboard/partner/test"
            async with http.get(f"{test_page}/overview", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/dashboard/partner/signin"
            # The API secret is no dashboard credential; a wrong code is counted.
            status, _, text = await _partner_signin(http, base, "shop-a", "pat", "000000")
            assert status == 401 and "signin_failed" in text and "Failed attempts: 1" in text
            status, location, _ = await _partner_signin(http, base, "shop-a", "pat", pat_totp.now())
            assert status == 303 and location == "/dashboard/partner/test/overview"
            # A partner's session sees no operator page.
            async with http.get(f"{base}/dashboard/operator/nodes") as r:
                assert r.status == 404
            async with http.get(f"{test_page}/credentials") as r:
                page = await r.text()
                assert r.status == 200 and layout.partners["shop-a"]["api_key"] in page
                assert b_key not in page and "test mode" in page
            # A change without the session's CSRF token is refused before anything is done.
            async with http.post(f"{test_page}/credentials/add", data={"csrf": "x"}) as r:
                assert r.status == 401 and "csrf_token_invalid" in await r.text()
            # Another partner's API key names nothing here: the API's own 404.
            form = {"csrf": _csrf(page), "key": "k1", "api_key": b_key}
            async with http.post(f"{test_page}/credentials/retire", data=form) as r:
                assert r.status == 404 and "unknown_api_key" in await r.text()
            # Add a test credential: its secret is shown once and authenticates at once.
            async with http.post(
                f"{test_page}/credentials/add", data={"csrf": _csrf(page), "key": _key(page)}
            ) as r:
                added = await r.text()
                assert r.status == 200, added
            api_key = re.search(r"New API credential <code>([^<]+)</code>", added)
            secret = re.search(r'id="secret-value">([0-9a-f]{64})<', added)
            assert api_key and secret and api_key.group(1).startswith("pk_test_shop-a_")
            assert await _signed_status(base, api_key.group(1), secret.group(1)) != 401
            async with http.get(f"{test_page}/credentials") as r:
                again = await r.text()
                assert api_key.group(1) in again and secret.group(1) not in again
            # The live page shows no test credential, and refuses to retire one.
            async with http.get(f"{base}/dashboard/partner/live/credentials") as r:
                live = await r.text()
                assert api_key.group(1) not in live and "live mode" in live
            form = {"csrf": _csrf(live), "key": "k2", "api_key": api_key.group(1)}
            async with http.post(
                f"{base}/dashboard/partner/live/credentials/retire", data=form
            ) as r:
                assert r.status == 404 and "unknown_api_key" in await r.text()
            # Retire it: it authenticates no more.
            form = {"csrf": _csrf(again), "key": "k3", "api_key": api_key.group(1)}
            async with http.post(f"{test_page}/credentials/retire", data=form) as r:
                assert r.status == 200 and f"Retired {api_key.group(1)}" in await r.text()
            time.sleep(1.1)  # the gateway checks a credential's end to the second
            assert await _signed_status(base, api_key.group(1), secret.group(1)) == 401
            # The live quote preview: the Bridge's arithmetic, its refusals' codes.
            preview = f"{test_page}/policy/preview"
            async with http.get(preview, params={**POLICY, "direction": "in",
                                                 "amount_in": "100"}) as r:  # fmt: skip
                body = await r.json()
            record = PolicyRecord(
                1, 1, 3, 2, 10, 1000, 3600, 0, 0, 100, 1, True, 0
            )  # the same terms
            out, fee, _ = terms(record, Direction.IN, 100)
            assert body == {"ok": True, "amount_out": str(out), "fee": str(fee)}
            async with http.get(preview, params={**POLICY, "direction": "in",
                                                 "amount_in": "5"}) as r:  # fmt: skip
                assert (await r.json())["code"] == "below_min"
            async with http.get(preview, params={**POLICY, "rate_den": "0", "direction": "in",
                                                 "amount_in": "50"}) as r:  # fmt: skip
                refused = await r.json()
                assert not refused["ok"] and refused["param"] == "rate_den"
            async with http.get(preview, params={**POLICY, "swap_max": "9", "direction": "in",
                                                 "amount_in": "50"}) as r:  # fmt: skip
                refused = await r.json()  # SetPolicy's own check, as a save would meet it
                assert refused["code"] == "field_invalid" and refused["param"] == "swap_max"
            # Sign out.
            async with http.get(f"{test_page}/overview") as r:
                token = _csrf(await r.text())
            async with http.post(
                f"{base}/dashboard/signout", data={"csrf": token}, allow_redirects=False
            ) as r:
                assert r.status == 303
            async with http.get(f"{test_page}/credentials", allow_redirects=False) as r:
                assert r.status == 303

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            val_totp = pyotp.TOTP(users["shop-a/val"].totp_secret)
            status, _, _ = await _partner_signin(http, base, "shop-a", "val", val_totp.now())
            assert status == 303
            async with http.get(f"{base}/dashboard/partner/test/credentials") as r:
                page = await r.text()
                assert r.status == 200 and "credentials/add" not in page  # no forms
            form = {"csrf": _csrf(page), "key": "k4"}
            async with http.post(f"{base}/dashboard/partner/test/credentials/add", data=form) as r:
                assert r.status == 403 and "role_read_only" in await r.text()
            async with http.post(
                f"{base}/dashboard/partner/test/reserve/top_up", data={**form, "amount": "5"}
            ) as r:
                assert r.status == 403 and "role_read_only" in await r.text()
            # Removing the user ends its session at its next request.
            save_partner_users(
                secrets_dir / "partner_users.json", {"shop-a/pat": users["shop-a/pat"]}
            )
            async with http.get(
                f"{base}/dashboard/partner/test/credentials", allow_redirects=False
            ) as r:
                assert r.status == 303

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{base}/dashboard/signin") as r:
                token = _csrf(await r.text())
            form = {"csrf": token, "name": "alice", "password": PASSWORD,
                    "totp": pyotp.TOTP(alice.totp_secret).now()}  # fmt: skip
            async with http.post(f"{base}/dashboard/signin", data=form) as r:
                assert r.status == 200
            async with http.get(f"{base}/dashboard/partner/test/overview") as r:
                assert r.status == 404  # an operator's session sees no partner page


async def test_failed_partner_sign_ins_lock_like_operators(tmp_path: Path) -> None:
    async with gateway_without_nodes(tmp_path, dashboard={"signin_failures_max": 2}) as layout:
        pat = new_partner_user("shop-a", "pat", "admin", PASSWORD)
        save_partner_users(Path(layout.directory) / "secrets" / "partner_users.json",
                           {pat.key: pat})  # fmt: skip
        totp = pyotp.TOTP(pat.totp_secret)
        base = layout.gateway_url
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            status, _, text = await _partner_signin(http, base, "shop-a", "pat", "000000")
            assert status == 401 and "Failed attempts: 1 of 2" in text
            # An unknown user of the partner costs the same and counts the same.
            status, _, text = await _partner_signin(http, base, "shop-a", "nobody", totp.now())
            assert status == 401 and "Failed attempts: 2 of 2" in text
            status, _, text = await _partner_signin(http, base, "shop-a", "pat", totp.now())
            assert status == 429 and "signin_locked" in text


def test_a_viewer_sees_the_policy_in_force_never_the_forms_defaults() -> None:
    session = Session("s", "c", "shop-a/val", "partner_viewer", 0, 0, "shop-a")
    view = PartnerView(session, "shop-a", False, "test", "policy")
    none_yet = policy_page(view, {"code": "PTS"}, None)
    assert "none set yet" in none_yet and "policy-facts" not in none_yet
    assert "policy-form" not in none_yet and "policy-preview.js" not in none_yet
    policy = {**{k: "7" for k in POLICY_DEFAULTS}, "version": 3, "enabled": True}
    shown = policy_page(view, {"code": "PTS"}, policy)
    assert "version 3, enabled" in shown and "policy-facts" in shown


# -- the swaps list and the swap volume ------------------------------------------------------

VIEWER = Session("s", "c", "shop-a/val", "partner_viewer", 0, 0, "shop-a")


def _swap(
    n: int, log_time_ms: int, direction: str = "in", failure: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"swap_{n:064x}", "object": "bridge_swap", "livemode": False,
        "status": "failed" if failure else "succeeded", "user": f"user-{n}", "asset": "PTS",
        "direction": direction, "amount_in": str(100 * n), "amount_out": str(7 * n),
        "fee": "1", "policy_version": 1, "quote_digest": "00", "operation": f"{n:064x}",
        "log_time_ms": log_time_ms, "failure_code": failure,
    }  # fmt: skip


def test_swap_volume_buckets_whole_utc_hours_and_days_and_both_directions() -> None:
    day = VOLUME_WINDOWS["7d"]
    now_ms = 20_000 * DAY_MS + 5 * HOUR_MS
    start = volume_start_ms(day, now_ms)
    assert start == 19_994 * DAY_MS  # six whole days back, the seventh holds now
    swaps = [
        _swap(1, start),  # in: 100 points paid, 7 BAAS got
        _swap(2, start + DAY_MS - 1, "out"),  # out: 200 BAAS paid, 14 points got
        _swap(3, now_ms),
        _swap(4, start - 1),  # before the window: not counted
        _swap(5, start + 7 * DAY_MS),  # after it: not counted
    ]
    buckets = swap_volume(swaps, day, start)
    assert len(buckets) == 7 and [b.start_ms for b in buckets][:2] == [start, start + DAY_MS]
    assert (buckets[0].swaps, buckets[0].points, buckets[0].baas) == (2, 114, 207)
    assert (buckets[6].swaps, buckets[6].points, buckets[6].baas) == (1, 300, 21)
    assert sum(b.swaps for b in buckets) == 3
    hours = VOLUME_WINDOWS["24h"]
    assert hours.buckets == 24 and volume_start_ms(hours, now_ms) == now_ms - 23 * HOUR_MS


def test_the_overview_draws_the_volume_and_says_when_the_window_was_truncated() -> None:
    view = PartnerView(VIEWER, "shop-a", False, "test", "overview")
    window = VOLUME_WINDOWS["24h"]
    start = volume_start_ms(window, 1_000 * DAY_MS)
    buckets = swap_volume([_swap(1, start), _swap(2, start + 3 * HOUR_MS)], window, start)
    html = overview_page(view, None, None, [], SwapVolume("24h", buckets))
    assert "Swap volume, last 24 hours" in html and "coming" not in html.split("<main")[-1]
    assert "when it lands" not in html and "volume-truncated" not in html
    for chart in ("volume-count-chart", "volume-points-chart", "volume-baas-chart"):
        assert f'<figure class="chart" id="{chart}">' in html
    assert "Swaps per hour: from 1 to 0, highest 1" in html
    assert "<dt>Swaps</dt><dd>2</dd>" in html and "<dt>Points volume</dt><dd>300</dd>" in html
    assert "<td>1972-09-26 04:00 UTC</td><td>1</td><td>200</td><td>14</td>" in html
    cut = overview_page(view, None, None, [], SwapVolume("24h", buckets, start + HOUR_MS))
    assert 'id="volume-truncated"' in cut and "1972-09-26 02:00:00 UTC on" in cut


def test_the_swaps_page_lists_links_pages_on_and_keeps_its_filters() -> None:
    view = PartnerView(VIEWER, "shop-a", False, "test", "swaps")
    listing = {"object": "list", "has_more": True,
               "data": [_swap(2, 2 * DAY_MS), _swap(1, DAY_MS, failure="below_min")]}  # fmt: skip
    filters = {"status": "failed", "user": "user-1", "from": "1970-01-01", "to": ""}
    html = swaps_page(view, None, "", listing, filters)
    here = "/dashboard/partner/test/swaps"
    assert f'href="{here}?id=swap_{2:064x}"' in html and f'href="{here}?id=swap_{1:064x}"' in html
    assert "<code>below_min</code>" in html and "1970-01-03 00:00:00 UTC" in html
    next_link = re.search(r'href="([^"]+)" id="swaps-next"', html)
    assert next_link is not None
    assert next_link.group(1) == (
        f"{here}?status=failed&amp;user=user-1&amp;from=1970-01-01&amp;starting_after=swap_{1:064x}"
    )
    assert '<option value="failed" selected>' in html and 'value="user-1"' in html
    last = swaps_page(view, None, "", {**listing, "has_more": False}, filters)
    assert "swaps-next" not in last
    assert "No swap matches." in swaps_page(view, None, "", {**listing, "data": []}, {})


async def test_the_swaps_page_refuses_bad_filters_and_shows_an_unreachable_cluster(
    tmp_path: Path,
) -> None:
    async with gateway_without_nodes(tmp_path) as layout:
        pat = new_partner_user("shop-a", "pat", "admin", PASSWORD)
        users_file = Path(layout.directory) / "secrets" / "partner_users.json"
        save_partner_users(users_file, {pat.key: pat})
        base = layout.gateway_url
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            status, _, _ = await _partner_signin(
                http, base, "shop-a", "pat", pyotp.TOTP(pat.totp_secret).now()
            )
            assert status == 303
            swaps = f"{base}/dashboard/partner/test/swaps"
            for query, param in (
                ({"status": "pending"}, "status"),  # the list's own check
                ({"from": "2026-13-01"}, "from"),
                ({"to": "yesterday"}, "to"),
                ({"starting_after": "swap_12"}, "starting_after"),
            ):
                async with http.get(swaps, params=query) as r:
                    page = await r.text()
                    assert r.status == 400, (query, page[:500])
                    assert 'class="problem"' in page and param in page, query
                    assert 'id="swap-filters"' in page  # the form stays, to fix the filter
            # Valid filters pass every check (the created window as the list's log-time
            # bounds), and reach the nodes, which do not answer here.
            valid = {"status": "failed", "user": "user-1", "from": "2026-01-01", "to": "2026-01-02"}
            async with http.get(swaps, params=valid) as r:
                assert r.status >= 500 and 'value="2026-01-02"' in await r.text()
            async with http.get(swaps) as r:  # no node answers: said so, never a blank page
                page = await r.text()
                assert r.status >= 500 and 'class="problem"' in page and "swap-filters" in page
            async with http.get(f"{base}/dashboard/partner/test/overview") as r:
                page = await r.text()
                assert r.status == 200 and 'class="problem"' in page
            async with http.get(f"{base}/dashboard/partner/test/overview?volume=1y") as r:
                assert r.status == 400 and "volume" in await r.text()
