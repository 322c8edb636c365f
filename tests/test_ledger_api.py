"""The ledger API's refusals the gateway makes alone, before any node call (the real gateway in
process, no nodes: inprocess_gateway.py): bad amounts, ids, fields and a missing
Idempotency-Key are typed 400s naming their ``param``, so bad input never reaches the log.
Every answer is checked against the OpenAPI document. What needs nodes (balances, outcomes,
isolation between partners and modes) is proven in real processes: test_cluster_ledger_api.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openapi_check
from inprocess_gateway import client_of, gateway_without_nodes

from business.identity.ids import Mode
from gateway.ledger_routes import RESULT_PROBLEMS, SCOPE_PROBLEMS, scope_of
from tools.ledger_client import LedgerClient

A = "acct_" + "1" * 32
B = "acct_" + "2" * 32

BAD_AMOUNTS: list[tuple[Any, str]] = [
    ("0", "zero"),
    ("-1", "negative"),
    ("1.5", "fractional"),
    ("1e3", "exponent"),
    (str(2**128), "above 2^128-1"),
    (100, "a JSON number"),
    ("01", "leading zero"),
    (" 1", "space"),
    ("", "empty"),
    (None, "null"),
]


async def test_bad_amounts_never_reach_a_node(tmp_path: Path) -> None:
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        ledger = LedgerClient(http, attempts_max=1)
        for amount, why in BAD_AMOUNTS:
            body = LedgerClient.transfer_body(A, B, "1", code=1)
            body["amount"] = amount
            got = await ledger.call("POST", "/v1/ledger/transfers", body, key="k1")
            assert got.status == 400, (why, got)
            assert got.body["code"] == "amount_invalid", (why, got)
            assert got.body["param"] == "amount", (why, got)
            # In a batch, the bad item is answered in its slot, with its param.
            batch = await ledger.batch([{"idempotency_key": "b1", **body}])
            assert batch.status == 200, batch
            (only,) = batch.body["results"]
            assert only["status"] == 400, (why, only)
            assert only["error"]["param"] == "transfers[0].amount", (why, only)
            assert only["error"]["code"] == "amount_invalid", (why, only)


async def test_every_bad_field_is_a_typed_400_with_its_param(tmp_path: Path) -> None:
    checked_before = openapi_check.answers_checked
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        ledger = LedgerClient(http, attempts_max=1)
        good = LedgerClient.transfer_body(A, B, "5", code=1)
        cases: list[tuple[str, str, Any, str | None, str, str]] = [
            # method, path, body, key, expected code, expected param
            ("POST", "/v1/ledger/transfers", good, None, "idempotency_key_required",
             "Idempotency-Key"),
            ("POST", "/v1/ledger/accounts", {"asset": "baas", "code": 1}, None,
             "idempotency_key_required", "Idempotency-Key"),
            ("POST", "/v1/test/faucet", {"account": A, "amount": "1"}, None,
             "idempotency_key_required", "Idempotency-Key"),
            ("POST", "/v1/ledger/transfers", {**good, "debit_account": "acct_12"}, "k",
             "invalid_request", "debit_account"),
            ("POST", "/v1/ledger/transfers", {**good, "credit_account": "tr_" + "1" * 32},
             "k", "invalid_request", "credit_account"),
            ("POST", "/v1/ledger/transfers", {**good, "debit_account": "acct_" + "0" * 32},
             "k", "invalid_request", "debit_account"),
            ("POST", "/v1/ledger/transfers", {**good, "code": 0}, "k", "invalid_request",
             "code"),
            ("POST", "/v1/ledger/transfers", {**good, "code": 70000}, "k",
             "invalid_request", "code"),
            ("POST", "/v1/ledger/transfers", {**good, "metadata": "x"}, "k",
             "invalid_request", "metadata"),
            ("POST", "/v1/ledger/transfers", {**good, "memo": "x"}, "k",
             "parameter_unknown", "memo"),
            ("POST", "/v1/ledger/transfers", {**good, "timeout_s": 5}, "k",
             "timeout_invalid", "timeout_s"),
            ("POST", "/v1/ledger/transfers", {**good, "pending": "yes"}, "k",
             "invalid_request", "pending"),
            ("POST", "/v1/ledger/transfers", {**good, "approvals": [{"code": "zz"}]}, "k",
             "invalid_request", "approvals[0].code"),
            ("POST", "/v1/ledger/transfers", {k: v for k, v in good.items() if k != "code"},
             "k", "parameter_missing", "code"),
            ("POST", "/v1/ledger/accounts", {"asset": "gold", "code": 1}, "k",
             "asset_not_found", "asset"),
            ("POST", "/v1/ledger/accounts", {"asset": "baas", "code": 1, "flags": ["x"]},
             "k", "invalid_request", "flags"),
            ("POST", "/v1/ledger/transfers/linked", {"transfers": []}, "k",
             "invalid_request", "transfers"),
            ("POST", "/v1/ledger/transfers/linked",
             {"transfers": [good, {**good, "amount": "-3"}]}, "k", "amount_invalid",
             "transfers[1].amount"),
            ("POST", f"/v1/ledger/transfers/tr_{'1' * 32}/post", {"amount": "0"}, "k",
             "amount_invalid", "amount"),
            ("POST", "/v1/ledger/transfers/acct_1/void", {}, "k", "invalid_request", "id"),
            ("GET", "/v1/ledger/accounts/12345", None, None, "invalid_request", "id"),
            ("GET", "/v1/ledger/transfers/tr_XYZ", None, None, "invalid_request", "id"),
        ]  # fmt: skip
        for method, path, body, key, code, param in cases:
            got = await http.request(method, path, body, idempotency_key=key)
            assert got.status == 400, (path, body, got)
            assert (got.body["code"], got.body.get("param")) == (code, param), (path, got)
        too_many = [{"idempotency_key": str(i), **good} for i in range(101)]
        over = await ledger.batch(too_many)  # ledger_batch_operations_max = 100
        assert over.status == 413 and over.body["param"] == "transfers", over
        dup = await ledger.batch([{"idempotency_key": "same", **good}] * 2)
        assert dup.status == 400 and dup.body["code"] == "duplicate_in_batch", dup
        no_key = await ledger.batch([good])
        (only,) = no_key.body["results"]
        assert only["error"]["code"] == "idempotency_key_required"
        assert only["error"]["param"] == "transfers[0].idempotency_key"
    assert openapi_check.answers_checked > checked_before + len(cases)


def test_scopes_are_distinct_per_partner_and_mode() -> None:
    scopes = {scope_of(p, m) for p in ("shop-a", "shop-b") for m in Mode}
    assert len(scopes) == 4


def test_the_result_table_maps_to_client_errors_with_params() -> None:
    for result, (status, code, param) in {**RESULT_PROBLEMS, **SCOPE_PROBLEMS}.items():
        assert 400 <= status < 500 and code.islower(), result
        assert param is None or param.isidentifier(), result
    assert RESULT_PROBLEMS["exceeds_credits"][:2] == (402, "insufficient_funds")


def test_outcomes_map_to_answers_and_refusals_stay_4xx() -> None:
    """The mapping of a node's answer (gateway/ledger_routes.py ``_judge``): the asked events'
    results decide; a refusal of an account the API adds to the chain (the faucet's issuing
    account) or the state machine opens on first use (listed after the op's own events) is a
    sticky 409, never a 503 that would invite endless retries; the state machine's refusals of
    the whole operation map through their own table."""
    from business.ledger.model import CreateAccount, CreateTransfer
    from gateway.ledger_routes import LedgerRefused, _judge, _Op
    from gateway.node_client import WriteItem

    added = CreateAccount(1, 2, 1)
    asked = CreateTransfer(
        id=2, debit_account_id=1, credit_account_id=3, amount=5, ledger=2, code=1
    )
    op = _Op("k", "transfer", bytes(32), (added, asked), 1, ("",), WriteItem({}, 0.0, "r"))

    def answer(*results: str, replayed: bool = False) -> dict[str, Any]:
        events = [{"result": r, "amount": "5"} for r in results]
        return {"ok": True, "replayed": replayed, "outcome": {"log_time_ms": 7, "events": events}}

    done = _judge(op, answer("exists", "ok", replayed=True))
    assert (
        done.error is None and done.replayed and done.events == ({"result": "ok", "amount": "5"},)
    )
    broke = _judge(op, answer("ok", "exceeds_credits")).error
    assert isinstance(broke, LedgerRefused)
    assert (broke.http_status, broke.code, broke.param) == (402, "insufficient_funds", "amount")
    setup = _judge(op, answer("exists_with_different_flags", "linked_event_failed")).error
    assert isinstance(setup, LedgerRefused)
    assert (setup.http_status, setup.code) == (409, "ledger_setup_refused")
    other = _judge(op, answer("ok", "id_already_failed")).error
    assert isinstance(other, LedgerRefused) and (other.http_status, other.code) == (
        409,
        "id_already_failed",
    )
    refused = _judge(op, {"ok": False, "code": "approval_missing", "status": 400}).error
    assert isinstance(refused, LedgerRefused)
    assert (refused.http_status, refused.param) == (403, "approvals")
    overloaded = _judge(op, {"ok": False, "code": "overloaded", "status": 503}).error
    assert overloaded is not None and overloaded.http_status == 503
    opened = _judge(op, answer("ok", "linked_event_failed", "exists_with_different_flags")).error
    assert isinstance(opened, LedgerRefused) and opened.code == "ledger_setup_refused"
    assert _judge(op, answer("ok", "ok", "ok")).events == ({"result": "ok", "amount": "5"},)
    mint = _judge(op, answer("account_would_mint", "account_would_mint")).error
    assert isinstance(mint, LedgerRefused)
    assert (mint.http_status, mint.code, mint.param) == (400, "account_would_mint", "flags")
    stored = _judge(op, answer("approval_missing", "approval_missing")).error
    assert isinstance(stored, LedgerRefused)
    assert (stored.http_status, stored.code, stored.param) == (403, "approval_missing", "approvals")


def test_operations_name_the_authenticated_proposer() -> None:
    """What the state machine checks is who the gateway authenticated: a partner's operation
    carries its partner id and mode (``pt``/``md``), a credit to a linked user its user
    reference (``ur``), and the faucet is the platform's (``pt`` all zeros)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from business.identity.ids import partner_id, user_ref
    from business.identity.scope import PLATFORM
    from gateway.config import GatewayLimits
    from gateway.keyring import new_partner
    from gateway.ledger_routes import (
        _ROUTE_EXTRA,
        FAUCET_KIND,
        LedgerContext,
        _item,
        _operation,
        _single,
    )

    state = SimpleNamespace(config=SimpleNamespace(limits=GatewayLimits()))
    keys = new_partner("shop-a", "pk_test_shop-a_1")
    ctx = LedgerContext(keys, Mode.TEST, scope_of("shop-a", Mode.TEST), 0.0, "r")
    body = {"debit_account": A, "credit_user": "user-42", "amount": "5", "code": 1}
    item = _item("k", body, "", _ROUTE_EXTRA)
    op = _single(state, ctx, item, replace(item.asked, ledger=2, credit=7))
    wire = op.item.record
    assert (wire["pt"], wire["md"]) == (partner_id("shop-a"), int(Mode.TEST))
    assert wire["ur"] == [user_ref(partner_id("shop-a"), Mode.TEST, "user-42")]
    plain = _single(state, ctx, item, replace(item.asked, ledger=2, credit=7, credit_user=None))
    assert "ur" not in plain.item.record and plain.item.record["pt"] == partner_id("shop-a")

    # The faucet's events (an issuing account derived from the grant, linked with the credit)
    # are proven in real processes: a wrong id or proposer is refused there
    # (test_cluster_ledger_api.py); here, that the route kind makes it the platform's.
    faucet = _operation(state, ctx, FAUCET_KIND, "f", {}, lambda rid: ([], 0, []))
    assert faucet.item.record["pt"] == PLATFORM == bytes(16)


async def test_user_debits_codes_and_unlinks_refuse_bad_input_before_the_log(
    tmp_path: Path,
) -> None:
    """The new routes' refusals the gateway makes alone, each a typed 400 naming its param: a
    debit of a user's wallet without approvals never reaches the log (its sticky refusal
    would burn the key), nor a preview or a code or an unlink with a bad field."""
    checked_before = openapi_check.answers_checked
    async with gateway_without_nodes(tmp_path) as layout, client_of(layout, "shop-a") as http:
        debit = {"debit_user": "u-1", "credit_account": A, "amount": "5", "code": 1}
        code = {
            "wallet": "0x" + "ab" * 20,
            "code_hash": "0x" + "cd" * 32,
            "asset": "baas",
            "amount_limit": "100",
            "expiry": 2_000_000_000,
            "signature": "0x" + "ef" * 65,
        }
        signed = {"wallet": "0x" + "ab" * 20, "deadline": 1, "nonce": "0x" + "00" * 32,
                  "signature": "0x" + "ef" * 65}  # fmt: skip
        cases: list[tuple[str, Any, str | None, str, str]] = [
            # path, body, key, expected code, expected param
            ("/v1/ledger/transfers", debit, "k", "approval_required", "approvals"),
            ("/v1/ledger/transfers", {**debit, "debit_account": A}, "k", "invalid_request",
             "debit_user"),
            ("/v1/ledger/transfers", {**debit, "credit_user": "u-2"}, "k", "invalid_request",
             "debit_user"),
            ("/v1/ledger/transfers", {**debit, "debit_user": ""}, "k", "invalid_request",
             "debit_user"),
            ("/v1/ledger/transfers/preview", debit, None, "idempotency_key_required",
             "Idempotency-Key"),
            ("/v1/ledger/transfers/preview", {**debit, "approvals": [{"code": "00" * 16}]},
             "k", "parameter_unknown", "approvals"),
            ("/v1/ledger/transfers/preview", {**debit, "amount": "0"}, "k", "amount_invalid",
             "amount"),
            ("/v1/ledger/transfers/linked", {"transfers": [debit]}, "k", "approval_required",
             "approvals"),
            ("/v1/ledger/transfers/linked/preview", {"transfers": [debit]}, None,
             "idempotency_key_required", "Idempotency-Key"),
            ("/v1/ledger/transfers/linked/preview",
             {"transfers": [debit], "approvals": [{"code": "00" * 16}]}, "k",
             "parameter_unknown", "approvals"),
            ("/v1/ledger/transfers/linked/preview",
             {"transfers": [{**debit, "credit_user": "u-2"}]}, "k", "invalid_request",
             "transfers[0].debit_user"),
            ("/v1/wallets/codes", code, None, "idempotency_key_required", "Idempotency-Key"),
            ("/v1/wallets/codes", {**code, "code_hash": "0x12"}, "k", "invalid_request",
             "code_hash"),
            ("/v1/wallets/codes", {**code, "amount_limit": "0"}, "k", "amount_invalid",
             "amount_limit"),
            ("/v1/wallets/codes", {**code, "asset": "gold"}, "k", "asset_not_found", "asset"),
            ("/v1/wallets/codes", {**code, "expiry": 0}, "k", "invalid_request", "expiry"),
            ("/v1/wallets/links/u-1/unlink", {}, None, "idempotency_key_required",
             "Idempotency-Key"),
            ("/v1/wallets/links/u-1/unlink", {"wallet": signed["wallet"]}, "k",
             "parameter_missing", "deadline"),
            ("/v1/wallets/links/u-1/unlink", {**signed, "nonce": "0x00"}, "k",
             "invalid_request", "nonce"),
        ]  # fmt: skip
        for path, body, key, code_, param in cases:
            got = await http.request("POST", path, body, idempotency_key=key)
            assert got.status == 400, (path, body, got)
            assert (got.body["code"], got.body.get("param")) == (code_, param), (path, got)
        lists = [
            ("/v1/ledger/accounts?limit=0", "limit"),
            ("/v1/ledger/accounts?limit=101", "limit"),  # ledger_list_limit_max = 100
            ("/v1/ledger/accounts?starting_after=tr_" + "1" * 32, "starting_after"),
            ("/v1/ledger/transfers?starting_after=" + A, "starting_after"),
            ("/v1/ledger/transfers?account=acct_12", "account"),
        ]
        for path, param in lists:
            got = await http.request("GET", path)
            assert got.status == 400 and got.body.get("param") == param, (path, got)
    assert openapi_check.answers_checked >= checked_before + len(cases) + len(lists)
