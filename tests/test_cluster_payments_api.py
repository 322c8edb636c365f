"""The Payment and Market API through the real gateway in front of 5 real nodes (log feature 9).

A merchant (shop-p) shows a dynamic QR (a payment intent: the EMVCo payload, its SVG and PNG);
its linked user pays it with their EIP-712 approval over the previewed digest; shop-p captures
part of it (the rest is released) and refunds it twice, a third refund above the captured
amount refused; the QR cannot be paid twice. A consumer one-time code the user issued is
scanned and captured at once, and refused the second time. A static QR of shop-p (no amount:
the payer enters it) is issued, read back from its PNG, decoded by both partners (yours only for
shop-p), and paid twice with two entered amounts, each captured. A listing of shop-p is bought by
shop-q's user through an order, fulfilled, and the stock is down. Retries answer the first
outcome; another partner's and the other mode's payments are not found. The user's balance
follows every step, and every node's ledger digest is identical with every ledger balanced
(the sum of all accounts per ledger is zero). Every answer is checked against the OpenAPI
document (CheckedPartnerClient)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import openapi_check
import pytest
import zxingcpp
from nodeapi import node_get
from openapi_check import CheckedPartnerClient
from PIL import Image

from business.identity.ids import Mode
from business.payments.codes import ConsumerCode, decode_merchant
from tools.client import Response
from tools.cluster_init import init_cluster
from tools.ledger_client import LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner
from tools.payments_client import PaymentsClient

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

# 0.01 BAAS: an EMVCo amount has at most 13 characters, so a QR carries BAAS (scale 18) to
# 10^-12 at the finest; every amount here is a multiple of U.
U = 10**16


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, dict[str, tuple[str, bytes]]]]:
    directory = tmp_path_factory.mktemp("paymentsapi")
    layout = init_cluster(directory, partners=(), chain="none")
    assert len(layout.nodes) == 5
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


def _client(local: LocalCluster, made: dict[str, tuple[str, bytes]], who: str) -> LedgerClient:
    key, secret = made[who]
    return LedgerClient(CheckedPartnerClient(local.layout.gateway_url, key, secret), attempts_max=3)


async def _first(c: LedgerClient) -> str:
    """A float account of the partner's, funded from the faucet: 401 until the gateway reloads
    its keyring, 503 until the log runs the ledger; both refused before the log."""
    deadline = time.monotonic() + 120
    while True:
        got = await c.create_account(code=1, key="float")
        if got.status in (200, 201):
            break
        assert got.status in (401, 503), got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.5)
    account = str(got.body["id"])
    assert (await c.faucet(account, str(100000 * U), key="fund")).status in (200, 201)
    return account


async def _user(c: LedgerClient, shop: str, float_account: str, user: UserWallet, uid: str,
                amount: str) -> None:  # fmt: skip
    link = user.link(shop, livemode=False, user_id=uid, deadline=int(time.time()) + 600)
    assert (await c.call("POST", "/v1/wallets/links", link, key=f"link-{uid}")).status == 201
    pay = {"debit_account": float_account, "credit_user": uid, "amount": amount, "code": 4}
    got = await c.call("POST", "/v1/ledger/transfers", pay, key=f"credit-{uid}")
    assert got.status == 201, got


async def _balance(c: LedgerClient, uid: str) -> int:
    got = await c.call("GET", f"/v1/wallets/links/{uid}")
    assert got.status == 200, got
    (baas,) = [b for b in got.body["balances"] if b["asset"] == "baas"]
    return int(baas["posted"])


async def _pay(c: LedgerClient, user: UserWallet, body: dict[str, Any], key: str) -> Response:
    return await PaymentsClient(c).authorise(user, body, key=key)


async def test_qr_payment_capture_refunds_code_and_market_order(
    cluster: tuple[LocalCluster, dict[str, tuple[str, bytes]]],
) -> None:
    local, made = cluster
    checked_before = openapi_check.answers_checked
    p = _client(local, made, "shop-p/test")
    q = _client(local, made, "shop-q/test")
    p_live = _client(local, made, "shop-p/live")
    alice = UserWallet(bytes([11] * 32))
    bob = UserWallet(bytes([12] * 32))
    try:
        p_float = await _first(p)
        q_float = await _first(q)
        await _user(p, "shop-p", p_float, alice, "alice", str(10000 * U))
        await _user(q, "shop-q", q_float, bob, "bob", str(10000 * U))

        # A dynamic QR: the payload decodes to the intent; its images are served.
        intent_body = {
            "amount": str(1000 * U),
            "reference": "order-77",
            "name": "Shop P",
            "city": "Berlin",
            "country": "DE",
            "expires_at": int(time.time()) + 600,
        }
        intent = await p.call("POST", "/v1/payment_intents", intent_body, key="intent-1")
        assert intent.status == 201, intent
        again = await p.call("POST", "/v1/payment_intents", intent_body, key="intent-1")
        assert again.status == 200 and again.body == intent.body, again
        qr = decode_merchant(intent.body["payload"])
        assert (qr.amount, qr.reference, qr.dynamic) == (1000 * U, "order-77", True)
        read = await p.call("GET", f"/v1/payment_intents/{intent.body['id']}")
        assert read.status == 200 and read.body["payload"] == intent.body["payload"], read
        assert (await q.call("GET", f"/v1/payment_intents/{intent.body['id']}")).status == 404
        png = await p.call("GET", intent.body["qr_png"])
        assert png.status == 200 and png.headers["Content-Type"] == "image/png", png.status
        (decoded,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.body)).convert("L"))
        assert decoded.text == intent.body["payload"]  # an independent decoder reads our QR
        svg = await p.call("GET", intent.body["qr_svg"])
        assert svg.status == 200 and svg.body.startswith(b"<?xml"), svg.status

        # Authorise it with alice's approval; without it, 400 before the log.
        pay_body = {"qr": intent.body["payload"], "user": "alice"}
        unsigned = await p.call("POST", "/v1/payments", pay_body, key="pay-1")
        assert unsigned.status == 400 and unsigned.body["code"] == "approval_required"
        paid = await _pay(p, alice, pay_body, "pay-1")
        assert paid.status == 201 and paid.body["status"] == "authorised", paid
        assert paid.body["amount"] == str(1000 * U), paid
        payment = paid.body["id"]
        replay = await _pay(p, alice, pay_body, "pay-1")  # a fresh signature: the first outcome
        assert replay.status == 200 and replay.body["id"] == payment, replay
        assert await _balance(p, "alice") == 10000 * U  # held: posted debits come at capture
        # The QR is single use: another payment of it is the first one's key with another body.
        twice = await _pay(p, alice, {**pay_body, "capture_window_s": 60}, "pay-2")
        assert twice.status == 409 and twice.body["code"] == "idempotency_key_reused", twice

        # Partial capture, two refunds, a third above the captured amount refused.
        path = f"/v1/payments/{payment}"
        over = await p.call("POST", path + "/capture", {"amount": str(1000 * U + 1)}, key="cap-0")
        assert over.status == 409 and over.body["code"] == "amount_exceeds_authorised", over
        cap = await p.call("POST", path + "/capture", {"amount": str(600 * U)}, key="cap-1")
        assert cap.status == 201 and cap.body["status"] == "captured", cap
        assert cap.body["amount_captured"] == str(600 * U), cap
        second = await p.call("POST", path + "/capture", {"amount": "1"}, key="cap-2")
        assert second.status == 409 and second.body["code"] == "payment_already_captured"
        assert await _balance(p, "alice") == 9400 * U  # 400 U released, 600 U paid
        r1 = await p.call("POST", path + "/refunds", {"amount": str(100 * U)}, key="ref-1")
        assert r1.status == 201 and r1.body["amount_refunded"] == str(100 * U), r1
        r2 = await p.call("POST", path + "/refunds", {"amount": str(200 * U)}, key="ref-2")
        assert r2.status == 201 and r2.body["amount_refunded"] == str(300 * U), r2
        r3 = await p.call("POST", path + "/refunds", {"amount": str(300 * U + 1)}, key="ref-3")
        assert r3.status == 409 and r3.body["code"] == "refund_exceeds_captured", r3
        r2_again = await p.call("POST", path + "/refunds", {"amount": str(200 * U)}, key="ref-2")
        assert r2_again.status == 200 and r2_again.body["amount_refunded"] == str(300 * U)
        assert await _balance(p, "alice") == 9700 * U
        void = await p.call("POST", path + "/void", {}, key="void-1")
        assert void.status == 409 and void.body["code"] == "payment_already_captured", void

        # Reads: yours in your mode only.
        got = await p.call("GET", path)
        assert got.status == 200 and got.body["status"] == "captured", got
        assert (await q.call("GET", path)).status == 404
        assert (await p_live.call("GET", path)).status == 404
        listed = await p.call("GET", "/v1/payments?limit=10")
        assert [x["id"] for x in listed.body["data"]] == [payment], listed
        assert (await q.call("GET", "/v1/payments")).body["data"] == []

        # A consumer one-time code: alice's app issues it (16 random bytes, the 44 digits' secret),
        # shop-p's till scans it.
        secret, issue = alice.issue_code(
            livemode=False,
            amount_limit=str(500 * U),
            expiry=int(time.time()) + 300,
            code=bytes(range(40, 56)),
        )
        assert (await p.call("POST", "/v1/wallets/codes", issue, key="code-1")).status == 201
        digits = ConsumerCode(Mode.TEST, secret).digits
        scanned = {"code": digits, "amount": str(250 * U), "capture": True}
        by_code = await p.call("POST", "/v1/payments", scanned, key="till-1")
        assert by_code.status == 201 and by_code.body["status"] == "captured", by_code
        reused = await p.call("POST", "/v1/payments", scanned, key="till-2")
        assert reused.status == 409 and reused.body["code"] == "code_used", reused
        assert await _balance(p, "alice") == 9450 * U

        # Server side, then voided: the hold is released, nothing moved.
        server = await _pay(p, alice, {"amount": str(100 * U), "user": "alice"}, "srv-1")
        assert server.status == 201 and server.body["status"] == "authorised", server
        voided = await p.call("POST", f"/v1/payments/{server.body['id']}/void", {}, key="v-2")
        assert voided.status == 201 and voided.body["status"] == "voided", voided
        late = await p.call(
            "POST", f"/v1/payments/{server.body['id']}/capture", {"amount": "1"}, key="c-3"
        )
        assert late.status == 409 and late.body["code"] == "payment_voided", late
        assert await _balance(p, "alice") == 9450 * U

        # A static QR (reusable, the payer enters the amount): issued, read, decoded, paid twice.
        static_body = {"name": "Shop P", "city": "Berlin", "country": "DE"}
        static = await p.call("POST", "/v1/qr/static", static_body, key="static-1")
        assert static.status == 201 and static.body["object"] == "static_qr", static
        assert (await p.call("POST", "/v1/qr/static", static_body, key="static-1")).body == (
            static.body
        )
        assert decode_merchant(static.body["payload"]).amount is None
        spath = f"/v1/qr/static/{static.body['id']}"
        assert (await p.call("GET", spath)).body == static.body
        assert (await q.call("GET", spath)).status == 404
        spng = await p.call("GET", static.body["qr_png"])
        (sread,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(spng.body)).convert("L"))
        assert sread.text == static.body["payload"]
        assert (await p.call("GET", static.body["qr_svg"])).body.startswith(b"<?xml")
        for who, yours in ((p, True), (q, False)):
            checked = await who.call("POST", "/v1/qr/decode", {"payload": sread.text})
            assert checked.status == 200, checked
            assert (checked.body["type"], checked.body["yours"]) == ("static", yours), checked
        altered = sread.text[:-1] + ("1" if sread.text[-1] != "1" else "2")  # another CRC
        bad = await p.call("POST", "/v1/qr/decode", {"payload": altered})
        assert bad.status == 400 and bad.body["code"] == "qr_crc_mismatch", bad
        entered = {"qr": sread.text, "user": "alice", "amount": str(50 * U)}
        unentered = {"qr": sread.text, "user": "alice"}
        no_amount = await p.call("POST", "/v1/payments/preview", unentered, key="static-pay-0")
        assert no_amount.status == 400 and no_amount.body["code"] == "parameter_missing"
        static_ids = []
        for n, amount in ((1, 50 * U), (2, 30 * U)):
            spay = await _pay(p, alice, {**entered, "amount": str(amount)}, f"static-pay-{n}")
            assert spay.status == 201 and spay.body["amount"] == str(amount), spay
            scap = await p.call("POST", f"/v1/payments/{spay.body['id']}/capture",
                                {"amount": str(amount)}, key=f"static-cap-{n}")  # fmt: skip
            assert scap.status == 201 and scap.body["status"] == "captured", scap
            static_ids.append(spay.body["id"])
        assert len(set(static_ids)) == 2  # the same QR, two payments
        assert await _balance(p, "alice") == 9370 * U

        # The Market: shop-p lists, shop-q's user bob buys through an order, shop-p fulfils.
        listing_body = {"title": "Coffee beans", "description": "1 kg", "price": str(300 * U),
                        "stock": 5}  # fmt: skip
        listing = await p.call("POST", "/v1/market/listings", listing_body, key="lst-1")
        assert listing.status == 201 and listing.body["stock"] == 5, listing
        found = await q.call("GET", "/v1/market/listings?text=coffee")
        assert [x["id"] for x in found.body["data"]] == [listing.body["id"]], found
        market = PaymentsClient(q)
        sold_out = await market.order(bob, "bob", listing.body["id"], 6, key="ord-0")
        assert sold_out.status == 409 and sold_out.body["code"] == "sold_out", sold_out
        order = await market.order(bob, "bob", listing.body["id"], 2, key="ord-1")
        assert order.status == 201 and order.body["status"] == "authorised", order
        assert order.body["payment"]["amount"] == str(600 * U), order
        stock = await q.call("GET", f"/v1/market/listings/{listing.body['id']}")
        assert stock.body["stock"] == 3, stock
        order_path = f"/v1/market/orders/{order.body['id']}"
        assert (await q.call("POST", order_path + "/fulfil", {}, key="f-q")).status == 404
        fulfilled = await p.call("POST", order_path + "/fulfil", {}, key="f-1")
        assert fulfilled.status == 201 and fulfilled.body["status"] == "fulfilled", fulfilled
        assert await _balance(q, "bob") == 9400 * U
        again = await market.order(bob, "bob", listing.body["id"], 2, key="ord-1")
        assert again.status == 200 and again.body["id"] == order.body["id"], again
        back = await p.call("POST", order_path + "/refunds", {"amount": str(100 * U)}, key="or-1")
        assert back.status == 201 and back.body["payment"]["amount_refunded"] == str(100 * U)
        assert await _balance(q, "bob") == 9500 * U
        # Another order, cancelled: its stock comes back; the listing is replaced by its owner.
        order2 = await market.order(bob, "bob", listing.body["id"], 1, key="ord-2")
        assert order2.status == 201, order2
        cancel = await p.call("POST", f"/v1/market/orders/{order2.body['id']}/cancel", {}, key="x")
        assert cancel.status == 201 and cancel.body["status"] == "cancelled", cancel
        lpath = f"/v1/market/listings/{listing.body['id']}"
        assert (await p.call("GET", lpath)).body["stock"] == 3
        assert (await q.call("POST", lpath, {**listing_body, "stock": 9}, key="l-q")).status == 404
        restocked = await p.call("POST", lpath, {**listing_body, "stock": 9}, key="lst-2")
        assert restocked.status == 201 and restocked.body["stock"] == 9, restocked
        assert await _balance(q, "bob") == 9500 * U

        # Conservation: every node's ledger digest the same, every ledger balanced.
        names = [n.name for n in local.layout.nodes]
        deadline = time.monotonic() + 30
        while True:
            digests = [node_get(local, n, "/internal/v1/ledger/digest", 10.0) for n in names]
            if (
                all(d is not None for d in digests)
                and len({(d["applied_index"], d["digest"]) for d in digests}) == 1
            ):
                break
            assert time.monotonic() < deadline, digests
            await asyncio.sleep(0.3)
        totals = digests[0]["totals"]
        assert totals and all(t["balanced"] for t in totals), totals
    finally:
        for c in (p, q, p_live):
            await c.http.close()
    assert openapi_check.answers_checked > checked_before + 40
