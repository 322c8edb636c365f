"""The dashboard without a browser: the session and sign-in core, operator credentials and
their command, the config, the published verifier file, and the real gateway's dashboard
over HTTP (sign-in with password + TOTP, CSRF, cookie flags, lockout, sign-out, the
unreachable-cluster state) with its nodes never started."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import time
from pathlib import Path

import aiohttp
import pyotp
import pytest
from inprocess_gateway import gateway_without_nodes
from web3 import Web3

from gateway.config import load_gateway_config
from gateway.dashboard.operators import (
    load_operators,
    new_operator,
    save_operators,
    totp_match,
)
from gateway.dashboard.pages import NodeView, moves_page
from gateway.dashboard.routes import _inline_hashes, verifier_html
from gateway.dashboard.sessions import Session, SessionStore, SigninGuard
from node.errors import ConfigError, InvalidRequest, UnsupportedFormat
from tools import dashboard_cli
from tools.cluster_cli import _print_layout
from tools.cluster_init import init_cluster, set_toml_keys

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"

# -- the pure core ---------------------------------------------------------------------------


def test_sessions_end_when_idle_at_their_absolute_limit_and_at_sign_out() -> None:
    store = SessionStore(sessions_max=10, idle_s=60, absolute_s=300)
    store.open("a", "csrf-a", "alice", "operator", now_s=0)
    assert store.get("a", 59) is not None  # used: the idle clock restarts
    assert store.get("a", 118) is not None
    assert store.get("a", 178.5) is None  # idle for 60.5 s
    store.open("b", "csrf-b", "alice", "operator", now_s=0)
    for t in range(50, 300, 50):
        assert store.get("b", t) is not None
    assert store.get("b", 300) is None  # absolute limit, though never idle
    store.open("c", "csrf-c", "bob", "operator", now_s=0)
    store.close("c")
    assert store.get("c", 1) is None


def test_a_full_session_store_drops_the_least_recently_used() -> None:
    store = SessionStore(sessions_max=2, idle_s=60, absolute_s=300)
    store.open("a", "x", "alice", "operator", now_s=0)
    store.open("b", "y", "bob", "operator", now_s=1)
    assert store.get("a", 2) is not None  # a is now the most recent
    store.open("c", "z", "carol", "operator", now_s=3)
    assert len(store) == 2
    assert store.get("b", 4) is None and store.get("a", 4) is not None
    assert store.close_subject("alice") == 1 and store.get("a", 5) is None


def test_a_session_allows_only_its_role_and_scope() -> None:
    store = SessionStore(sessions_max=2, idle_s=60, absolute_s=300)
    operator = store.open("a", "x", "alice", "operator", now_s=0)
    partner = store.open("b", "y", "pat", "partner_admin", now_s=0, scope="shop-a")
    assert operator.allows("operator") and not operator.allows("partner_admin", "shop-a")
    assert partner.allows("partner_admin", "shop-a")
    assert not partner.allows("partner_admin", "shop-b") and not partner.allows("operator")


def test_failed_sign_ins_lock_a_key_for_the_window_then_release_it() -> None:
    guard = SigninGuard(failures_max=3, lockout_s=100, trackers_max=10)
    keys = ("name:alice", "addr:10.0.0.1")
    assert [guard.failed(keys, t) for t in (0, 10, 20)] == [1, 2, 3]
    assert guard.locked_for_s(keys, 21) == pytest.approx(79)
    assert guard.locked_for_s(("name:alice",), 99) == pytest.approx(1)
    assert guard.locked_for_s(keys, 100) == 0  # the first failure aged out
    assert guard.locked_for_s(("name:bob",), 21) == 0  # other names are not locked
    guard.failed(("name:bob", "addr:10.0.0.1"), 101)
    guard.succeeded(("name:bob", "addr:10.0.0.1"))
    assert guard.failed(("name:bob",), 102) == 1


def test_the_guard_remembers_a_bounded_number_of_keys() -> None:
    guard = SigninGuard(failures_max=1, lockout_s=100, trackers_max=2)
    for key in ("a", "b", "c"):
        guard.failed((key,), 0)
    assert guard.locked_for_s(("a",), 1) == 0  # forgotten: least recent
    assert guard.locked_for_s(("c",), 1) > 0


def test_a_totp_step_signs_in_once() -> None:
    guard = SigninGuard(failures_max=3, lockout_s=100, trackers_max=10)
    assert guard.fresh_totp_step("alice", 1000)
    assert not guard.fresh_totp_step("alice", 1000)
    assert not guard.fresh_totp_step("alice", 999)
    assert guard.fresh_totp_step("alice", 1001) and guard.fresh_totp_step("bob", 1000)


# -- credentials -----------------------------------------------------------------------------


def test_operator_credentials_round_trip_and_check(tmp_path: Path) -> None:
    alice = new_operator("alice", PASSWORD)
    path = tmp_path / "ops.json"
    save_operators(path, {"alice": alice})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text()
    loaded = load_operators(path)["alice"]
    assert loaded == alice
    assert loaded.password.matches(PASSWORD) and not loaded.password.matches(PASSWORD + "!")
    now = 1_800_000_000.0
    totp = pyotp.TOTP(alice.totp_secret)
    step = int(now) // 30
    assert totp_match(alice.totp_secret, totp.at(now), now) == step
    assert totp_match(alice.totp_secret, totp.at(now - 30), now) == step - 1
    assert totp_match(alice.totp_secret, totp.at(now - 90), now) is None
    assert totp_match(alice.totp_secret, "12345", now) is None
    assert load_operators(tmp_path / "absent.json") == {}


def test_weak_passwords_bad_names_and_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        new_operator("alice", "short")
    with pytest.raises(InvalidRequest):
        new_operator("Alice Smith", PASSWORD)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "baas.operators", "version": 2, "operators": {}}')
    with pytest.raises(UnsupportedFormat):
        load_operators(bad)


def test_the_operator_command_adds_rotates_lists_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secrets" / "operators.json"

    def run(action: str, password: str | None = None) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{password}\n"))
        name = [] if action == "list" else ["alice"]
        stdin = [] if password is None else ["--password-stdin"]
        return dashboard_cli.main(["operator", action, *name, "--file", str(path), *stdin])

    assert run("add", PASSWORD) == 0
    out = capsys.readouterr().out
    secret = load_operators(path)["alice"].totp_secret
    assert secret in out and "otpauth://totp/" in out
    assert run("add", PASSWORD) == 2  # exists already
    assert run("rotate", "another long password") == 0
    rotated = load_operators(path)["alice"]
    assert rotated.totp_secret != secret and rotated.password.matches("another long password")
    assert run("list") == 0
    assert "alice\toperator" in capsys.readouterr().out
    assert run("remove") == 0
    assert load_operators(path) == {}


# -- config ----------------------------------------------------------------------------------


def test_cluster_init_configures_the_dashboard_and_bad_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = init_cluster(tmp_path / "c", chain="embedded")
    _print_layout(layout)  # what `baas-cluster init` and `run` (./dev run) print
    assert f"dashboard: {layout.gateway_url}/dashboard/" in capsys.readouterr().out
    config = load_gateway_config(Path(layout.gateway_config_path))
    assert config.dashboard.operators_file == tmp_path / "c" / "secrets" / "operators.json"
    assert config.dashboard.chain_rpc_url == layout.chain.url
    path = Path(layout.gateway_config_path)
    original = path.read_text()
    for values in (
        {"chain_rpc_url": "ftp://x"},
        {"session_idle_s": 100, "session_absolute_s": 50},
        {"sessions_max": 0},
        {"no_such_key": 1},
    ):
        path.write_text(set_toml_keys(original, "dashboard", values))
        with pytest.raises(ConfigError):
            load_gateway_config(path)


# -- the published verifier ------------------------------------------------------------------


def _table_rows(html: str, caption_start: str) -> list[list[str]]:
    start = html.index(f"<caption>{caption_start}")
    table = html[start : html.index("</table>", start)]
    body = table[table.index("<tbody>") :]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("<tr>")[1:]]


def test_the_repair_page_shows_each_nodes_repair_and_scrub_figures() -> None:
    leader = NodeView(
        "node-1",
        "http://127.0.0.1:1",
        up=True,
        status={
            "repair": {
                "backlog_records": 7,
                "lost_records": 1,
                "shards_rebuilt": 42,
                "rate_shards_per_s": 12.3456,
                "passes": 3,
            },
            "scrub": {
                "passes": 2,
                "shards_checked": 900,
                "corrupt": {"checksum": 4, "shard_hash": 5},
                "quarantined": 9,
            },
        },
    )
    follower = NodeView(
        "node-2",
        "http://127.0.0.1:2",
        up=True,
        status={"repair": {"backlog_records": 0}, "scrub": {"corrupt": {"checksum": 0}}},
    )
    down = NodeView("node-3", "http://127.0.0.1:3", up=False, error="refused")
    session = Session("s", "c", "op", "operator", 0.0, 0.0)
    html = moves_page(session, [leader, follower, down], "/dashboard/operator/moves")
    repair = _table_rows(html, "Repair")
    assert [row[0] for row in repair] == ["node-1", "node-2"]  # a node down has no row
    assert repair[0][1:4] == ["7", "1", "42"] and repair[0][6] == "12.35"
    assert repair[1][1] == "0" and repair[1][2] == "&ndash;"  # not reported: shown as such
    scrub = _table_rows(html, "Scrubbing")
    assert scrub[0][1:6] == ["2", "900", "4", "5", "9"]
    assert scrub[1][3] == "0" and scrub[1][4] == "&ndash;"


def test_the_verifier_file_is_the_one_published_in_the_docs() -> None:
    digest = hashlib.sha256(verifier_html()).hexdigest()
    docs = (ROOT / "docs" / "dashboard.md").read_text()
    assert f"`{digest}`" in docs, f"docs/dashboard.md must publish the verifier's SHA-256 {digest}"


def test_the_verifier_carries_the_right_selectors_and_event_topic() -> None:
    html = verifier_html().decode()

    def constant(name: str) -> str:
        found = re.search(rf'const {name} = "(0x[0-9a-f]+)";', html)
        assert found is not None, name
        return found.group(1)

    assert constant("SELECTOR_ANCHOR_OF") == "0x" + Web3.keccak(text="anchorOf(uint64)").hex()[:8]
    assert constant("SELECTOR_NEXT_BATCH_ID") == "0x" + Web3.keccak(text="nextBatchId()").hex()[:8]
    topic = Web3.keccak(text="Anchored(uint64,bytes32,uint64)").hex()
    assert constant("TOPIC_ANCHORED") == "0x" + topic.removeprefix("0x")


def test_the_verifier_loads_nothing_from_anywhere() -> None:
    html = verifier_html().decode()
    assert not re.search(r"<(script|link|img|iframe)[^>]*(src|href)=", html)
    assert set(_inline_hashes(verifier_html())) == {"script", "style"}


# -- the real gateway, over HTTP -------------------------------------------------------------


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


async def _signin(
    http: aiohttp.ClientSession, base: str, name: str, password: str, code: str
) -> tuple[int, str, str]:
    async with http.get(f"{base}/dashboard/signin") as page:
        token = _csrf(await page.text())
    async with http.post(
        f"{base}/dashboard/signin",
        data={"csrf": token, "name": name, "password": password, "totp": code},
        allow_redirects=False,
    ) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


async def test_sign_in_sessions_csrf_lockout_and_an_unreachable_cluster(tmp_path: Path) -> None:
    chain = "http://127.0.0.1:8545"
    dashboard = {"signin_failures_max": 3, "signin_lockout_s": 600, "chain_rpc_url": chain}
    async with gateway_without_nodes(tmp_path, dashboard=dashboard) as layout:
        alice = new_operator("alice", PASSWORD)
        ops_file = Path(layout.directory) / "secrets" / "operators.json"
        save_operators(ops_file, {"alice": alice})
        base = layout.gateway_url
        totp = pyotp.TOTP(alice.totp_secret)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(f"{base}/dashboard/operator/nodes", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/dashboard/signin"
            async with http.get(f"{base}/dashboard/signin") as r:
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert "Secure" not in cookie  # plain HTTP here; TLS sets it
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
            # A sign-in form without its CSRF token is refused before anything is checked.
            async with http.post(
                f"{base}/dashboard/signin",
                data={"name": "alice", "password": PASSWORD, "totp": totp.now()},
            ) as r:
                assert r.status == 401 and "csrf_token_invalid" in await r.text()
            status, _, text = await _signin(http, base, "alice", PASSWORD, "000000")
            assert status == 401 and "signin_failed" in text and "Failed attempts: 1 of 3" in text
            status, location, _ = await _signin(http, base, "alice", PASSWORD, totp.now())
            assert status == 303 and location == "/dashboard/operator/nodes"
            async with http.get(f"{base}/dashboard/operator/nodes") as r:
                page = await r.text()
                assert r.status == 200 and "cluster_unreachable" in page
                assert "0 of 5 nodes up" in page and "connection refused" in page
            async with http.get(f"{base}/dashboard/operator/anchors") as r:
                assert r.status == 200 and "cluster_unreachable" in await r.text()
            # Rotating the credential ends its sessions at once.
            rotated = new_operator("alice", PASSWORD)
            save_operators(ops_file, {"alice": rotated})
            async with http.get(f"{base}/dashboard/operator/nodes", allow_redirects=False) as r:
                assert r.status == 303
            save_operators(ops_file, {"alice": alice})
            next_code = totp.at(time.time() + 30)
            status, location, _ = await _signin(http, base, "alice", PASSWORD, next_code)
            assert status == 303, "the next step's code is accepted (clock skew window)"
            async with http.get(f"{base}/dashboard/operator/nodes") as r:
                page = await r.text()
            # Sign-out needs the session's CSRF token too.
            async with http.post(f"{base}/dashboard/signout", data={"csrf": "forged"}) as r:
                assert r.status == 401 and "csrf_token_invalid" in await r.text()
            async with http.post(
                f"{base}/dashboard/signout", data={"csrf": _csrf(page)}, allow_redirects=False
            ) as r:
                assert r.status == 303
            async with http.get(f"{base}/dashboard/operator/nodes", allow_redirects=False) as r:
                assert r.status == 303
            # The same code again is refused (replay), and counted (the sign-in cleared the
            # count of earlier failures).
            status, _, text = await _signin(http, base, "alice", PASSWORD, totp.now())
            assert status == 401 and "totp_reused" in text and "Failed attempts: 1." in text
            status, _, text = await _signin(http, base, "alice", "wrong password!!", totp.now())
            assert status == 401 and "Failed attempts: 2 of 3" in text
            status, _, text = await _signin(http, base, "nobody", PASSWORD, totp.now())
            assert status == 401 and "Failed attempts: 3 of 3" in text  # same client address
            # Locked now: even the right password and a fresh code are refused, with 429.
            status, _, text = await _signin(http, base, "alice", PASSWORD, totp.now())
            assert status == 429 and "signin_locked" in text
        # The verifier is public and byte for byte the published file.
        async with aiohttp.ClientSession() as http, http.get(f"{base}/dashboard/verify") as r:
            assert r.url.path == "/dashboard/verify" and r.url.query["rpc"] == chain
            assert await r.read() == verifier_html()
            assert _inline_hashes(verifier_html())["script"] in r.headers["Content-Security-Policy"]
            async with http.get(f"{base}/dashboard/signin") as r:
                # Pages may connect to the gateway and the configured chain, nothing else.
                assert (
                    "connect-src 'self' http://127.0.0.1:8545;"
                    in r.headers["Content-Security-Policy"]
                )
