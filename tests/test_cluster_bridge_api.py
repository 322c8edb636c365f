"""The Bridge API through the real gateway in front of real nodes (log feature 8): two partners
onboarded, each defines its points, links a user with the user's signature, issues points to
them, funds its reserve and liquidity, sets a policy, and swaps for the user both ways with the
user's EIP-712 approval over the previewed digest; one partner then registers a token (log
feature 12), funds its liquidity in test mode and swaps BAAS -> token and back. Retries answer
the first outcome; altered, other users' and forged approvals are refused with stable codes and
move nothing; another partner's asset, token and swaps are not found. Every answer is checked
against the OpenAPI document (CheckedPartnerClient)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openapi_check
import pytest
from openapi_check import CheckedPartnerClient

from tools.client import Response
from tools.cluster_init import init_cluster
from tools.ledger_client import BridgeClient, LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

BAAS_PER_POINT = 10**16  # a point at scale 2 (0.01) is worth 0.01 BAAS (scale 18)
POLICY: dict[str, Any] = {
    "rate_num": str(BAAS_PER_POINT),
    "rate_den": "1",
    "swap_min": "10",
    "swap_max": "100000",
    "window_s": 3600,
    "user_window_max": "0",
    "partner_window_max": "0",
    "fee_bps": 100,
    "fee_min": "0",
    "enabled": True,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    directory = tmp_path_factory.mktemp("bridgeapi")
    layout = init_cluster(directory, nodes=3, k=2, n=3, partners=(), chain="none")
    local = LocalCluster(layout)
    local.start()
    made: dict[str, tuple[str, bytes]] = {}
    try:
        for name in ("shop-p", "shop-q"):
            for mode, cred in onboard_partner(layout, name).items():
                made[f"{name}/{mode}"] = cred
        yield local, made
    finally:
        local.stop()


def _client(local: LocalCluster, made: dict, who: str) -> LedgerClient:
    key, secret = made[who]
    return LedgerClient(CheckedPartnerClient(local.layout.gateway_url, key, secret), attempts_max=3)


async def _define(c: LedgerClient, code: str) -> Response:
    """The first Bridge write: 401 until the gateway reloads its keyring, 503 until the log
    runs feature 8; both refused before the log, safe to retry under the same key."""
    deadline = time.monotonic() + 120
    while True:
        got = await c.call("POST", "/v1/bridge/points", {"code": code, "scale": 2}, key="define")
        if got.status in (200, 201):
            return got
        assert got.status in (401, 503), got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.5)


async def _swap(
    c: LedgerClient, user: UserWallet, user_id: str, quote: dict[str, Any], key: str
) -> Response:
    return await BridgeClient(c).swap(user, user_id, quote, key=key)


async def _quote(
    c: LedgerClient, code: str, user_id: str, direction: str, amount_in: str
) -> Response:
    return await BridgeClient(c).quote(code, user_id, direction, amount_in)


async def _partner_flow(local: LocalCluster, made: dict, name: str, code: str) -> dict[str, Any]:
    """One partner's whole Bridge flow; answers what the isolation checks need."""
    c = _client(local, made, f"{name}/test")
    user = UserWallet(bytes([len(name)] * 31 + [ord(code[0])]))
    user_id = f"{name}-user"
    try:
        defined = await _define(c, code)
        assert defined.body["code"] == code and defined.body["scale"] == 2, defined
        again = await c.call("POST", "/v1/bridge/points", {"code": code, "scale": 2}, key="define")
        assert again.status == 200 and again.body == defined.body, again
        link = user.link(name, livemode=False, user_id=user_id, deadline=int(time.time()) + 600)
        assert (await c.call("POST", "/v1/wallets/links", link, key="link")).status == 201

        # Issuance to the linked user: the supply is the partner's liability.
        issue = {"user": user_id, "amount": "5000"}
        issued = await c.call("POST", f"/v1/bridge/points/{code}/issue", issue, key="issue-1")
        assert issued.status == 201 and issued.body["amount"] == "5000", issued
        retry = await c.call("POST", f"/v1/bridge/points/{code}/issue", issue, key="issue-1")
        assert retry.status == 200 and retry.body == issued.body, retry
        reused = await c.call(
            "POST", f"/v1/bridge/points/{code}/issue", {**issue, "amount": "1"}, key="issue-1"
        )
        assert reused.status == 409 and reused.body["code"] == "idempotency_key_reused", reused
        asset = await c.call("GET", f"/v1/bridge/points/{code}")
        assert asset.body["supply"] == "5000", asset
        held = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
        assert held.body["balance"] == "5000" and held.body["lots"][0]["origin"] == "issued"

        # A redemption with the user's approval, a reversal capped at the unspent issuance.
        spent = await BridgeClient(c).redeem(user, code, user_id, "100", key="redeem-1")
        assert spent.status == 201 and spent.body["object"] == "bridge_redemption", spent
        unsigned = await c.call(
            "POST", f"/v1/bridge/points/{code}/redeem", {"user": user_id, "amount": "1"}, key="r2"
        )
        assert unsigned.status == 400 and unsigned.body["code"] == "approval_required"
        back = {"issuance": issued.body["id"], "amount": "100"}
        reversed_ = await c.call("POST", f"/v1/bridge/points/{code}/reverse", back, key="rev-1")
        assert reversed_.status == 201, reversed_
        too_much = {**back, "amount": "4901"}  # 5000 issued, 100 redeemed, 100 reversed
        capped = await c.call("POST", f"/v1/bridge/points/{code}/reverse", too_much, key="rev-2")
        assert capped.status == 409 and capped.body["code"] == "reversal_exceeds_unspent", capped
        asset = await c.call("GET", f"/v1/bridge/points/{code}")
        assert asset.body["supply"] == "4800", asset
        held = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
        assert held.body["balance"] == "4800", held

        # Reserve, liquidity, policy.
        top = await c.call("POST", "/v1/bridge/reserve/top_up", {"amount": str(10**21)}, key="t")
        assert top.status == 201 and top.body["level"] == str(10**21), top
        fund = {"amount": "3000"}
        funded = await c.call("POST", f"/v1/bridge/points/{code}/liquidity", fund, key="liq")
        assert funded.status == 201, funded
        set_ = await c.call("POST", f"/v1/bridge/points/{code}/policy", POLICY, key="policy-1")
        assert set_.status == 201 and set_.body["version"] == 1, set_
        audit = await c.call("GET", f"/v1/bridge/points/{code}/policy?version=1")
        assert audit.body["object"] == "bridge_policy_change", audit

        # A swap in (points -> BAAS), with the user's approval; its retry is the first outcome.
        q_in = await _quote(c, code, user_id, "in", "1000")
        assert q_in.status == 200, q_in
        gross = 1000 * BAAS_PER_POINT
        assert q_in.body["fee"] == str(gross // 100)
        assert q_in.body["amount_out"] == str(gross - gross // 100), q_in
        swapped = await _swap(c, user, user_id, q_in.body, "swap-in")
        assert swapped.status == 201 and swapped.body["status"] == "succeeded", swapped
        replay = await _swap(c, user, user_id, q_in.body, "swap-in")  # a fresh signature
        assert replay.status == 200 and replay.body["id"] == swapped.body["id"], replay
        read = await c.call("GET", f"/v1/bridge/swaps/{swapped.body['id']}")
        assert read.body["status"] == "succeeded" and read.body["amount_in"] == "1000", read
        held = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
        assert held.body["balance"] == "3800", held

        # A swap out (BAAS -> points), paid from the liquidity account.
        q_out = await _quote(c, code, user_id, "out", str(200 * BAAS_PER_POINT))
        assert q_out.status == 200, q_out
        out = await _swap(c, user, user_id, q_out.body, "swap-out")
        assert out.status == 201, out
        held = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
        assert int(held.body["balance"]) == 3800 + int(q_out.body["amount_out"]), held

        # A batch: each swap its own operation, key and approval; one result each.
        items = []
        for i in range(2):
            qb = (await _quote(c, code, user_id, "in", "50")).body
            shown = await c.call(
                "POST", "/v1/bridge/swaps/preview", {"user": user_id, "quote": qb}, key=f"b-{i}"
            )
            approvals = user.approve(shown.body)
            items.append({"idempotency_key": f"b-{i}", "user": user_id, "quote": qb,
                          "approvals": approvals})  # fmt: skip
        batch = await c.call("POST", "/v1/bridge/swaps/batch", {"swaps": items})
        assert [r["status"] for r in batch.body["results"]] == [201, 201], batch
        again = await c.call("POST", "/v1/bridge/swaps/batch", {"swaps": items[:1]})
        assert again.body["results"][0]["status"] == 200, again
        after = await c.call("GET", f"/v1/bridge/points/{code}/users/{user_id}")
        assert int(after.body["balance"]) == int(held.body["balance"]) - 100, after

        # Refusals: stable codes, nothing moved.
        reserve_before = (await c.call("GET", "/v1/bridge/reserve")).body["level"]
        q = (await _quote(c, code, user_id, "in", "100")).body
        altered = await _swap(c, user, user_id, {**q, "amount_out": str(10**30)}, "altered")
        assert altered.status == 400 and altered.body["code"] == "quote_altered", altered
        other = UserWallet(bytes([7] * 31 + [ord(code[0])]))
        link2 = other.link(name, livemode=False, user_id="u2", deadline=int(time.time()) + 600)
        assert (await c.call("POST", "/v1/wallets/links", link2, key="link-2")).status == 201
        theirs = (await _quote(c, code, "u2", "in", "100")).body
        stolen = await _swap(c, user, user_id, theirs, "other-user")
        assert stolen.status == 400 and stolen.body["code"] == "quote_other_user", stolen
        forger = UserWallet(bytes([9] * 32))
        body = {"user": user_id, "quote": q}
        preview = await c.call("POST", "/v1/bridge/swaps/preview", body, key="forged")
        forged = [{**a, "wallet": user.address} for a in forger.approve(
            {**preview.body, "approvals_required": [
                {**preview.body["approvals_required"][0], "wallet": forger.address}]})]  # fmt: skip
        refused = await c.call(
            "POST", "/v1/bridge/swaps", {**body, "approvals": forged}, key="forged"
        )
        assert refused.status == 403 and refused.body["param"] == "approvals", refused
        small = await _quote(c, code, user_id, "in", "9")
        assert small.status == 400 and small.body["code"] == "below_min", small
        off = await c.call(
            "POST", f"/v1/bridge/points/{code}/policy", {**POLICY, "enabled": False}, key="off"
        )
        assert off.status == 201 and off.body["version"] == 2, off
        changed = await _swap(c, user, user_id, q, "after-change")
        assert changed.status == 409, changed
        assert changed.body["code"] in ("policy_version_changed", "policy_disabled"), changed
        disabled = await _quote(c, code, user_id, "in", "100")
        assert disabled.status == 409 and disabled.body["code"] == "policy_disabled", disabled
        assert (await c.call("GET", "/v1/bridge/reserve")).body["level"] == reserve_before
        return {"swap": swapped.body["id"], "code": code, "user": user_id, "wallet": user}
    finally:
        await c.http.close()


TOKEN = "0x" + "5f" * 20
TOKEN_POLICY = {**POLICY, "rate_num": str(10**12), "swap_max": str(10**12)}  # 1 token = 1 BAAS


async def _token_flow(c: LedgerClient, user: UserWallet, user_id: str) -> None:
    """Log feature 12: register a token (its ledger allocated on the log), a duplicate refused,
    test-mode liquidity, a policy, swaps BAAS -> token and back for the linked user."""
    body = {"symbol": "PTOK", "decimals": 6, "address": TOKEN}
    made = await c.call("POST", "/v1/bridge/tokens", body, key="token")
    assert made.status == 201 and made.body["id"] == TOKEN and made.body["decimals"] == 6, made
    again = await c.call("POST", "/v1/bridge/tokens", body, key="token")
    assert again.status == 200 and again.body == made.body, again
    dup = await c.call("POST", "/v1/bridge/tokens", {**body, "symbol": "DUP"}, key="token-2")
    assert dup.status == 409 and dup.body["code"] == "token_address_taken", dup
    listed = await c.call("GET", "/v1/bridge/tokens")
    assert [t["id"] for t in listed.body["data"]] == [TOKEN], listed
    fund = {"amount": str(1000 * 10**6)}
    funded = await c.call("POST", f"/v1/bridge/tokens/{TOKEN}/liquidity", fund, key="tliq")
    assert funded.status == 201, funded
    pol = await c.call("POST", f"/v1/bridge/tokens/{TOKEN}/policy", TOKEN_POLICY, key="tpol")
    assert pol.status == 201 and pol.body["asset"] == TOKEN and pol.body["version"] == 1, pol
    out = await _quote(c, TOKEN, user_id, "out", str(10**18))  # 1 BAAS, 1% fee: 0.99 token
    assert out.status == 200 and out.body["amount_out"] == "990000", out
    swapped = await _swap(c, user, user_id, out.body, "tswap-out")
    assert swapped.status == 201 and swapped.body["asset"] == TOKEN, swapped
    back = await _quote(c, TOKEN, user_id, "in", "500000")  # 0.5 token: 0.495 BAAS
    assert back.status == 200 and back.body["amount_out"] == str(495 * 10**15), back
    assert (await _swap(c, user, user_id, back.body, "tswap-in")).status == 201
    token = await c.call("GET", f"/v1/bridge/tokens/{TOKEN}")
    assert token.body["liquidity"] == str(1000 * 10**6 - 990000 + 500000), token
    listed = await c.call("GET", f"/v1/bridge/swaps?asset={TOKEN}")
    assert [s["status"] for s in listed.body["data"]] == ["succeeded", "succeeded"], listed


async def test_two_partners_swap_both_ways_through_the_bridge_api(
    cluster: tuple[LocalCluster, dict],
) -> None:
    local, made = cluster
    checked_before = openapi_check.answers_checked
    p = await _partner_flow(local, made, "shop-p", "PPTS")
    q = await _partner_flow(local, made, "shop-q", "QPTS")
    tokens = _client(local, made, "shop-p/test")
    try:
        await _token_flow(tokens, p["wallet"], p["user"])
    finally:
        await tokens.http.close()
    # Isolation: another partner's asset, swap and user are not found.
    c = _client(local, made, "shop-q/test")
    live = _client(local, made, "shop-p/live")
    try:
        assert (await c.call("GET", f"/v1/bridge/points/{p['code']}")).status == 404
        assert (await c.call("GET", f"/v1/bridge/swaps/{p['swap']}")).status == 404
        assert (await c.call("GET", f"/v1/bridge/swaps/{q['swap']}")).status == 200
        assert (await live.call("GET", f"/v1/bridge/swaps/{p['swap']}")).status == 404
        top = await live.call("POST", "/v1/bridge/reserve/top_up", {"amount": "1"}, key="l")
        assert top.status == 400 and top.body["code"] == "test_mode_only", top
        assert (await c.call("GET", f"/v1/bridge/tokens/{TOKEN}")).status == 404  # shop-p's
        assert (await live.call("GET", f"/v1/bridge/tokens/{TOKEN}")).status == 404  # test's
        path = f"/v1/bridge/tokens/{TOKEN}/liquidity"
        faucet = await live.call("POST", path, {"amount": "1"}, key="tl")
        assert faucet.status == 400 and faucet.body["code"] == "test_mode_only", faucet
    finally:
        await c.http.close()
        await live.http.close()
    assert openapi_check.answers_checked > checked_before + 40
