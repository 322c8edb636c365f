"""The ledger API through the real gateway in front of 5 real nodes: accounts, the test faucet,
transfers (single, two-phase posted partially and voided, linked chains failing whole, the
batch route), retries answered with the first outcome, the result table, and isolation (another
partner's or the other mode's ids answered as not found). Every answer is checked against the
OpenAPI document (CheckedPartnerClient)."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import identitykit
import openapi_check
import plyvel
import pytest
from openapi_check import CheckedPartnerClient
from test_cluster_index import wait_leader

from business.identity import eip712
from business.identity.approvals import operation_digest
from business.identity.ids import Mode, code_hash, partner_id, user_ref
from tools.client import Response
from tools.cluster_init import init_cluster
from tools.ledger_client import LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

PLANTED = "memo-PLANTED-7f3a9c-user-4242"  # must never reach a node's LevelDB in plaintext
UNUSED_CODE = bytes(range(100, 132))  # a one-time code issued, never presented: only its hash


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    """Partners that may use the ledger are onboarded on the log (from log feature 7 the state
    machine refuses operations of a partner it does not know); ``shop-k`` is in the keyring
    only: it authenticates, and the log refuses its operations."""
    directory = tmp_path_factory.mktemp("ledgerapi")
    layout = init_cluster(directory, partners=("shop-k",), chain="none")
    creds = layout.partners["shop-k"]
    made: dict[str, tuple[str, bytes]] = {
        "shop-k": (creds["api_key"], bytes.fromhex(creds["secret_hex"]))
    }
    local = LocalCluster(layout)
    local.start()
    try:
        for name in ("shop-a", "shop-b", "shop-m", "shop-w"):
            for mode, cred in onboard_partner(layout, name).items():
                made[f"{name}/{mode}"] = cred
            made[name] = made[f"{name}/test"]
        yield local, made
    finally:
        local.stop()


def _ledger(local: LocalCluster, made: dict, who: str) -> LedgerClient:
    key, secret = made[who]
    return LedgerClient(CheckedPartnerClient(local.layout.gateway_url, key, secret), attempts_max=3)


async def _until_ledger(ledger: LedgerClient) -> Response:
    """The first account: the gateway knows a new partner's credential at its next keyring
    reload (401 until then), and the ledger is enabled (log feature 6) shortly after start
    (503 ledger_not_enabled until then); both refused before the log, safe to retry."""
    deadline = time.monotonic() + 90
    while True:
        got = await ledger.create_account(code=1, key="first-account")
        if got.status in (200, 201):
            return got
        assert got.status in (401, 503), got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.5)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _balance(got: Response) -> dict[str, str]:
    assert got.status == 200, got
    balance: dict[str, str] = got.body["balance"]
    return balance


async def test_ledger_api_end_to_end(cluster: tuple[LocalCluster, dict]) -> None:
    local, made = cluster
    checked_before = openapi_check.answers_checked
    a, b = _ledger(local, made, "shop-a"), _ledger(local, made, "shop-b")
    m_test, m_live = _ledger(local, made, "shop-m/test"), _ledger(local, made, "shop-m/live")
    try:
        a1 = (await _until_ledger(a)).body
        assert a1["object"] == "ledger_account" and a1["livemode"] is False
        assert a1["asset"] == "baas" and a1["scale"] == 18 and a1["ledger"] == 2
        assert a1["flags"] == ["debits_must_not_exceed_credits"]
        b1 = (await _until_ledger(b)).body  # same key as a1, other id
        await _until_ledger(m_test)
        a2 = (await a.create_account(code=2, key="second", metadata={"memo": PLANTED})).body
        assert len({a1["id"], a2["id"], b1["id"]}) == 3
        # The state machine's rules, as the partner sees them: a partner the log does not know
        # is refused whole; only an asset's issuer may hold an account that goes negative.
        k = _ledger(local, made, "shop-k")
        unknown = await k.create_account(code=1, key="k-1")
        await k.http.close()
        assert unknown.status == 403 and unknown.body["code"] == "partner_not_onboarded", unknown
        minting = await a.create_account(code=1, flags=[], key="mint")
        assert minting.status == 400 and minting.body["code"] == "account_would_mint", minting
        assert minting.body["param"] == "flags"

        # The faucet, and idempotency: a retry answers the first outcome; another body is 409.
        funded = await a.faucet(a1["id"], "1000", key="fund-1")
        assert funded.status == 201 and funded.body["debit_account"] is None, funded
        again = await a.faucet(a1["id"], "1000", key="fund-1")
        assert again.status == 200 and again.body == funded.body, again
        other = await a.faucet(a1["id"], "999", key="fund-1")
        assert other.status == 409 and other.body["code"] == "idempotency_key_reused", other
        assert _balance(await a.account(a1["id"]))["posted"] == "1000"

        # A transfer, and the ledger's refusal mapped to a problem, sticky on retry.
        moved = await a.transfer(
            a1["id"], a2["id"], "300", code=7, key="t-1", metadata={"memo": PLANTED}
        )
        assert moved.status == 201 and moved.body["amount"] == "300", moved
        assert moved.body["type"] == "transfer" and len(moved.body["operation"]) == 64
        # The request's details (the memo) are the operation's sealed record, the owner's to read.
        sealed = await a.http.get_record(moved.body["operation"])
        assert sealed.status == 200, sealed
        assert sealed.body["record"]["kind"] == "transfer"
        assert sealed.body["record"]["request"]["metadata"] == {"memo": PLANTED}
        assert (await b.http.get_record(moved.body["operation"])).status == 404
        fetched = await a.get_transfer(moved.body["id"])
        assert fetched.status == 200 and fetched.body["amount"] == "300", fetched
        broke = await a.transfer(a1["id"], a2["id"], "1000000", code=7, key="t-big")
        assert broke.status == 402 and broke.body["code"] == "insufficient_funds", broke
        assert broke.body["param"] == "amount"
        broke_again = await a.transfer(a1["id"], a2["id"], "1000000", code=7, key="t-big")
        assert broke_again.status == 402 and broke_again.body["code"] == "insufficient_funds"
        assert _balance(await a.account(a1["id"]))["posted"] == "700"

        # Two-phase: reserve, post part of it (the rest released), void another.
        held = await a.transfer(a1["id"], a2["id"], "200", code=8, pending=True, timeout_s=3600)
        assert held.status == 201 and held.body["type"] == "pending", held
        bal = _balance(await a.account(a1["id"]))
        assert (bal["posted"], bal["available"], bal["debits_pending"]) == ("700", "500", "200")
        posted = await a.post(held.body["id"], "150", key="post-1")
        assert posted.status == 201 and posted.body["amount"] == "150", posted
        assert posted.body["pending_transfer"] == held.body["id"]
        twice = await a.post(held.body["id"], key="post-2")
        assert twice.status == 409 and twice.body["code"] == "transfer_already_posted", twice
        bal = _balance(await a.account(a1["id"]))
        assert (bal["posted"], bal["available"], bal["debits_pending"]) == ("550", "550", "0")
        held2 = await a.transfer(a1["id"], a2["id"], "50", code=8, pending=True)
        voided = await a.void(held2.body["id"], key="void-1")
        assert voided.status == 201 and voided.body["type"] == "void", voided
        void_again = await a.void(held2.body["id"], key="void-2")
        assert void_again.status == 409 and void_again.body["code"] == "transfer_already_voided"
        assert _balance(await a.account(a1["id"]))["available"] == "550"

        # A linked chain succeeds or fails whole.
        chain_bad = [
            LedgerClient.transfer_body(a1["id"], a2["id"], "10", code=9),
            LedgerClient.transfer_body(a2["id"], a1["id"], "999999", code=9),
        ]
        failed = await a.linked(chain_bad, key="chain-1")
        assert failed.status == 402 and failed.body["param"] == "transfers[1].amount", failed
        assert _balance(await a.account(a1["id"]))["posted"] == "550"  # the first undone too
        chain_ok = [
            LedgerClient.transfer_body(a1["id"], a2["id"], "10", code=9),
            LedgerClient.transfer_body(a2["id"], a1["id"], "4", code=9),
        ]
        chained = await a.linked(chain_ok, key="chain-2")
        assert chained.status == 201 and len(chained.body["transfers"]) == 2, chained
        assert _balance(await a.account(a1["id"]))["posted"] == "544"

        # The batch: one result per item, in order; a retry answers every first outcome.
        body = LedgerClient.transfer_body
        items = [
            {"idempotency_key": "b-ok", **body(a1["id"], a2["id"], "4", code=1)},
            {"idempotency_key": "b-big", **body(a1["id"], a2["id"], "9999", code=1)},
            {"idempotency_key": "b-foreign", **body(a1["id"], b1["id"], "1", code=1)},
            {"idempotency_key": "b-zero", **body(a1["id"], a2["id"], "0", code=1)},
        ]
        first = await a.batch(items)
        assert [r["status"] for r in first.body["results"]] == [201, 402, 404, 400], first
        assert first.body["results"][2]["error"]["param"] == "transfers[2].credit_account"
        retry = await a.batch(items)
        assert [r["status"] for r in retry.body["results"]] == [200, 402, 404, 400], retry
        assert retry.body["results"][0]["transfer"] == first.body["results"][0]["transfer"]
        bal1, bal2 = _balance(await a.account(a1["id"])), _balance(await a.account(a2["id"]))
        assert (bal1["posted"], bal2["posted"]) == ("540", "460")  # conserved: 1000 in all

        # Lists: the partner's own objects of the mode, paged with starting_after.
        listed = await a.call("GET", "/v1/ledger/accounts?limit=100")
        ids = [x["id"] for x in listed.body["data"]]
        assert listed.status == 200 and listed.body["has_more"] is False, listed
        assert sorted(ids) == ids and {a1["id"], a2["id"]} <= set(ids) and b1["id"] not in ids
        one = await a.call("GET", "/v1/ledger/accounts?limit=1")
        assert one.body["has_more"] is True and [x["id"] for x in one.body["data"]] == ids[:1]
        two = await a.call("GET", f"/v1/ledger/accounts?limit=1&starting_after={ids[0]}")
        assert [x["id"] for x in two.body["data"]] == ids[1:2], two
        of_a2 = await a.call("GET", f"/v1/ledger/transfers?account={a2['id']}&limit=100")
        newest = first.body["results"][0]["transfer"]["id"]  # the batch's, the last to move
        assert of_a2.body["data"][0]["id"] == newest, of_a2
        assert moved.body["id"] in {t["id"] for t in of_a2.body["data"]}
        everything = await a.call("GET", "/v1/ledger/transfers?limit=100")
        assert {t["id"] for t in of_a2.body["data"]} <= {t["id"] for t in everything.body["data"]}
        assert (await b.call("GET", f"/v1/ledger/transfers?account={a1['id']}")).status == 404
        theirs = await b.call("GET", "/v1/ledger/transfers?limit=100")
        assert moved.body["id"] not in {t["id"] for t in theirs.body["data"]}

        # Another partner's ids are not found, exactly like missing ones.
        for got in (
            await b.account(a1["id"]),
            await b.get_transfer(moved.body["id"]),
            await b.transfer(a1["id"], b1["id"], "1", code=1, key="steal"),
            await b.post(held.body["id"], key="steal-post"),
        ):
            assert got.status == 404, got
        missing = await a.account("acct_" + "5" * 32)
        assert missing.status == 404 and missing.body["code"] == "account_not_found"

        # Test and live are separate: the live credential finds none of the test objects, and
        # live mode has no faucet.
        mt = (await m_test.create_account(code=1, key="acct")).body
        ml = (await m_live.create_account(code=1, key="acct")).body
        assert ml["livemode"] is True and ml["ledger"] == 3 and ml["id"] != mt["id"]
        assert (await m_live.account(mt["id"])).status == 404
        live_list = await m_live.call("GET", "/v1/ledger/accounts")
        assert [x["id"] for x in live_list.body["data"]] == [ml["id"]], live_list
        assert (await m_test.account(ml["id"])).status == 404
        metrics = await asyncio.to_thread(_text, f"{local.layout.gateway_url}/metrics")
        assert 'baas_gateway_ledger_operations_total{kind="transfer",status="402"}' in metrics
        live_faucet = await m_live.faucet(ml["id"], "5", key="f")
        assert live_faucet.status == 400 and live_faucet.body["code"] == "test_mode_only"
        assert _balance(await m_live.account(ml["id"]))["posted"] == "0"
    finally:
        for client in (a, b, m_test, m_live):
            await client.http.close()
    assert openapi_check.answers_checked >= checked_before + 40


async def test_wallet_links_with_the_users_signature(cluster: tuple[LocalCluster, dict]) -> None:
    """A partner onboarded on the log links its user id to a user's wallet with the user's
    EIP-712 signature; a forged one is refused; another partner cannot read the link."""
    local, made = cluster
    deadline = time.monotonic() + 90
    w = _ledger(local, made, "shop-w")
    a = _ledger(local, made, "shop-a")
    try:
        alice = identitykit.user("alice")
        ref = user_ref(partner_id("shop-w"), Mode.TEST, "user-42")
        nonce = bytes(range(32))
        link_deadline = int(time.time()) + 3600
        message = eip712.Link(
            partner_id("shop-w"), Mode.TEST, ref, identitykit.address(alice), link_deadline, nonce
        )
        body = {
            "user_id": "user-42",
            "wallet": alice.address.lower(),
            "deadline": link_deadline,
            "nonce": "0x" + nonce.hex(),
            "signature": "0x" + identitykit.sign(alice, message).hex(),
        }
        while True:  # the gateway picks the new credential up at its next keyring reload
            linked = await w.call("POST", "/v1/wallets/links", body, key="link-1")
            if linked.status != 401:
                break
            assert time.monotonic() < deadline, linked
            await asyncio.sleep(0.5)
        assert linked.status == 201, linked
        assert (
            linked.body["wallet"] == alice.address.lower() and linked.body["user_ref"] == ref.hex()
        )
        again = await w.call("POST", "/v1/wallets/links", body, key="link-1")
        assert again.status == 200, again
        forged = {**body, "user_id": "user-43"}  # the signature covers user-42's reference
        refused = await w.call("POST", "/v1/wallets/links", forged, key="link-2")
        assert refused.status == 400 and refused.body["param"] == "signature", refused
        read = await w.call("GET", "/v1/wallets/links/user-42")
        assert read.status == 200 and read.body["wallet"] == alice.address.lower(), read
        assert read.body["balances"][0]["posted"] == "0"
        assert (await w.call("GET", "/v1/wallets/links/user-43")).status == 404
        # The partner credits the linked wallet by its own user id: the wallet's account on
        # BAAS opens on that first credit.
        float_account = (await w.create_account(code=1, key="float")).body["id"]
        assert (await w.faucet(float_account, "500", key="fund")).status == 201
        body_w = {"debit_account": float_account, "credit_user": "user-42", "amount": "120",
                  "code": 4}  # fmt: skip
        paid = await w.call("POST", "/v1/ledger/transfers", body_w, key="pay-42")
        assert paid.status == 201 and paid.body["amount"] == "120", paid
        paid_again = await w.call("POST", "/v1/ledger/transfers", body_w, key="pay-42")
        assert paid_again.status == 200 and paid_again.body == paid.body, paid_again
        unlinked = {**body_w, "credit_user": "user-43"}
        nobody = await w.call("POST", "/v1/ledger/transfers", unlinked, key="pay-43")
        assert nobody.status == 404 and nobody.body["param"] == "credit_user", nobody
        shown = await w.call("GET", "/v1/wallets/links/user-42")
        assert shown.body["balances"][0]["posted"] == "120", shown
        # The wallet's account is the user's, not the partner's: not addressable by id.
        assert (await w.account(paid.body["credit_account"])).status == 404
        assert (await a.call("GET", "/v1/wallets/links/user-42")).status == 404  # not shop-a's
        keyring_only = await a.call("POST", "/v1/wallets/links", body, key="link-a")
        assert keyring_only.status in (400, 404), keyring_only  # not shop-a's signature
    finally:
        await w.http.close()
        await a.http.close()


async def _linked_user(w: LedgerClient, user: UserWallet, user_id: str) -> None:
    body = user.link("shop-w", livemode=False, user_id=user_id, deadline=int(time.time()) + 600)
    linked = await w.call("POST", "/v1/wallets/links", body, key=f"link-{user_id}")
    assert linked.status == 201, linked


async def test_user_approved_debits_codes_and_unlinks(cluster: tuple[LocalCluster, dict]) -> None:
    """Debits of a user's wallet by the partner's user id, end to end: a preview answers the
    digest the user signs (stable under its key), the signed transfer executes, a changed body
    under the key is another digest (the old signature refused by the state machine); a
    one-time code the user issued debits once (reuse and expiry refused); the partner and the
    user unlink, and the read right after sees it."""
    local, made = cluster
    w = _ledger(local, made, "shop-w")
    carol = UserWallet(bytes(range(1, 33)))
    try:
        deadline = time.monotonic() + 90
        while (await w.create_account(code=1, key="float-carol")).status == 401:  # reload
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        shop = (await w.create_account(code=1, key="float-carol")).body["id"]
        assert (await w.faucet(shop, "1000", key="fund-carol")).status in (200, 201)
        await _linked_user(w, carol, "user-77")
        pay = {"debit_account": shop, "credit_user": "user-77", "amount": "300", "code": 4}
        assert (await w.call("POST", "/v1/ledger/transfers", pay, key="pay-77")).status == 201

        debit = {"debit_user": "user-77", "credit_account": shop, "amount": "100", "code": 3}
        unsigned = await w.call("POST", "/v1/ledger/transfers", debit, key="order-1")
        assert unsigned.status == 400 and unsigned.body["code"] == "approval_required", unsigned
        # The preview: what the user signs, nothing proposed; the same under the same key.
        shown = await w.preview(debit, key="order-1")
        assert shown.status == 200, shown
        preview = shown.body
        assert (
            preview["transfer"]["amount"] == "100" and preview["transfer"]["credit_account"] == shop
        )
        (wanted,) = preview["approvals_required"]
        assert wanted["wallet"] == carol.address
        digest = operation_digest(
            bytes.fromhex(preview["operation"]), bytes.fromhex(preview["events"])
        )
        assert preview["digest"] == "0x" + digest.hex()
        assert wanted["typed_data"]["message"]["operation"] == preview["digest"]
        assert (await w.preview(debit, key="order-1")).body["digest"] == preview["digest"]
        changed = {**debit, "amount": "101"}
        other = (await w.preview(changed, key="order-1")).body
        assert other["digest"] != preview["digest"]
        approvals = carol.approve(preview)
        # Another body under the key with the old signature: the state machine refuses it.
        forged = await w.call(
            "POST", "/v1/ledger/transfers", {**changed, "approvals": approvals}, key="order-1"
        )
        assert forged.status == 403 and forged.body["param"] == "approvals", forged
        assert forged.body["code"] == "approval_signer_mismatch", forged
        # Signed as previewed (a fresh key: order-1's outcome is that refusal, for good).
        preview2 = (await w.preview(debit, key="order-2")).body
        signed = {**debit, "approvals": carol.approve(preview2)}
        done = await w.call("POST", "/v1/ledger/transfers", signed, key="order-2")
        assert done.status == 201 and done.body["amount"] == "100", done
        assert done.body["debit_account"] == preview2["transfer"]["debit_account"]
        assert done.body["operation"] == preview2["operation"]
        again = await w.call("POST", "/v1/ledger/transfers", signed, key="order-2")
        assert again.status == 200 and again.body == done.body, again
        wallet = await w.call("GET", "/v1/wallets/links/user-77")
        assert wallet.body["balances"][0]["posted"] == "200", wallet  # 300 in, 100 out
        assert _balance(await w.account(shop))["posted"] == "800"  # 1000 - 300 + 100

        # A linked chain naming the user on both sides (a purchase with cashback): the user
        # approves the whole chain's digest, from its own preview.
        chain = {
            "transfers": [
                {"debit_user": "user-77", "credit_account": shop, "amount": "60", "code": 3},
                {"debit_account": shop, "credit_user": "user-77", "amount": "10", "code": 4},
            ]
        }
        linked = "/v1/ledger/transfers/linked"
        unsigned = await w.call("POST", linked, chain, key="basket-1")
        assert unsigned.status == 400 and unsigned.body["code"] == "approval_required", unsigned
        shown = await w.call("POST", linked + "/preview", chain, key="basket-1")
        assert shown.status == 200 and shown.body["object"] == "linked_transfers_preview", shown
        assert [t["amount"] for t in shown.body["transfers"]] == ["60", "10"]
        (wanted,) = shown.body["approvals_required"]
        assert wanted["wallet"] == carol.address
        signed_chain = {**chain, "approvals": carol.approve(shown.body)}
        done = await w.call("POST", linked, signed_chain, key="basket-1")
        assert done.status == 201 and done.body["operation"] == shown.body["operation"], done
        assert [t["id"] for t in done.body["transfers"]] == [
            t["id"] for t in shown.body["transfers"]
        ]
        # A batch: each item its own key and approvals (the single preview's digest).
        item_debit = {**debit, "amount": "5"}
        item_preview = (await w.preview(item_debit, key="batch-u-1")).body
        batch = {
            "transfers": [
                {**item_debit, "idempotency_key": "batch-u-1",
                 "approvals": carol.approve(item_preview)},
                {**item_debit, "idempotency_key": "batch-u-2"},  # unsigned: its slot only
                {**pay, "amount": "7", "idempotency_key": "batch-u-3"},
            ]
        }  # fmt: skip
        results = (await w.call("POST", "/v1/ledger/transfers/batch", batch)).body["results"]
        assert [r["status"] for r in results] == [201, 400, 201], results
        assert results[1]["error"]["code"] == "approval_required"
        assert results[1]["error"]["param"] == "transfers[1].approvals"
        assert results[0]["transfer"]["operation"] == item_preview["operation"]
        wallet = await w.call("GET", "/v1/wallets/links/user-77")
        assert wallet.body["balances"][0]["posted"] == "152", wallet  # 200 - 60 + 10 - 5 + 7
        assert _balance(await w.account(shop))["posted"] == "848"

        # One-time codes: issued by the user (the network holds the hash), used once.
        code, issue = carol.issue_code(
            livemode=False, amount_limit="50", expiry=int(time.time()) + 600
        )
        issued = await w.call("POST", "/v1/wallets/codes", issue, key="code-issue-1")
        assert issued.status == 201 and issued.body["code_hash"] == "0x" + code_hash(code).hex()
        assert code.hex() not in str(issued.body)
        reissued = await w.call("POST", "/v1/wallets/codes", issue, key="code-issue-1")
        assert reissued.status == 200, reissued
        by_code = {**debit, "amount": "40", "approvals": [{"code": code.hex()}]}
        till = await w.call("POST", "/v1/ledger/transfers", by_code, key="till-1")
        assert till.status == 201 and till.body["amount"] == "40", till
        reuse = await w.call("POST", "/v1/ledger/transfers", by_code, key="till-2")
        assert reuse.status == 403 and reuse.body["code"] == "code_used", reuse
        _, unused = carol.issue_code(
            livemode=False, amount_limit="5", expiry=int(time.time()) + 600, code=UNUSED_CODE
        )
        assert (await w.call("POST", "/v1/wallets/codes", unused, key="code-unused")).status == 201
        short, brief = carol.issue_code(
            livemode=False, amount_limit="50", expiry=int(time.time()) + 4
        )
        assert (await w.call("POST", "/v1/wallets/codes", brief, key="code-short")).status == 201
        await asyncio.sleep(5.5)  # past its expiry on the log's time
        late = {**by_code, "approvals": [{"code": short.hex()}]}
        expired = await w.call("POST", "/v1/ledger/transfers", late, key="till-3")
        assert expired.status == 403 and expired.body["code"] == "code_expired", expired
        wallet = await w.call("GET", "/v1/wallets/links/user-77/balances")
        assert wallet.body["object"] == "list" and wallet.body["has_more"] is False, wallet
        assert wallet.body["data"][0]["posted"] == "112", wallet  # only the first code

        # Unlink by the partner; the read right after sees it (every node asked, freshest).
        off = await w.unlink("user-77", key="unlink-77")
        assert off.status == 200 and off.body["deleted"] is True, off
        assert (await w.unlink("user-77", key="unlink-77b")).status == 200  # nothing left
        assert (await w.call("GET", "/v1/wallets/links/user-77")).status == 404
        credit = await w.call("POST", "/v1/ledger/transfers", pay, key="pay-77-after")
        assert credit.status == 404 and credit.body["code"] == "link_not_found", credit
        # Unlink by the user, with the user's signed Unlink.
        await _linked_user(w, carol, "user-78")
        theirs = carol.unlink(
            "shop-w", livemode=False, user_id="user-78", deadline=int(time.time()) + 600
        )
        user_off = await w.unlink("user-78", theirs, key="unlink-78")
        assert user_off.status == 200 and user_off.body["deleted"] is True, user_off
        assert (await w.call("GET", "/v1/wallets/links/user-78")).status == 404
    finally:
        await w.http.close()


async def test_leader_kill_during_a_transfer_burst(cluster: tuple[LocalCluster, dict]) -> None:
    """kill -9 of the Raft leader while 4 workers send transfers through the gateway, each
    retrying its own request with its own key until it gets an outcome: every acknowledged
    transfer is applied exactly once (the balances are what the acknowledged outcomes say),
    retries answer the first outcome, and the total is conserved."""
    local, made = cluster
    names = [n.name for n in local.layout.nodes]
    leader = await wait_leader(local, names)
    b = _ledger(local, made, "shop-b")
    b.attempts_max, b.wait_s_max = 60, 1.0  # ride out the election
    try:
        accounts = [(await b.create_account(code=3, key=f"burst-{i}")).body["id"] for i in range(5)]
        funded = await b.faucet(accounts[0], "100000", key="burst-fund")
        assert funded.status in (200, 201), funded
        acked: dict[str, tuple[dict[str, Any], Response]] = {}
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            rng = random.Random(w)
            seq = 0
            while not stop.is_set():
                seq += 1
                debit, credit = rng.sample(accounts, 2)
                body = LedgerClient.transfer_body(debit, credit, str(rng.randint(1, 400)), code=5)
                key = f"burst-w{w}-{seq}"
                got = await b.call("POST", "/v1/ledger/transfers", body, key=key)
                # An outcome: applied, or refused whole. 200 is an applied transfer answered as a
                # replay: the client's own retry, after an attempt whose answer the kill lost.
                assert got.status in (200, 201, 402), got
                acked[key] = (body, got)

        workers = [asyncio.create_task(worker(w)) for w in range(4)]
        await asyncio.sleep(3.0)
        before = len(acked)
        local.kill(leader)
        await wait_leader(local, [n for n in names if n != leader], not_this=leader)
        await asyncio.sleep(4.0)
        stop.set()
        await asyncio.gather(*workers)
        assert len(acked) > before + 10, (before, len(acked))  # went on under the new leader

        for key in list(acked)[:: max(1, len(acked) // 20)]:
            body, first = acked[key]
            again = await b.call("POST", "/v1/ledger/transfers", body, key=key)
            assert again.status == (200 if first.status in (200, 201) else first.status), again
            assert again.body == first.body, (first, again)

        expected = dict.fromkeys(accounts, 0)
        expected[accounts[0]] = 100000
        for body, got in acked.values():
            if got.status in (200, 201):
                expected[body["debit_account"]] -= int(body["amount"])
                expected[body["credit_account"]] += int(body["amount"])
        seen = {a: int(_balance(await b.account(a))["posted"]) for a in accounts}
        assert seen == expected, (seen, expected)
        assert sum(seen.values()) == 100000 and min(seen.values()) >= 0
        refused = sum(1 for _, got in acked.values() if got.status == 402)
        print(f"burst: {len(acked)} transfers acknowledged ({refused} refused whole)")
    finally:
        await b.http.close()


def test_no_planted_memo_in_any_node_leveldb(cluster: tuple[LocalCluster, dict]) -> None:
    """After the API test: the memo went into encrypted records only. Stop the nodes and read
    every LevelDB (state and Raft) with plyvel; the same reader finds it in a control DB."""
    local, _ = cluster
    local.stop()
    needle = PLANTED.encode()
    hashed = code_hash(UNUSED_CODE)  # the code's hash is in the identity state; the code is not
    assert any(_found_in(p.parent, hashed) for p in Path(local.layout.directory).rglob("CURRENT"))
    control = Path(local.layout.directory) / "control-db"
    with plyvel.DB(str(control), create_if_missing=True) as db:
        db.put(b"k", b"prefix " + needle + b" suffix")
    assert _found_in(control, needle)
    dbs = [p.parent for p in Path(local.layout.directory).rglob("CURRENT") if p.parent != control]
    assert len(dbs) >= 5 and any("raft" in str(p) for p in dbs), dbs  # state and Raft DBs
    for path in dbs:
        assert not _found_in(path, needle), path
        assert not _found_in(path, UNUSED_CODE), path


def _found_in(path: Path, needle: bytes) -> bool:
    with plyvel.DB(str(path)) as db:
        return any(needle in key or needle in value for key, value in db.iterator())
