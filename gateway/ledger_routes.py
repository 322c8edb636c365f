"""The ledger's partner API on the gateway: accounts, balances, transfers and the test faucet.

Every route is signed like the rest of the partner API and served in the signing credential's
mode (test or live). Shapes follow Stripe: objects carry ``id``, ``object`` and ``livemode``;
amounts are strings of digits (:mod:`business.ledger.amounts`); errors are problems with a
stable ``code`` and the offending ``param``. docs/ledger-guide.md is the partner's guide.

Routes:

* ``POST /v1/ledger/accounts`` ``{"asset": "baas", "code", "flags"?, "metadata"?}`` -> 201 the
  account (id derived, never chosen by the client);
* ``GET /v1/ledger/accounts/{id}`` -> the account with its balances;
* ``GET /v1/ledger/accounts?limit=&starting_after=`` -> a Stripe list of your accounts of the
  mode (in id order), ``GET /v1/ledger/transfers?limit=&starting_after=&account=`` -> of your
  transfers (in id order; with ``account``, that account's, newest first);
* ``POST /v1/ledger/transfers`` ``{"debit_account", "credit_account", "amount", "code",
  "pending"?, "timeout_s"?, "metadata"?, "approvals"?}`` -> 201 the transfer; one side may
  name the partner's user instead (``credit_user``, or ``debit_user`` with the user's
  ``approvals``: 400 ``approval_required`` without, before the log);
* ``POST /v1/ledger/transfers/preview`` (the same body, no ``approvals``, the same
  ``Idempotency-Key``) -> 200 what that transfer will be, its operation digest and the EIP-712
  ``Approve`` each debited wallet signs; nothing is proposed (why a separate route: an
  operation's outcome is sticky, so a transfer sent without the approval would be refused for
  good under its key; the preview lets the user see and sign first, and the record id derives
  from the key, so the digest is the one the state machine checks when the transfer is sent);
* ``POST /v1/ledger/transfers/{id}/post`` ``{"amount"?}`` and ``.../void`` ``{}`` -> 201 the
  post or void of a pending transfer;
* ``POST /v1/ledger/transfers/linked`` ``{"transfers": [...], "approvals"?}`` -> 201 the
  chain, applied whole or not at all; a transfer may name a user side as above (a debited
  user approves the whole chain: ``POST /v1/ledger/transfers/linked/preview`` answers its
  digest as the single preview does);
* ``POST /v1/ledger/transfers/batch`` ``{"transfers": [{"idempotency_key", ...}, ...]}`` -> 200
  one result per transfer (each its own operation), in order; an item may name a user side
  with its own ``approvals`` (the single preview under the item's key gives its digest);
* ``GET /v1/ledger/transfers/{id}`` -> the transfer;
* ``POST /v1/test/faucet`` ``{"account", "amount"}`` -> 201 BAAS from the test mode's faucet
  (live mode: 400 ``test_mode_only``; live BAAS comes only from on-chain deposits).

Idempotency. Every POST carries ``Idempotency-Key`` (400 ``idempotency_key_required``; in a
batch, each item its ``idempotency_key``). The operation's record id and its ledger ids are
derived from (partner, mode, route kind, key) (:mod:`business.identity.ids`), so a retry is
answered with the operation's first outcome, forever (200), the same key with another body is
409 ``idempotency_key_reused``, and a request refused before the log (auth, validation,
overload) may simply be sent again.

Isolation. Every account and transfer this API creates carries in ``user_data_128`` its
*scope*: ``H(partner id, mode)``, an opaque 128-bit tag. A read or a transfer naming an id whose
scope is not the caller's is answered 404 exactly as an id that does not exist: another
partner's ids, or the other mode's, cannot be addressed, and the answer reveals nothing.

The state machine's checks (log feature 7, business/identity/scope.py and approvals.py). Every
operation names its proposer, the authenticated partner and mode (``WriteItem.operation(
partner=, mode=, user_refs=)``), and the state machine checks every account against it,
whatever this module sent: so a created account's id is ``ids.account_id(record id, event
index)`` (answered to the partner, who keeps it), a credit to a linked user names the user's
reference (``ur``) and the wallet's account is opened by the state machine on that first
credit, and an account of a partner may never go negative on BAAS (the platform is its
issuer). The faucet is the platform's operation (proposer all zeros): each grant creates its
issuing account, derived from the grant and linked with the credit, and only the platform may
hold an account that mints test BAAS; live BAAS has no issuing account. Its refusals map to
problems through :data:`SCOPE_PROBLEMS`.

What is stored where. The request as sent (accounts, amount, metadata, memo) is the
operation's *record*, sealed with the partner's data key like any record; the log carries only
its ledger events (opaque ids, integer amounts, codes, the scope tag) and the record's index
entry, applied as one unit (node/consensus/ledger_ops.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from business.identity import eip712
from business.identity.approvals import (
    CodeApproval,
    SignedApproval,
    encode_approvals,
    operation_digest,
)
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    derive,
    ledger_number,
    operation_id,
    partner_id,
    transfer_id,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from business.identity.ids import account_id as derived_account_id
from business.identity.model import ApprovalResult, IdentityConfig, ScopeResult
from business.identity.scope import PLATFORM
from business.ledger.amounts import format_amount, parse_amount
from business.ledger.model import (
    AMOUNT_MAX,
    BAAS_SCALE,
    ID_MAX,
    U16_MAX,
    U32_MAX,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateTransfer,
    Event,
    TransferFlags,
)
from business.ledger.wire import encode_events
from gateway.keyring import PartnerKeys
from gateway.node_client import WriteItem, error_from_problem
from gateway.record_codec import canonical_record, sealed_wire
from gateway.request_keys import DEADLINE, MODE, PARTNER_KEYS, REQUEST_ID
from node.api.problem import parse_json_body
from node.errors import (
    BaasError,
    CallerError,
    InvalidRequest,
    NotFound,
    OperationFailed,
    PayloadTooLarge,
)

__all__ = [
    "ASSETS",
    "LEDGER_PREFIX",
    "RESULT_PROBLEMS",
    "LedgerContext",
    "LedgerRefused",
    "account_object",
    "add_ledger_routes",
    "amount_param",
    "approvals_param",
    "check_key",
    "gateway_state",
    "hex_param",
    "int_param",
    "ledger_context",
    "ledger_doc",
    "linked_wallet",
    "read_body",
    "require_idempotency_key",
    "scope_of",
    "transfer_object",
    "user_id_param",
    "walk_pages",
]

LEDGER_PREFIX = "/v1/ledger"
FAUCET_PATH = "/v1/test/faucet"
ACCOUNT_PREFIX = "acct_"
TRANSFER_PREFIX = "tr_"
TAG_SCOPE = b"baas/ledger-scope/v1"
FAUCET_KIND = "faucet"  # the operation kind (route) of a faucet request
FAUCET_ACCOUNT_CODE = 1
FAUCET_TRANSFER_CODE = 1
USER_ID_CHARS_MAX = 255
APPROVALS_ITEMS_MAX = 16  # business.identity.IdentityConfig.approvals_max
TIMEOUT_S_MAX = U32_MAX
# The deadline a preview proposes for the user's Approve (the user's wallet may sign another:
# the deadline is a field of the signed message, not of the operation).
APPROVAL_DEADLINE_S = 900
ACCOUNT_FLAGS = {
    "debits_must_not_exceed_credits": AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    "credits_must_not_exceed_debits": AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    "history": AccountFlags.HISTORY,
}
DEFAULT_ACCOUNT_FLAGS = ("debits_must_not_exceed_credits",)
# Assets a partner may open accounts on; a partner's points come with their own scale later.
ASSETS = {"baas": (ASSET_INDEX_BAAS, AssetKind.BAAS, BAAS_SCALE)}
_SUCCESS = frozenset({"ok", "exists"})
_APPROVAL_CODES = frozenset(c.value for c in ApprovalResult) - {"ok"}


class LedgerRefused(CallerError):
    """The log applied the operation and refused it (a sticky outcome: a retry answers the
    same). ``http_status`` per result, from :data:`RESULT_PROBLEMS` (the wallet routes' from
    their own table)."""

    code = "ledger_refused"
    http_status = 409

    def __init__(self, detail: str, *, code: str, status: int, param: str | None) -> None:
        super().__init__(detail, code=code, param=param)
        self.http_status = status  # type: ignore[misc]


# Ledger result -> (HTTP status, problem code, the request field at fault). A result not listed
# is a 409 whose code is the ledger's result itself (stable: the ledger's codes never change).
RESULT_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    "exceeds_credits": (402, "insufficient_funds", "amount"),
    "exceeds_debits": (402, "credit_limit_exceeded", "amount"),
    "debit_account_not_found": (404, "account_not_found", "debit_account"),
    "credit_account_not_found": (404, "account_not_found", "credit_account"),
    "ledger_not_found": (404, "asset_not_found", "asset"),
    "accounts_must_be_different": (400, "accounts_must_be_different", "credit_account"),
    "accounts_must_have_the_same_ledger": (400, "asset_mismatch", "credit_account"),
    "transfer_must_have_the_same_ledger_as_accounts": (400, "asset_mismatch", "credit_account"),
    "pending_transfer_not_found": (404, "transfer_not_found", "id"),
    "pending_transfer_not_pending": (409, "transfer_not_pending", "id"),
    "pending_transfer_already_posted": (409, "transfer_already_posted", "id"),
    "pending_transfer_already_voided": (409, "transfer_already_voided", "id"),
    "pending_transfer_expired": (409, "transfer_expired", "id"),
    "exceeds_pending_transfer_amount": (409, "amount_exceeds_pending", "amount"),
    "pending_transfer_has_different_amount": (409, "amount_differs_from_pending", "amount"),
    "debit_account_already_closed": (409, "account_closed", "debit_account"),
    "credit_account_already_closed": (409, "account_closed", "credit_account"),
    "overflows_debits_pending": (409, "balance_overflow", "amount"),
    "overflows_credits_pending": (409, "balance_overflow", "amount"),
    "overflows_debits_posted": (409, "balance_overflow", "amount"),
    "overflows_credits_posted": (409, "balance_overflow", "amount"),
    "overflows_debits": (409, "balance_overflow", "amount"),
    "overflows_credits": (409, "balance_overflow", "amount"),
    "overflows_timeout": (400, "timeout_invalid", "timeout_s"),
}


# The state machine's refusals of a whole operation (business/identity/scope.py), each stored
# as every event's result. A code not listed (account_id_not_derived, asset_not_allowed,
# ledger_not_found, proposer_missing) would mean this gateway built the operation wrong: a
# 409 carrying the code, sticky like every outcome.
SCOPE_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    ScopeResult.PARTNER_NOT_FOUND.value: (403, "partner_not_onboarded", None),
    ScopeResult.PARTNER_NOT_ACTIVE.value: (403, "partner_not_active", None),
    ScopeResult.USER_NOT_LINKED.value: (404, "link_not_found", "credit_user"),
    ScopeResult.ACCOUNT_NOT_FOUND.value: (404, "account_not_found", None),
    ScopeResult.ACCOUNT_WOULD_MINT.value: (400, "account_would_mint", "flags"),
}


def scope_of(partner: str, mode: Mode) -> int:
    """The opaque tag in ``user_data_128`` of everything one partner creates in one mode."""
    digest = derive(TAG_SCOPE, partner_id(partner), bytes((Mode(mode).value,)))
    return 1 + int.from_bytes(digest[:16], "big") % (ID_MAX - 1)


def gateway_state(request: web.Request) -> Any:
    from gateway.app import GATEWAY  # the app module imports this one: look the key up late

    return request.app[GATEWAY]


# --- parsing: every refusal a typed 400 naming its param, before anything reaches a node -----


def _object(raw: Any, allowed: set[str], required: set[str], where: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where or 'body'} must be a JSON object", param=where or None)
    for name in sorted(set(raw) - allowed):
        raise InvalidRequest(
            f"unknown field {name!r}", code="parameter_unknown", param=where + name
        )
    for name in sorted(required - set(raw)):
        raise InvalidRequest(f"{name} is required", code="parameter_missing", param=where + name)
    if "metadata" in raw and not isinstance(raw["metadata"], dict):
        raise InvalidRequest("metadata must be a JSON object", param=where + "metadata")
    return raw


async def read_body(request: web.Request, allowed: set[str], required: set[str]) -> dict[str, Any]:
    return _object(parse_json_body(await request.read()), allowed, required)


def amount_param(raw: Any, param: str) -> int:
    try:
        return parse_amount(raw, param=param)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.detail, code=exc.code, param=param) from exc


def int_param(raw: Any, param: str, low: int, high: int) -> int:
    if type(raw) is not int or not low <= raw <= high:
        raise InvalidRequest(f"{param} must be an integer in {low}..{high}", param=param)
    return raw


def _id(raw: Any, prefix: str, param: str) -> int:
    """``acct_`` / ``tr_`` + 32 lowercase hex: a u128 id other than 0 and 2^128-1."""
    text = raw if isinstance(raw, str) else ""
    digits = text[len(prefix) :]
    if (
        not text.startswith(prefix)
        or len(digits) != 32
        or any(c not in "0123456789abcdef" for c in digits)
        or not 0 < int(digits, 16) < ID_MAX
    ):
        raise InvalidRequest(f"{param} must be {prefix} and 32 hex digits", param=param)
    return int(digits, 16)


def _approvals(raw: Any, param: str = "approvals") -> bytes | None:
    """The users' approvals of the operation's debits, in the blob format the state machine
    checks (:mod:`business.identity.approvals`)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not 0 < len(raw) <= APPROVALS_ITEMS_MAX:
        raise InvalidRequest(f"{param} is a list of 1..{APPROVALS_ITEMS_MAX}", param=param)
    items: list[SignedApproval | CodeApproval] = []
    for i, item in enumerate(raw):
        where = f"{param}[{i}]."
        if isinstance(item, dict) and "code" in item:
            _object(item, {"code"}, {"code"}, where)
            items.append(CodeApproval(hex_param(item["code"], where + "code", 16, 64)))
            continue
        _object(
            item, {"wallet", "deadline", "signature"}, {"wallet", "deadline", "signature"}, where
        )
        items.append(
            SignedApproval(
                hex_param(item["wallet"], where + "wallet", 20, 20, prefix="0x"),
                int_param(item["deadline"], where + "deadline", 1, 2**63 - 1),
                hex_param(item["signature"], where + "signature", 65, 65, prefix="0x"),
            )
        )
    return encode_approvals(items)


approvals_param = _approvals  # the Bridge's routes take approvals the same way


def hex_param(raw: Any, param: str, low: int, high: int, prefix: str = "") -> bytes:
    text = raw if isinstance(raw, str) else ""
    try:
        value = bytes.fromhex(text[len(prefix) :]) if text.startswith(prefix) else b""
    except ValueError:
        value = b""
    if not low <= len(value) <= high:
        raise InvalidRequest(f"{param} must be {prefix}hex of {low}..{high} bytes", param=param)
    return value


def require_idempotency_key(request: web.Request) -> str:
    return _check_key(request.headers.get("Idempotency-Key"), "Idempotency-Key")


def _check_key(raw: Any, param: str) -> str:
    if raw is None:
        raise InvalidRequest(
            f"{param} is required on every ledger POST",
            code="idempotency_key_required",
            param=param,
        )
    if not isinstance(raw, str) or not 1 <= len(raw) <= 255 or not raw.isprintable():
        raise InvalidRequest(
            f"{param} must be 1..255 printable characters",
            code="invalid_idempotency_key",
            param=param,
        )
    return raw


check_key = _check_key  # the Bridge's batch route checks its items' keys the same way


# --- operations: one record + its ledger events, written as one unit ------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    """One operation ready for the node: ``events[first:]`` are what the caller asked for (the
    ones before only make sure the asset and the platform's accounts exist: ``exists`` after
    the first time)."""

    key: str
    kind: str
    record_id: bytes
    events: tuple[Event, ...]
    first: int
    params: tuple[str, ...]  # per asked event: the prefix of its fields in the request
    item: WriteItem


@dataclass(frozen=True, slots=True)
class LedgerContext:
    partner: PartnerKeys
    mode: Mode
    scope: int
    deadline: float
    request_id: str

    @property
    def pid16(self) -> bytes:
        return partner_id(self.partner.partner_id)


def ledger_context(request: web.Request) -> LedgerContext:
    partner = request[PARTNER_KEYS]
    mode = request[MODE]
    return LedgerContext(
        partner, mode, scope_of(partner.partner_id, mode), request[DEADLINE], request[REQUEST_ID]
    )


def _op_id(ctx: LedgerContext, kind: str, key: str) -> bytes:
    return operation_id(ctx.pid16, ctx.mode, kind, key)


def _operation(
    state: Any,
    ctx: LedgerContext,
    kind: str,
    key: str,
    request_body: dict[str, Any],
    build: Any,
    approvals: bytes | None = None,
    user_refs: Sequence[bytes] = (),
) -> _Op:
    """``build(record_id) -> (events, first, params)``; the request is the sealed record."""
    record_id = _op_id(ctx, kind, key)
    events, first, params = build(record_id)
    plaintext = canonical_record(
        {"object": "ledger_operation", "kind": kind, "request": request_body},
        state.config.limits.record_json_bytes_max,
    )
    wire = sealed_wire(ctx.partner, record_id, plaintext)
    # The proposer is who this gateway authenticated, never the client: the state machine
    # checks every account and approval of the events against it (business/identity/scope.py).
    # The faucet is the platform's own operation: only the platform may hold an account that
    # mints test BAAS, and only the platform may credit a partner's account from it.
    item = WriteItem.operation(
        wire,
        encode_events(events),
        approvals,
        deadline=ctx.deadline,
        request_id=ctx.request_id,
        partner=PLATFORM if kind == FAUCET_KIND else ctx.pid16,
        mode=int(ctx.mode),
        user_refs=user_refs,
    )
    return _Op(key, kind, record_id, tuple(events), first, tuple(params), item)


@dataclass(frozen=True, slots=True)
class _Done:
    """What a node said about one operation: its outcome's asked events, or the error."""

    replayed: bool
    log_time_ms: int
    events: tuple[dict[str, Any], ...]
    error: BaasError | None


def _judge(op: _Op, result: dict[str, Any]) -> _Done:
    if not result.get("ok"):
        code = str(result.get("code"))
        if code in _APPROVAL_CODES:  # the state machine refused the users' approvals
            error: BaasError = LedgerRefused(
                f"the operation's approvals were refused: {code}",
                code=code,
                status=403,
                param="approvals",
            )
        else:
            error = error_from_problem(int(result.get("status", 503)), result)
        return _Done(False, 0, (), error)
    outcome = result.get("outcome")
    if not isinstance(outcome, dict):
        raise OperationFailed("the node answered without the operation's outcome")
    # The outcome lists the op's own events, then what the state machine opened on first use
    # (a wallet's or role account, the BAAS asset): those are the API's concern only if failed.
    events = tuple(outcome["events"])
    asked = events[op.first : len(op.events)]
    refusal = _refusal(op, asked)
    if refusal is None and any(e["result"] not in _SUCCESS for e in asked):
        # Only linked_event_failed: an event added before them (the faucet's issuing account)
        # or an account opened on first use failed, so nothing moved. Sticky, so not a 503.
        added = (*events[: op.first], *events[len(op.events) :])
        setup = next(e["result"] for e in added if e["result"] not in _SUCCESS)
        refusal = LedgerRefused(
            f"the ledger refused an account the operation opens: {setup}",
            code="ledger_setup_refused",
            status=409,
            param=None,
        )
    return _Done(bool(result.get("replayed")), int(outcome["log_time_ms"]), asked, refusal)


def _refusal(op: _Op, asked: Sequence[dict[str, Any]]) -> LedgerRefused | None:
    """The first asked event that failed on its own (not as ``linked_event_failed``)."""
    for i, event in enumerate(asked):
        result = event["result"]
        if result in _SUCCESS or result == "linked_event_failed":
            continue
        param: str | None
        if result in _APPROVAL_CODES:  # the state machine refused the users' approvals
            where = "" if op.kind == "transfer.linked" else op.params[0]
            status, code, param = 403, result, where + "approvals"
        else:
            status, code, field = _problem(result)
            param = None if field is None else op.params[i] + field
        return LedgerRefused(f"the ledger refused: {result}", code=code, status=status, param=param)
    return None


def _problem(result: str) -> tuple[int, str, str | None]:
    found = RESULT_PROBLEMS.get(result) or SCOPE_PROBLEMS.get(result)
    return found or (409, result, None)


async def _write(state: Any, ctx: LedgerContext, ops: list[_Op]) -> list[_Done]:
    with state.reserve(ctx.partner.partner_id, len(ops)):
        results = await state.nodes.write_operations([op.item for op in ops])
    done = [_judge(op, r) for op, r in zip(ops, results, strict=True)]
    for op, d in zip(ops, done, strict=True):
        status = d.error.http_status if d.error is not None else 200 if d.replayed else 201
        state.ledger_operations.labels(op.kind, str(status)).inc()
    return done


async def _write_one(state: Any, ctx: LedgerContext, op: _Op) -> _Done:
    (done,) = await _write(state, ctx, [op])
    if done.error is not None:
        raise done.error
    return done


def _answer(done: _Done, payload: dict[str, Any], key: str) -> web.Response:
    return web.json_response(
        payload, status=200 if done.replayed else 201, headers={"Idempotency-Key": key}
    )


# --- reads through the nodes, scoped -----------------------------------------------------------


async def ledger_doc(state: Any, ctx: LedgerContext, path: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await state.nodes.ledger_read(
        path, deadline=ctx.deadline, request_id=ctx.request_id
    )
    return doc


async def _own_account(state: Any, ctx: LedgerContext, account: int, param: str) -> dict[str, Any]:
    doc = await ledger_doc(state, ctx, f"/internal/v1/ledger/accounts/{account}")
    if doc is None or int(doc["user_data_128"]) != ctx.scope:
        raise NotFound("no such account", code="account_not_found", param=param)
    return doc


async def _own_transfer(
    state: Any, ctx: LedgerContext, transfer: int, param: str
) -> dict[str, Any]:
    doc = await ledger_doc(state, ctx, f"/internal/v1/ledger/transfers/{transfer}")
    if doc is None or int(doc["user_data_128"]) != ctx.scope:
        raise NotFound("no such transfer", code="transfer_not_found", param=param)
    return doc


def _asset_of(ledger: int) -> tuple[str, int]:
    for name, (index, _kind, scale) in ASSETS.items():
        if ledger >> 1 == index:
            return name, scale
    raise OperationFailed(f"ledger {ledger} is no asset of this API", code="ledger_unknown")


def account_object(doc: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """Balances credit-normal (credits minus debits), signed strings of digits; ``available``
    is what a debit may take now: posted less the debits reserved by pending transfers."""
    ledger = int(doc["ledger"])
    asset, scale = _asset_of(ledger)
    dp, dpost = int(doc["debits_pending"]), int(doc["debits_posted"])
    cp, cpost = int(doc["credits_pending"]), int(doc["credits_posted"])
    flags = int(doc["flags"])
    return {
        "id": ACCOUNT_PREFIX + f"{int(doc['id']):032x}",
        "object": "ledger_account",
        "livemode": mode == Mode.LIVE,
        "asset": asset,
        "scale": scale,
        "ledger": ledger,
        "code": int(doc["code"]),
        "flags": [name for name, bit in ACCOUNT_FLAGS.items() if flags & bit],
        "balance": {
            "posted": str(cpost - dpost),
            "pending": str(cp - dp),
            "available": str(cpost - dpost - dp),
            "debits_posted": format_amount(dpost),
            "credits_posted": format_amount(cpost),
            "debits_pending": format_amount(dp),
            "credits_pending": format_amount(cp),
        },
    }


def _transfer_kind(flags: int) -> str:
    if flags & TransferFlags.POST_PENDING_TRANSFER:
        return "post"
    if flags & TransferFlags.VOID_PENDING_TRANSFER:
        return "void"
    return "pending" if flags & TransferFlags.PENDING else "transfer"


def transfer_object(
    mode: Mode,
    *,
    transfer: int,
    debit: int,
    credit: int,
    amount: int,
    ledger: int,
    code: int,
    flags: int,
    pending_id: int,
    timeout_s: int,
    operation: bytes | None,
) -> dict[str, Any]:
    return {
        "id": TRANSFER_PREFIX + f"{transfer:032x}",
        "object": "ledger_transfer",
        "livemode": mode == Mode.LIVE,
        "type": _transfer_kind(flags),
        "debit_account": ACCOUNT_PREFIX + f"{debit:032x}",
        "credit_account": ACCOUNT_PREFIX + f"{credit:032x}",
        "amount": format_amount(amount),
        "asset": _asset_of(ledger)[0],
        "ledger": ledger,
        "code": code,
        "pending_transfer": TRANSFER_PREFIX + f"{pending_id:032x}" if pending_id else None,
        "timeout_s": timeout_s,
        "operation": operation.hex() if operation is not None else None,
    }


def _from_doc(doc: dict[str, Any], mode: Mode) -> dict[str, Any]:
    return transfer_object(
        mode,
        transfer=int(doc["id"]),
        debit=int(doc["debit_account_id"]),
        credit=int(doc["credit_account_id"]),
        amount=int(doc["amount"]),
        ledger=int(doc["ledger"]),
        code=int(doc["code"]),
        flags=int(doc["flags"]),
        pending_id=int(doc["pending_id"]),
        timeout_s=int(doc["timeout"]),
        operation=None,
    )


# --- accounts ------------------------------------------------------------------------------


async def post_account(request: web.Request) -> web.Response:
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    body = await read_body(request, {"asset", "code", "flags", "metadata"}, {"asset", "code"})
    if body["asset"] not in ASSETS:
        raise InvalidRequest(
            f"asset must be one of {', '.join(ASSETS)}", code="asset_not_found", param="asset"
        )
    ledger = ledger_number(ctx.mode, ASSETS[body["asset"]][0])
    code = int_param(body["code"], "code", 1, U16_MAX)
    names = body.get("flags", list(DEFAULT_ACCOUNT_FLAGS))
    if not isinstance(names, list) or any(n not in ACCOUNT_FLAGS for n in names):
        raise InvalidRequest(f"flags are some of {', '.join(ACCOUNT_FLAGS)}", param="flags")
    flags = 0
    for name in names:
        flags |= ACCOUNT_FLAGS[name]

    def build(record_id: bytes) -> tuple[list[Event], int, list[str]]:
        # The id is derived from the operation (the state machine refuses a chosen one) and
        # answered to the partner; the BAAS asset opens with the first account on it.
        account = derived_account_id(record_id, 0)
        return [CreateAccount(account, ledger, code, flags, ctx.scope)], 0, [""]

    op = _operation(state, ctx, "account.create", key, body, build)
    done = await _write_one(state, ctx, op)
    created = op.events[0]
    assert type(created) is CreateAccount
    doc = {
        "id": created.id,
        "ledger": ledger,
        "code": code,
        "flags": flags,
        "debits_pending": 0,
        "debits_posted": 0,
        "credits_pending": 0,
        "credits_posted": 0,
    }
    if done.replayed:  # the account may have moved since: show its balances now
        doc = await _own_account(state, ctx, created.id, "id")
    return _answer(done, account_object(doc, ctx.mode), key)


async def get_account(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    account = _id(request.match_info["id"], ACCOUNT_PREFIX, "id")
    doc = await _own_account(state, ctx, account, "id")
    return web.json_response(account_object(doc, ctx.mode))


# --- transfers -----------------------------------------------------------------------------

_TRANSFER_FIELDS = {
    "debit_account",
    "credit_account",
    "amount",
    "code",
    "pending",
    "timeout_s",
    "metadata",
}
_TRANSFER_REQUIRED = {"debit_account", "credit_account", "amount", "code"}
_SINGLE_EXTRA = frozenset({"approvals", "idempotency_key"})  # a single or a batch item
_USERS = frozenset({"credit_user", "debit_user"})  # a side named by the partner's user id
_ROUTE_EXTRA = _USERS | {"approvals"}  # POST /v1/ledger/transfers
_BATCH_ITEM_EXTRA = _SINGLE_EXTRA | _USERS  # an item of POST /v1/ledger/transfers/batch
# A batch item is a single transfer under its own key: the single route's preview gives the
# digest its debited user signs.
_PREVIEW = "/v1/ledger/transfers/preview"


@dataclass(frozen=True, slots=True)
class _Asked:
    """One transfer as asked, checked: accounts are the caller's own, read from a node."""

    debit: int
    credit: int
    amount: int
    ledger: int
    code: int
    flags: int
    timeout_s: int
    credit_user: str | None = None  # credit the wallet linked to this user id instead
    debit_user: str | None = None  # debit the wallet linked to this user id (its approval)
    debit_wallet: bytes | None = None  # that wallet's address, once resolved (_checked)


def _parse_transfer(raw: Any, where: str, extra: frozenset[str] = frozenset()) -> _Asked:
    """A transfer as asked, checked alone (its ledger is filled in by :func:`_checked`). One
    side may name the partner's user (``credit_user`` / ``debit_user``, where ``extra`` allows)
    in place of an account: the wallet linked to that user."""
    named = sorted(u for u in _USERS & extra if isinstance(raw, dict) and u in raw)
    if len(named) > 1:
        raise InvalidRequest("a transfer names one user at most", param=where + "debit_user")
    sides = {u.removesuffix("_user") for u in named}
    required = _TRANSFER_REQUIRED - {f"{side}_account" for side in sides}
    body = _object(raw, _TRANSFER_FIELDS | extra, required, where)
    for side in sides:
        if f"{side}_account" in body:
            raise InvalidRequest(
                f"{side}_account or {side}_user, not both", param=f"{where}{side}_user"
            )
    users = {side: user_id_param(body[f"{side}_user"], f"{where}{side}_user") for side in sides}
    debit = (
        0
        if "debit" in sides
        else _id(body["debit_account"], ACCOUNT_PREFIX, where + "debit_account")
    )
    credit = (
        0
        if "credit" in sides
        else _id(body["credit_account"], ACCOUNT_PREFIX, where + "credit_account")
    )
    amount = amount_param(body["amount"], where + "amount")
    code = int_param(body["code"], where + "code", 1, U16_MAX)
    pending = body.get("pending", False)
    if type(pending) is not bool:
        raise InvalidRequest("pending must be true or false", param=where + "pending")
    timeout_s = 0
    if "timeout_s" in body:
        if not pending:
            raise InvalidRequest(
                "timeout_s is for pending transfers",
                code="timeout_invalid",
                param=where + "timeout_s",
            )
        timeout_s = int_param(body["timeout_s"], where + "timeout_s", 1, TIMEOUT_S_MAX)
    flags = int(TransferFlags.PENDING) if pending else 0
    return _Asked(
        debit, credit, amount, 0, code, flags, timeout_s, users.get("credit"), users.get("debit")
    )


async def _checked(state: Any, ctx: LedgerContext, asked: _Asked, where: str) -> _Asked:
    """Both accounts are the caller's own (else 404 as for a missing one); the transfer's
    ledger is the debit account's (a credit account on another is the ledger's refusal). A
    side named by user id is the linked wallet's account on the other side's ledger."""
    if asked.debit_user is not None:
        credit_doc = await _own_account(state, ctx, asked.credit, where + "credit_account")
        ledger = int(credit_doc["ledger"])
        wallet = await linked_wallet(state, ctx, asked.debit_user, where + "debit_user")
        account = wallet_account_id(wallet_id(wallet, ctx.mode), ctx.mode, ledger)
        return replace(asked, ledger=ledger, debit=account, debit_wallet=wallet)
    debit_doc = await _own_account(state, ctx, asked.debit, where + "debit_account")
    ledger = int(debit_doc["ledger"])
    if asked.credit_user is not None:
        wallet = await linked_wallet(state, ctx, asked.credit_user, where + "credit_user")
        account = wallet_account_id(wallet_id(wallet, ctx.mode), ctx.mode, ledger)
        return replace(asked, ledger=ledger, credit=account)
    await _own_account(state, ctx, asked.credit, where + "credit_account")
    return replace(asked, ledger=ledger)


async def linked_wallet(state: Any, ctx: LedgerContext, user_id: str, param: str) -> bytes:
    """The wallet address this partner linked ``user_id`` to in this mode (404 if none)."""
    ref = user_ref(ctx.pid16, ctx.mode, user_id)
    mode = "test" if ctx.mode == Mode.TEST else "live"
    try:
        found = await state.nodes.identity_read(
            f"/internal/v1/identity/links/{ctx.pid16.hex()}/{mode}/{ref.hex()}",
            deadline=ctx.deadline,
            request_id=ctx.request_id,
        )
    except NotFound as exc:
        raise NotFound("no link for this user id", code="link_not_found", param=param) from exc
    return bytes.fromhex(str(found["wallet"])[2:])


def user_id_param(raw: Any, param: str) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= USER_ID_CHARS_MAX or not raw.isprintable():
        raise InvalidRequest(f"{param} is 1..{USER_ID_CHARS_MAX} printable characters", param=param)
    return raw


def _event(
    ctx: LedgerContext, record_id: bytes, index: int, asked: _Asked, linked: bool
) -> CreateTransfer:
    return CreateTransfer(
        id=transfer_id(record_id, index),
        debit_account_id=asked.debit,
        credit_account_id=asked.credit,
        amount=asked.amount,
        ledger=asked.ledger,
        code=asked.code,
        flags=asked.flags | (int(TransferFlags.LINKED) if linked else 0),
        timeout=asked.timeout_s,
        user_data_128=ctx.scope,
    )


def _object_of(ctx: LedgerContext, op: _Op, event: Event, moved: dict[str, Any]) -> dict[str, Any]:
    assert type(event) is CreateTransfer
    return transfer_object(
        ctx.mode,
        transfer=event.id,
        debit=event.debit_account_id,
        credit=event.credit_account_id,
        amount=int(moved["amount"]),
        ledger=event.ledger,
        code=event.code,
        flags=event.flags & ~TransferFlags.LINKED,
        pending_id=event.pending_id,
        timeout_s=event.timeout,
        operation=op.record_id,
    )


@dataclass(frozen=True, slots=True)
class _Item:
    """A single transfer's request, checked alone: before any node is asked anything."""

    key: str
    body: dict[str, Any]
    asked: _Asked
    approvals: bytes | None
    where: str


def _item(
    key: str, body: dict[str, Any], where: str = "", extra: frozenset[str] = _SINGLE_EXTRA
) -> _Item:
    asked = _parse_transfer(body, where, extra)
    return _Item(key, body, asked, _approvals(body.get("approvals"), where + "approvals"), where)


def _require_approval(
    asked: Sequence[_Asked], approvals: bytes | None, param: str, preview: str
) -> None:
    """Refused before the log, so the key stays free: the state machine's refusal would be the
    operation's sticky outcome (approval_missing), and the key burnt for good."""
    if approvals is None and any(a.debit_user is not None for a in asked):
        raise InvalidRequest(
            "a debit of a user's wallet needs the user's approval: sign the digest that "
            f"POST {preview} answers, or send a one-time code",
            code="approval_required",
            param=param,
        )


def _names_user(asked: _Asked) -> bool:
    return asked.debit_user is not None or asked.credit_user is not None


def _credited_refs(ctx: LedgerContext, asked: Sequence[_Asked]) -> tuple[bytes, ...]:
    """A credit to a linked user names the user's reference: the state machine lets the
    operation credit that wallet only, and opens its account on the first credit."""
    refs = (user_ref(ctx.pid16, ctx.mode, a.credit_user) for a in asked if a.credit_user)
    return tuple(dict.fromkeys(refs))


def _preview_answer(
    ctx: LedgerContext, op: _Op, asked: Sequence[_Asked], extra: dict[str, Any]
) -> web.Response:
    """What ``op`` will be, its digest, and the EIP-712 ``Approve`` each debited wallet signs."""
    events = encode_events(op.events)
    digest = operation_digest(op.record_id, events)
    chain_id = IdentityConfig().chain_id  # the nodes' (node/main.py): the default
    deadline = int(time.time()) + APPROVAL_DEADLINE_S
    wallets = dict.fromkeys(a.debit_wallet for a in asked if a.debit_wallet is not None)
    preview = {
        "object": "transfer_preview",
        "livemode": ctx.mode == Mode.LIVE,
        "operation": op.record_id.hex(),
        "events": events.hex(),
        "digest": "0x" + digest.hex(),
        **extra,
        "approvals_required": [
            {
                "wallet": "0x" + w.hex(),
                "typed_data": eip712.typed_data(
                    eip712.Approve(int(ctx.mode), digest, w, deadline), chain_id
                ),
            }
            for w in wallets
        ],
    }
    return web.json_response(preview, headers={"Idempotency-Key": op.key})


def _single(state: Any, ctx: LedgerContext, item: _Item, asked: _Asked) -> _Op:
    refs = _credited_refs(ctx, [asked])
    return _operation(
        state,
        ctx,
        "transfer",
        item.key,
        {k: v for k, v in item.body.items() if k != "idempotency_key"},
        lambda rid: ([_event(ctx, rid, 0, asked, False)], 0, [item.where]),
        item.approvals,
        refs,
    )


async def post_transfer(request: web.Request) -> web.Response:
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    body = _object(parse_json_body(await request.read()), _TRANSFER_FIELDS | _ROUTE_EXTRA, set())
    item = _item(key, body, "", _ROUTE_EXTRA)
    _require_approval([item.asked], item.approvals, "approvals", _PREVIEW)
    op = _single(state, ctx, item, await _checked(state, ctx, item.asked, ""))
    done = await _write_one(state, ctx, op)
    return _answer(done, _object_of(ctx, op, op.events[op.first], done.events[0]), key)


async def post_preview(request: web.Request) -> web.Response:
    """What a debit of a user's wallet will be, for the user to approve: nothing is proposed.

    The same body as ``POST /v1/ledger/transfers`` (without ``approvals``) under the same
    ``Idempotency-Key``: the record id derives from (partner, mode, route, key) and the events
    from the body, so the digest answered here is the one the state machine checks when that
    transfer is sent with the approvals. Another body under the key is another digest: an
    approval of this one is refused (``approval_signer_mismatch``)."""
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    body = _object(parse_json_body(await request.read()), _TRANSFER_FIELDS | _USERS, set())
    item = _item(key, body, "", _USERS)
    asked = await _checked(state, ctx, item.asked, "")
    op = _single(state, ctx, item, asked)
    transfer = _object_of(ctx, op, op.events[op.first], {"amount": asked.amount})
    return _preview_answer(ctx, op, [asked], {"transfer": transfer})


async def _resolve(request: web.Request, void: bool) -> web.Response:
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    pending = _id(request.match_info["id"], TRANSFER_PREFIX, "id")
    body = await read_body(request, set() if void else {"amount", "metadata"}, set())
    amount = 0 if void else AMOUNT_MAX
    if "amount" in body:
        amount = amount_param(body["amount"], "amount")
    doc = await _own_transfer(state, ctx, pending, "id")
    if not int(doc["flags"]) & TransferFlags.PENDING:
        raise LedgerRefused(
            "not a pending transfer", code="transfer_not_pending", status=409, param="id"
        )
    flag = TransferFlags.VOID_PENDING_TRANSFER if void else TransferFlags.POST_PENDING_TRANSFER

    def build(record_id: bytes) -> tuple[list[Event], int, list[str]]:
        # Accounts, ledger and code 0: taken from the pending transfer (it must match).
        event = CreateTransfer(
            id=transfer_id(record_id, 0),
            debit_account_id=0,
            credit_account_id=0,
            amount=amount,
            ledger=0,
            code=0,
            flags=int(flag),
            pending_id=pending,
            user_data_128=ctx.scope,
        )
        return [event], 0, [""]

    kind = "transfer.void" if void else "transfer.post"
    op = _operation(state, ctx, kind, key, {"pending": request.match_info["id"], **body}, build)
    done = await _write_one(state, ctx, op)
    event = op.events[0]
    assert type(event) is CreateTransfer
    return _answer(
        done,
        transfer_object(
            ctx.mode,
            transfer=event.id,
            debit=int(doc["debit_account_id"]),
            credit=int(doc["credit_account_id"]),
            amount=int(done.events[0]["amount"]),
            ledger=int(doc["ledger"]),
            code=int(doc["code"]),
            flags=int(flag),
            pending_id=pending,
            timeout_s=0,
            operation=op.record_id,
        ),
        key,
    )


async def post_post(request: web.Request) -> web.Response:
    return await _resolve(request, void=False)


async def post_void(request: web.Request) -> web.Response:
    return await _resolve(request, void=True)


def _list_body(body: Any, bound: int, name: str, extra: frozenset[str] = frozenset()) -> list[Any]:
    """``transfers``: a non-empty list of at most ``bound`` (the ``*_max`` named ``name``)."""
    _object(body, {"transfers"} | extra, {"transfers"})
    items = body["transfers"]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("transfers must be a non-empty list", param="transfers")
    if len(items) > bound:
        raise PayloadTooLarge(f"at most {bound} transfers per request ({name})", param="transfers")
    return items


async def _linked_op(
    state: Any, ctx: LedgerContext, key: str, body: Any, extra: frozenset[str]
) -> tuple[_Op, list[_Asked]]:
    """The chain as one operation; each transfer may name a linked user on one side (a
    debited user's approval is required where ``extra`` takes ``approvals``)."""
    bound = state.config.limits.ledger_linked_transfers_max
    items = _list_body(body, bound, "ledger_linked_transfers_max", extra)
    where = [f"transfers[{i}]." for i in range(len(items))]
    parsed = [_parse_transfer(raw, w, _USERS) for raw, w in zip(items, where, strict=True)]
    approvals = _approvals(body.get("approvals"))
    if "approvals" in extra:
        _require_approval(parsed, approvals, "approvals", "/v1/ledger/transfers/linked/preview")
    asked = [await _checked(state, ctx, a, w) for a, w in zip(parsed, where, strict=True)]
    last = len(asked) - 1

    def build(record_id: bytes) -> tuple[list[Event], int, list[str]]:
        events: list[Event] = [
            _event(ctx, record_id, i, a, linked=i < last) for i, a in enumerate(asked)
        ]
        return events, 0, where

    refs = _credited_refs(ctx, asked)
    return _operation(state, ctx, "transfer.linked", key, body, build, approvals, refs), asked


async def post_linked(request: web.Request) -> web.Response:
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    body = parse_json_body(await request.read())
    op, _ = await _linked_op(state, ctx, key, body, frozenset({"approvals", "metadata"}))
    done = await _write_one(state, ctx, op)
    data = [_object_of(ctx, op, e, m) for e, m in zip(op.events, done.events, strict=True)]
    return _answer(
        done,
        {"object": "linked_transfers", "operation": op.record_id.hex(), "transfers": data},
        key,
    )


async def post_linked_preview(request: web.Request) -> web.Response:
    """What a linked chain debiting users' wallets will be, for each user to approve: the
    same body as ``POST /v1/ledger/transfers/linked`` (without ``approvals``) under the same
    ``Idempotency-Key``; nothing is proposed (see :func:`post_preview`)."""
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    body = parse_json_body(await request.read())
    op, asked = await _linked_op(state, ctx, key, body, frozenset({"metadata"}))
    transfers = [
        _object_of(ctx, op, e, {"amount": a.amount}) for e, a in zip(op.events, asked, strict=True)
    ]
    return _preview_answer(
        ctx, op, asked, {"object": "linked_transfers_preview", "transfers": transfers}
    )


async def post_batch(request: web.Request) -> web.Response:
    """Each transfer is its own operation (own key, own outcome); one result each, in order.
    An item refused before the log is answered in its slot; the others still run."""
    state, ctx = gateway_state(request), ledger_context(request)
    body = parse_json_body(await request.read())
    limits = state.config.limits
    items = _list_body(body, limits.ledger_batch_operations_max, "ledger_batch_operations_max")
    parsed: list[_Item | BaasError] = []
    for i, raw in enumerate(items):
        where = f"transfers[{i}]."
        try:
            if not isinstance(raw, dict):
                raise InvalidRequest("each transfer is a JSON object", param=f"transfers[{i}]")
            key = _check_key(raw.get("idempotency_key"), where + "idempotency_key")
            item = _item(key, raw, where, _BATCH_ITEM_EXTRA)
            _require_approval([item.asked], item.approvals, where + "approvals", _PREVIEW)
            parsed.append(item)
        except CallerError as exc:
            parsed.append(exc)
    keys = [p.key for p in parsed if isinstance(p, _Item)]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("a batch repeats an idempotency key", code="duplicate_in_batch")
    # Each account once, all at once: a batch often names the same few accounts. An item
    # naming a user is checked on its own (its wallet's link, then the other side's account).
    plain = [p for p in parsed if isinstance(p, _Item) and not _names_user(p.asked)]
    wanted = sorted({a for p in plain for a in (p.asked.debit, p.asked.credit)})
    docs = dict(
        zip(
            wanted,
            await asyncio.gather(
                *(ledger_doc(state, ctx, f"/internal/v1/ledger/accounts/{a}") for a in wanted)
            ),
            strict=True,
        )
    )
    with_users = [p for p in parsed if isinstance(p, _Item) and _names_user(p.asked)]
    checked = dict(
        zip(
            (id(p) for p in with_users),
            await asyncio.gather(
                *(_checked(state, ctx, p.asked, p.where) for p in with_users),
                return_exceptions=True,
            ),
            strict=True,
        )
    )
    slots: list[_Op | BaasError] = []
    for p in parsed:
        try:
            if isinstance(p, BaasError):
                raise p
            if _names_user(p.asked):
                resolved = checked[id(p)]
                if isinstance(resolved, BaseException):
                    raise resolved
                slots.append(_single(state, ctx, p, resolved))
                continue
            for side in ("debit", "credit"):
                doc = docs[getattr(p.asked, side)]
                if doc is None or int(doc["user_data_128"]) != ctx.scope:
                    raise NotFound(
                        "no such account",
                        code="account_not_found",
                        param=f"{p.where}{side}_account",
                    )
            ledger = int(docs[p.asked.debit]["ledger"])  # type: ignore[index]
            slots.append(_single(state, ctx, p, replace(p.asked, ledger=ledger)))
        except CallerError as exc:
            slots.append(exc)
    ops = [s for s in slots if isinstance(s, _Op)]
    done = iter(await _write(state, ctx, ops) if ops else [])
    results = []
    for i, slot in enumerate(slots):
        item_key = items[i].get("idempotency_key") if isinstance(items[i], dict) else None
        if isinstance(slot, BaasError):
            results.append(_failed(slot, item_key))
            continue
        got = next(done)
        if got.error is not None:
            results.append(_failed(got.error, item_key))
            continue
        results.append(
            {
                "status": 200 if got.replayed else 201,
                "idempotency_key": item_key,
                "transfer": _object_of(ctx, slot, slot.events[0], got.events[0]),
            }
        )
    return web.json_response({"object": "batch_result", "results": results})


def _failed(error: BaasError, key: Any) -> dict[str, Any]:
    problem: dict[str, Any] = {"code": error.code, "detail": error.detail}
    if error.param is not None:
        problem["param"] = error.param
    return {
        "status": error.http_status,
        "idempotency_key": key if isinstance(key, str) else None,
        "error": problem,
    }


async def get_transfer(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    transfer = _id(request.match_info["id"], TRANSFER_PREFIX, "id")
    doc = await _own_transfer(state, ctx, transfer, "id")
    return web.json_response(_from_doc(doc, ctx.mode))


# --- the test faucet -------------------------------------------------------------------------


async def post_faucet(request: web.Request) -> web.Response:
    state, ctx, key = (
        gateway_state(request),
        ledger_context(request),
        require_idempotency_key(request),
    )
    if ctx.mode != Mode.TEST:
        raise InvalidRequest(
            "the faucet is for test mode; live BAAS comes only from on-chain deposits",
            code="test_mode_only",
        )
    body = await read_body(request, {"account", "amount"}, {"account", "amount"})
    account = _id(body["account"], ACCOUNT_PREFIX, "account")
    amount = amount_param(body["amount"], "amount")
    doc = await _own_account(state, ctx, account, "account")
    ledger = ledger_number(ctx.mode, ASSETS["baas"][0])
    if int(doc["ledger"]) != ledger:
        raise InvalidRequest("the faucet gives BAAS only", code="asset_mismatch", param="account")

    def build(record_id: bytes) -> tuple[list[Event], int, list[str]]:
        # The platform issues test BAAS (scope.py: the issuer of every platform ledger but live
        # BAAS) from an account created in the same chain, its id derived from this operation:
        # it may go negative (no limit flag), and only the platform may debit it. One per
        # grant keeps the faucet stateless: no account to set up first, nothing to race on.
        issuing = derived_account_id(record_id, 0)
        return (
            [
                CreateAccount(issuing, ledger, FAUCET_ACCOUNT_CODE, int(AccountFlags.LINKED)),
                CreateTransfer(
                    id=transfer_id(record_id, 1),
                    debit_account_id=issuing,
                    credit_account_id=account,
                    amount=amount,
                    ledger=ledger,
                    code=FAUCET_TRANSFER_CODE,
                    user_data_128=ctx.scope,
                ),
            ],
            1,
            [""],
        )

    op = _operation(state, ctx, FAUCET_KIND, key, body, build)
    done = await _write_one(state, ctx, op)
    event = op.events[1]
    assert type(event) is CreateTransfer
    payload = _object_of(ctx, op, event, done.events[0])
    payload["debit_account"] = None  # the platform's issuing account: not the partner's to name
    return _answer(done, payload, key)


# --- lists ---------------------------------------------------------------------------------


def _list_query(request: web.Request, limit_max: int, prefix: str) -> tuple[int, int | None]:
    """``limit`` (default 10, Stripe's) and ``starting_after`` (an object id of the route)."""
    raw = request.query.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= limit_max:
        raise InvalidRequest(f"limit must be 1..{limit_max}", param="limit")
    after = request.query.get("starting_after")
    return int(raw), None if after is None else _id(after, prefix, "starting_after")


async def _page(
    state: Any, ctx: LedgerContext, kind: str, limit: int, after: int | None, extra: str = ""
) -> tuple[list[dict[str, Any]], bool]:
    """One page of this partner's objects in this mode (its scope tag): node calls from the
    cursor on until the page is full or the walk ends, each the freshest of every node."""

    async def fetch(cursor: str | None, remaining: int) -> dict[str, Any] | None:
        query = f"scope={ctx.scope}&limit={remaining}{extra}"
        if cursor is not None:
            query += f"&starting_after={cursor}"
        return await ledger_doc(state, ctx, f"/internal/v1/ledger/{kind}?{query}")

    return await walk_pages(state, limit, None if after is None else str(after), fetch)


async def walk_pages(
    state: Any,
    limit: int,
    cursor: str | None,
    fetch: Callable[[str | None, int], Awaitable[dict[str, Any] | None]],
) -> tuple[list[dict[str, Any]], bool]:
    """Node pages (``{"data", "has_more", "scanned_to"}``: a node walks at most its scan bound
    of keys a call) from ``cursor`` on until ``limit`` items or the walk ends, at most
    ``limits.ledger_list_node_calls_max`` calls: ``fetch(cursor, remaining)`` makes one.
    A node whose ledger index by scope tag is complete (log feature 13) answers a full page
    with ``scanned_to`` null: one call, never too sparse."""
    data: list[dict[str, Any]] = []
    for _ in range(state.config.limits.ledger_list_node_calls_max):
        page = await fetch(cursor, limit - len(data))
        if page is None:
            raise OperationFailed("no node answered the list", code="ledger_list_unavailable")
        data.extend(page["data"])
        if not page["has_more"] or len(data) == limit or page["scanned_to"] is None:
            return data, bool(page["has_more"])
        cursor = str(page["scanned_to"])  # the walk's bound, not the page's: go on from there
    if not data:  # nothing to name as the next cursor: say so rather than end the list
        raise OperationFailed(
            "the list walked its bound (limits.ledger_list_node_calls_max node calls) "
            "without finding one of your objects",
            code="ledger_list_too_sparse",
        )
    return data, True


async def list_accounts(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    limit, after = _list_query(request, state.config.limits.ledger_list_limit_max, ACCOUNT_PREFIX)
    docs, has_more = await _page(state, ctx, "accounts", limit, after)
    data = [account_object(d, ctx.mode) for d in docs]
    return web.json_response(
        {"object": "list", "data": data, "has_more": has_more, "url": request.path}
    )


async def list_transfers(request: web.Request) -> web.Response:
    """Your transfers in id order; with ``account`` (yours), that account's, newest first."""
    state, ctx = gateway_state(request), ledger_context(request)
    limit, after = _list_query(request, state.config.limits.ledger_list_limit_max, TRANSFER_PREFIX)
    extra = ""
    if "account" in request.query:
        account = _id(request.query["account"], ACCOUNT_PREFIX, "account")
        await _own_account(state, ctx, account, "account")
        extra = f"&account={account}"
    docs, has_more = await _page(state, ctx, "transfers", limit, after, extra)
    data = [_from_doc(d, ctx.mode) for d in docs]
    return web.json_response(
        {"object": "list", "data": data, "has_more": has_more, "url": request.path}
    )


def add_ledger_routes(app: web.Application) -> None:
    app.router.add_get(LEDGER_PREFIX + "/accounts", list_accounts)
    app.router.add_get(LEDGER_PREFIX + "/transfers", list_transfers)
    app.router.add_post(LEDGER_PREFIX + "/accounts", post_account)
    app.router.add_get(LEDGER_PREFIX + "/accounts/{id}", get_account)
    app.router.add_post(LEDGER_PREFIX + "/transfers", post_transfer)
    app.router.add_post(LEDGER_PREFIX + "/transfers/preview", post_preview)
    app.router.add_post(LEDGER_PREFIX + "/transfers/linked", post_linked)
    app.router.add_post(LEDGER_PREFIX + "/transfers/linked/preview", post_linked_preview)
    app.router.add_post(LEDGER_PREFIX + "/transfers/batch", post_batch)
    app.router.add_get(LEDGER_PREFIX + "/transfers/{id}", get_transfer)
    app.router.add_post(LEDGER_PREFIX + "/transfers/{id}/post", post_post)
    app.router.add_post(LEDGER_PREFIX + "/transfers/{id}/void", post_void)
    app.router.add_post(FAUCET_PATH, post_faucet)
