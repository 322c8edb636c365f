"""The OpenAPI 3.1 document of the gateway, served at ``GET /v1/openapi.json``.

One document describes every route the gateway serves, what each accepts and every answer it
gives (errors included: each is an RFC 9457 problem with a stable ``code``). It is a contract,
not prose: response objects are closed (``additionalProperties: false``), the test suite
validates the document with ``openapi-spec-validator`` and checks every response of its route
tests against it with ``openapi-core`` (``tests/openapi_check.py``), so a route that answers
something its document does not say fails a test.

Route modules add their own paths: :func:`openapi_document` gathers them, so the ledger's and
later modules' routes are described where they are served.
"""

from __future__ import annotations

import copy
from typing import Any

from business.payments.outbox import EventType
from gateway.auth import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from node.merkle.receipt import (
    ANCHORS_FORMAT,
    CONSISTENCY_FORMAT,
    RECEIPT_FORMAT,
    RECEIPT_VERSION_OPERATION,
    VERSION,
)

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "API_VERSION_HEADER",
    "OPENAPI_PATH",
    "OPERATOR_SIGNATURE",
    "PARTNER_SIGNATURE",
    "openapi_document",
]

OPENAPI_PATH = "/v1/openapi.json"
API_TITLE = "BaaS B&P network gateway"
# Dated API versions, oldest first (Stripe's model): a caller pins one with the header, a
# breaking change gets a new date, and the answer names the version it was made under.
API_VERSION_HEADER = "Baas-Version"
API_VERSIONS = ("2026-12-07",)
API_VERSION = API_VERSIONS[-1]
# The security schemes: who may sign an operation. Both are the same signature over the same
# headers; the scheme says whose credential the route takes (a client, and baas-fuzz, signs with
# the one an operation lists).
PARTNER_SIGNATURE = "partnerSignature"
OPERATOR_SIGNATURE = "operatorSignature"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


JSON_SAFE_INTEGER_MAX = 2**53 - 1
HEX64: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
HEX0X64: Schema = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}
UINT: Schema = {"type": "integer", "minimum": 0}
HEX_PATH: Schema = {"type": "array", "items": HEX64}
DIGITS: Schema = {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}  # an integer beyond 2^53
_RECEIPT_FIELDS: dict[str, Schema] = {
    "format": {"const": RECEIPT_FORMAT},
    "version": {"const": VERSION},
    "record_id": HEX64,
    "leaf_index": UINT,
    "leaf_data": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
    "inclusion_path": HEX_PATH,
    "anchor": _ref("AnchorRef"),
    "latest_anchor": _ref("AnchorRef"),
    "consistency_path": HEX_PATH,
}

SCHEMAS: dict[str, Schema] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem; `code` is stable, `detail` is for people.",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "detail": {"type": "string"},
            "param": {"type": "string"},
        },
        "required": ["type", "title", "status", "code", "detail"],
        "additionalProperties": False,
    },
    "Record": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": _ref("JsonValue"),
        "description": (
            "Any JSON object (integers only, no floats; nested at most 32 deep); stored "
            "encrypted, its canonical form (RFC 8785) committed in its Merkle leaf."
        ),
    },
    # What a record may hold: JSON without non-integer numbers, integers within what RFC 8785
    # (I-JSON) represents exactly. (The nesting bound has no JSON Schema form: see Record.)
    "JsonValue": {
        "type": ["null", "boolean", "integer", "string", "array", "object"],
        "minimum": -JSON_SAFE_INTEGER_MAX,
        "maximum": JSON_SAFE_INTEGER_MAX,
        "items": _ref("JsonValue"),
        "additionalProperties": _ref("JsonValue"),
    },
    "IdempotencyKey": {"type": "string", "minLength": 1, "maxLength": 255},
    "RecordWrite": _closed({"record": _ref("Record")}),
    "RecordWritten": _closed(
        {
            "status": {"type": "integer", "enum": [200, 201]},
            "record_id": HEX64,
            "idempotency_key": _ref("IdempotencyKey"),
            "content_hash": HEX64,
            "created_at_ms": UINT,
            "shards_durable": UINT,
            "replayed": {"type": "boolean"},
        }
    ),
    "RecordFailed": _closed(
        {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "code": {"type": ["string", "null"]},
            "detail": {"type": ["string", "null"]},
            "record_id": HEX64,
            "idempotency_key": _ref("IdempotencyKey"),
        }
    ),
    "RecordBatchWrite": _closed(
        {
            "records": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {"idempotency_key": _ref("IdempotencyKey"), "record": _ref("Record")},
                    required=["record"],
                ),
            }
        }
    ),
    "RecordBatchResults": _closed(
        {
            "results": {
                "type": "array",
                "items": {"oneOf": [_ref("RecordWritten"), _ref("RecordFailed")]},
            }
        }
    ),
    "RecordRead": _closed(
        {
            "record_id": HEX64,
            "record": _ref("Record"),
            "plaintext_salt": {"oneOf": [HEX64, {"type": "null"}]},
            "content_hash": HEX64,
            "created_at_ms": UINT,
            "k": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1},
        }
    ),
    "AnchorRef": _closed(
        {
            "batch_id": {"type": "integer", "minimum": 1},
            "tree_size": {"type": "integer", "minimum": 1},
            "root": HEX64,
            "chain_id": {"type": "integer", "minimum": 1},
            "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
            "tx_hash": HEX0X64,
            "block_number": UINT,
            "block_hash": HEX0X64,
        }
    ),
    "Receipt": {
        "description": "v1: a record's; v2: a ledger operation's, with what it executed.",
        "oneOf": [_ref("RecordReceipt"), _ref("OperationReceipt")],
    },
    "RecordReceipt": _closed(_RECEIPT_FIELDS),
    "OperationReceipt": _closed(
        {
            **_RECEIPT_FIELDS,
            "version": {"const": RECEIPT_VERSION_OPERATION},
            "outcome": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
            "outcome_summary": _closed(
                {
                    "log_time_ms": UINT,
                    "events": {"type": "array", "items": _ref("OperationEvent")},
                    "result": {
                        "type": "string",
                        "description": "a Bridge request's own result code (ok, "
                        "reserve_exhausted, ...): outcome format v2 only",
                    },
                },
                required=["log_time_ms", "events"],
            ),
        }
    ),
    "OperationEvent": _closed(
        {
            "kind": {"enum": ["asset", "account", "transfer"]},
            "id": DIGITS,
            "ledger": UINT,
            "debit_account_id": DIGITS,
            "credit_account_id": DIGITS,
            "amount": DIGITS,
            "result": {"type": "string"},
            "timestamp": DIGITS,
        }
    ),
    "Consistency": _closed(
        {
            "format": {"const": CONSISTENCY_FORMAT},
            "version": {"const": VERSION},
            "from": _ref("AnchorRef"),
            "to": _ref("AnchorRef"),
            "consistency_path": HEX_PATH,
        }
    ),
    "AnchorChain": _closed(
        {
            "format": {"const": ANCHORS_FORMAT},
            "version": {"const": VERSION},
            "anchors": {"type": "array", "minItems": 1, "items": _ref("AnchorRef")},
            "consistency_paths": {"type": "array", "items": HEX_PATH},
        }
    ),
    "LogHead": _closed(
        {
            "size": UINT,
            "root": HEX64,
            "anchored_through": UINT,
            "final_through": UINT,
        }
    ),
    "Health": _closed({"status": {"const": "ok"}}),
    "Ready": _closed(
        {
            "status": {"const": "ready"},
            "healthy_nodes": {"type": "array", "items": {"type": "string"}},
        }
    ),
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_DESCRIPTIONS = {
    400: "invalid request (code names the check)",
    401: "missing or bad signature",
    402: "the ledger refused: not enough funds (or over a credit limit)",
    403: (
        "the state machine refused the operation: the users' approvals of its debits, or a "
        "partner not onboarded on the log or not active"
    ),
    404: "not found (also anything that belongs to another partner)",
    409: "conflicts with an earlier request or state",
    413: "body or batch too large",
    429: "this credential is over its share; retry after Retry-After",
    431: "a request header is too large",
    503: "overloaded or no node available; retry after Retry-After",
    504: "no answer within the request deadline",
}
_COMMON_ERRORS = (400, 413, 431, 503, 504)
_SIGNED_ERRORS = (*_COMMON_ERRORS, 401, 429)


def _problem(status: int) -> Schema:
    answer: Schema = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if status in (429, 503):
        answer["headers"] = dict(_RETRY_AFTER)
    return answer


def _json(schema_name: str, description: str, headers: Schema | None = None) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _operation(
    operation_id: str,
    summary: str,
    answers: dict[int, Schema],
    errors: tuple[int, ...],
    *,
    signed: bool = True,
    signers: tuple[str, ...] = (PARTNER_SIGNATURE,),
    body: str | None = None,
    parameters: list[Schema] | None = None,
) -> Schema:
    responses = {str(status): answer for status, answer in answers.items()}
    for status in errors:
        responses[str(status)] = _problem(status)
    operation: Schema = {"operationId": operation_id, "summary": summary, "responses": responses}
    operation["security"] = [{scheme: []} for scheme in signers] if signed else []
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    operation["parameters"] = [*(parameters or []), _API_VERSION_PARAMETER]
    return operation


_API_VERSION_PARAMETER = {
    "name": API_VERSION_HEADER,
    "in": "header",
    "required": False,
    "description": "the dated API version to answer under (default: the newest); "
    "every answer names the one used in the same header",
    "schema": {"type": "string", "enum": list(API_VERSIONS)},
}
_RECORD_ID = {
    "name": "record_id",
    "in": "path",
    "required": True,
    "description": "64 lowercase hex characters",
    "schema": HEX64,
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "made and returned when absent; a retry with the same key gets the first result",
    "schema": _ref("IdempotencyKey"),
}


def _query(name: str, description: str, required: bool, pattern: str = "^[0-9]{1,19}$") -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


_IDEMPOTENCY_HEADER = {"Idempotency-Key": {"schema": _ref("IdempotencyKey")}}

PATHS: dict[str, Schema] = {
    "/v1/records": {
        "post": _operation(
            "createRecord",
            "Store one record (encrypted, erasure-coded, indexed in the log)",
            {
                201: _json("RecordWritten", "stored", _IDEMPOTENCY_HEADER),
                200: _json("RecordWritten", "a retry: the first result", _IDEMPOTENCY_HEADER),
                409: _problem(409),
            },
            _SIGNED_ERRORS,
            body="RecordWrite",
            parameters=[_IDEMPOTENCY_KEY],
        )
    },
    "/v1/records/batch": {
        "post": _operation(
            "createRecords",
            "Store many records: one result (with its own status) per record, in order",
            {200: _json("RecordBatchResults", "one result per record")},
            _SIGNED_ERRORS,
            body="RecordBatchWrite",
        )
    },
    "/v1/records/{record_id}": {
        "get": _operation(
            "getRecord",
            "Read one of this partner's records",
            {200: _json("RecordRead", "the record"), 404: _problem(404)},
            _SIGNED_ERRORS,
            parameters=[_RECORD_ID],
        )
    },
    "/v1/records/{record_id}/receipt": {
        "get": _operation(
            "getRecordReceipt",
            "The record's receipt: its Merkle leaf (v2: with the operation's outcome) proven "
            "against an anchor on chain",
            {200: _json("Receipt", "the receipt"), 404: _problem(404), 409: _problem(409)},
            _SIGNED_ERRORS,
            parameters=[_RECORD_ID],
        )
    },
    "/v1/log": {
        "get": _operation(
            "getLogHead",
            "The Merkle log's size, root and anchoring progress (public)",
            {200: _json("LogHead", "the log head")},
            _COMMON_ERRORS,
            signed=False,
        )
    },
    "/v1/log/anchors": {
        "get": _operation(
            "getAnchors",
            "A chain of anchors with the consistency proofs linking them (public)",
            {200: _json("AnchorChain", "the anchors"), 404: _problem(404), 409: _problem(409)},
            _COMMON_ERRORS,
            signed=False,
            parameters=[
                _query("from", "first batch id (default 1)", False),
                _query(
                    "limit",
                    "at most this many anchors (1..1000, default 1000)",
                    False,
                    "^([1-9][0-9]{0,2}|1000)$",
                ),
            ],
        )
    },
    "/v1/log/consistency": {
        "get": _operation(
            "getConsistency",
            "A consistency proof between two anchors, by batch id (public)",
            {200: _json("Consistency", "the proof"), 404: _problem(404), 409: _problem(409)},
            _COMMON_ERRORS,
            signed=False,
            parameters=[
                _query("from", "the older anchor's batch id", True),
                _query("to", "the newer anchor's batch id (at least from)", True),
            ],
        )
    },
    "/healthz": {
        "get": _operation(
            "getHealth", "The process is up", {200: _json("Health", "up")}, (400,), signed=False
        )
    },
    "/readyz": {
        "get": _operation(
            "getReady",
            "At least one node is ready",
            {200: _json("Ready", "ready")},
            (400, 503),
            signed=False,
        )
    },
    OPENAPI_PATH: {
        "get": _operation(
            "getOpenApi",
            "This document",
            {
                200: {
                    "description": "the OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
            (400,),
            signed=False,
        )
    },
}

# --- partners (admin) and the audit trail (gateway/admin_routes.py) --------------------------

HEX32: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
PARTNER_ID: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}


def _list_of(item: str, url: str) -> Schema:
    return _closed(
        {
            "object": {"const": "list"},
            "url": {"const": url},
            "has_more": {"type": "boolean"},
            "data": {"type": "array", "items": _ref(item)},
        }
    )


SCHEMAS.update(
    {
        "PartnerCreate": _closed({"id": PARTNER_ID}),
        "PartnerAccount": _closed(
            {
                "object": {"const": "account"},
                "id": HEX32,
                "livemode": {"type": "boolean"},
                "role": {"type": "string"},
                "asset": {"type": "string", "enum": ["baas", "points"]},
                "ledger": {"type": "integer", "minimum": 1},
            }
        ),
        "ApiCredential": _closed(
            {
                "object": {"const": "api_credential"},
                "id": {"type": "string"},
                "livemode": {"type": "boolean"},
                "active": {"type": "boolean"},
                "secret": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            required=["object", "id", "livemode", "active"],
        ),
        "Partner": _closed(
            {
                "id": PARTNER_ID,
                "object": {"const": "partner"},
                "partner_ref": HEX32,
                "status": {"type": "string", "enum": ["active", "suspended", "keyring_only"]},
                "asset_index": {"type": ["integer", "null"], "minimum": 0},
                "accounts": {"type": "array", "items": _ref("PartnerAccount")},
                "credentials": {"type": "array", "items": _ref("ApiCredential")},
            }
        ),
        "PartnerList": _list_of("Partner", "/v1/admin/partners"),
        "AuditActor": _closed(
            {
                "type": {"type": "string", "enum": ["operator", "partner", "user"]},
                "credential": HEX32,
                "partner": {"type": ["string", "null"]},
            }
        ),
        "AuditEntry": _closed(
            {
                "id": {"type": "string", "pattern": "^aud_[0-9]+$"},
                "object": {"const": "audit_entry"},
                "livemode": {"type": "boolean"},
                "created_ms": UINT,
                "type": {"type": "string"},
                "partner": {"type": "string"},
                "actor": _ref("AuditActor"),
                "summary": HEX64,
            }
        ),
        "AuditList": _list_of("AuditEntry", "/v1/audit"),
    }
)


def _string_query(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_LIMIT = _string_query("limit", "1..100, default 10", {"type": "string", "pattern": "^[0-9]{1,3}$"})
_ADMIN_ERRORS = (*_SIGNED_ERRORS, 404)

PATHS.update(
    {
        "/v1/admin/partners": {
            "post": _operation(
                "createPartner",
                "Onboard a partner (operators): on the log, then its test and live API "
                "credentials, whose secrets this answer shows once",
                {201: _json("Partner", "onboarded"), 409: _problem(409)},
                _ADMIN_ERRORS,
                signers=(OPERATOR_SIGNATURE,),
                body="PartnerCreate",
            ),
            "get": _operation(
                "listPartners",
                "The partners, by id (operators)",
                {200: _json("PartnerList", "a page of partners")},
                _ADMIN_ERRORS,
                signers=(OPERATOR_SIGNATURE,),
                parameters=[
                    _LIMIT,
                    _string_query("starting_after", "the last id of the previous page", PARTNER_ID),
                ],
            ),
        },
        "/v1/admin/partners/{partner}": {
            "get": _operation(
                "getPartner",
                "One partner: status, accounts per mode, credentials without secrets (operators)",
                {200: _json("Partner", "the partner")},
                _ADMIN_ERRORS,
                signers=(OPERATOR_SIGNATURE,),
                parameters=[
                    {
                        "name": "partner",
                        "in": "path",
                        "required": True,
                        "description": "the partner id",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/v1/audit": {
            "get": _operation(
                "listAuditEntries",
                "Configuration changes with their actor, newest first: a partner's own in its "
                "credential's mode; an operator's, every change (or one partner's)",
                {200: _json("AuditList", "a page of audit entries")},
                _ADMIN_ERRORS,
                signers=(PARTNER_SIGNATURE, OPERATOR_SIGNATURE),
                parameters=[
                    _LIMIT,
                    _string_query(
                        "starting_after",
                        "the last id of the previous page",
                        {"type": "string", "pattern": "^aud_[0-9]{1,19}$"},
                    ),
                    _string_query("partner", "one partner's trail (operators)", PARTNER_ID),
                    _string_query(
                        "mode",
                        "test or live (operators; a partner sees its credential's)",
                        {"type": "string", "enum": ["test", "live"]},
                    ),
                ],
            )
        },
    }
)

# --- the ledger (gateway/ledger_routes.py) ------------------------------------------------

ACCOUNT_ID: Schema = {"type": "string", "pattern": "^acct_[0-9a-f]{32}$"}
TRANSFER_ID: Schema = {"type": "string", "pattern": "^tr_[0-9a-f]{32}$"}
SIGNED_DIGITS: Schema = {"type": "string", "pattern": "^(0|-?[1-9][0-9]*)$"}
AMOUNT: Schema = {
    "type": "string",
    "pattern": "^[1-9][0-9]{0,38}$",
    "description": "an integer amount in the asset's minor unit, as a string of digits",
}
U16_CODE: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
ACCOUNT_FLAG_NAMES = ["debits_must_not_exceed_credits", "credits_must_not_exceed_debits", "history"]
_APPROVAL: Schema = {
    "oneOf": [
        _closed(
            {
                "wallet": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                "deadline": {"type": "integer", "minimum": 1},
                "signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"},
            }
        ),
        _closed({"code": {"type": "string", "pattern": "^([0-9a-fA-F]{2}){16,64}$"}}),
    ]
}
_TRANSFER_FIELDS: dict[str, Schema] = {
    "debit_account": ACCOUNT_ID,
    "credit_account": ACCOUNT_ID,
    "amount": AMOUNT,
    "code": U16_CODE,
    "pending": {"type": "boolean"},
    "timeout_s": {"type": "integer", "minimum": 1, "maximum": 4294967295},
    "metadata": {"type": "object", "description": "yours; kept only in the encrypted record"},
    "approvals": {"type": "array", "minItems": 1, "maxItems": 16, "items": _APPROVAL},
}
_TRANSFER_REQUIRED = ["debit_account", "credit_account", "amount", "code"]
_USER_SIDES: dict[str, Schema] = {
    "credit_user": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "instead of credit_account: your user id, to credit the "
        "wallet you linked it to (its account on the asset is opened if new)",
    },
    "debit_user": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "instead of debit_account: your user id, to debit the wallet you "
        "linked it to, on credit_account's asset; needs the user's approval (400 "
        "approval_required without one)",
    },
}


def _linked_create(*, with_approvals: bool) -> Schema:
    """A linked chain's body: each transfer may name one user side (``debit_user`` needs the
    chain's ``approvals``: the digest of its preview)."""
    item = {k: v for k, v in _TRANSFER_FIELDS.items() if k != "approvals"}
    fields: dict[str, Schema] = {
        "transfers": {
            "type": "array",
            "minItems": 1,
            "items": _closed({**item, **_USER_SIDES}, required=["amount", "code"]),
        },
        "metadata": {"type": "object"},
    }
    if with_approvals:
        fields["approvals"] = _TRANSFER_FIELDS["approvals"]
    return _closed(fields, required=["transfers"])


_LEDGER_PROBLEM = _closed(
    {
        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "detail": {"type": "string"},
        "param": {"type": "string"},
    },
    required=["code", "detail"],
)

SCHEMAS.update(
    {
        "LedgerAccountCreate": _closed(
            {
                "asset": {"type": "string", "enum": ["baas"]},
                "code": U16_CODE,
                "flags": {
                    "type": "array",
                    "items": {"type": "string", "enum": ACCOUNT_FLAG_NAMES},
                    "description": "default [debits_must_not_exceed_credits]",
                },
                "metadata": {"type": "object"},
            },
            required=["asset", "code"],
        ),
        "LedgerBalance": _closed(
            {
                "posted": SIGNED_DIGITS,
                "pending": SIGNED_DIGITS,
                "available": SIGNED_DIGITS,
                "debits_posted": DIGITS,
                "credits_posted": DIGITS,
                "debits_pending": DIGITS,
                "credits_pending": DIGITS,
            }
        ),
        "LedgerAccount": _closed(
            {
                "id": ACCOUNT_ID,
                "object": {"const": "ledger_account"},
                "livemode": {"type": "boolean"},
                "asset": {"type": "string", "enum": ["baas"]},
                "scale": {"type": "integer", "minimum": 0, "maximum": 18},
                "ledger": {"type": "integer", "minimum": 1},
                "code": U16_CODE,
                "flags": {"type": "array", "items": {"type": "string", "enum": ACCOUNT_FLAG_NAMES}},
                "balance": _ref("LedgerBalance"),
            }
        ),
        "LedgerTransferCreate": _closed(
            {**_TRANSFER_FIELDS, **_USER_SIDES}, required=["amount", "code"]
        ),
        "LedgerTransferPreviewCreate": _closed(
            {**{k: v for k, v in _TRANSFER_FIELDS.items() if k != "approvals"}, **_USER_SIDES},
            required=["amount", "code"],
        ),
        "LedgerTransferPreview": _closed(
            {
                "object": {"const": "transfer_preview"},
                "livemode": {"type": "boolean"},
                "operation": {
                    **HEX64,
                    "description": "the record id the transfer will have under this key",
                },
                "events": {
                    "type": "string",
                    "pattern": "^([0-9a-f]{2})+$",
                    "description": "the operation's ledger events as the log will carry them "
                    "(business/ledger/wire.py): with `operation`, what `digest` covers",
                },
                "digest": {**HEX0X64, "description": "operation_digest(operation, events)"},
                "transfer": _ref("LedgerTransfer"),
                "approvals_required": {
                    "type": "array",
                    "items": _closed(
                        {
                            "wallet": {"type": "string", "pattern": "^0x[0-9a-f]{40}$"},
                            "typed_data": {
                                "type": "object",
                                "description": "the EIP-712 Approve to sign (types, "
                                "primaryType, domain, message), eth_account's full_message",
                            },
                        }
                    ),
                },
            }
        ),
        "LedgerTransferResolve": _closed(
            {"amount": AMOUNT, "metadata": {"type": "object"}}, required=[]
        ),
        "LedgerTransferVoid": _closed({}, required=[]),
        "LedgerLinkedCreate": _linked_create(with_approvals=True),
        "LedgerLinkedPreviewCreate": _linked_create(with_approvals=False),
        "LedgerBatchCreate": _closed(
            {
                "transfers": {
                    "type": "array",
                    "minItems": 1,
                    # Each item is checked by the route and an invalid one is answered in its
                    # own slot (400 with its param) while the others run: the request as a
                    # whole is valid with any items here (even not objects), so the schema
                    # must not refuse it.
                    "items": {
                        "description": "a transfer (the fields of LedgerTransferCreate, a "
                        "debit_user with its approvals: the digest of POST "
                        "/v1/ledger/transfers/preview under the item's key) and its "
                        "idempotency_key (required); an invalid item is answered in its "
                        "slot, status 400 with the param at fault",
                    },
                }
            }
        ),
        "LedgerTransfer": _closed(
            {
                "id": TRANSFER_ID,
                "object": {"const": "ledger_transfer"},
                "livemode": {"type": "boolean"},
                "type": {"type": "string", "enum": ["transfer", "pending", "post", "void"]},
                "debit_account": {
                    "oneOf": [ACCOUNT_ID, {"type": "null"}],
                    "description": "null for the test faucet (a platform account)",
                },
                "credit_account": ACCOUNT_ID,
                "amount": {
                    **DIGITS,
                    "description": "what moved or was reserved (a partial post: the part)",
                },
                "asset": {"type": "string", "enum": ["baas"]},
                "ledger": {"type": "integer", "minimum": 1},
                "code": U16_CODE,
                "pending_transfer": {"oneOf": [TRANSFER_ID, {"type": "null"}]},
                "timeout_s": UINT,
                "operation": {
                    "oneOf": [HEX64, {"type": "null"}],
                    "description": "the operation's record id: its receipt is "
                    "/v1/records/{operation}/receipt (null on a read of the transfer)",
                },
            }
        ),
        "LedgerLinked": _closed(
            {
                "object": {"const": "linked_transfers"},
                "operation": HEX64,
                "transfers": {"type": "array", "items": _ref("LedgerTransfer")},
            }
        ),
        "LedgerBatchResults": _closed(
            {
                "object": {"const": "batch_result"},
                "results": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            _closed(
                                {
                                    "status": {"type": "integer", "enum": [200, 201]},
                                    "idempotency_key": _ref("IdempotencyKey"),
                                    "transfer": _ref("LedgerTransfer"),
                                }
                            ),
                            _closed(
                                {
                                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                                    "idempotency_key": {
                                        "description": "the item's idempotency_key as sent, "
                                        "valid or not (null if it had none)"
                                    },
                                    "error": _LEDGER_PROBLEM,
                                }
                            ),
                        ]
                    },
                },
            }
        ),
        "LedgerFaucet": _closed({"account": ACCOUNT_ID, "amount": AMOUNT}),
        "LedgerAccountList": _list_of("LedgerAccount", "/v1/ledger/accounts"),
        "LedgerTransferList": _list_of("LedgerTransfer", "/v1/ledger/transfers"),
    }
)


_LEDGER_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "required (400 idempotency_key_required): the operation's ids derive from "
    "it; a retry gets the first outcome, the same key with another body is 409",
    "schema": _ref("IdempotencyKey"),
}
_LEDGER_ERRORS = (*_SIGNED_ERRORS, 402, 403, 404, 409)


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _ledger_write(operation_id: str, summary: str, answer: str, body: str, **kw: Any) -> Schema:
    return _operation(
        operation_id,
        summary,
        {
            201: _json(answer, "applied", _IDEMPOTENCY_HEADER),
            200: _json(answer, "a retry: the first outcome", _IDEMPOTENCY_HEADER),
        },
        _LEDGER_ERRORS,
        body=body,
        parameters=[*kw.get("parameters", []), _LEDGER_KEY],
    )


_TRANSFER_PATH_ID = _path_param("id", "the transfer id (tr_...)")
PATHS.update(
    {
        "/v1/ledger/accounts": {
            "post": _ledger_write(
                "createLedgerAccount",
                "Open an account on an asset of the credential's mode (its id is derived)",
                "LedgerAccount",
                "LedgerAccountCreate",
            ),
            "get": _operation(
                "listLedgerAccounts",
                "Your accounts of the credential's mode, in id order",
                {200: _json("LedgerAccountList", "a page of accounts")},
                _SIGNED_ERRORS,
                parameters=[
                    _LIMIT,
                    _string_query("starting_after", "the last id of the previous page", ACCOUNT_ID),
                ],
            ),
        },
        "/v1/ledger/accounts/{id}": {
            "get": _operation(
                "getLedgerAccount",
                "An account and its balances (another partner's or mode's: 404)",
                {200: _json("LedgerAccount", "the account")},
                (*_SIGNED_ERRORS, 404),
                parameters=[_path_param("id", "the account id (acct_...)")],
            )
        },
        "/v1/ledger/transfers": {
            "post": _ledger_write(
                "createLedgerTransfer",
                "Move an amount between two of the partner's accounts (pending: reserve it)",
                "LedgerTransfer",
                "LedgerTransferCreate",
            ),
            "get": _operation(
                "listLedgerTransfers",
                "Your transfers of the credential's mode, in id order; with `account` (yours), "
                "that account's, newest first",
                {200: _json("LedgerTransferList", "a page of transfers")},
                (*_SIGNED_ERRORS, 404),
                parameters=[
                    _LIMIT,
                    _string_query(
                        "starting_after", "the last id of the previous page", TRANSFER_ID
                    ),
                    _string_query("account", "one of your accounts", ACCOUNT_ID),
                ],
            ),
        },
        "/v1/ledger/transfers/preview": {
            "post": _operation(
                "previewLedgerTransfer",
                "What POST /v1/ledger/transfers with this body and Idempotency-Key will be, "
                "and the digest (EIP-712 Approve) its debited users sign: nothing is proposed",
                {200: _json("LedgerTransferPreview", "the preview", _IDEMPOTENCY_HEADER)},
                (*_SIGNED_ERRORS, 404),
                body="LedgerTransferPreviewCreate",
                parameters=[_LEDGER_KEY],
            )
        },
        "/v1/ledger/transfers/linked": {
            "post": _ledger_write(
                "createLedgerLinkedTransfers",
                "A chain of transfers applied as one: all or none",
                "LedgerLinked",
                "LedgerLinkedCreate",
            )
        },
        "/v1/ledger/transfers/linked/preview": {
            "post": _operation(
                "previewLedgerLinkedTransfers",
                "What POST /v1/ledger/transfers/linked with this body and Idempotency-Key will "
                "be, and the digest (EIP-712 Approve) each debited user signs: nothing is "
                "proposed",
                {200: _json("LedgerLinkedPreview", "the preview", _IDEMPOTENCY_HEADER)},
                (*_SIGNED_ERRORS, 404),
                body="LedgerLinkedPreviewCreate",
                parameters=[_LEDGER_KEY],
            )
        },
        "/v1/ledger/transfers/batch": {
            "post": _operation(
                "createLedgerTransfers",
                "Many transfers, each its own operation with its own idempotency_key: one "
                "result (with its own status) per transfer, in order",
                {200: _json("LedgerBatchResults", "one result per transfer")},
                _SIGNED_ERRORS,
                body="LedgerBatchCreate",
            )
        },
        "/v1/ledger/transfers/{id}": {
            "get": _operation(
                "getLedgerTransfer",
                "A transfer (another partner's or mode's: 404)",
                {200: _json("LedgerTransfer", "the transfer")},
                (*_SIGNED_ERRORS, 404),
                parameters=[_TRANSFER_PATH_ID],
            )
        },
        "/v1/ledger/transfers/{id}/post": {
            "post": _ledger_write(
                "postLedgerTransfer",
                "Post a pending transfer: all of it, or `amount` (the rest is released)",
                "LedgerTransfer",
                "LedgerTransferResolve",
                parameters=[_TRANSFER_PATH_ID],
            )
        },
        "/v1/ledger/transfers/{id}/void": {
            "post": _ledger_write(
                "voidLedgerTransfer",
                "Void a pending transfer: release its reservation",
                "LedgerTransfer",
                "LedgerTransferVoid",
                parameters=[_TRANSFER_PATH_ID],
            )
        },
        "/v1/test/faucet": {
            "post": _ledger_write(
                "testFaucet",
                "Test mode only: BAAS from the platform's faucet to one of the partner's "
                "accounts (live mode: 400 test_mode_only)",
                "LedgerTransfer",
                "LedgerFaucet",
            )
        },
    }
)

# --- wallet links (gateway/wallet_routes.py) ---------------------------------------------

USER_ID: Schema = {"type": "string", "minLength": 1, "maxLength": 255}
_WALLET_LINK: dict[str, Schema] = {
    "object": {"const": "wallet_link"},
    "user_id": USER_ID,
    "user_ref": HEX64,
    "wallet": {"type": "string", "pattern": "^0x[0-9a-f]{40}$"},
    "livemode": {"type": "boolean"},
}
_WALLET_BALANCE: dict[str, Schema] = {
    "asset": {"type": "string", "enum": ["baas"]},
    "scale": {"type": "integer", "minimum": 0, "maximum": 18},
    "ledger": {"type": "integer", "minimum": 1},
    **SCHEMAS["LedgerBalance"]["properties"],
}
_LINK_SIGNED: dict[str, Schema] = {
    "user_id": USER_ID,
    "wallet": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
    "deadline": {"type": "integer", "minimum": 1},
    "nonce": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
    "signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"},
}
SCHEMAS.update(
    {
        "WalletLinkCreate": _closed(_LINK_SIGNED),
        "WalletLink": _closed(_WALLET_LINK),
        "WalletBalance": _closed(_WALLET_BALANCE),
        "WalletLinkRead": _closed(
            {**_WALLET_LINK, "balances": {"type": "array", "items": _ref("WalletBalance")}}
        ),
        "WalletBalanceList": _closed(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _closed(
                        {
                            "object": {"const": "wallet_balance"},
                            "livemode": {"type": "boolean"},
                            **_WALLET_BALANCE,
                        }
                    ),
                },
                "has_more": {"type": "boolean"},
                "url": {"type": "string"},
            }
        ),
        "WalletUnlink": {
            "oneOf": [
                _closed({}),
                _closed({k: v for k, v in _LINK_SIGNED.items() if k != "user_id"}),
            ],
            "description": "{} to unlink with your own authority; the user's signed EIP-712 "
            "Unlink fields to unlink with theirs",
        },
        "WalletLinkDeleted": _closed(
            {**_WALLET_LINK, "deleted": {"const": True}},
            required=["object", "user_id", "user_ref", "livemode", "deleted"],
        ),
        "OneTimeCodeCreate": _closed(
            {
                "wallet": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                "code_hash": {
                    "type": "string",
                    "pattern": "^0x[0-9a-fA-F]{64}$",
                    "description": "ids.code_hash(code): never the code itself",
                },
                "asset": {"type": "string", "enum": ["baas"]},
                "amount_limit": AMOUNT,
                "expiry": {"type": "integer", "minimum": 1, "description": "Unix s"},
                "signature": {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"},
            }
        ),
        "OneTimeCode": _closed(
            {
                "id": {"type": "string", "pattern": "^otc_[0-9a-f]{64}$"},
                "object": {"const": "one_time_code"},
                "livemode": {"type": "boolean"},
                "code_hash": HEX0X64,
                "wallet": {"type": "string", "pattern": "^0x[0-9a-f]{40}$"},
                "asset": {"type": "string", "enum": ["baas"]},
                "ledger": {"type": "integer", "minimum": 1},
                "amount_limit": AMOUNT,
                "expiry": {"type": "integer", "minimum": 1},
            }
        ),
    }
)
PATHS.update(
    {
        "/v1/wallets/links": {
            "post": _ledger_write(
                "createWalletLink",
                "Link your user id to a user's wallet, with the user's EIP-712 Link signature",
                "WalletLink",
                "WalletLinkCreate",
            )
        },
        "/v1/wallets/links/{user_id}": {
            "get": _operation(
                "getWalletLink",
                "The wallet linked to your user id in this mode, and its balances",
                {200: _json("WalletLinkRead", "the link")},
                (*_SIGNED_ERRORS, 404),
                parameters=[_path_param("user_id", "your own user id")],
            )
        },
        "/v1/wallets/links/{user_id}/balances": {
            "get": _operation(
                "listWalletBalances",
                "The balances (one per asset) of the wallet linked to your user id",
                {200: _json("WalletBalanceList", "the balances")},
                (*_SIGNED_ERRORS, 404),
                parameters=[_path_param("user_id", "your own user id")],
            )
        },
        "/v1/wallets/links/{user_id}/unlink": {
            "post": _operation(
                "unlinkWallet",
                "Unlink your user id from its wallet, with your authority ({}) or the user's "
                "(a signed EIP-712 Unlink); the wallet and its balances stay the user's",
                {200: _json("WalletLinkDeleted", "unlinked (or nothing was linked any more)")},
                _LEDGER_ERRORS,
                body="WalletUnlink",
                parameters=[_path_param("user_id", "your own user id"), _LEDGER_KEY],
            )
        },
        "/v1/wallets/codes": {
            "post": _ledger_write(
                "createOneTimeCode",
                "Register a one-time code a user issued (its hash, signed with the user's "
                "EIP-712 CodeIssue): a later debit of the wallet sends the code in approvals",
                "OneTimeCode",
                "OneTimeCodeCreate",
            )
        },
    }
)

# --- the Bridge (gateway/bridge_routes.py) -------------------------------------------------

_AMOUNT0: Schema = {**DIGITS, "description": "an integer as a string of digits (0 allowed)"}
_POINT_CODE: Schema = {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,63}$"}
_TOKEN_ADDRESS: Schema = {
    "type": "string",
    "pattern": "^0x[0-9a-fA-F]{40}$",
    "description": "the token's ERC-20 contract address",
}
_ASSET_REF: Schema = {
    "type": "string",
    "pattern": "^([A-Z][A-Z0-9_]{0,63}|0x[0-9a-fA-F]{40})$",
    "description": "your point asset's code, or your token's ERC-20 address",
}
_BRIDGE_OP = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_LIVEMODE: Schema = {"type": "boolean"}
_DIRECTION: Schema = {
    "enum": ["in", "out"],
    "description": "in: points to BAAS (the user gives points); out: BAAS to points",
}
_POLICY_AMOUNTS: dict[str, Schema] = {
    "rate_num": AMOUNT,
    "rate_den": AMOUNT,
    "swap_min": AMOUNT,
    "swap_max": AMOUNT,
    "user_window_max": _AMOUNT0,
    "partner_window_max": _AMOUNT0,
    "fee_min": _AMOUNT0,
}
_POLICY_SET: dict[str, Schema] = {
    **_POLICY_AMOUNTS,
    "window_s": {"type": "integer", "minimum": 1, "maximum": 4294967295},
    "fee_bps": {"type": "integer", "minimum": 0, "maximum": 9999},
    "enabled": {"type": "boolean"},
}
_QUOTE_FIELDS: dict[str, Schema] = {
    "object": {"const": "bridge_quote"},
    "livemode": _LIVEMODE,
    "asset": _ASSET_REF,
    "user": USER_ID,
    "wallet": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "the wallet id"},
    "direction": _DIRECTION,
    "amount_in": AMOUNT,
    "amount_out": _AMOUNT0,
    "fee": _AMOUNT0,
    "rate_num": AMOUNT,
    "rate_den": AMOUNT,
    "policy_version": {"type": "integer", "minimum": 1},
    "issued_ms": UINT,
    "expires_ms": UINT,
    "digest": {**HEX64, "description": "what the swap's approval binds (Quote.digest)"},
}
_APPROVALS: Schema = _TRANSFER_FIELDS["approvals"]
_APPROVALS_REQUIRED: Schema = SCHEMAS["LedgerTransferPreview"]["properties"]["approvals_required"]
SCHEMAS["LedgerLinkedPreview"] = _closed(
    {
        **{
            k: v
            for k, v in SCHEMAS["LedgerTransferPreview"]["properties"].items()
            if k != "transfer"
        },
        "object": {"const": "linked_transfers_preview"},
        "transfers": {"type": "array", "items": _ref("LedgerTransfer")},
    }
)


def _bridge_preview(kind: str, name: str, inner: str) -> Schema:
    return request_preview(kind, name, inner, "the Bridge request", "business/bridge/wire.py")


def request_preview(kind: str, name: str, inner: str, request: str, wire: str) -> Schema:
    """A preview of an operation carrying one request (Bridge, payments): what the user signs."""
    return _closed(
        {
            "object": {"const": kind},
            "livemode": _LIVEMODE,
            "operation": {**HEX64, "description": "the record id the operation will have"},
            "request": {
                "type": "string",
                "pattern": "^([0-9a-f]{2})+$",
                "description": f"{request} as the log carries it "
                f"({wire}): with `operation`, what `digest` covers",
            },
            "digest": {**HEX0X64, "description": "operation_digest(operation, request)"},
            name: _ref(inner),
            "approvals_required": _APPROVALS_REQUIRED,
        }
    )


SCHEMAS.update(
    {
        "BridgePointsCreate": _closed(
            {
                "code": _POINT_CODE,
                "scale": {"type": "integer", "minimum": 0, "maximum": 18},
                "validity_days": {"type": "integer", "minimum": 0, "maximum": 3650},
            },
            required=["code", "scale"],
        ),
        "BridgePointAsset": _closed(
            {
                "object": {"const": "bridge_point_asset"},
                "livemode": _LIVEMODE,
                "code": _POINT_CODE,
                "scale": {"type": "integer", "minimum": 0, "maximum": 18},
                "validity_days": UINT,
                "ledger": {"type": "integer", "minimum": 1},
                "supply": {**_AMOUNT0, "description": "points outstanding: your liability"},
            },
            required=["object", "livemode", "code", "scale", "validity_days", "ledger"],
        ),
        "BridgeTokenCreate": _closed(
            {
                "symbol": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,15}$"},
                "decimals": {"type": "integer", "minimum": 0, "maximum": 18},
                "address": _TOKEN_ADDRESS,
            },
            required=["symbol", "decimals", "address"],
        ),
        "BridgeToken": _closed(
            {
                "id": _TOKEN_ADDRESS,
                "object": {"const": "bridge_token"},
                "livemode": _LIVEMODE,
                "symbol": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,15}$"},
                "decimals": {"type": "integer", "minimum": 0, "maximum": 18},
                "address": _TOKEN_ADDRESS,
                "ledger": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the token's ledger, allocated when it was registered",
                },
                "liquidity": {**_AMOUNT0, "description": "what swaps to the token can pay out"},
            },
            required=["id", "object", "livemode", "symbol", "decimals", "address", "ledger"],
        ),
        "BridgeIssue": _closed({"user": USER_ID, "amount": AMOUNT}),
        "BridgeRedeemPreviewCreate": _closed({"user": USER_ID, "amount": AMOUNT}),
        "BridgeRedeem": _closed(
            {"user": USER_ID, "amount": AMOUNT, "approvals": _APPROVALS},
            required=["user", "amount"],  # without approvals: 400 approval_required
        ),
        "BridgeReverse": _closed({"issuance": HEX64, "amount": AMOUNT}),
        "BridgePointsMove": _closed(
            {
                "id": _BRIDGE_OP,
                "object": {
                    "enum": [
                        "bridge_issuance",
                        "bridge_redemption",
                        "bridge_reversal",
                        "bridge_liquidity_funding",
                    ]
                },
                "livemode": _LIVEMODE,
                "user": {"oneOf": [USER_ID, {"type": "null"}]},
                "amount": AMOUNT,
                "operation": {**HEX64, "description": "its receipt: /v1/records/{operation}"},
                "issuance": HEX64,
            },
            required=["id", "object", "livemode", "user", "amount", "operation"],
        ),
        "BridgeUserPoints": _closed(
            {
                "object": {"const": "bridge_user_points"},
                "livemode": _LIVEMODE,
                "user": USER_ID,
                "asset": _POINT_CODE,
                "balance": {**_AMOUNT0, "description": "spendable now (unexpired lots)"},
                "total": _AMOUNT0,
                "lots": {
                    "type": "array",
                    "items": _closed(
                        {
                            "expiry_day": {**UINT, "description": "days since 1970; 2^32-1: never"},
                            "origin": {"enum": ["issued", "bought", "other"]},
                            "amount": _AMOUNT0,
                        }
                    ),
                },
            }
        ),
        "BridgePolicySet": _closed(_POLICY_SET),
        "BridgePolicy": _closed(
            {
                "object": {"const": "bridge_policy"},
                "livemode": _LIVEMODE,
                "asset": _ASSET_REF,
                "version": {"type": "integer", "minimum": 1},
                **_POLICY_SET,
                "changed_ms": UINT,
            }
        ),
        "BridgePolicyRead": {
            "oneOf": [
                _ref("BridgePolicy"),
                _closed(
                    {
                        "object": {"const": "bridge_policy_change"},
                        "livemode": _LIVEMODE,
                        "asset": _ASSET_REF,
                        "actor": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "changed_ms": UINT,
                        "policy": _ref("BridgePolicy"),
                    }
                ),
            ]
        },
        "BridgeTopUp": _closed({"amount": AMOUNT}),
        "BridgeThreshold": _closed({"threshold": _AMOUNT0}),
        "BridgeReserve": _closed(
            {
                "object": {"const": "bridge_reserve"},
                "livemode": _LIVEMODE,
                "asset": {"const": "baas"},
                "level": _AMOUNT0,
                "threshold": _AMOUNT0,
                "low": {"type": "boolean"},
                "low_events": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "reserve.low events this reserve raised (log feature 11)",
                },
                "last_low_event": {
                    "oneOf": [
                        _closed(
                            {
                                "id": {
                                    **HEX64,
                                    "description": "opaque: the same on every "
                                    "replica, for deduplication",
                                },
                                "type": {"const": "reserve.low"},
                                "operation": {
                                    **HEX64,
                                    "description": "the operation that "
                                    "crossed the threshold (its receipt)",
                                },
                                "created_ms": UINT,
                                "level": _AMOUNT0,
                                "threshold": _AMOUNT0,
                            }
                        ),
                        {"type": "null"},
                    ]
                },
                "history": {
                    "type": "array",
                    "items": _closed({"timestamp": DIGITS, "level": _AMOUNT0}),
                },
            }
        ),
        "BridgeQuoteCreate": _closed(
            {
                "asset": _ASSET_REF,
                "user": USER_ID,
                "direction": _DIRECTION,
                "amount_in": AMOUNT,
            }
        ),
        "BridgeQuote": _closed(_QUOTE_FIELDS),
        "BridgeSwapPreviewCreate": _closed({"user": USER_ID, "quote": _ref("BridgeQuote")}),
        "BridgeSwapCreate": _closed(
            {"user": USER_ID, "quote": _ref("BridgeQuote"), "approvals": _APPROVALS},
            required=["user", "quote"],  # without approvals: 400 approval_required
        ),
        "BridgeSwap": _closed(
            {
                "id": {"type": "string", "pattern": "^swap_[0-9a-f]{64}$"},
                "object": {"const": "bridge_swap"},
                "livemode": _LIVEMODE,
                "status": {"enum": ["preview", "succeeded", "failed"]},
                "user": USER_ID,
                "asset": _ASSET_REF,
                "direction": _DIRECTION,
                "amount_in": AMOUNT,
                "amount_out": _AMOUNT0,
                "fee": _AMOUNT0,
                "policy_version": {"type": "integer", "minimum": 1},
                "quote_digest": HEX64,
                "operation": {**HEX64, "description": "its receipt: /v1/records/{operation}"},
                "log_time_ms": {"oneOf": [UINT, {"type": "null"}]},
                "failure_code": {"oneOf": [{"type": "string"}, {"type": "null"}]},
            },
            required=[
                "id",
                "object",
                "livemode",
                "status",
                "user",
                "asset",
                "direction",
                "amount_in",
                "amount_out",
                "fee",
                "policy_version",
                "quote_digest",
                "operation",
                "log_time_ms",
            ],
        ),
        "BridgeSwapList": _list_of("BridgeSwap", "/v1/bridge/swaps"),
        "BridgeTokenList": _list_of("BridgeToken", "/v1/bridge/tokens"),
        "BridgeSwapBatchCreate": _closed(
            {
                "swaps": {
                    "type": "array",
                    "minItems": 1,
                    # As LedgerBatchCreate: the route checks each item and answers an invalid
                    # one in its own slot, so the request is valid with any items.
                    "items": {
                        "description": "a swap (the fields of BridgeSwapCreate) and its "
                        "idempotency_key (required); an invalid item is answered in its slot, "
                        "status 400 with the param at fault",
                    },
                }
            }
        ),
        "BridgeSwapBatchResults": _closed(
            {
                "object": {"const": "batch_result"},
                "results": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            _closed(
                                {
                                    "status": {"type": "integer", "enum": [200, 201]},
                                    "idempotency_key": _ref("IdempotencyKey"),
                                    "swap": _ref("BridgeSwap"),
                                }
                            ),
                            SCHEMAS["LedgerBatchResults"]["properties"]["results"]["items"][
                                "oneOf"
                            ][1],
                        ]
                    },
                },
            }
        ),
        "BridgeRedeemPreview": _bridge_preview(
            "bridge_redemption_preview", "redemption", "BridgePointsMove"
        ),
        "BridgeSwapPreview": _bridge_preview("bridge_swap_preview", "swap", "BridgeSwap"),
    }
)
_ASSET_PATH = _path_param("asset", "your point asset's code, or your token's ERC-20 address")
_TOKEN_PATH = _path_param("asset", "your token's ERC-20 address (0x + 40 hex)")


def _bridge_preview_op(operation_id: str, summary: str, answer: str, body: str) -> Schema:
    return _operation(
        operation_id,
        summary,
        {200: _json(answer, "the preview", _IDEMPOTENCY_HEADER)},
        (*_SIGNED_ERRORS, 403, 404),
        body=body,
        parameters=[_ASSET_PATH, _LEDGER_KEY] if "Redeem" in answer else [_LEDGER_KEY],
    )


def _bridge_read(operation_id: str, summary: str, answer: str, **kw: Any) -> Schema:
    return _operation(
        operation_id,
        summary,
        {200: _json(answer, "found")},
        (*_SIGNED_ERRORS, 403, 404),
        parameters=kw.get("parameters", [_ASSET_PATH]),
    )


PATHS.update(
    {
        "/v1/bridge/points": {
            "post": _ledger_write(
                "createBridgePoints",
                "Define your point asset of this mode (on the point ledger you were allocated)",
                "BridgePointAsset",
                "BridgePointsCreate",
            )
        },
        "/v1/bridge/points/{asset}": {
            "get": _bridge_read(
                "getBridgePoints",
                "Your point asset and its supply (your liability)",
                "BridgePointAsset",
            )
        },
        "/v1/bridge/points/{asset}/issue": {
            "post": _ledger_write(
                "issueBridgePoints",
                "Issue points to the wallet you linked to your user id",
                "BridgePointsMove",
                "BridgeIssue",
                parameters=[_ASSET_PATH],
            )
        },
        "/v1/bridge/points/{asset}/redeem/preview": {
            "post": _bridge_preview_op(
                "previewBridgeRedeem",
                "What a redemption with this body and Idempotency-Key will be, and the EIP-712 "
                "Approve the user signs: nothing is proposed",
                "BridgeRedeemPreview",
                "BridgeRedeemPreviewCreate",
            )
        },
        "/v1/bridge/points/{asset}/redeem": {
            "post": _ledger_write(
                "redeemBridgePoints",
                "The user spends points with you, with their approval (signature or code)",
                "BridgePointsMove",
                "BridgeRedeem",
                parameters=[_ASSET_PATH],
            )
        },
        "/v1/bridge/points/{asset}/reverse": {
            "post": _ledger_write(
                "reverseBridgePoints",
                "Take back (part of) one of your issuances, at most its unspent amount",
                "BridgePointsMove",
                "BridgeReverse",
                parameters=[_ASSET_PATH],
            )
        },
        "/v1/bridge/points/{asset}/liquidity": {
            "post": _ledger_write(
                "fundBridgeLiquidity",
                "Move points from your issuance account to the liquidity swaps out pay from",
                "BridgePointsMove",
                "BridgeTopUp",
                parameters=[_ASSET_PATH],
            )
        },
        "/v1/bridge/points/{asset}/users/{user_id}": {
            "get": _bridge_read(
                "getBridgeUserPoints",
                "A linked user's spendable points and lots",
                "BridgeUserPoints",
                parameters=[_ASSET_PATH, _path_param("user_id", "your own user id")],
            )
        },
        "/v1/bridge/points/{asset}/policy": {
            "post": _ledger_write(
                "setBridgePolicy",
                "Set the asset's swap policy: a new version, an audited log entry",
                "BridgePolicy",
                "BridgePolicySet",
                parameters=[_ASSET_PATH],
            ),
            "get": _bridge_read(
                "getBridgePolicy",
                "The current policy, or with `version` the audited change that made it",
                "BridgePolicyRead",
                parameters=[
                    _ASSET_PATH,
                    _string_query(
                        "version",
                        "a policy version",
                        {"type": "string", "pattern": "^[0-9]{1,10}$"},
                    ),
                ],
            ),
        },
        "/v1/bridge/tokens": {
            "post": _ledger_write(
                "createBridgeToken",
                "Register a token (symbol, decimals, ERC-20 address): its ledger is allocated "
                "in this mode; an address registered already is 409 token_address_taken",
                "BridgeToken",
                "BridgeTokenCreate",
            ),
            "get": _bridge_read(
                "listBridgeTokens",
                "Your tokens in this mode, in registration order (one page)",
                "BridgeTokenList",
                parameters=[],
            ),
        },
        "/v1/bridge/tokens/{asset}": {
            "get": _bridge_read(
                "getBridgeToken",
                "One of your tokens and its liquidity",
                "BridgeToken",
                parameters=[_TOKEN_PATH],
            )
        },
        "/v1/bridge/tokens/{asset}/liquidity": {
            "post": _ledger_write(
                "fundBridgeTokenLiquidity",
                "Test mode: fund the token's liquidity from the faucet (its issuance account); "
                "live: 400 test_mode_only (live tokens come from on-chain deposits)",
                "BridgePointsMove",
                "BridgeTopUp",
                parameters=[_TOKEN_PATH],
            )
        },
        "/v1/bridge/tokens/{asset}/policy": {
            "post": _ledger_write(
                "setBridgeTokenPolicy",
                "Set the token's swap policy: a new version, an audited log entry",
                "BridgePolicy",
                "BridgePolicySet",
                parameters=[_TOKEN_PATH],
            ),
            "get": _bridge_read(
                "getBridgeTokenPolicy",
                "The token's current policy, or with `version` the change that made it",
                "BridgePolicyRead",
                parameters=[
                    _TOKEN_PATH,
                    _string_query(
                        "version",
                        "a policy version",
                        {"type": "string", "pattern": "^[0-9]{1,10}$"},
                    ),
                ],
            ),
        },
        "/v1/bridge/reserve/top_up": {
            "post": _ledger_write(
                "topUpBridgeReserve",
                "Test mode: top up your BAAS reserve from the faucet (live: 400 test_mode_only)",
                "BridgeReserve",
                "BridgeTopUp",
            )
        },
        "/v1/bridge/reserve/threshold": {
            "post": _ledger_write(
                "setBridgeReserveThreshold",
                "The level below which your reserve is reported low",
                "BridgeReserve",
                "BridgeThreshold",
            )
        },
        "/v1/bridge/reserve": {
            "get": _bridge_read(
                "getBridgeReserve",
                "Your BAAS reserve: level, threshold, low, history of levels (oldest first)",
                "BridgeReserve",
                parameters=[
                    _LIMIT,
                    _string_query(
                        "after",
                        "a history timestamp",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    ),
                ],
            )
        },
        "/v1/bridge/quotes": {
            "post": _operation(
                "createBridgeQuote",
                "The terms of a swap now (nothing is written: no Idempotency-Key); a refusal "
                "is the code the swap would get (policy_disabled, below_min, ...)",
                {200: _json("BridgeQuote", "the quote")},
                (*_SIGNED_ERRORS, 402, 403, 404, 409),
                body="BridgeQuoteCreate",
            )
        },
        "/v1/bridge/swaps/preview": {
            "post": _bridge_preview_op(
                "previewBridgeSwap",
                "What a swap with this body and Idempotency-Key will be, and the EIP-712 "
                "Approve the user signs: nothing is proposed",
                "BridgeSwapPreview",
                "BridgeSwapPreviewCreate",
            )
        },
        "/v1/bridge/swaps": {
            "post": _ledger_write(
                "createBridgeSwap",
                "Execute a quote for your linked user, with their approval: one operation",
                "BridgeSwap",
                "BridgeSwapCreate",
            ),
            "get": _operation(
                "listBridgeSwaps",
                "Your swaps of the credential's mode, newest first, succeeded and failed; "
                "filters combine (created_gte <= log_time_ms < created_lt)",
                {200: _json("BridgeSwapList", "a page of swaps")},
                (*_SIGNED_ERRORS, 404),
                parameters=[
                    _LIMIT,
                    _string_query(
                        "starting_after",
                        "the last swap id of the previous page",
                        {"type": "string", "pattern": "^swap_[0-9a-f]{64}$"},
                    ),
                    _string_query("user", "your user id: that user's swaps", USER_ID),
                    _string_query("asset", "your point code or token address", _ASSET_REF),
                    _string_query(
                        "status", "succeeded or failed", {"enum": ["succeeded", "failed"]}
                    ),
                    _string_query(
                        "created_gte",
                        "log time in ms, inclusive",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    ),
                    _string_query(
                        "created_lt",
                        "log time in ms, exclusive",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    ),
                ],
            ),
        },
        "/v1/bridge/swaps/batch": {
            "post": _operation(
                "createBridgeSwaps",
                "Many swaps, each its own operation with its own idempotency_key and approval: "
                "one result (with its own status) per swap, in order",
                {200: _json("BridgeSwapBatchResults", "one result per swap")},
                _SIGNED_ERRORS,
                body="BridgeSwapBatchCreate",
            )
        },
        "/v1/bridge/swaps/{id}": {
            "get": _bridge_read(
                "getBridgeSwap",
                "A swap and its outcome (another partner's: 404)",
                "BridgeSwap",
                parameters=[_path_param("id", "the swap id (swap_...)")],
            )
        },
    }
)

SIGNATURE_DESCRIPTION = f"""Every partner request carries `{HEADER_KEY}` (the API key),
`{HEADER_TIMESTAMP}` (Unix seconds, within the signature window), `{HEADER_NONCE}` (optional,
single use) and `{HEADER_SIGNATURE}`: lowercase hex of HMAC-SHA256(secret, canonical), where
canonical is the newline-joined method, path with query, timestamp, nonce (or empty),
Idempotency-Key (or empty) and the hex SHA-256 of the body (`gateway/auth.py`,
`tools/client.py`). A partner credential is in one mode, test (`pk_test_...`) or live
(`pk_live_...`), and every request is served in that mode; an operator credential (`ok_...`,
signed the same way) may call only `/v1/admin/...` and `/v1/audit`."""


# --- webhooks (gateway/webhook_routes.py, docs/webhooks.md) -------------------------------------
_WEBHOOK_EVENT: Schema = {
    "type": "string",
    "enum": ["*", *sorted(t.api_name for t in EventType)],
}
_WEBHOOK_ENDPOINT_FIELDS: dict[str, Schema] = {
    "id": {"type": "string", "pattern": "^we_[0-9a-f]{16}$"},
    "object": {"const": "webhook_endpoint"},
    "url": {"type": "string"},
    "livemode": {"type": "boolean"},
    "enabled_events": {"type": "array", "items": _WEBHOOK_EVENT},
    "status": {"type": "string", "enum": ["enabled", "disabled"]},
    "disabled_reason": {
        "type": ["string", "null"],
        "enum": ["partner", "failing", None],
        "description": "when disabled: partner (you disabled it) or failing (every delivery "
        "attempt failed for [webhooks] endpoint_failing_s_max, 4 days by default)",
    },
    "disabled_at": {
        "type": ["integer", "null"],
        "minimum": 0,
        "description": "when it was disabled, Unix seconds",
    },
    "created_ms": UINT,
    "secrets_live": UINT,
    "secret": {
        "type": "string",
        "pattern": "^whsec_[0-9a-f]{64}$",
        "description": "the signing secret: only in the answer that made it",
    },
}
_NULLABLE_STRING: Schema = {"type": ["string", "null"]}
SCHEMAS.update(
    {
        "WebhookEndpointCreate": _closed(
            {
                "url": {"type": "string"},
                "enabled_events": {"type": "array", "items": _WEBHOOK_EVENT},
            },
            ["url"],
        ),
        "WebhookEndpointRotate": _closed({"overlap_s": UINT}, []),
        "WebhookEndpointUpdate": _closed(
            {
                "disabled": {
                    "type": "boolean",
                    "description": "false re-enables the endpoint (its paused deliveries go out "
                    "again); true disables it",
                }
            },
            ["disabled"],
        ),
        "WebhookEndpoint": _closed(
            _WEBHOOK_ENDPOINT_FIELDS, [k for k in _WEBHOOK_ENDPOINT_FIELDS if k != "secret"]
        ),
        "WebhookEndpointList": _list_of("WebhookEndpoint", "/v1/webhook_endpoints"),
        "WebhookEndpointDeleted": _closed(
            {
                "id": {"type": "string"},
                "object": {"const": "webhook_endpoint"},
                "deleted": {"const": True},
            }
        ),
        "WebhookDelivery": _closed(
            {
                "id": {"type": "string", "pattern": "^whd_[0-9]{1,19}$"},
                "object": {"const": "webhook_delivery"},
                "event": {"type": "string", "pattern": "^evt_[0-9a-f]{64}$"},
                "event_sequence": UINT,
                "endpoint": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": ["pending", "delivered", "failed", "dropped", "paused"],
                    "description": "paused: held while its endpoint is disabled",
                },
                "reason": _NULLABLE_STRING,
                "created_ms": UINT,
                "next_attempt_ms": {"type": ["integer", "null"]},
                "attempts_total": UINT,
                "attempts": {
                    "type": "array",
                    "items": _closed(
                        {
                            "at_ms": UINT,
                            "status": UINT,
                            "error": _NULLABLE_STRING,
                            "duration_ms": UINT,
                        }
                    ),
                },
            }
        ),
        "WebhookDeliveryList": _closed(
            {
                "object": {"const": "list"},
                "url": {"type": "string"},
                "has_more": {"type": "boolean"},
                "data": {"type": "array", "items": _ref("WebhookDelivery")},
            }
        ),
    }
)
_WEBHOOK_ENDPOINT_ID = _path_param("id", "the webhook endpoint's id (we_...)")
_WEBHOOK_DELIVERY_ID = _path_param("id", "the delivery's id (whd_...)")
_WEBHOOK_ERRORS = (*_SIGNED_ERRORS, 404)
_STARTING_AFTER_DELIVERY = _query(
    "starting_after", "a delivery id: the page after it", False, "^whd_[0-9]{1,19}$"
)


def _webhook_operation(
    operation_id: str,
    summary: str,
    answers: dict[int, Schema],
    codes: dict[int, tuple[str, ...]],
    **kw: Any,
) -> Schema:
    """A webhook route: its problem codes (beyond the common ones) named in its description."""
    operation = _operation(operation_id, summary, answers, _WEBHOOK_ERRORS, **kw)
    operation["description"] = "Problem codes: " + "; ".join(
        f"{status} {', '.join(f'`{c}`' for c in names)}" for status, names in codes.items()
    )
    return operation


_ENDPOINT_NOT_FOUND = ("webhook_endpoint_not_found",)
_KEYRING_READ_ONLY = ("keyring_read_only",)
PATHS.update(
    {
        "/v1/webhook_endpoints": {
            "post": _webhook_operation(
                "createWebhookEndpoint",
                "Register a webhook endpoint of this mode; its signing secret is in this "
                "answer only (docs/webhooks.md)",
                {201: _json("WebhookEndpoint", "made, with its secret (shown this once)")},
                {
                    400: (
                        "invalid_request",
                        "webhook_url_invalid",
                        "webhook_url_forbidden",
                        "parameter_invalid",
                        "webhook_endpoint_limit_reached",
                    ),
                    503: _KEYRING_READ_ONLY,
                },
                body="WebhookEndpointCreate",
            ),
            "get": _operation(
                "listWebhookEndpoints",
                "Your webhook endpoints of this mode (no secrets)",
                {200: _json("WebhookEndpointList", "found")},
                _SIGNED_ERRORS,
            ),
        },
        "/v1/webhook_endpoints/{id}": {
            "post": _webhook_operation(
                "updateWebhookEndpoint",
                "Re-enable (disabled: false) or disable (disabled: true) a webhook endpoint",
                {200: _json("WebhookEndpoint", "changed")},
                {400: ("invalid_request",), 404: _ENDPOINT_NOT_FOUND, 503: _KEYRING_READ_ONLY},
                body="WebhookEndpointUpdate",
                parameters=[_WEBHOOK_ENDPOINT_ID],
            ),
            "delete": _webhook_operation(
                "deleteWebhookEndpoint",
                "Remove a webhook endpoint (its queued deliveries are dropped)",
                {200: _json("WebhookEndpointDeleted", "removed")},
                {404: _ENDPOINT_NOT_FOUND, 503: _KEYRING_READ_ONLY},
                parameters=[_WEBHOOK_ENDPOINT_ID],
            ),
        },
        "/v1/webhook_endpoints/{id}/rotate_secret": {
            "post": _webhook_operation(
                "rotateWebhookEndpointSecret",
                "A new signing secret (in this answer only); the old one also signs until "
                "overlap_s (default [webhooks] rotation_overlap_s) has passed",
                {200: _json("WebhookEndpoint", "rotated, with the new secret")},
                {
                    400: ("invalid_request", "parameter_invalid", "webhook_secret_limit_reached"),
                    404: _ENDPOINT_NOT_FOUND,
                    503: _KEYRING_READ_ONLY,
                },
                body="WebhookEndpointRotate",
                parameters=[_WEBHOOK_ENDPOINT_ID],
            ),
        },
        "/v1/webhook_endpoints/{id}/deliveries": {
            "get": _webhook_operation(
                "listWebhookDeliveries",
                "The endpoint's deliveries, newest first, with their recorded attempts (the "
                "delivering gateway only)",
                {200: _json("WebhookDeliveryList", "found")},
                {
                    400: ("parameter_invalid",),
                    404: _ENDPOINT_NOT_FOUND,
                    503: ("webhooks_not_delivered_here",),
                },
                parameters=[_WEBHOOK_ENDPOINT_ID, _LIMIT, _STARTING_AFTER_DELIVERY],
            ),
        },
        "/v1/webhook_deliveries/{id}/resend": {
            "post": _webhook_operation(
                "resendWebhookDelivery",
                "Send a finished delivery again, now, with a fresh retry schedule (paused "
                "instead while its endpoint is disabled)",
                {200: _json("WebhookDelivery", "queued again")},
                {
                    400: ("parameter_invalid", "delivery_pending"),
                    404: ("delivery_not_found",),
                    503: ("webhooks_not_delivered_here", "overloaded"),
                },
                parameters=[_WEBHOOK_DELIVERY_ID],
            ),
        },
    }
)

OPERATOR_SIGNATURE_DESCRIPTION = f"""An operator credential (`ok_<operator>_...`, made by
`baas-partners add-operator`) in `{HEADER_KEY}`, signed exactly like a partner request (see
`{PARTNER_SIGNATURE}`). Only the operations that list this scheme take it: the admin routes
(a partner credential gets 404 there, as for a route that does not exist for it) and
`/v1/audit`. Any other route answers it 401 `operator_credential`."""


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the whole document (callers may not share or change the module's)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": API_TITLE,
                "version": API_VERSION,
                "description": "The partner API of the BaaS B&P network. Every error is an "
                "RFC 9457 problem (application/problem+json) with a stable `code` (and "
                f"`param` where one parameter is at fault). `{API_VERSION_HEADER}` picks the "
                "dated API version; every answer carries the version it was made under.",
            },
            "servers": [{"url": "/"}],
            "paths": PATHS,
            "components": {
                "schemas": SCHEMAS,
                "securitySchemes": {
                    PARTNER_SIGNATURE: {
                        "type": "apiKey",
                        "in": "header",
                        "name": HEADER_KEY,
                        "description": SIGNATURE_DESCRIPTION,
                    },
                    OPERATOR_SIGNATURE: {
                        "type": "apiKey",
                        "in": "header",
                        "name": HEADER_KEY,
                        "description": OPERATOR_SIGNATURE_DESCRIPTION,
                    },
                },
            },
        }
    )


# The payments routes' paths and schemas (gateway/payments_routes.py), added with this module's
# helpers: imported last, once everything it uses is defined.
from gateway import openapi_payments  # noqa: E402

assert openapi_payments.__all__ == []
