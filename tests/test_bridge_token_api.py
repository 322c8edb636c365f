"""The token routes' refusals the gateway makes alone, before any node call (the real gateway in
process, no nodes: inprocess_gateway.py): a missing Idempotency-Key, a bad symbol, decimals
above 18, a malformed ERC-20 address, bad liquidity amounts and policy terms on a token are
typed 400s naming their ``param``; every answer is checked against the OpenAPI document. What
needs nodes (register, duplicate, liquidity, swaps both ways, live mode) is proven in real
processes (test_cluster_bridge_api.py) and through the state machine (test_bridge_tokens.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openapi_check
from inprocess_gateway import client_of, gateway_without_nodes
from test_bridge_api import POLICY

from gateway.bridge_routes import BRIDGE_PROBLEMS, problem_of

TOKEN = "0x" + "ab" * 20


async def test_bad_token_input_is_refused_before_any_node(tmp_path: Path) -> None:
    checked_before = openapi_check.answers_checked
    token = {"symbol": "TOK", "decimals": 6, "address": TOKEN}
    cases: list[tuple[str, Any, str | None, str, str]] = [
        ("/v1/bridge/tokens", token, None, "idempotency_key_required", "Idempotency-Key"),
        ("/v1/bridge/tokens", {**token, "decimals": 19}, "k", "invalid_request", "decimals"),
        ("/v1/bridge/tokens", {**token, "decimals": -1}, "k", "invalid_request", "decimals"),
        ("/v1/bridge/tokens", {**token, "symbol": "tok"}, "k", "invalid_request", "symbol"),
        ("/v1/bridge/tokens", {**token, "symbol": "T" * 17}, "k", "invalid_request", "symbol"),
        ("/v1/bridge/tokens", {**token, "address": "0x12"}, "k", "invalid_request", "address"),
        ("/v1/bridge/tokens", {**token, "address": "ab" * 20}, "k", "invalid_request",
         "address"),
        ("/v1/bridge/tokens", {"symbol": "TOK", "decimals": 6}, "k", "parameter_missing",
         "address"),
        ("/v1/bridge/tokens", {**token, "extra": 1}, "k", "parameter_unknown", "extra"),
        (f"/v1/bridge/tokens/{TOKEN}/liquidity", {"amount": "-1"}, "k", "amount_invalid",
         "amount"),
        (f"/v1/bridge/tokens/{TOKEN}/liquidity", {"amount": "1"}, None,
         "idempotency_key_required", "Idempotency-Key"),
        (f"/v1/bridge/tokens/{TOKEN}/policy", {**POLICY, "fee_bps": 10000}, "k",
         "invalid_request", "fee_bps"),
        ("/v1/bridge/quotes", {"asset": TOKEN, "user": "u-1", "direction": "out",
         "amount_in": "0"}, None, "amount_invalid", "amount_in"),
    ]  # fmt: skip
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        for path, body, key, code, param in cases:
            got = await http.request("POST", path, body, idempotency_key=key)
            assert got.status == 400, (path, body, got)
            assert (got.body["code"], got.body.get("param")) == (code, param), (path, got)
        # a token is no point asset: the point reads do not find it (before any node call)
        for path in (f"/v1/bridge/points/{TOKEN}", f"/v1/bridge/points/{TOKEN}/users/u-1"):
            got = await http.request("GET", path)
            assert got.status == 404 and got.body["code"] == "asset_not_found", (path, got)
    assert openapi_check.answers_checked >= checked_before + len(cases) + 2


def test_a_taken_token_address_is_a_conflict_naming_the_address() -> None:
    assert BRIDGE_PROBLEMS["token_address_taken"] == (409, "token_address_taken", "address")
    problem = problem_of("token_address_taken")
    assert (problem.http_status, problem.code, problem.param) == (409, "token_address_taken",
                                                                  "address")  # fmt: skip
