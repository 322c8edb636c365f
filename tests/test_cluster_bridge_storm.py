"""Swap storms through the real gateway in front of 3 real nodes anchoring on a real chain (the
embedded eth-tester chain over JSON-RPC), log feature 11. Two partners onboarded, points
defined and issued to linked users, reserves funded, policies set; then:

* **a reserve exhausted mid-storm** (shop-r): concurrent swaps points -> BAAS worth more than
  the reserve holds: as many succeed as it pays for, the rest fail whole with 402
  ``reserve_exhausted``, and nothing is half applied: users' points, the supply, the reserve
  and users' BAAS add up exactly to the acknowledged swaps; the reserve crossing its
  threshold raised one ``reserve.low`` event (the reserve read, the nodes' metric); the swaps
  list shows every swap once, filtered by status and user;
* **kill -9 of the Raft leader during a swap storm** (shop-k): workers swap for their users,
  each retrying its own swap under its own key until it gets an outcome: every acknowledged
  swap is there exactly once (read back one by one and in the list), retries answer the
  first outcome, totals are conserved, the surviving nodes agree on the Bridge state, and a
  sample of swap receipts verifies with ``baas-verify`` (the real command) after the anchor.

Every answer is checked against the OpenAPI document (CheckedPartnerClient).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, wait_for
from openapi_check import CheckedPartnerClient
from test_cluster_bridge_api import POLICY, _define, _quote
from test_cluster_index import wait_leader

from tools.client import Response
from tools.cluster_init import init_cluster
from tools.ledger_client import BridgeClient, LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
BAAS = 10**18
BAAS_PER_POINT = 10**16  # POLICY's rate: a point (scale 2) is worth 0.01 BAAS
ISSUED = 100_000  # points issued to each user


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    directory = tmp_path_factory.mktemp("bridgestorm")
    # 3 nodes (k=2 of n=3, a write quorum of 2): one may die and records still commit; fewer
    # processes than the 5 of the ledger's kill test, for a box that runs other tests too.
    layout = init_cluster(
        directory, nodes=3, k=2, n=3, write_quorum=2, partners=(), chain="embedded"
    )
    local = LocalCluster(layout, ready_timeout_s=120)  # 3 nodes and a chain on a busy box
    local.start()
    made: dict[str, tuple[str, bytes]] = {}
    try:
        for name in ("shop-r", "shop-k"):
            made[name] = onboard_partner(layout, name)["test"]
        yield local, made
    finally:
        local.stop()


def _client(local: LocalCluster, made: dict, who: str) -> LedgerClient:
    key, secret = made[who]
    return LedgerClient(CheckedPartnerClient(local.layout.gateway_url, key, secret), attempts_max=3)


def _user(name: str, i: int) -> tuple[UserWallet, str]:
    """A user of partner ``name`` with a wallet of its own (one wallet holds BAAS across
    partners: users of two partners must not share a key here)."""
    key = hashlib.sha256(f"{name}/{i}".encode()).digest()
    return UserWallet(key), f"{name}-user-{i}"


async def _market(
    c: LedgerClient, name: str, code: str, users: int, reserve: int, threshold: int = 0
) -> list[tuple[UserWallet, str]]:
    """Points defined, ``users`` linked users holding ISSUED points each, the reserve topped
    up to ``reserve``, liquidity, the policy; the threshold when given."""
    assert (await _define(c, code)).status in (200, 201)
    linked = []
    for i in range(users):
        wallet, user_id = _user(name, i)
        link = wallet.link(name, livemode=False, user_id=user_id, deadline=int(time.time()) + 600)
        assert (await c.call("POST", "/v1/wallets/links", link, key=f"link-{i}")).status == 201
        issue = {"user": user_id, "amount": str(ISSUED)}
        got = await c.call("POST", f"/v1/bridge/points/{code}/issue", issue, key=f"issue-{i}")
        assert got.status == 201, got
        linked.append((wallet, user_id))
    top = await c.call("POST", "/v1/bridge/reserve/top_up", {"amount": str(reserve)}, key="top")
    assert top.status == 201, top
    fund = {"amount": "1000"}
    funded = await c.call("POST", f"/v1/bridge/points/{code}/liquidity", fund, key="liq")
    assert funded.status == 201, funded
    if threshold:
        body = {"threshold": str(threshold)}
        assert (await c.call("POST", "/v1/bridge/reserve/threshold", body, key="th")).status == 201
    policy = await c.call("POST", f"/v1/bridge/points/{code}/policy", POLICY, key="policy")
    assert policy.status == 201, policy
    return linked


async def _list_all(c: LedgerClient, query: str = "") -> list[dict[str, Any]]:
    """Every swap the list answers, page after page (newest first)."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await c.call("GET", f"/v1/bridge/swaps?limit=100{query}{cursor}")
        assert page.status == 200, page
        found += page.body["data"]
        if not page.body["has_more"]:
            return found
        cursor = f"&starting_after={found[-1]['id']}"


async def _points(c: LedgerClient, code: str, user_id: str) -> int:
    got = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
    assert got.status == 200, got
    return int(got.body["balance"])


async def _baas(c: LedgerClient, user_id: str) -> int:
    got = await c.call("GET", f"/v1/wallets/links/{user_id}")
    assert got.status == 200, got
    (baas,) = [b for b in got.body["balances"] if b["asset"] == "baas"]
    return int(baas["posted"])


async def _level(c: LedgerClient) -> dict[str, Any]:
    got = await c.call("GET", "/v1/bridge/reserve")
    assert got.status == 200, got
    return got.body


def _metric(local: LocalCluster, name: str, line: str) -> bool:
    url = f"http://{local.node(name).http_addr}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return line in response.read().decode()


async def _conserved(
    c: LedgerClient, code: str, users: list[str], swaps: list[dict[str, Any]], reserve: int
) -> None:
    """Nothing half applied: what every user holds, the supply and the reserve are exactly
    what the succeeded swaps (points -> BAAS) say."""
    ok = [s for s in swaps if s["status"] == "succeeded"]
    for user_id in users:
        mine = [s for s in ok if s["user"] == user_id]
        assert await _points(c, code, user_id) == ISSUED - sum(int(s["amount_in"]) for s in mine)
        assert await _baas(c, user_id) == sum(int(s["amount_out"]) for s in mine)
    spent = sum(int(s["amount_in"]) for s in ok)
    supply = (await c.call("GET", f"/v1/bridge/points/{code}")).body["supply"]
    assert int(supply) == len(users) * ISSUED - spent
    # The reserve paid each swap's gross: the user's BAAS and the 1 % fee.
    gross = sum(int(s["amount_out"]) + int(s["fee"]) for s in ok)
    assert gross == sum(int(s["amount_in"]) * BAAS_PER_POINT for s in ok)
    assert int((await _level(c))["level"]) == reserve - gross


async def test_a_reserve_exhausted_mid_storm_fails_the_rest_whole(
    cluster: tuple[LocalCluster, dict],
) -> None:
    local, made = cluster
    c = _client(local, made, "shop-r")
    c.attempts_max, c.wait_s_max = 20, 1.0
    bridge = BridgeClient(c)
    reserve = 10 * BAAS + BAAS // 2  # pays 10 swaps of 100 points (1 BAAS each), not 11
    try:
        users = await _market(c, "shop-r", "RPTS", 2, reserve, threshold=5 * BAAS)
        quotes = [(await _quote(c, "RPTS", users[i % 2][1], "in", "100")).body for i in range(16)]

        async def one(i: int) -> Response:
            wallet, user_id = users[i % 2]
            return await bridge.swap(wallet, user_id, quotes[i], key=f"storm-{i}")

        answers = await asyncio.gather(*(one(i) for i in range(16)))
        codes = sorted(a.body.get("code", a.body.get("status")) for a in answers)
        assert codes == ["reserve_exhausted"] * 6 + ["succeeded"] * 10, answers
        assert all(a.status == 402 for a in answers if a.body.get("code")), answers

        swaps = await _list_all(c)
        assert len(swaps) == 16 and len({s["id"] for s in swaps}) == 16
        failed = await _list_all(c, "&status=failed")
        assert {s["failure_code"] for s in failed} == {"reserve_exhausted"} and len(failed) == 6
        assert len(await _list_all(c, "&status=succeeded")) == 10
        assert len(await _list_all(c, f"&user={users[0][1]}&asset=RPTS")) == 8
        times = sorted(s["log_time_ms"] for s in swaps)
        assert times == sorted(times) and [s["log_time_ms"] for s in swaps] == times[::-1]
        await _conserved(c, "RPTS", [u for _, u in users], swaps, reserve)

        # The reserve fell below its threshold once: one reserve.low event.
        level = await _level(c)
        assert level["low"] is True and level["low_events"] == 1, level
        assert level["last_low_event"]["type"] == "reserve.low", level
        line = 'baas_node_bridge_reserve_low_total{mode="test"} 1.0'
        names = [n.name for n in local.layout.nodes]
        await wait_for("the reserve.low metric", lambda: _metric(local, names[0], line), 10)
    finally:
        await c.http.close()


async def test_leader_kill_during_a_swap_storm(
    cluster: tuple[LocalCluster, dict], tmp_path: Path
) -> None:
    local, made = cluster
    names = [n.name for n in local.layout.nodes]
    c = _client(local, made, "shop-k")
    bridge = BridgeClient(c)
    reserve = 10**6 * BAAS
    try:
        users = await _market(c, "shop-k", "KPTS", 4, reserve)
        leader = await wait_leader(local, names)
        c.attempts_max, c.wait_s_max = 60, 1.0  # ride out the election
        acked: dict[str, Response] = {}
        sent: dict[str, tuple[UserWallet, str, dict[str, Any]]] = {}
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            rng = random.Random(w)
            wallet, user_id = users[w]
            seq = 0
            while not stop.is_set():
                seq += 1
                key = f"kill-w{w}-{seq}"
                quote = await _quote(c, "KPTS", user_id, "in", str(rng.randint(10, 90)))
                assert quote.status == 200, quote
                sent[key] = (wallet, user_id, quote.body)
                got = await bridge.swap(wallet, user_id, quote.body, key=key)
                # An outcome: 201 applied, or 200 applied and answered as a replay (the
                # client's own retry after an attempt whose answer the kill lost).
                assert got.status in (200, 201), got
                acked[key] = got

        workers = [asyncio.create_task(worker(w)) for w in range(4)]
        await asyncio.sleep(3.0)
        before = len(acked)
        local.kill(leader)
        await wait_leader(local, [n for n in names if n != leader], not_this=leader)
        await asyncio.sleep(4.0)
        stop.set()
        await asyncio.gather(*workers)
        assert len(acked) > before + 4, (before, len(acked))  # went on under the new leader

        # Exactly once: each acknowledged swap reads back as acknowledged, the list holds
        # every one of them once and nothing else, and a retry answers the first outcome.
        swaps = await _list_all(c)
        ids = {got.body["id"] for got in acked.values()}
        assert len(ids) == len(acked) and sorted(s["id"] for s in swaps) == sorted(ids)
        by_id = {s["id"]: s for s in swaps}
        for key, got in list(acked.items())[:: max(1, len(acked) // 10)]:
            read = await c.call("GET", f"/v1/bridge/swaps/{got.body['id']}")
            assert read.body == by_id[got.body["id"]] and read.body["status"] == "succeeded"
            assert read.body["amount_in"] == got.body["amount_in"], (read, got)
            wallet, user_id, quote = sent[key]
            again = await bridge.swap(wallet, user_id, quote, key=key)  # a fresh signature
            assert again.status == 200 and again.body == got.body, (got, again)
        await _conserved(c, "KPTS", [u for _, u in users], swaps, reserve)

        # The surviving nodes converge on one Bridge state (swap index included).
        alive = [n for n in names if n != leader]

        def agreed() -> bool:
            docs = [node_get(local, n, "/internal/v1/bridge/digest") for n in alive]
            return all(d is not None for d in docs) and len({json.dumps(d) for d in docs}) == 1

        await wait_for("one Bridge digest on the surviving nodes", agreed, 30)

        # Receipts of a sample of the swaps verify against the chain with baas-verify.
        sample = [got.body["operation"] for got in list(acked.values())[:: len(acked) // 3][:3]]
        for operation in sample:
            receipt = await _receipt(c, operation)
            path = tmp_path / f"{operation}.json"
            path.write_text(json.dumps(receipt))
            assert local.chain_url is not None
            run = await asyncio.to_thread(
                subprocess.run,
                [Path(sys.executable).parent / "baas-verify", "receipt", str(path),
                 "--rpc", local.chain_url, "--contract", str(local.chain_contract)],
                capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr
            assert "FAILED" not in run.stdout, run.stdout
        print(f"swap storm: {len(acked)} swaps acknowledged, {before} before the kill")
    finally:
        await c.http.close()


async def _receipt(c: LedgerClient, operation: str) -> dict[str, Any]:
    """The operation's receipt once an anchor covers it (409 until then)."""
    deadline = time.monotonic() + 120
    while True:
        got = await c.call("GET", f"/v1/records/{operation}/receipt")
        if got.status == 200:
            body: dict[str, Any] = got.body
            return body
        assert got.status == 409, got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.5)
