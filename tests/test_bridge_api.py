"""The Bridge API's refusals the gateway makes alone, before any node call (the real gateway in
process, no nodes: inprocess_gateway.py): a missing Idempotency-Key, bad amounts, codes, quotes
and a debit of a user's wallet without the user's approval are typed 400s naming their
``param``, so bad input never reaches the log. Every answer is checked against the OpenAPI
document. The mapping of the state machine's Bridge results to problems is checked here in
full; what needs nodes (issuance, swaps both ways, isolation) is proven in real processes:
test_cluster_bridge_api.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openapi_check
from inprocess_gateway import client_of, gateway_without_nodes

from business.bridge import BridgeResult
from business.identity.model import ApprovalResult, ScopeResult
from gateway.bridge_routes import BRIDGE_PROBLEMS, judge, problem_of
from node.errors import BaasError

QUOTE: dict[str, Any] = {
    "object": "bridge_quote",
    "livemode": False,
    "asset": "PTS",
    "user": "u-1",
    "wallet": "ab" * 16,
    "direction": "in",
    "amount_in": "100",
    "amount_out": "99",
    "fee": "1",
    "rate_num": "1",
    "rate_den": "1",
    "policy_version": 1,
    "issued_ms": 1,
    "expires_ms": 2,
    "digest": "cd" * 32,
}
POLICY: dict[str, Any] = {
    "rate_num": "1", "rate_den": "1", "swap_min": "1", "swap_max": "10", "window_s": 60,
    "user_window_max": "0", "partner_window_max": "0", "fee_bps": 0, "fee_min": "0",
    "enabled": True,
}  # fmt: skip
APPROVAL = [{"code": "00" * 16}]


async def test_bad_bridge_input_is_refused_before_any_node(tmp_path: Path) -> None:
    checked_before = openapi_check.answers_checked
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        swap = {"user": "u-1", "quote": QUOTE, "approvals": APPROVAL}
        redeem = {"user": "u-1", "amount": "5", "approvals": APPROVAL}
        cases: list[tuple[str, Any, str | None, str, str]] = [
            # path, body, key, expected code, expected param
            ("/v1/bridge/points", {"code": "PTS", "scale": 2}, None,
             "idempotency_key_required", "Idempotency-Key"),
            ("/v1/bridge/points", {"code": "PTS", "scale": 19}, "k", "invalid_request", "scale"),
            ("/v1/bridge/points", {"code": "PTS", "scale": 2, "validity_days": -1}, "k",
             "invalid_request", "validity_days"),
            ("/v1/bridge/points", {"scale": 2}, "k", "parameter_missing", "code"),
            ("/v1/bridge/points", {"code": "pts", "scale": 2}, "k", "invalid_request", "code"),
            ("/v1/bridge/points", {"code": "P-1", "scale": 2}, "k", "invalid_request", "code"),
            ("/v1/bridge/points/PTS/issue", {"user": "u-1", "amount": "0"}, "k",
             "amount_invalid", "amount"),
            ("/v1/bridge/points/PTS/issue", {"user": "", "amount": "1"}, "k",
             "invalid_request", "user"),
            ("/v1/bridge/points/PTS/issue", {"user": "u-1", "amount": 5}, "k",
             "amount_invalid", "amount"),
            ("/v1/bridge/points/PTS/redeem", {"user": "u-1", "amount": "5"}, "k",
             "approval_required", "approvals"),
            ("/v1/bridge/points/PTS/redeem", {**redeem, "approvals": [{"code": "zz"}]}, "k",
             "invalid_request", "approvals[0].code"),
            ("/v1/bridge/points/PTS/redeem", redeem, None, "idempotency_key_required",
             "Idempotency-Key"),
            ("/v1/bridge/points/PTS/redeem/preview", redeem, "k", "parameter_unknown",
             "approvals"),
            ("/v1/bridge/points/PTS/reverse", {"issuance": "12", "amount": "1"}, "k",
             "invalid_request", "issuance"),
            ("/v1/bridge/points/PTS/liquidity", {"amount": "-1"}, "k", "amount_invalid",
             "amount"),
            ("/v1/bridge/points/PTS/policy", {**POLICY, "fee_bps": 10000}, "k",
             "invalid_request", "fee_bps"),
            ("/v1/bridge/points/PTS/policy", {**POLICY, "enabled": "yes"}, "k",
             "invalid_request", "enabled"),
            ("/v1/bridge/points/PTS/policy", {**POLICY, "rate_den": "0"}, "k",
             "amount_invalid", "rate_den"),
            ("/v1/bridge/reserve/top_up", {"amount": "1.5"}, "k", "amount_invalid", "amount"),
            ("/v1/bridge/reserve/threshold", {"threshold": "x"}, "k", "amount_invalid",
             "threshold"),
            ("/v1/bridge/quotes", {"asset": "PTS", "user": "u-1", "direction": "sideways",
             "amount_in": "1"}, None, "invalid_request", "direction"),
            ("/v1/bridge/quotes", {"asset": "PTS", "user": "u-1", "direction": "in",
             "amount_in": "0"}, None, "amount_invalid", "amount_in"),
            ("/v1/bridge/swaps", {"user": "u-1", "quote": QUOTE}, "k", "approval_required",
             "approvals"),
            ("/v1/bridge/swaps", swap, None, "idempotency_key_required", "Idempotency-Key"),
            ("/v1/bridge/swaps", {**swap, "quote": {**QUOTE, "digest": "12"}}, "k",
             "invalid_request", "quote.digest"),
            ("/v1/bridge/swaps", {**swap, "quote": {**QUOTE, "extra": 1}}, "k",
             "parameter_unknown", "quote.extra"),
            ("/v1/bridge/swaps", {**swap, "quote": {**QUOTE, "amount_out": "-1"}}, "k",
             "amount_invalid", "quote.amount_out"),
            ("/v1/bridge/swaps/preview", {"user": "u-1", "quote": {**QUOTE, "direction": "x"}},
             "k", "invalid_request", "quote.direction"),
            ("/v1/bridge/swaps/preview", {"user": "u-1"}, "k", "parameter_missing", "quote"),
        ]  # fmt: skip
        for path, body, key, code, param in cases:
            got = await http.request("POST", path, body, idempotency_key=key)
            assert got.status == 400, (path, body, got)
            assert (got.body["code"], got.body.get("param")) == (code, param), (path, got)
        empty = await http.request("POST", "/v1/bridge/swaps/batch", {"swaps": []})
        assert empty.status == 400 and empty.body["param"] == "swaps", empty
        item = {"idempotency_key": "b", **swap}
        over = await http.request("POST", "/v1/bridge/swaps/batch", {"swaps": [item] * 101})
        assert over.status == 413 and over.body["param"] == "swaps", over
        slots = await http.request(
            "POST",
            "/v1/bridge/swaps/batch",
            {"swaps": [{k: v for k, v in item.items() if k != "idempotency_key"},
                       {**item, "idempotency_key": "b1", "approvals": None},
                       {**item, "idempotency_key": "b2", "quote": {}}]},
        )  # fmt: skip
        assert slots.status == 200, slots
        got = [
            (r["status"], r["error"]["code"], r["error"]["param"]) for r in slots.body["results"]
        ]
        assert got == [
            (400, "parameter_missing", "swaps[0].idempotency_key"),
            (400, "approval_required", "swaps[1].approvals"),
            (400, "parameter_missing", "swaps[2].quote.amount_in"),
        ], got
        reads = [
            ("/v1/bridge/swaps/swap_12", "id"),
            ("/v1/bridge/swaps/" + "ab" * 32, "id"),
            ("/v1/bridge/reserve?limit=0", "limit"),
            ("/v1/bridge/reserve?limit=101", "limit"),
            ("/v1/bridge/reserve?after=x", "after"),
            ("/v1/bridge/swaps?limit=0", "limit"),
            ("/v1/bridge/swaps?limit=101", "limit"),
            ("/v1/bridge/swaps?starting_after=swap_12", "starting_after"),
            ("/v1/bridge/swaps?user=", "user"),
            ("/v1/bridge/swaps?status=pending", "status"),
            ("/v1/bridge/swaps?created_gte=x", "created_gte"),
            ("/v1/bridge/swaps?created_lt=-1", "created_lt"),
        ]
        for path, param in reads:
            got = await http.request("GET", path)
            assert got.status == 400 and got.body.get("param") == param, (path, got)
    assert openapi_check.answers_checked >= checked_before + len(cases) + len(reads)


def test_every_bridge_refusal_maps_to_a_client_error_with_a_stable_code() -> None:
    """Every result the Bridge can refuse with (and the scope and approval refusals) is a 4xx
    problem: sticky outcomes are never answered as 5xx (a client would retry forever)."""
    refusals = [r.value for r in BridgeResult if not r.succeeded]
    assert set(refusals) <= set(BRIDGE_PROBLEMS)
    for code in [*refusals, *(s.value for s in ScopeResult if s.value != "ok")]:
        problem = problem_of(code)
        assert 400 <= problem.http_status < 500 and problem.code.islower(), code
    for approval in (a.value for a in ApprovalResult if a.value != "ok"):
        problem = problem_of(approval)
        assert (problem.http_status, problem.param) == (403, "approvals"), approval
    # Another partner's asset is not found, never "foreign": nothing is revealed.
    assert problem_of("asset_foreign").code == problem_of("asset_not_found").code
    assert problem_of("asset_foreign").http_status == 404
    assert problem_of("reserve_exhausted").code == "reserve_exhausted"
    assert problem_of("user_window_limit").http_status == 409


def test_a_node_answer_maps_to_an_outcome_or_its_problem() -> None:
    ok = judge({"ok": True, "replayed": True, "outcome": {"log_time_ms": 7, "result": "exists"}})
    assert not isinstance(ok, BaasError) and ok.replayed and ok.log_time_ms == 7
    refused = judge({"ok": True, "outcome": {"log_time_ms": 7, "result": "quote_expired"}})
    assert isinstance(refused, BaasError)
    assert (refused.http_status, refused.code, refused.param) == (409, "quote_expired", "quote")
    approval = judge({"ok": False, "code": "approval_missing", "status": 400})
    assert isinstance(approval, BaasError) and approval.http_status == 403
    busy = judge({"ok": False, "code": "overloaded", "status": 503})
    assert isinstance(busy, BaasError) and busy.http_status == 503
