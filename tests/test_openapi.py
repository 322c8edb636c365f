"""The gateway's OpenAPI document is a valid OpenAPI 3.1 document and the checker catches
answers it does not describe (the route tests check every answer with it: openapi_check.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openapi_check import check_answer
from openapi_spec_validator import validate

from gateway.admin_routes import AUDIT_PATH, operator_path
from gateway.openapi import OPERATOR_SIGNATURE, PARTNER_SIGNATURE, openapi_document
from gateway.record_codec import canonical_record
from node.errors import InvalidRequest

PROBLEM = {"Content-Type": "application/problem+json; charset=utf-8"}
JSON = {"Content-Type": "application/json; charset=utf-8"}
WRITTEN = {
    "status": 201,
    "record_id": "ab" * 32,
    "idempotency_key": "k-1",
    "content_hash": "cd" * 32,
    "created_at_ms": 1,
    "shards_durable": 5,
    "replayed": False,
}


def _problem(status: int, code: str) -> bytes:
    return json.dumps(
        {"type": "t", "title": code, "status": status, "code": code, "detail": "d"}
    ).encode()


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    validate(document)
    assert document["openapi"].startswith("3.1")
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert {"createRecord", "createRecords", "getRecord", "getRecordReceipt"} <= operations


def test_the_security_of_each_operation_names_who_the_gateway_lets_sign_it() -> None:
    """The document is what clients and baas-fuzz sign by: operator routes (the gateway's
    ``operator_path``) list the operator scheme, the audit trail both, signed others the
    partner's."""
    document = openapi_document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            schemes = {scheme for requirement in operation["security"] for scheme in requirement}
            if path == AUDIT_PATH:
                expected = {PARTNER_SIGNATURE, OPERATOR_SIGNATURE}
            elif operator_path(path):
                expected = {OPERATOR_SIGNATURE}
            else:
                expected = {PARTNER_SIGNATURE} if schemes else set()
            assert schemes == expected, (method, path)
    assert set(document["components"]["securitySchemes"]) == {
        PARTNER_SIGNATURE,
        OPERATOR_SIGNATURE,
    }


def test_a_documented_answer_passes() -> None:
    check_answer("POST", "/v1/records", 201, JSON, json.dumps(WRITTEN).encode())
    check_answer("POST", "/v1/records", 400, PROBLEM, _problem(400, "invalid_json"))
    check_answer("GET", "/v1/log/anchors?from=1&limit=5", 503, PROBLEM, _problem(503, "x"))
    check_answer("GET", "/v1/nowhere", 404, PROBLEM, _problem(404, "not_found"))


@pytest.mark.parametrize(
    ("method", "path", "status", "headers", "body"),
    [
        # a field the document does not have
        ("POST", "/v1/records", 201, JSON, json.dumps({**WRITTEN, "extra": 1}).encode()),
        # a field missing
        ("POST", "/v1/records", 201, JSON, json.dumps({"status": 201}).encode()),
        # a status the route does not give
        ("POST", "/v1/records", 418, PROBLEM, _problem(418, "teapot")),
        # an error that is not a problem
        ("POST", "/v1/records", 400, JSON, b'{"error": "bad"}'),
        # a plain-text error
        ("GET", "/v1/log", 503, {"Content-Type": "text/plain"}, b"503 Service Unavailable"),
        # a problem without its stable code
        ("GET", "/healthz", 200, JSON, b'{"status": "fine"}'),
    ],
)
def test_an_undocumented_answer_fails(
    method: str, path: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(Exception):  # noqa: B017 -- openapi-core raises several types
        check_answer(method, path, status, headers, body)


@pytest.mark.parametrize(
    ("record", "valid"),
    [
        ({"a": [1, {"b": "x", "c": None, "d": True}]}, True),
        ({"amount_minor": 2**53 - 1}, True),
        ({"amount": 1.5}, False),  # the gateway refuses non-integer numbers (invalid_record)
        ({"a": [{"b": 0.1}]}, False),
        ({"big": 2**53}, False),  # past what RFC 8785 represents exactly
        ({}, False),
    ],
)
def test_the_record_schema_says_what_the_gateway_takes(record: object, valid: bool) -> None:
    """The fuzzer's negative cases come from this schema: it must refuse what the gateway does."""
    document = openapi_document()
    schema = {**document["components"]["schemas"]["Record"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(record) is valid
    if valid:
        canonical_record(record, 1 << 16)  # the gateway takes it
    else:
        with pytest.raises(InvalidRequest):
            canonical_record(record, 1 << 16)
