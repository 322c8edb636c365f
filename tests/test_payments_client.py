"""tools/payments_client.py against a recording HTTP server: every typed method sends the
Payment, Market and webhook-endpoint API's method, path and body, signed, with an
``Idempotency-Key`` on every write; ``authorise`` and ``order`` preview, have the user sign the
preview's typed data (the signature recovers to the user's wallet) and send the same body and
key with the approvals; a refused preview is answered as it is, nothing sent after it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from business.identity import eip712
from business.identity.ids import Mode
from gateway.auth import HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign_request
from tools.client import PartnerClient
from tools.ledger_client import CHAIN_ID, LedgerClient, UserWallet
from tools.payments_client import PaymentsClient

SECRET = b"s" * 32
USER = UserWallet(hashlib.sha256(b"alice").digest())
DIGEST = hashlib.sha256(b"the operation").digest()
APPROVE = eip712.Approve(int(Mode.TEST), DIGEST, bytes.fromhex(USER.address[2:]), 2_000_000_000)


@dataclass
class Recorder:
    seen: list[tuple[str, str, Any, str | None]] = field(default_factory=list)
    preview_status: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        expected = sign_request(
            SECRET, request.method, request.path_qs, request.headers[HEADER_TIMESTAMP],
            key or "", raw, request.headers[HEADER_NONCE],
        )  # fmt: skip
        assert request.headers[HEADER_SIGNATURE] == expected, request.path_qs
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.path_qs, body, key))
        if request.path.endswith("/preview"):
            if self.preview_status != 200:
                return web.json_response({"code": "payment_not_found"}, status=404)
            required = [{"wallet": USER.address, "typed_data": eip712.typed_data(APPROVE, 31337)}]
            return web.json_response({"approvals_required": required})
        return web.json_response({"id": "pay_1"}, status=201 if request.method == "POST" else 200)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Recorder, PaymentsClient]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = PartnerClient(f"http://127.0.0.1:{server.port}", "key_1", SECRET)
    try:
        yield recorder, PaymentsClient(LedgerClient(http, attempts_max=1))
    finally:
        await http.close()
        await server.close()


async def test_each_method_sends_its_route_and_body(
    served: tuple[Recorder, PaymentsClient],
) -> None:
    rec, pay = served
    calls = [
        (pay.create_intent("100", "ref-1", 1_900_000_000, "Shop", "Berlin", country="DE",
                           key="i-1"),
         "POST", "/v1/payment_intents",
         {"amount": "100", "reference": "ref-1", "expires_at": 1_900_000_000, "name": "Shop",
          "city": "Berlin", "country": "DE"}),
        (pay.intent("pi_1"), "GET", "/v1/payment_intents/pi_1", None),
        (pay.pay_code("1234", "50", capture=True, key="t-1"), "POST", "/v1/payments",
         {"code": "1234", "amount": "50", "capture": True}),
        (pay.capture("pay_1", "60", key="c-1"), "POST", "/v1/payments/pay_1/capture",
         {"amount": "60"}),
        (pay.void("pay_1", key="v-1"), "POST", "/v1/payments/pay_1/void", {}),
        (pay.refund("pay_1", "10", key="r-1"), "POST", "/v1/payments/pay_1/refunds",
         {"amount": "10"}),
        (pay.payment("pay_1"), "GET", "/v1/payments/pay_1", None),
        (pay.payments(limit=5, starting_after="pay_0"), "GET",
         "/v1/payments?limit=5&starting_after=pay_0", None),
        (pay.put_listing("Beans", "300", 5, description="1 kg", key="l-1"), "POST",
         "/v1/market/listings", {"title": "Beans", "price": "300", "stock": 5,
                                 "description": "1 kg"}),
        (pay.put_listing("Beans", "300", 9, listing_id="lst_1", active=False, key="l-2"),
         "POST", "/v1/market/listings/lst_1",
         {"title": "Beans", "price": "300", "stock": 9, "active": False}),
        (pay.listing("lst_1"), "GET", "/v1/market/listings/lst_1", None),
        (pay.search(text="coffee beans", in_stock=True, limit=3), "GET",
         "/v1/market/listings?text=coffee+beans&in_stock=true&limit=3", None),
        (pay.search(), "GET", "/v1/market/listings", None),
        (pay.get_order("ord_1"), "GET", "/v1/market/orders/ord_1", None),
        (pay.fulfil("ord_1", key="f-1"), "POST", "/v1/market/orders/ord_1/fulfil", {}),
        (pay.cancel("ord_1", key="x-1"), "POST", "/v1/market/orders/ord_1/cancel", {}),
        (pay.refund_order("ord_1", "7", key="o-1"), "POST", "/v1/market/orders/ord_1/refunds",
         {"amount": "7"}),
        (pay.add_webhook_endpoint("https://shop.example/hooks", ["payment.captured"]), "POST",
         "/v1/webhook_endpoints",
         {"url": "https://shop.example/hooks", "enabled_events": ["payment.captured"]}),
        (pay.webhook_endpoints(), "GET", "/v1/webhook_endpoints", None),
    ]  # fmt: skip
    for call, method, path, body in calls:
        answer = await call
        assert answer.status in (200, 201), (path, answer)
        sent_method, sent_path, sent_body, key = rec.seen[-1]
        assert (sent_method, sent_path, sent_body) == (method, path, body)
        assert (key is not None) == (method == "POST"), (path, key)  # every write has a key
    assert len(rec.seen) == len(calls)
    assert rec.seen[0][3] == "i-1"  # yours when given


async def _approved_flow(
    rec: Recorder, call: Any, path: str, body: dict[str, Any], key: str
) -> None:
    answer = await call
    assert answer.status == 201 and answer.body == {"id": "pay_1"}, answer
    (m1, p1, b1, k1), (m2, p2, b2, k2) = rec.seen
    assert (m1, p1, b1, k1) == ("POST", path + "/preview", body, key)
    assert (m2, p2, k2) == ("POST", path, key)  # the same key: the digest derives from it
    (approval,) = b2.pop("approvals")
    assert b2 == body  # and the same body
    assert approval["wallet"] == USER.address and approval["deadline"] == 2_000_000_000
    signer = eip712.recover_signer(APPROVE, CHAIN_ID, bytes.fromhex(approval["signature"][2:]))
    assert signer == bytes.fromhex(USER.address[2:])


async def test_authorise_previews_signs_and_sends_the_same_body_and_key(
    served: tuple[Recorder, PaymentsClient],
) -> None:
    rec, pay = served
    body = {"user": "alice", "amount": "1000"}
    await _approved_flow(rec, pay.authorise(USER, body, key="pay-9"), "/v1/payments", body, "pay-9")


async def test_order_previews_signs_and_sends_the_same_body_and_key(
    served: tuple[Recorder, PaymentsClient],
) -> None:
    rec, pay = served
    call = pay.order(USER, "alice", "lst_1", 2, capture_window_s=60, key="ord-9")
    body = {"listing": "lst_1", "quantity": 2, "user": "alice", "capture_window_s": 60}
    await _approved_flow(rec, call, "/v1/market/orders", body, "ord-9")


async def test_the_steps_one_by_one_are_the_same_requests(
    served: tuple[Recorder, PaymentsClient],
) -> None:
    rec, pay = served
    body = {"qr": "000201...", "user": "alice"}
    shown = await pay.preview(body, key="pay-3")
    approvals = USER.approve(shown.body)
    paid = await pay.authorise_approved(body, approvals, key="pay-3")
    assert paid.status == 201
    assert [(m, p, k) for m, p, _, k in rec.seen] == [
        ("POST", "/v1/payments/preview", "pay-3"),
        ("POST", "/v1/payments", "pay-3"),
    ]
    assert rec.seen[1][2] == {**body, "approvals": approvals}


@pytest.mark.parametrize("which", ["authorise", "order"])
async def test_a_refused_preview_is_answered_and_nothing_is_sent_after_it(
    served: tuple[Recorder, PaymentsClient], which: str
) -> None:
    rec, pay = served
    rec.preview_status = 404
    if which == "authorise":
        answer = await pay.authorise(USER, {"user": "nobody", "amount": "1"}, key="k")
    else:
        answer = await pay.order(USER, "nobody", "lst_1", 1, key="k")
    assert answer.status == 404 and answer.body["code"] == "payment_not_found"
    assert len(rec.seen) == 1
