"""The Payment and Market API's refusals the gateway makes alone, before any node call (the real
gateway in process, no nodes: inprocess_gateway.py): a missing Idempotency-Key, bad amounts,
an altered or truncated QR, another merchant's or the other mode's QR, an expired QR, a
mistyped or other-mode consumer code, a payment or order without the user's approval, unknown
fields, bad ids and bounds are typed 4xx naming their ``param``, so bad input never reaches the
log. Every answer is checked against the OpenAPI document. The mapping of the state machine's
payments results to problems is checked here in full; what needs nodes (payments, captures,
refunds, codes, orders, isolation, retries) is proven in real processes:
test_cluster_payments_api.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openapi_check
from inprocess_gateway import client_of, gateway_without_nodes
from test_payment_qr import MALFORMED, NETWORK_REFUSALS, _ours

from business.identity.ids import ASSET_INDEX_BAAS, Mode, ledger_number, partner_id
from business.identity.model import ApprovalResult
from business.payments import PaymentResult
from business.payments.codes import ConsumerCode, MerchantQr, Refusal, encode_merchant
from gateway.bridge_routes import judge
from gateway.openapi import openapi_document
from gateway.openapi_payments import QR_REFUSAL_CODES
from gateway.payments_routes import PAYMENT_PROBLEMS, payment_problem
from node.errors import BaasError

APPROVAL = [{"code": "00" * 16}]
BAAS_TEST = ledger_number(Mode.TEST, ASSET_INDEX_BAAS)


def _qr(partner: str = "shop-a", ledger: int = BAAS_TEST, scale: int = 18, **dynamic: Any) -> str:
    fields = {"amount": 10**18, "reference": "r-1", "expiry": int(time.time()) + 600, **dynamic}
    if dynamic.get("static"):
        fields = {}
    return encode_merchant(
        MerchantQr(partner_id(partner), ledger, scale, "Shop A", "Berlin", "DE", **fields)
    )


def _flip(payload: str, at: int) -> str:
    c = payload[at]
    return payload[:at] + ("1" if c != "1" else "2") + payload[at + 1 :]


async def test_bad_payments_input_is_refused_before_any_node(tmp_path: Path) -> None:
    checked_before = openapi_check.answers_checked
    qr = _qr()
    pay = {"qr": qr, "user": "u-1", "approvals": APPROVAL}
    code = ConsumerCode(Mode.TEST, bytes(range(16))).digits
    live_code = ConsumerCode(Mode.LIVE, bytes(range(16))).digits
    intent = {"amount": str(10**18), "reference": "r-1", "expires_at": int(time.time()) + 600,
              "name": "Shop A", "city": "Berlin"}  # fmt: skip
    static = {"name": "Shop A", "city": "Berlin"}
    listing = {"title": "Beans", "price": "300", "stock": 5}
    order = {"listing": "lst_" + "ab" * 16, "quantity": 1, "user": "u-1", "approvals": APPROVAL}
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        cases: list[tuple[str, Any, str | None, int, str, str | None]] = [
            # path, body, key, status, code, param
            ("/v1/payments", pay, None, 400, "idempotency_key_required", "Idempotency-Key"),
            ("/v1/payments", {"qr": qr, "user": "u-1"}, "k", 400, "approval_required",
             "approvals"),
            ("/v1/payments", {**pay, "qr": _flip(qr, 40)}, "k", 400, "qr_crc_mismatch", "qr"),
            ("/v1/payments", {**pay, "qr": qr[:-10]}, "k", 400, "qr_tlv_truncated", "qr"),
            ("/v1/payments", {**pay, "qr": qr[:-4] + "0000"}, "k", 400, "qr_crc_mismatch",
             "qr"),
            ("/v1/payments", {**pay, "qr": _qr("shop-b")}, "k", 404, "qr_not_yours", "qr"),
            ("/v1/payments", {**pay, "qr": _qr(ledger=BAAS_TEST + 1)}, "k", 404, "qr_not_yours",
             "qr"),
            ("/v1/payments", {**pay, "qr": _qr(expiry=int(time.time()) - 1)}, "k", 409,
             "qr_expired", "qr"),
            ("/v1/payments", {**pay, "amount": "5"}, "k", 400, "invalid_request", "amount"),
            ("/v1/payments", {**pay, "qr": _qr(static=True)}, "k", 400, "parameter_missing",
             "amount"),
            # a static QR: the payer's amount, in bounds; yours in this mode only
            ("/v1/payments", {**pay, "qr": _qr(static=True), "amount": "0"}, "k", 400,
             "amount_invalid", "amount"),
            ("/v1/payments", {**pay, "qr": _qr(static=True), "amount": str(2**128)}, "k", 400,
             "amount_invalid", "amount"),
            ("/v1/payments", {**pay, "qr": _qr(static=True), "amount": 5}, "k", 400,
             "amount_invalid", "amount"),
            ("/v1/payments", {**pay, "qr": _qr("shop-b", static=True), "amount": "5"}, "k",
             404, "qr_not_yours", "qr"),
            ("/v1/payments", {**pay, "qr": _qr(ledger=BAAS_TEST + 1, static=True),
             "amount": "5"}, "k", 404, "qr_not_yours", "qr"),
            ("/v1/payments", {**pay, "qr": _flip(_qr(static=True), 30), "amount": "5"}, "k",
             400, "qr_crc_mismatch", "qr"),
            ("/v1/payments", {**pay, "qr": _qr(scale=8)}, "k", 400, "qr_network_field_invalid",
             "qr"),  # BAAS's scale is 18: a QR's amount is read at its scale
            ("/v1/payments", {"amount": "5", "approvals": APPROVAL}, "k", 400,
             "parameter_missing", "user"),
            ("/v1/payments", {"amount": "0", "user": "u"}, "k", 400, "amount_invalid",
             "amount"),
            ("/v1/payments", {**pay, "capture": True}, "k", 400, "invalid_request", "capture"),
            ("/v1/payments", {**pay, "capture_window_s": 0}, "k", 400, "invalid_request",
             "capture_window_s"),
            ("/v1/payments", {**pay, "capture_window_s": 7 * 86400 + 1}, "k", 400,
             "invalid_request", "capture_window_s"),
            ("/v1/payments", {**pay, "extra": 1}, "k", 400, "parameter_unknown", "extra"),
            ("/v1/payments", {"code": code[:-1] + str((int(code[-1]) + 1) % 10),
             "amount": "5"}, "k", 400, "code_check_digit_invalid", "code"),
            ("/v1/payments", {"code": code[:20], "amount": "5"}, "k", 400,
             "code_length_invalid", "code"),
            ("/v1/payments", {"code": live_code, "amount": "5"}, "k", 404, "code_unknown",
             "code"),
            ("/v1/payments", {"code": code}, "k", 400, "parameter_missing", "amount"),
            ("/v1/payments", {"code": code, "amount": "5", "user": "u"}, "k", 400,
             "invalid_request", "user"),
            ("/v1/payments", {"code": code, "amount": "5", "capture": "yes"}, "k", 400,
             "invalid_request", "capture"),
            ("/v1/payments/preview", {"code": code, "amount": "5"}, "k", 400, "invalid_request",
             "code"),
            ("/v1/payments/preview", pay, "k", 400, "parameter_unknown", "approvals"),
            ("/v1/payments/pay_12/capture", {"amount": "1"}, "k", 400, "invalid_request", "id"),
            ("/v1/payments/pay_" + "0" * 64 + "/capture", {"amount": "-1"}, "k", 400,
             "amount_invalid", "amount"),
            ("/v1/payments/pay_" + "0" * 64 + "/capture", {}, "k", 400, "parameter_missing",
             "amount"),
            ("/v1/payments/pay_" + "0" * 64 + "/void", {"amount": "1"}, "k", 400,
             "parameter_unknown", "amount"),
            ("/v1/payments/pay_" + "0" * 64 + "/refunds", {"amount": "1.5"}, "k", 400,
             "amount_invalid", "amount"),
            ("/v1/payments/pay_" + "0" * 64 + "/refunds", {"amount": "1"}, None, 400,
             "idempotency_key_required", "Idempotency-Key"),
            ("/v1/payment_intents", {**intent, "expires_at": 5}, "k", 400, "invalid_request",
             "expires_at"),
            ("/v1/payment_intents", {**intent, "amount": 100}, "k", 400, "amount_invalid",
             "amount"),
            ("/v1/payment_intents", {**intent, "amount": "1"}, "k", 400, "amount_invalid",
             "amount"),  # 10^-18 BAAS: more than EMVCo's 13 characters
            ("/v1/payment_intents", {**intent, "name": "x" * 26}, "k", 400, "field_invalid",
             "name"),
            ("/v1/payment_intents", {**intent, "country": "Germany"}, "k", 400,
             "field_invalid", "country"),
            ("/v1/payment_intents", {k: v for k, v in intent.items() if k != "reference"},
             "k", 400, "parameter_missing", "reference"),
            # a static QR: no amount, reference or expiry in it; EMVCo's display bounds
            ("/v1/qr/static", static, None, 400, "idempotency_key_required",
             "Idempotency-Key"),
            ("/v1/qr/static", {**static, "amount": "100"}, "k", 400, "parameter_unknown",
             "amount"),
            ("/v1/qr/static", {**static, "reference": "r-1"}, "k", 400, "parameter_unknown",
             "reference"),
            ("/v1/qr/static", {**static, "expires_at": 5}, "k", 400, "parameter_unknown",
             "expires_at"),
            ("/v1/qr/static", {"name": "Shop A"}, "k", 400, "parameter_missing", "city"),
            ("/v1/qr/static", {**static, "city": "c" * 16}, "k", 400, "field_invalid", "city"),
            ("/v1/qr/static", {**static, "category": "52x4"}, "k", 400, "field_invalid",
             "category"),
            ("/v1/qr/static", {**static, "asset": 7}, "k", 400, "invalid_request", "asset"),
            ("/v1/market/listings", {**listing, "title": "t" * 121}, "k", 400,
             "invalid_request", "title"),
            ("/v1/market/listings", {**listing, "stock": -1}, "k", 400, "invalid_request",
             "stock"),
            ("/v1/market/listings", {**listing, "price": "0"}, "k", 400, "amount_invalid",
             "price"),
            ("/v1/market/listings", {**listing, "active": "yes"}, "k", 400, "invalid_request",
             "active"),
            ("/v1/market/listings", listing, None, 400, "idempotency_key_required",
             "Idempotency-Key"),
            ("/v1/market/orders", {k: v for k, v in order.items() if k != "approvals"}, "k",
             400, "approval_required", "approvals"),
            ("/v1/market/orders", {**order, "quantity": 0}, "k", 400, "invalid_request",
             "quantity"),
            ("/v1/market/orders", {**order, "quantity": 1001}, "k", 400, "invalid_request",
             "quantity"),
            ("/v1/market/orders", {**order, "listing": "lst_12"}, "k", 400, "invalid_request",
             "listing"),
            ("/v1/market/orders/ord_" + "0" * 64 + "/refunds", {}, "k", 400,
             "parameter_missing", "amount"),
            ("/v1/market/orders/ord_" + "0" * 64 + "/fulfil", {"x": 1}, "k", 400,
             "parameter_unknown", "x"),
        ]  # fmt: skip
        for path, body, key, status, want, param in cases:
            got = await http.request("POST", path, body, idempotency_key=key)
            assert got.status == status, (path, body, got)
            assert (got.body["code"], got.body.get("param")) == (want, param), (path, got)
        for path, param in (
            ("/v1/payments?limit=0", "limit"),
            ("/v1/payments?limit=101", "limit"),
            ("/v1/payments?starting_after=pay_1", "starting_after"),
            ("/v1/payments/pay_zz", "id"),
            ("/v1/payment_intents/pi_12", "id"),
            ("/v1/payment_intents/pi_12/qr.svg", "id"),
            ("/v1/qr/static/sqr_12", "id"),
            ("/v1/qr/static/pi_" + "0" * 64, "id"),
            ("/v1/qr/static/sqr_zz/qr.png", "id"),
            ("/v1/market/listings?limit=0", "limit"),
            ("/v1/market/listings?in_stock=maybe", "in_stock"),
            ("/v1/market/listings?price_min=-1", "price_min"),
            ("/v1/market/listings?partner=zz", "partner"),
            ("/v1/market/listings?page=lst_1", "page"),
            ("/v1/market/listings/lst_1", "id"),
            ("/v1/market/orders/ord_1", "id"),
        ):
            got = await http.request("GET", path)
            assert got.status == 400 and got.body["param"] == param, (path, got)
    assert openapi_check.answers_checked >= checked_before + 76


def _decoded(got: Any) -> tuple[str, bool, bool, str | None, str | None]:
    assert got.status == 200, got
    b = got.body
    return b["type"], b["yours"], b["livemode"], b["amount"], b["reference"]


async def test_qr_decode_reads_any_of_our_payloads_and_names_every_refusal(
    tmp_path: Path,
) -> None:
    """``POST /v1/qr/decode``: the fields of a static and a dynamic QR (``yours`` only for
    your own in your mode), and every named refusal of the decoder as a 400 with that code and
    param ``payload``: the reader's and our layout's tables of smallest inputs, sent over
    HTTP."""
    checked_before = openapi_check.answers_checked
    expiry = int(time.time()) + 600
    dynamic = _qr(expiry=expiry)
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:

        async def decode(payload: Any) -> Any:
            return await http.request("POST", "/v1/qr/decode", {"payload": payload})

        got = await decode(dynamic)
        assert _decoded(got) == ("dynamic", True, False, str(10**18), "r-1"), got
        assert got.body["merchant"] == partner_id("shop-a").hex()
        assert (got.body["asset"], got.body["ledger"], got.body["scale"]) == ("baas", BAAS_TEST,
                                                                              18)  # fmt: skip
        assert (got.body["expires_at"], got.body["name"], got.body["city"]) == (
            expiry, "Shop A", "Berlin"
        )  # fmt: skip
        assert _decoded(await decode(_qr(static=True))) == ("static", True, False, None, None)
        other = await decode(_qr("shop-b", static=True))  # another merchant's: read, not yours
        assert _decoded(other) == ("static", False, False, None, None)
        live = await decode(_qr(ledger=BAAS_TEST + 1))  # the other mode's: not yours
        assert _decoded(live)[1:3] == (False, True)
        assert (live.body["asset"], other.body["expires_at"]) == ("baas", None)
        points = await decode(_qr(ledger=BAAS_TEST + 2, static=True))
        assert points.body["asset"] == "points" and points.body["ledger"] == BAAS_TEST + 2

        rows = [(p, code) for p, code, _ in (*MALFORMED, *NETWORK_REFUSALS)]
        rows += [(_ours("54031.5", "62100506INV-42", version="2"), "qr_version_unknown"),
                 (12, "qr_payload_invalid"), (None, "qr_payload_invalid")]  # fmt: skip
        seen = set()
        for payload, code in rows:
            got = await decode(payload)
            assert got.status == 400, (payload, got)
            assert (got.body["code"], got.body["param"]) == (code, "payload"), (payload, got)
            seen.add(code)
        assert seen == set(QR_REFUSAL_CODES)  # every named reason reached over HTTP
        for body, code, param in (
            ({}, "parameter_missing", "payload"),
            ({"payload": dynamic, "amount": "5"}, "parameter_unknown", "amount"),
        ):
            got = await http.request("POST", "/v1/qr/decode", body)
            assert got.status == 400 and (got.body["code"], got.body["param"]) == (code, param)
    assert openapi_check.answers_checked >= checked_before + len(rows) + 7


def test_the_decode_operation_documents_every_refusal() -> None:
    assert set(QR_REFUSAL_CODES) == {r.value for r in Refusal} | {"qr_version_unknown"}
    described = openapi_document()["paths"]["/v1/qr/decode"]["post"]["description"]
    assert all(f"`{code}`" in described for code in QR_REFUSAL_CODES)


def test_every_payments_result_maps_to_one_problem() -> None:
    """Every refusal of the payments core has its status, stable code and param; scope and
    approval refusals keep theirs; a success is the node's outcome."""
    for result in PaymentResult:
        if result is PaymentResult.OK:
            continue
        assert result.value in PAYMENT_PROBLEMS, result
        problem = payment_problem(result.value)
        status, code, param = PAYMENT_PROBLEMS[result.value]
        assert (problem.http_status, problem.code, problem.param) == (status, code, param)
        assert 400 <= status < 500
    # another partner's or mode's things are never "foreign": not found
    assert PAYMENT_PROBLEMS[PaymentResult.ASSET_FOREIGN.value][:2] == (404, "asset_not_found")
    assert PAYMENT_PROBLEMS[PaymentResult.CODE_WRONG_MODE.value][:2] == (404, "code_unknown")
    for approval in ApprovalResult:
        if approval is ApprovalResult.OK or approval.value in PAYMENT_PROBLEMS:
            continue  # the code checks: the payments core's names, the same meaning
        refused = payment_problem(approval.value)
        assert (refused.http_status, refused.param) == (403, "approvals"), approval
    assert payment_problem("partner_not_found").code == "partner_not_onboarded"
    outcome = {"ok": True, "replayed": True, "outcome": {"result": "ok", "log_time_ms": 5}}
    done = judge(outcome, payment_problem)
    assert not isinstance(done, BaasError) and done.replayed and done.log_time_ms == 5
    refused_outcome = {"ok": True, "outcome": {"result": "sold_out", "log_time_ms": 5}}
    sold_out = judge(refused_outcome, payment_problem)
    assert isinstance(sold_out, BaasError) and sold_out.code == "sold_out"
    assert sold_out.http_status == 409 and sold_out.param == "quantity"
