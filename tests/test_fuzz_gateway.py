"""The gateway's API under a property-based fuzzer driven by its OpenAPI document
(``baas-fuzz``, tools/fuzz.py).

* Against a real small cluster (3 nodes, the embedded chain, the gateway: real processes), a
  seeded run of ``FUZZ_REQUESTS`` signed requests over every documented operation, each signed
  as the principal its security scheme names (a partner, or an operator the fuzzer adds): no
  5xx, every answer as documented, every error a problem with a stable code, nothing the schema
  refuses accepted, at least 90% past authentication, a 2xx seen for every operation (the admin
  routes' included); a partner on an operator route gets 404, an operator on a partner route 401.
* The fuzzer itself can fail: against a gateway without nodes (every record route answers 503)
  its report counts the 5xx and is not ok; with the principals swapped its wrong-principal check
  fails; its problem check refuses plain-text or code-less errors; its signer signs what the
  gateway checks.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import requests
from inprocess_gateway import gateway_without_nodes

from business.identity import Mode, eip712
from business.identity.ids import partner_id, user_ref
from gateway.auth import HEADER_KEY, HEADER_SIGNATURE, ReplayCache, SignedRequest, authenticate
from gateway.keyring import ApiCredential, Keyring, PrincipalKind, load_keyring, new_partner
from gateway.openapi import OPERATOR_SIGNATURE, PARTNER_SIGNATURE, openapi_document
from tools.cluster_init import ClusterLayout, init_cluster
from tools.fuzz import (
    FIXTURES,
    FRESH_KEY_SHARE,
    PAST_AUTH_SHARE_MIN,
    UNSIGNED_NEGATIVES_MAX,
    Fixtures,
    FuzzReport,
    LedgerFixtures,
    Signer,
    fuzz_gateway,
    link_body,
    main,
    make_credentials,
    problem_errors,
    small_cluster,
)

# CI; `baas-fuzz` defaults to 10,000 (README "Fuzzing the API"). About 16 per documented
# operation: each gets a few unsigned negatives, so fewer would push the share past
# authentication under PAST_AUTH_SHARE_MIN as the document grows.
FUZZ_REQUESTS = 1700  # 84 operations: ~20 each (at 1600 the share past auth fell to 0.898)
SEED = 17

PROBLEM = {"Content-Type": "application/problem+json"}


def _problem(status: int, code: str) -> bytes:
    return json.dumps(
        {"type": "t", "title": code, "status": status, "code": code, "detail": "d"}
    ).encode()


@pytest.mark.cluster
def test_fuzzed_partner_api_gives_no_5xx_and_only_documented_answers(tmp_path: Path) -> None:
    out = tmp_path / "fuzz-report.json"
    with small_cluster(tmp_path / "cluster") as layout:
        argv = ["--cluster", layout.directory, "--requests", str(FUZZ_REQUESTS)]
        code = main([*argv, "--seed", str(SEED), "--out", str(out)])
    report = json.loads(out.read_text())
    # Sent as fuzz_gateway counts them: wrong-principal requests too (one set per operation,
    # so their share grows with the document).
    wrong_sent = sum(sum(statuses.values()) for statuses in report["wrong_principal"].values())
    assert report["requests"] + wrong_sent >= FUZZ_REQUESTS * 0.95, report["by_operation"]
    assert report["server_error_count"] == 0, report["server_errors"]
    assert report["failure_count"] == 0, report["failures"][:5]
    assert not report["generation_errors"], report["generation_errors"]
    assert report["past_auth_share"] >= PAST_AUTH_SHARE_MIN, report["by_code"]
    assert report["operations_without_2xx"] == [], report["by_operation"]
    # 401 only for the few negative cases per operation that leave out the API key
    unsigned = {op: int(s.get("401", 0)) for op, s in report["by_operation"].items()}
    assert 0 < max(unsigned.values()) <= UNSIGNED_NEGATIVES_MAX, unsigned
    # every operation of the document was fuzzed, the record routes with real objects
    operations = sum(len(methods) for methods in openapi_document()["paths"].values())
    assert len(report["by_operation"]) == operations, sorted(report["by_operation"])
    # onboarding seen succeeding with new names and refusing names that exist
    assert {"201", "409"} <= set(report["by_operation"]["POST /v1/admin/partners"])
    # a partner on an operator route sees no such route; an operator elsewhere is refused
    wrong = report["wrong_principal"]
    for admin in ("GET /v1/admin/partners", "GET /v1/admin/partners/{partner}"):
        assert set(wrong[admin]) == {"404"}, wrong
    assert set(wrong["POST /v1/records"]) == {"401"} and "GET /v1/audit" not in wrong, wrong
    assert report["ok"] is True and code == 0


FIXTURES_WITHOUT_NODES = Fixtures(
    record_ids=("ab" * 32,),
    anchored_record_ids=("ab" * 32,),
    anchor_batch_ids=(1,),
    partner="shop-a",
    partner_mode="test",
    partner_ids=("shop-a", "shop-b"),
    tag="t",
    ledger=LedgerFixtures(
        accounts=("acct_" + "0a" * 16, "acct_" + "0b" * 16),
        transfer_ids=("tr_" + "0c" * 16,),
        pending_to_post=("tr_" + "0d" * 16,),
        pending_to_void=("tr_" + "0e" * 16,),
        linked_user="user-1",
    ),
    chain_id=31337,
)


async def _fuzz_without_nodes(
    tmp_path: Path, requests_total: int, swap: bool = False
) -> FuzzReport:
    """Fuzz a gateway without nodes; ``swap``: sign each scheme with the other's credential."""
    made: list[dict[str, ApiCredential]] = []

    def add_operator(layout: ClusterLayout) -> None:
        made.append(make_credentials(layout, "shop-a"))

    async with gateway_without_nodes(tmp_path, prepare=add_operator) as layout:
        credentials = made[0]
        if swap:
            credentials = {
                PARTNER_SIGNATURE: credentials[OPERATOR_SIGNATURE],
                OPERATOR_SIGNATURE: credentials[PARTNER_SIGNATURE],
            }
        return await asyncio.to_thread(
            fuzz_gateway,
            layout.gateway_url,
            credentials,
            FIXTURES_WITHOUT_NODES,
            requests_total,
            SEED,
        )


async def test_the_fuzzer_reports_5xx_and_undocumented_answers(tmp_path: Path) -> None:
    """A gateway without nodes answers every record write 503: the run must not pass."""
    report = await _fuzz_without_nodes(tmp_path, 200)  # about 3 per operation
    assert report.requests >= 120
    assert report.server_error_count > 0
    assert any(e["status"] == 503 for e in report.server_errors)
    assert any(f["status"] == 503 for f in report.failures)  # not_a_server_error failed
    assert "POST /v1/records" in report.operations_without_2xx()
    assert not report.ok()
    assert report.as_json()["ok"] is False
    # who may sign is decided before any node is asked: the wrong principal is refused alike
    assert report.wrong_principal["GET /v1/admin/partners/{partner}"].keys() == {404}
    assert report.wrong_principal["GET /v1/records/{record_id}"].keys() == {401}


async def test_the_fuzzer_fails_a_route_that_takes_the_wrong_principal(tmp_path: Path) -> None:
    """Swapped credentials: every wrong-principal request is signed by one the route takes, so
    none gets the refusal it must (and the right-principal ones do not get past auth)."""
    report = await _fuzz_without_nodes(tmp_path, 160, swap=True)
    wrong = [f for f in report.failures if f["mode"] == "wrong_principal"]
    assert wrong and all("does not list" in " ".join(f["problems"]) for f in wrong), wrong[:3]
    assert report.past_auth_share < PAST_AUTH_SHARE_MIN and not report.ok()


@pytest.mark.parametrize(
    ("status", "headers", "body", "complaint"),
    [
        (400, {"Content-Type": "text/plain"}, b"400 Bad Request", "not application/problem+json"),
        (400, PROBLEM, b"not json", "not JSON"),
        (404, PROBLEM, b'{"title": "x", "status": 404}', "no stable code"),
        (409, PROBLEM, json.dumps({"code": "Bad Code!", "status": 409}).encode(), "stable code"),
        (429, PROBLEM, _problem(400, "rate_limited"), "says status 400"),
    ],
)
def test_problem_check_refuses_errors_that_are_not_problems(
    status: int, headers: dict[str, str], body: bytes, complaint: str
) -> None:
    found = problem_errors(status, headers, body)
    assert any(complaint in f for f in found), found


def test_problem_check_passes_problems_and_successes() -> None:
    codes: list[str] = []
    assert problem_errors(400, PROBLEM, _problem(400, "invalid_json"), codes.append) == []
    assert codes == ["invalid_json"]
    assert problem_errors(200, {"Content-Type": "application/json"}, b"{}") == []


def _prepared(headers: dict[str, str], body: bytes) -> requests.PreparedRequest:
    request = requests.Request(
        "POST", "http://gateway/v1/records?x=1", headers=headers, data=body
    ).prepare()
    return request


def test_signer_signs_what_the_gateway_checks_and_never_repeats() -> None:
    partner = new_partner("shop-a", api_key="pk_test")
    secret = partner.credentials[0].secret
    keyring = Keyring(version=1, partners={}).with_partner(partner)
    signer = Signer("pk_test", secret)
    replay = ReplayCache(100)
    signatures = set()
    for _ in range(2):  # the same request twice: two different signatures, both accepted
        body = b'{"record": {"n": 1}}'
        signed = signer(_prepared({HEADER_KEY: "generated", "Idempotency-Key": "k"}, body))
        headers = {k: str(v) for k, v in signed.headers.items()}
        assert headers[HEADER_KEY] == "pk_test"
        request = SignedRequest("POST", "/v1/records?x=1", headers, body)
        now_s = int(headers["X-Baas-Timestamp"])
        assert authenticate(request, keyring, replay, now_s, 300).partner_id == "shop-a"
        signatures.add(headers[HEADER_SIGNATURE])
    assert len(signatures) == 2


def test_signer_leaves_a_request_without_the_key_header_unsigned() -> None:
    """A negative case that drops the security header tests authentication: it stays as made."""
    signed = Signer("pk_test", b"s" * 32)(_prepared({}, b"{}"))
    assert HEADER_KEY not in signed.headers and HEADER_SIGNATURE not in signed.headers


def test_report_is_not_ok_below_the_auth_share_or_without_a_2xx() -> None:
    report = FuzzReport(seed=1)
    for _ in range(9):
        report.record("GET /a", 200)
    report.record("GET /a", 401)
    assert report.past_auth_share == pytest.approx(0.9) and report.ok()
    report.record("GET /a", 401)
    assert not report.ok()  # 9 of 11 past authentication
    other = FuzzReport(seed=1)
    other.record("GET /b", 400)
    assert other.operations_without_2xx() == ["GET /b"] and not other.ok()


# --- a route the gateway does not have yet: a write that needs a new Idempotency-Key ---------

DIGITS = {"type": "string", "pattern": "^(0|[1-9][0-9]{0,18})$"}
KEYED_WRITE_DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "a keyed write", "version": "1"},
    "paths": {
        "/v1/transfers": {
            "post": {
                "operationId": "createTransfer",
                "security": [{PARTNER_SIGNATURE: []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"amount": DIGITS},
                                "required": ["amount"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "made",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"id": {"type": "string"}},
                                    "required": ["id"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    **{
                        str(status): {
                            "description": "refused",
                            "content": {"application/problem+json": {"schema": {"type": "object"}}},
                        }
                        for status in (400, 401, 409)
                    },
                },
            }
        }
    },
    "components": {
        "securitySchemes": {
            scheme: {"type": "apiKey", "in": "header", "name": HEADER_KEY}
            for scheme in (PARTNER_SIGNATURE, OPERATOR_SIGNATURE)
        }
    },
}


class _KeyedWrites(http.server.BaseHTTPRequestHandler):
    """Serves KEYED_WRITE_DOCUMENT's one route as a ledger write would: 201 for a new key, 409
    for a key seen before, 400 for a bad body or key, 401 unsigned or signed by an operator."""

    keys: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: object, kind: str = "application/problem+json") -> None:
        if status >= 400:
            body = {"type": "t", "title": str(body), "status": status, "code": str(body)}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, KEYED_WRITE_DOCUMENT, "application/json")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        signer = self.headers.get(HEADER_KEY, "")
        key = self.headers.get("Idempotency-Key", "")
        if not signer or HEADER_SIGNATURE not in self.headers:
            return self._answer(401, "unauthenticated")
        if signer.startswith("ok_"):
            return self._answer(401, "operator_credential")
        try:
            document = json.loads(body)
        except ValueError:
            return self._answer(400, "invalid_json")
        if not isinstance(document, dict):  # (a list of objects has no set of keys)
            return self._answer(400, "invalid_request")
        amount = document.get("amount")
        valid_key = re.fullmatch("[a-z0-9-]{1,64}", key)
        if set(document) != {"amount"} or not isinstance(amount, str) or not valid_key:
            return self._answer(400, "invalid_request")
        if not re.fullmatch(DIGITS["pattern"], amount):
            return self._answer(400, "invalid_amount")
        if key in self.keys:
            return self._answer(409, "idempotency_key_reused")
        self.keys.append(key)
        return self._answer(201, {"id": key}, "application/json")


def test_a_route_that_needs_a_new_idempotency_key_reaches_its_2xx() -> None:
    """Generic over the document: the ledger's keyed writes need no FIXTURES row for a 2xx."""
    _KeyedWrites.keys.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyedWrites)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    credentials = {
        PARTNER_SIGNATURE: ApiCredential("pk_test_x", b"p" * 32),
        OPERATOR_SIGNATURE: ApiCredential("ok_ops_x", b"o" * 32),
    }
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        report = fuzz_gateway(url, credentials, FIXTURES_WITHOUT_NODES, 100, SEED)
    finally:
        server.shutdown()
        server.server_close()
    statuses = report.by_operation["POST /v1/transfers"]
    assert report.ok(), report.as_json()
    fresh = [k for k in _KeyedWrites.keys if k.startswith("fz-t-")]
    assert len(fresh) == len(set(fresh)) and len(fresh) >= 0.8 * FRESH_KEY_SHARE * 60, statuses
    assert report.wrong_principal["POST /v1/transfers"].keys() == {401}


def test_the_fuzzers_operator_is_made_once_and_signs_the_admin_routes(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path, partners=("shop-a",), chain="none")
    first = make_credentials(layout, "shop-a")
    again = make_credentials(layout, "shop-a")
    assert first == again  # a rerun signs with the operator the keyring holds
    keyring = load_keyring(Path(layout.directory) / "keyring.json", _master_key(layout))
    operator = keyring.principal(first[OPERATOR_SIGNATURE].api_key, 0)
    assert operator.kind == PrincipalKind.OPERATOR and list(keyring.operators) == ["baas-fuzz"]
    partner = keyring.principal(first[PARTNER_SIGNATURE].api_key, 0)
    assert partner.name == "shop-a" and partner.mode == Mode.TEST


def _master_key(layout: ClusterLayout) -> bytes:
    return bytes.fromhex((Path(layout.directory) / "secrets" / "master.key").read_text())


def test_every_fixtures_row_names_a_documented_operation() -> None:
    """A renamed operation must not silently lose its row (and with it its 2xx)."""
    documented = {
        operation["operationId"]
        for methods in openapi_document()["paths"].values()
        for operation in methods.values()
    }
    assert set(FIXTURES) <= documented, sorted(set(FIXTURES) - documented)
    ledger = {"getLedgerAccount", "createLedgerTransfer", "postLedgerTransfer", "createWalletLink"}
    assert ledger <= set(FIXTURES)


def test_a_drawn_wallet_link_is_signed_by_its_wallet_over_the_partners_user() -> None:
    """What the identity machine checks (business/identity/core.py): the EIP-712 Link over
    the fuzzing partner, its mode, the user's reference, the wallet, deadline and nonce
    recovers to the wallet; another user id (another reference) does not."""
    key, nonce, deadline = (7).to_bytes(32, "big"), b"n" * 32, 2**40
    body = link_body("shop-a", Mode.TEST, 31337, "user-7", key, nonce, deadline)
    wallet = bytes.fromhex(body["wallet"][2:])
    signature = bytes.fromhex(body["signature"][2:])
    partner = partner_id("shop-a")

    def signer(user_id: str) -> bytes | None:
        ref = user_ref(partner, Mode.TEST, user_id)
        message = eip712.Link(partner, Mode.TEST, ref, wallet, deadline, nonce)
        return eip712.recover_signer(message, 31337, signature)

    assert signer("user-7") == wallet
    assert signer("user-8") != wallet
