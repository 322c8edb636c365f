"""The Bridge's partner API on the gateway: point assets, issuance, redemption, reversal, the
BAAS reserve, swap policies, quotes and swaps (issue 12, item 6).

Every route is signed and served in the credential's mode, in the ledger API's conventions
(:mod:`gateway.ledger_routes`): objects with ``object`` and ``livemode``, amounts as strings of
digits, problems with a stable ``code`` and ``param``, a required ``Idempotency-Key`` on every
write (the operation's record id derives from it: a retry gets the first outcome, 200), and
another partner's objects answered as not found. docs/bridge-guide.md is the partner's guide.

How a write travels: the route builds one Bridge request (:mod:`business.bridge.model`) whose
op id is the record id, and proposes it as a ``ledger.ops`` operation carrying ``br``
(:meth:`WriteItem.bridge_operation`, log feature 8); the state machine
(node/consensus/bridge_ops.py) checks who may do it, makes the ledger chain, checks the user's
approval of every debit of their wallet and applies all or nothing. Its result code is the
operation's sticky outcome, mapped to a problem by :data:`BRIDGE_PROBLEMS`.

A partner has one point asset per mode: the point ledger identity allocated at onboarding
(``asset_index``); ``{asset}`` in a path is the code the partner defined it with, or for a
token its ERC-20 address (``0x`` + 40 hex; each token its own ledger, allocated when it is
registered).

Routes:

* ``POST /v1/bridge/points`` ``{"code", "scale", "validity_days"?}`` -> 201 the point asset;
* ``GET /v1/bridge/points/{asset}`` -> the asset and its ``supply`` (the partner's liability);
* ``POST /v1/bridge/points/{asset}/issue`` ``{"user", "amount"}`` -> 201 the issuance (to a
  wallet the partner linked to its user id);
* ``POST /v1/bridge/points/{asset}/redeem/preview`` ``{"user", "amount"}`` -> 200 the digest
  and the EIP-712 ``Approve`` the user signs; ``POST .../redeem`` with ``approvals`` (the
  signature, or a one-time code) -> 201 (why a preview: see ledger_routes' transfer preview);
* ``POST /v1/bridge/points/{asset}/reverse`` ``{"issuance", "amount"}`` -> 201 (the partner's
  own issuance, capped at its unspent amount by the state machine);
* ``POST /v1/bridge/points/{asset}/liquidity`` ``{"amount"}`` -> 201 (points from the issuance
  account to the liquidity account swaps BAAS -> points pay out of);
* ``GET /v1/bridge/points/{asset}/users/{user_id}`` -> the user's spendable balance and lots;
* ``POST /v1/bridge/points/{asset}/policy`` -> 201 the new policy version (an audited log
  entry); ``GET /v1/bridge/points/{asset}/policy[?version=N]`` -> the policy or one change;
* ``POST /v1/bridge/tokens`` ``{"symbol", "decimals", "address"}`` -> 201 the token (log
  feature 12: the state machine allocates its ledger; an ERC-20 address registered in this
  mode already is ``token_address_taken``); ``GET /v1/bridge/tokens`` -> your tokens;
  ``GET /v1/bridge/tokens/{address}`` -> one, with its liquidity;
  ``POST /v1/bridge/tokens/{address}/liquidity`` ``{"amount"}`` -> 201 (test mode only, from
  the token's issuance account: the faucet; live mode is a 400 ``test_mode_only``);
  ``POST|GET /v1/bridge/tokens/{address}/policy`` as for points. A token is named by its
  ERC-20 address (``0x`` + 40 hex) wherever an ``asset`` is asked for (quotes, swaps, the
  swap list's filter, ``/points/{asset}/policy``);
* ``POST /v1/bridge/reserve/top_up`` ``{"amount"}`` (test mode: from the faucet),
  ``POST /v1/bridge/reserve/threshold`` ``{"threshold"}``, ``GET /v1/bridge/reserve`` -> level,
  threshold, low flag and history;
* ``POST /v1/bridge/quotes`` ``{"asset", "user", "direction", "amount_in"}`` -> 200 the terms
  now (no Idempotency-Key: a quote is a computation, nothing is written; the swap re-checks
  every term against the state it runs on);
* ``POST /v1/bridge/swaps/preview`` ``{"user", "quote"}`` -> 200 the digest to sign;
  ``POST /v1/bridge/swaps`` ``{"user", "quote", "approvals"}`` -> 201 the swap;
  ``POST /v1/bridge/swaps/batch`` ``{"swaps": [{"idempotency_key", "user", "quote",
  "approvals"}, ...]}`` -> 200 one result per swap (each its own operation), in order;
  ``GET /v1/bridge/swaps/{id}`` -> the swap and its outcome;
  ``GET /v1/bridge/swaps?user=&asset=&status=&created_gte=&created_lt=&limit=&starting_after=``
  -> a Stripe list of the partner's swaps in the mode, newest first (log feature 11's index).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from business.bridge import (
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    RegisterToken,
    ReversePoints,
    SetPolicy,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
    encode_request,
    role_account,
)
from business.bridge.model import BridgeResult, Request
from business.identity import eip712
from business.identity.approvals import operation_digest
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    ledger_number,
    operation_id,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import ApprovalResult, IdentityConfig
from business.ledger.model import U32_MAX
from gateway.ledger_routes import (
    APPROVAL_DEADLINE_S,
    SCOPE_PROBLEMS,
    LedgerContext,
    LedgerRefused,
    amount_param,
    approvals_param,
    check_key,
    gateway_state,
    hex_param,
    int_param,
    ledger_context,
    ledger_doc,
    linked_wallet,
    read_body,
    require_idempotency_key,
    user_id_param,
    walk_pages,
)
from gateway.node_client import ReadItem, WriteItem, error_from_problem
from gateway.partners import actor_of
from gateway.record_codec import canonical_record, open_record, sealed_wire
from gateway.request_keys import PRINCIPAL
from node.errors import (
    BaasError,
    CallerError,
    InvalidRequest,
    NotFound,
    OperationFailed,
    PayloadTooLarge,
)

__all__ = [
    "BRIDGE_PREFIX",
    "BRIDGE_PROBLEMS",
    "POLICY_FIELDS",
    "RESERVE_HISTORY_DEFAULT",
    "SWAP_PREFIX",
    "Done",
    "Op",
    "add_bridge_routes",
    "answer",
    "current_policy",
    "define_points",
    "fund_liquidity",
    "issue_points",
    "own_point_asset",
    "point_asset",
    "policy_terms",
    "preview",
    "problem_of",
    "read_swap",
    "register_token",
    "render_reserve",
    "request_operation",
    "reserve_object",
    "reserve_path",
    "sealed_request",
    "set_policy",
    "set_reserve_threshold",
    "swaps_list",
    "token_list",
    "top_up_reserve",
    "user_approvals",
    "write_operation",
]

BRIDGE_PREFIX = "/v1/bridge"
SWAP_PREFIX = "swap_"
_INTERNAL = "/internal/v1/bridge"
_SUCCESS = frozenset({"ok", "exists"})
_APPROVAL_CODES = frozenset(c.value for c in ApprovalResult) - {"ok"}
_DIRECTIONS = {"in": Direction.IN, "out": Direction.OUT}
_HISTORY_LIMIT_MAX = 100
_POINT_CODE = re.compile(
    r"[A-Z][A-Z0-9_]{0,63}"
)  # business.bridge.model's check, before any read  # node/api/bridge_routes.HISTORY_LIMIT_MAX

R = BridgeResult
# Bridge result -> (HTTP status, problem code, the request field at fault). Every refusal is
# sticky (the operation's outcome): a retry under the same key answers the same. Another
# partner's asset, or the other mode's, is not found, never "foreign": nothing is revealed.
BRIDGE_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    R.QUOTE_ALTERED.value: (400, "quote_altered", "quote"),
    R.QUOTE_OTHER_USER.value: (400, "quote_other_user", "quote"),
    R.BOUND_EXCEEDED.value: (400, "bound_exceeded", None),
    R.LEDGER_WRONG_MODE.value: (404, "asset_not_found", "asset"),
    R.ASSET_NOT_FOUND.value: (404, "asset_not_found", "asset"),
    R.ASSET_FOREIGN.value: (404, "asset_not_found", "asset"),
    R.ASSET_KIND_MISMATCH.value: (400, "asset_kind_mismatch", "asset"),
    R.LEDGER_TAKEN.value: (409, "asset_already_defined", "code"),
    R.EXISTS_WITH_DIFFERENT_FIELDS.value: (409, "asset_already_defined", "code"),
    R.TOKEN_ADDRESS_TAKEN.value: (409, "token_address_taken", "address"),
    R.ISSUANCE_NOT_FOUND.value: (404, "issuance_not_found", "issuance"),
    R.FAUCET_LIVE_MODE.value: (400, "test_mode_only", None),
    R.FAUCET_AMOUNT_EXCEEDED.value: (400, "faucet_amount_exceeded", "amount"),
    R.QUOTE_EXPIRED.value: (409, "quote_expired", "quote"),
    R.POLICY_NOT_FOUND.value: (404, "policy_not_found", "asset"),
    R.POLICY_DISABLED.value: (409, "policy_disabled", "asset"),
    R.POLICY_VERSION_CHANGED.value: (409, "policy_version_changed", "quote"),
    R.BELOW_MIN.value: (400, "below_min", "amount_in"),
    R.ABOVE_MAX.value: (400, "above_max", "amount_in"),
    R.QUOTE_TERMS_MISMATCH.value: (409, "quote_terms_mismatch", "quote"),
    R.USER_WINDOW_LIMIT.value: (409, "user_window_limit", "amount_in"),
    R.PARTNER_WINDOW_LIMIT.value: (409, "partner_window_limit", "amount_in"),
    R.REVERSAL_EXCEEDS_UNSPENT.value: (409, "reversal_exceeds_unspent", "amount"),
    R.INSUFFICIENT_FUNDS.value: (402, "insufficient_funds", "amount"),
    R.LOTS_PER_SPEND_EXCEEDED.value: (409, "lots_per_spend_exceeded", "amount"),
    R.LOTS_FULL.value: (409, "lots_full", "user"),
    R.RESERVE_EXHAUSTED.value: (402, "reserve_exhausted", None),
    R.LIQUIDITY_EXHAUSTED.value: (402, "liquidity_exhausted", None),
    R.LEDGER_REFUSED.value: (409, "ledger_refused", None),
    "role_missing": (409, "role_missing", None),
}


def problem_of(code: str) -> LedgerRefused:
    """The problem for a refusal code (a Bridge result, a scope or an approval refusal)."""
    if code in _APPROVAL_CODES:
        return LedgerRefused(
            f"the user's approval was refused: {code}", code=code, status=403, param="approvals"
        )
    status, name, param = BRIDGE_PROBLEMS.get(code) or SCOPE_PROBLEMS.get(code) or (409, code, None)
    return LedgerRefused(f"the Bridge refused: {code}", code=name, status=status, param=param)


# --- operations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    """One Bridge request ready for the node: ``raw`` is its wire form, what the user signs
    (with the record id) when it debits their wallet."""

    kind: str
    record_id: bytes
    request: Any  # a Bridge request, or a payments one (gateway/payments_routes.py)
    raw: bytes
    item: WriteItem


@dataclass(frozen=True, slots=True)
class _Done:
    replayed: bool
    log_time_ms: int
    result: str


def _operation(
    state: Any,
    ctx: LedgerContext,
    kind: str,
    key: str,
    body: dict[str, Any],
    make: Callable[[bytes], Any],
    approvals: bytes | None = None,
    user_refs: Sequence[bytes] = (),
    *,
    encode: Callable[[Any], bytes] = encode_request,
    field: str = "br",
) -> _Op:
    """``make(record_id)`` builds the request (its op id is the record id). The sealed record
    holds the body as asked, without the approvals: a retry with a fresh signature is the same
    operation, not another body under the key. ``encode`` and ``field``: the request's wire
    form and node field (the Bridge's by default; the payments routes pass theirs)."""
    record_id = operation_id(ctx.pid16, ctx.mode, kind, key)
    request = make(record_id)
    raw = encode(request)
    plaintext = canonical_record(
        {
            "object": "bridge_operation" if field == "br" else "payments_operation",
            "kind": kind,
            "livemode": ctx.mode == Mode.LIVE,  # reads check it: a partner's modes are apart
            "request": {k: v for k, v in body.items() if k != "approvals"},
        },
        state.config.limits.record_json_bytes_max,
    )
    item = WriteItem.bridge_operation(
        sealed_wire(ctx.partner, record_id, plaintext),
        raw,
        approvals,
        deadline=ctx.deadline,
        request_id=ctx.request_id,
        partner=ctx.pid16,
        mode=int(ctx.mode),
        user_refs=user_refs,
        field=field,
    )
    return _Op(kind, record_id, request, raw, item)


def judge(
    result: dict[str, Any], problem: Callable[[str], LedgerRefused] = problem_of
) -> _Done | BaasError:
    """A node's answer about one Bridge (or payments: ``problem``) operation: its outcome, or
    the refusal as a problem."""
    if not result.get("ok"):
        code = str(result.get("code"))
        if code in _APPROVAL_CODES:
            return problem(code)
        return error_from_problem(int(result.get("status", 503)), result)
    outcome = result.get("outcome")
    if not isinstance(outcome, dict):
        raise OperationFailed("the node answered without the operation's outcome")
    code = str(outcome.get("result", "ok"))
    if code not in _SUCCESS:
        return problem(code)
    return _Done(bool(result.get("replayed")), int(outcome["log_time_ms"]), code)


async def _write(
    state: Any, ctx: LedgerContext, op: _Op, problem: Callable[[str], LedgerRefused] = problem_of
) -> _Done:
    with state.reserve(ctx.partner.partner_id, 1):
        (result,) = await state.nodes.write_operations([op.item])
    done = judge(result, problem)
    status = done.http_status if isinstance(done, BaasError) else 200 if done.replayed else 201
    state.ledger_operations.labels(op.kind, str(status)).inc()
    if isinstance(done, BaasError):
        raise done
    return done


def _answer(done: _Done, payload: dict[str, Any], key: str) -> web.Response:
    return web.json_response(
        payload, status=200 if done.replayed else 201, headers={"Idempotency-Key": key}
    )


# --- who and what: the partner's ledgers, its asset, its linked user -------------------------


def _baas_ledger(ctx: LedgerContext) -> int:
    return ledger_number(ctx.mode, ASSET_INDEX_BAAS)


async def _point_ledger(state: Any, ctx: LedgerContext) -> int:
    """The partner's point ledger in this mode (identity allocated it at onboarding)."""
    try:
        found = await state.nodes.identity_read(
            f"/internal/v1/identity/partners/{ctx.pid16.hex()}",
            deadline=ctx.deadline,
            request_id=ctx.request_id,
        )
    except NotFound as exc:
        raise LedgerRefused(
            "the partner is not onboarded on the log", code="partner_not_onboarded",
            status=403, param=None,
        ) from exc  # fmt: skip
    return ledger_number(ctx.mode, int(found["asset_index"]))


async def _bridge_read(state: Any, ctx: LedgerContext, path: str) -> dict[str, Any] | None:
    return await ledger_doc(state, ctx, _INTERNAL + path)


async def _asset(state: Any, ctx: LedgerContext, code: str) -> tuple[int, dict[str, Any]]:
    """The partner's own point asset named ``code``, or its token whose ERC-20 address
    ``code`` is (``0x`` + 40 hex: a point code is upper case, so the two never meet); 404 for
    anything else: another partner's code or token names nothing here."""
    if code.startswith("0x"):
        return await _token(state, ctx, code)
    ledger = await _point_ledger(state, ctx)
    doc = await _bridge_read(state, ctx, f"/assets/{ledger}")
    if doc is None or doc["code"] != code or doc["partner"] != ctx.pid16.hex():
        raise NotFound("no such point asset", code="asset_not_found", param="asset")
    return ledger, doc


async def token_list(state: Any, ctx: LedgerContext) -> list[dict[str, Any]]:
    """The partner's tokens in this mode as the node reads them (log feature 12)."""
    doc = await _bridge_read(state, ctx, f"/tokens/{ctx.pid16.hex()}/{int(ctx.mode)}")
    return [] if doc is None else list(doc["data"])


def _address_param(raw: Any, param: str) -> bytes:
    return hex_param(raw.lower() if isinstance(raw, str) else raw, param, 20, 20, prefix="0x")


async def _token(state: Any, ctx: LedgerContext, text: str) -> tuple[int, dict[str, Any]]:
    """The partner's token at ERC-20 address ``text`` in this mode (404 otherwise)."""
    try:
        address = _address_param(text, "asset").hex()
    except InvalidRequest:
        address = ""
    for doc in await token_list(state, ctx):
        if doc["address"] == address and doc["partner"] == ctx.pid16.hex():
            return int(doc["ledger"]), doc
    raise NotFound("no such token", code="asset_not_found", param="asset")


async def _user(state: Any, ctx: LedgerContext, user: str, param: str) -> tuple[bytes, bytes]:
    """The wallet address and wallet id linked to the partner's ``user`` (404 if none)."""
    address = await linked_wallet(state, ctx, user, param)
    return address, wallet_id(address, ctx.mode)


def _asset_object(ctx: LedgerContext, ledger: int, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "bridge_point_asset",
        "livemode": ctx.mode == Mode.LIVE,
        "code": doc["code"],
        "scale": int(doc["scale"]),
        "validity_days": int(doc["validity_days"]),
        "ledger": ledger,
    }


# --- points ----------------------------------------------------------------------------------


async def post_points(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, {"code", "scale", "validity_days"}, {"code", "scale"})
    return _answer(*await define_points(state, ctx, key, body), key)


# The cores below take the checked context, key and body: the routes call them, and so does the
# dashboard's partner pages (gateway/dashboard), acting for a signed-in partner user.


async def define_points(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any]
) -> tuple[_Done, dict[str, Any]]:
    scale = int_param(body["scale"], "scale", 0, 18)
    validity = int_param(body.get("validity_days", 0), "validity_days", 0, 3650)
    code = body["code"]
    if not isinstance(code, str) or _POINT_CODE.fullmatch(code) is None:
        raise InvalidRequest(
            "code is 1..64 upper-case ASCII letters, digits and _, a letter first", param="code"
        )
    ledger = await _point_ledger(state, ctx)

    def make(rid: bytes) -> Request:
        return DefinePoints(rid, ctx.pid16, ledger, code, scale, validity)

    op = _checked_op(lambda: _operation(state, ctx, "bridge.points", key, body, make), "code")
    done = await _write(state, ctx, op)
    doc = {"code": code, "scale": scale, "validity_days": validity}
    return done, _asset_object(ctx, ledger, doc)


def _checked_op(build: Callable[[], _Op], param: str) -> _Op:
    """The request's own shape checks (business.bridge.model) as a 400 naming ``param``."""
    try:
        return build()
    except InvalidRequest as exc:
        raise InvalidRequest(exc.detail, code=exc.code, param=exc.param or param) from exc


def _points_only(code: str) -> str:
    """A point read names a point code: a token (an address) is no point asset here (its
    reads are under /v1/bridge/tokens; its balances are the user's ledger balances)."""
    if code.startswith("0x"):
        raise NotFound("no such point asset", code="asset_not_found", param="asset")
    return code


async def get_points(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    ledger, doc = await _asset(state, ctx, _points_only(request.match_info["asset"]))
    return web.json_response(await _with_supply(state, ctx, ledger, doc))


async def _with_supply(
    state: Any, ctx: LedgerContext, ledger: int, doc: dict[str, Any]
) -> dict[str, Any]:
    supply = await _bridge_read(state, ctx, f"/supply/{ledger}")
    answer = _asset_object(ctx, ledger, doc)
    answer["supply"] = "0" if supply is None else str(supply["supply"])
    return answer


async def own_point_asset(state: Any, ctx: LedgerContext) -> dict[str, Any] | None:
    """The partner's point asset of this mode with its supply, whatever its code; None before
    it is defined (a partner has one point ledger per mode: see the module docstring)."""
    ledger = await _point_ledger(state, ctx)
    doc = await _bridge_read(state, ctx, f"/assets/{ledger}")
    if doc is None or doc["partner"] != ctx.pid16.hex():
        return None
    return await _with_supply(state, ctx, ledger, doc)


def _writing(request: web.Request) -> tuple[Any, LedgerContext, str]:
    return gateway_state(request), ledger_context(request), require_idempotency_key(request)


async def post_issue(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, {"user", "amount"}, {"user", "amount"})
    return _answer(*await issue_points(state, ctx, key, body, request.match_info["asset"]), key)


async def issue_points(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any], code: str
) -> tuple[_Done, dict[str, Any]]:
    user = user_id_param(body["user"], "user")
    amount = amount_param(body["amount"], "amount")
    ledger, _ = await _asset(state, ctx, code)
    _, wallet = await _user(state, ctx, user, "user")
    account = wallet_account_id(wallet, ctx.mode, ledger)

    def make(rid: bytes) -> Request:
        return IssuePoints(rid, ctx.pid16, ledger, account, amount)

    refs = (user_ref(ctx.pid16, ctx.mode, user),)
    op = _operation(state, ctx, "bridge.issue", key, body, make, None, refs)
    done = await _write(state, ctx, op)
    return done, _points_move(ctx, op, "bridge_issuance", user, amount)


def _points_move(
    ctx: LedgerContext, op: _Op, kind: str, user: str | None, amount: int
) -> dict[str, Any]:
    return {
        "id": op.record_id.hex(),
        "object": kind,
        "livemode": ctx.mode == Mode.LIVE,
        "user": user,
        "amount": str(amount),
        "operation": op.record_id.hex(),
    }


async def _redeem_op(request: web.Request, approve: bool) -> tuple[Any, LedgerContext, str, _Op,
                                                                     bytes, int, str]:  # fmt: skip
    state, ctx, key = _writing(request)
    allowed = {"user", "amount", "approvals"} if approve else {"user", "amount"}
    body = await read_body(request, allowed, {"user", "amount"})
    user = user_id_param(body["user"], "user")
    amount = amount_param(body["amount"], "amount")
    approvals = _user_approvals(body) if approve else None
    ledger, _ = await _asset(state, ctx, request.match_info["asset"])
    address, wallet = await _user(state, ctx, user, "user")
    account = wallet_account_id(wallet, ctx.mode, ledger)

    def make(rid: bytes) -> Request:
        return RedeemPoints(rid, ctx.pid16, ledger, account, amount)

    refs = (user_ref(ctx.pid16, ctx.mode, user),)
    op = _operation(state, ctx, "bridge.redeem", key, body, make, approvals, refs)
    return state, ctx, key, op, address, amount, user


async def post_redeem_preview(request: web.Request) -> web.Response:
    _, ctx, key, op, address, amount, user = await _redeem_op(request, approve=False)
    move = _points_move(ctx, op, "bridge_redemption", user, amount)
    return _preview(ctx, key, op, address, "bridge_redemption_preview", {"redemption": move})


async def post_redeem(request: web.Request) -> web.Response:
    state, ctx, key, op, _, amount, user = await _redeem_op(request, approve=True)
    done = await _write(state, ctx, op)
    return _answer(done, _points_move(ctx, op, "bridge_redemption", user, amount), key)


def _user_approvals(body: dict[str, Any]) -> bytes:
    """The user's approval, required before the log: the state machine's refusal would be the
    operation's sticky outcome, and the key burnt for good."""
    approvals = approvals_param(body.get("approvals"))
    if approvals is None:
        raise InvalidRequest(
            "this debits the user's wallet: send the user's signature over the digest the "
            "preview route answers, or a one-time code they issued",
            code="approval_required",
            param="approvals",
        )
    return approvals


def _preview(
    ctx: LedgerContext, key: str, op: _Op, wallet: bytes, kind: str, extra: dict[str, Any]
) -> web.Response:
    """What the user signs: ``operation_digest(record id, request)``, as the state machine
    checks it (the record id derives from the key, so the same key and body are sent next)."""
    digest = operation_digest(op.record_id, op.raw)
    chain_id = IdentityConfig().chain_id  # the nodes' (node/main.py): the default
    deadline = int(time.time()) + APPROVAL_DEADLINE_S
    approve = eip712.Approve(int(ctx.mode), digest, wallet, deadline)
    preview = {
        "object": kind,
        "livemode": ctx.mode == Mode.LIVE,
        "operation": op.record_id.hex(),
        "request": op.raw.hex(),
        "digest": "0x" + digest.hex(),
        **extra,
        "approvals_required": [
            {"wallet": "0x" + wallet.hex(), "typed_data": eip712.typed_data(approve, chain_id)}
        ],
    }
    return web.json_response(preview, headers={"Idempotency-Key": key})


async def post_reverse(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, {"issuance", "amount"}, {"issuance", "amount"})
    issuance = hex_param(body["issuance"], "issuance", 32, 32)
    amount = amount_param(body["amount"], "amount")
    ledger, _ = await _asset(state, ctx, request.match_info["asset"])

    def make(rid: bytes) -> Request:
        return ReversePoints(rid, ctx.pid16, ledger, issuance, amount)

    op = _operation(state, ctx, "bridge.reverse", key, body, make)
    done = await _write(state, ctx, op)
    payload = {**_points_move(ctx, op, "bridge_reversal", None, amount), "issuance": issuance.hex()}
    return _answer(done, payload, key)


async def post_liquidity(request: web.Request) -> web.Response:
    """Move points from the partner's issuance account to its liquidity account: what swaps
    BAAS -> points pay out (a liquidity account cannot go negative: liquidity_exhausted)."""
    state, ctx, key = _writing(request)
    body = await read_body(request, {"amount"}, {"amount"})
    return _answer(*await fund_liquidity(state, ctx, key, body, request.match_info["asset"]), key)


async def fund_liquidity(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any], code: str
) -> tuple[_Done, dict[str, Any]]:
    amount = amount_param(body["amount"], "amount")
    if code.startswith("0x") and ctx.mode != Mode.TEST:
        raise InvalidRequest(
            "token liquidity comes from the faucet in test mode only; live tokens come from "
            "on-chain deposits",
            code="test_mode_only",
        )  # the state machine refuses it too (faucet_live_mode): never a sticky refusal here
    ledger, _ = await _asset(state, ctx, code)

    def make(rid: bytes) -> Request:
        return FundLiquidity(rid, ctx.pid16, ledger, amount)

    op = _operation(state, ctx, "bridge.liquidity", key, body, make)
    done = await _write(state, ctx, op)
    return done, _points_move(ctx, op, "bridge_liquidity_funding", None, amount)


# --- tokens ----------------------------------------------------------------------------------

_TOKEN_SYMBOL = re.compile(r"[A-Z][A-Z0-9_]{0,15}")  # the Bridge's code_chars_max is 16
_TOKEN_DECIMALS_MAX = 18


def _token_object(ctx: LedgerContext, doc: dict[str, Any]) -> dict[str, Any]:
    address = "0x" + str(doc["address"])
    return {
        "id": address,
        "object": "bridge_token",
        "livemode": ctx.mode == Mode.LIVE,
        "symbol": doc["code"],
        "decimals": int(doc["scale"]),
        "address": address,
        "ledger": int(doc["ledger"]),
    }


async def post_tokens(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    fields = {"symbol", "decimals", "address"}
    body = await read_body(request, fields, fields)
    return _answer(*await register_token(state, ctx, key, body), key)


async def register_token(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any]
) -> tuple[_Done, dict[str, Any]]:
    """Register a token: the state machine allocates its ledger in this mode (the request's
    ledger only names the mode) and opens its issuance, liquidity and breakage accounts."""
    symbol = body["symbol"]
    if not isinstance(symbol, str) or _TOKEN_SYMBOL.fullmatch(symbol) is None:
        raise InvalidRequest(
            "symbol is 1..16 upper-case ASCII letters, digits and _, a letter first",
            param="symbol",
        )
    decimals = int_param(body["decimals"], "decimals", 0, _TOKEN_DECIMALS_MAX)
    address = _address_param(body["address"], "address")

    def make(rid: bytes) -> Request:
        return RegisterToken(rid, ctx.pid16, _baas_ledger(ctx), symbol, decimals, address)

    op = _checked_op(lambda: _operation(state, ctx, "bridge.token", key, body, make), "symbol")
    done = await _write(state, ctx, op)
    _, doc = await _token(state, ctx, "0x" + address.hex())
    return done, _token_object(ctx, doc)


async def get_tokens(request: web.Request) -> web.Response:
    """Your tokens in this mode, in registration order (at most the Bridge's
    ``tokens_per_partner_max``: one page)."""
    state, ctx = gateway_state(request), ledger_context(request)
    data = [_token_object(ctx, doc) for doc in await token_list(state, ctx)]
    return web.json_response(
        {"object": "list", "data": data, "has_more": False, "url": BRIDGE_PREFIX + "/tokens"}
    )


async def get_token(request: web.Request) -> web.Response:
    """One token and its liquidity: what swaps BAAS -> token can still pay out."""
    state, ctx = gateway_state(request), ledger_context(request)
    ledger, doc = await _token(state, ctx, request.match_info["asset"])
    account = role_account(ctx.pid16, ledger, "liquidity")
    found = await ledger_doc(state, ctx, f"/internal/v1/ledger/accounts/{account}")
    level = 0
    if found is not None:
        level = int(found["credits_posted"]) - int(found["debits_posted"])
        level -= int(found["debits_pending"])
    return web.json_response({**_token_object(ctx, doc), "liquidity": str(level)})


async def get_user_points(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    user = user_id_param(request.match_info["user_id"], "user_id")
    ledger, doc = await _asset(state, ctx, _points_only(request.match_info["asset"]))
    _, wallet = await _user(state, ctx, user, "user_id")
    account = wallet_account_id(wallet, ctx.mode, ledger)
    now_ms = int(time.time() * 1000)
    lots = await _bridge_read(state, ctx, f"/lots/{ledger}/{account}?at_ms={now_ms}")
    items = [] if lots is None else lots["lots"]
    return web.json_response(
        {
            "object": "bridge_user_points",
            "livemode": ctx.mode == Mode.LIVE,
            "user": user,
            "asset": doc["code"],
            "balance": "0" if lots is None else str(lots["spendable"]),
            "total": "0" if lots is None else str(lots["total"]),
            "lots": [
                {
                    "expiry_day": int(lot["expiry_day"]),
                    "origin": {1: "issued", 2: "bought"}.get(int(lot["origin"]), "other"),
                    "amount": str(lot["amount"]),
                }
                for lot in items
            ],
        }
    )


# --- policies --------------------------------------------------------------------------------

_POLICY_AMOUNTS = ("rate_num", "rate_den", "swap_min", "swap_max", "user_window_max",
                   "partner_window_max", "fee_min")  # fmt: skip
_POLICY_FIELDS = {*_POLICY_AMOUNTS, "window_s", "fee_bps", "enabled"}
POLICY_FIELDS = frozenset(_POLICY_FIELDS)


def _policy_object(ctx: LedgerContext, code: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "bridge_policy",
        "livemode": ctx.mode == Mode.LIVE,
        "asset": code,
        "version": int(doc["version"]),
        **{name: str(doc[name]) for name in _POLICY_AMOUNTS},
        "window_s": int(doc["window_s"]),
        "fee_bps": int(doc["fee_bps"]),
        "enabled": bool(doc["enabled"]),
        "changed_ms": int(doc["changed_ms"]),
    }


async def post_policy(request: web.Request) -> web.Response:
    """A new version of the asset's swap policy: an audited log entry (its actor is the
    signing credential); quotes made under the old version fail ``policy_version_changed``."""
    state, ctx, key = _writing(request)
    body = await read_body(request, _POLICY_FIELDS, _POLICY_FIELDS)
    actor = actor_of(request[PRINCIPAL]).credential
    code = request.match_info["asset"]
    return _answer(*await set_policy(state, ctx, key, body, code, actor), key)


def policy_terms(body: dict[str, Any]) -> dict[str, Any]:
    """A policy body's terms, checked (each refusal a 400 naming its field): SetPolicy's
    fields but who, which ledgers and the actor."""
    # 0 is allowed for the window limits (none) and the minimum fee; not for rate or sizes
    zero_ok = ("user_window_max", "partner_window_max", "fee_min")
    terms: dict[str, Any] = {
        name: (_digits if name in zero_ok else amount_param)(body[name], name)
        for name in _POLICY_AMOUNTS
    }
    terms["window_s"] = int_param(body["window_s"], "window_s", 1, U32_MAX)
    terms["fee_bps"] = int_param(body["fee_bps"], "fee_bps", 0, 9999)
    if type(body["enabled"]) is not bool:
        raise InvalidRequest("enabled must be true or false", param="enabled")
    terms["enabled"] = body["enabled"]
    return terms


async def set_policy(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any], code: str, actor: bytes
) -> tuple[_Done, dict[str, Any]]:
    """``actor``: the 16-byte credential reference the audit entry names (who changed it)."""
    terms = policy_terms(body)
    ledger, _ = await _asset(state, ctx, code)

    def make(rid: bytes) -> Request:
        return SetPolicy(rid, ctx.pid16, ledger, _baas_ledger(ctx), **terms, actor=actor)

    op = _checked_op(lambda: _operation(state, ctx, "bridge.policy", key, body, make), "swap_max")
    done = await _write(state, ctx, op)
    current = await _bridge_read(state, ctx, f"/policies/{ledger}")
    if current is None:  # acknowledged, so applied on the node that coordinated it
        raise OperationFailed("no node answered the policy just set", code="policy_unavailable")
    return done, _policy_object(ctx, code, current)


async def current_policy(state: Any, ctx: LedgerContext, code: str, ledger: int) -> dict[str, Any]:
    doc = await _bridge_read(state, ctx, f"/policies/{ledger}")
    if doc is None:
        raise NotFound("no policy for this asset", code="policy_not_found", param="asset")
    return _policy_object(ctx, code, doc)


async def get_policy(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    code = request.match_info["asset"]
    ledger, _ = await _asset(state, ctx, code)
    version = request.query.get("version")
    if version is None:
        return web.json_response(await current_policy(state, ctx, code, ledger))
    if not version.isdigit() or not 1 <= int(version) <= U32_MAX:
        raise InvalidRequest("version is 1..2^32-1", param="version")
    change = await _bridge_read(state, ctx, f"/policies/{ledger}?version={int(version)}")
    if change is None:
        raise NotFound("no such policy version", code="policy_not_found", param="version")
    return web.json_response(
        {
            "object": "bridge_policy_change",
            "livemode": ctx.mode == Mode.LIVE,
            "asset": code,
            "actor": change["actor"],
            "changed_ms": int(change["changed_ms"]),
            "policy": _policy_object(ctx, code, change["policy"]),
        }
    )


# --- the reserve -----------------------------------------------------------------------------


async def post_top_up(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, {"amount"}, {"amount"})
    return _answer(*await top_up_reserve(state, ctx, key, body), key)


async def top_up_reserve(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any]
) -> tuple[_Done, dict[str, Any]]:
    amount = amount_param(body["amount"], "amount")
    if ctx.mode != Mode.TEST:
        raise InvalidRequest(
            "the reserve is topped up from the faucet in test mode only; live BAAS comes "
            "from on-chain deposits",
            code="test_mode_only",
        )

    def make(rid: bytes) -> Request:
        return TopUpReserve(rid, ctx.pid16, _baas_ledger(ctx), amount, 0)

    op = _operation(state, ctx, "bridge.top_up", key, body, make)
    done = await _write(state, ctx, op)
    return done, await reserve_object(state, ctx, "", limit=1)


async def post_threshold(request: web.Request) -> web.Response:
    state, ctx, key = _writing(request)
    body = await read_body(request, {"threshold"}, {"threshold"})
    return _answer(*await set_reserve_threshold(state, ctx, key, body), key)


async def set_reserve_threshold(
    state: Any, ctx: LedgerContext, key: str, body: dict[str, Any]
) -> tuple[_Done, dict[str, Any]]:
    threshold = _digits(body["threshold"], "threshold")

    def make(rid: bytes) -> Request:
        return SetReserveThreshold(rid, ctx.pid16, _baas_ledger(ctx), threshold)

    op = _operation(state, ctx, "bridge.threshold", key, body, make)
    done = await _write(state, ctx, op)
    return done, await reserve_object(state, ctx, "", limit=1)


RESERVE_HISTORY_DEFAULT = 10  # GET /v1/bridge/reserve's limit, and reserve.low's object's


def reserve_path(pid_hex: str, ledger: int, limit: int, query: str = "") -> str:
    """The node's reserve read (under ``/internal/v1/bridge``); ``query``: ``&after_ts=N``."""
    return f"/reserves/{pid_hex}/{ledger}?limit={limit}{query}"


async def reserve_object(state: Any, ctx: LedgerContext, query: str, limit: int) -> dict[str, Any]:
    path = reserve_path(ctx.pid16.hex(), _baas_ledger(ctx), limit, query)
    doc = await _bridge_read(state, ctx, path)
    if doc is None:
        raise OperationFailed("no node answered the reserve", code="reserve_unavailable")
    return render_reserve(ctx.mode, doc)


def render_reserve(mode: Mode, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The API's ``bridge_reserve`` from the node's reserve read: the one rendering, for
    ``GET /v1/bridge/reserve`` and for the object of a ``reserve.low`` webhook event."""
    return {
        "object": "bridge_reserve",
        "livemode": mode == Mode.LIVE,
        "asset": "baas",
        "level": str(doc["level"]),
        "threshold": str(doc["threshold"]),
        "low": bool(doc["low"]),
        "low_events": int(doc.get("low_events", 0)),
        "last_low_event": doc.get("last_low_event"),
        "history": [
            {"timestamp": str(h["timestamp"]), "level": str(h["level"])} for h in doc["history"]
        ],
    }


async def get_reserve(request: web.Request) -> web.Response:
    """Level, threshold, low flag, and the history of levels oldest first: ``limit``
    (1..100, default 10) after ``after`` (a history timestamp) to page on."""
    state, ctx = gateway_state(request), ledger_context(request)
    raw_limit = request.query.get("limit", str(RESERVE_HISTORY_DEFAULT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _HISTORY_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1..{_HISTORY_LIMIT_MAX}", param="limit")
    after = request.query.get("after", "0")
    if not after.isdigit() or len(after) > 19:
        raise InvalidRequest("after is a history timestamp (digits)", param="after")
    answer = await reserve_object(state, ctx, f"&after_ts={int(after)}", int(raw_limit))
    return web.json_response(answer)


# --- quotes and swaps ------------------------------------------------------------------------

_QUOTE_AMOUNTS = ("amount_in", "amount_out", "fee", "rate_num", "rate_den")


def _quote_object(ctx: LedgerContext, code: str, user: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "bridge_quote",
        "livemode": ctx.mode == Mode.LIVE,
        "asset": code,
        "user": user,
        "wallet": str(doc["wallet"]),
        "direction": str(doc["direction"]),
        **{name: str(doc[name]) for name in _QUOTE_AMOUNTS},
        "policy_version": int(doc["policy_version"]),
        "issued_ms": int(doc["issued_ms"]),
        "expires_ms": int(doc["expires_ms"]),
        "digest": str(doc["digest"]),
    }


async def post_quote(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    fields = {"asset", "user", "direction", "amount_in"}
    body = await read_body(request, fields, fields)
    user = user_id_param(body["user"], "user")
    if body["direction"] not in _DIRECTIONS:
        raise InvalidRequest("direction is in (points to BAAS) or out", param="direction")
    amount_in = amount_param(body["amount_in"], "amount_in")
    if not isinstance(body["asset"], str):
        raise InvalidRequest("asset is your point asset's code", param="asset")
    ledger, _ = await _asset(state, ctx, body["asset"])
    _, wallet = await _user(state, ctx, user, "user")
    # Issued at the node's last applied log time, not this gateway's clock: log time may lag
    # the wall clock (a new leader stamps its first entries with the last stamp until a
    # quorum reports), and a quote issued after the log time of its swap is refused for good.
    query = (
        f"ledger={ledger}&wallet={wallet.hex()}&direction={body['direction']}&amount_in={amount_in}"
    )
    try:
        doc = await _bridge_read(state, ctx, f"/quotes?{query}")
    except CallerError as exc:  # the refusal a swap would get now
        raise problem_of(exc.code) from exc
    if doc is None:
        raise NotFound("no such point asset", code="asset_not_found", param="asset")
    state.bridge_quotes.inc()
    return web.json_response(_quote_object(ctx, body["asset"], user, doc))


_QUOTE_FIELDS = {
    "object", "livemode", "asset", "user", "wallet", "direction", *_QUOTE_AMOUNTS,
    "policy_version", "issued_ms", "expires_ms", "digest",
}  # fmt: skip


def _quote_param(raw: Any) -> tuple[dict[str, Any], bytes]:
    """The quote as the partner sent it back (the Quote's fields but who and which ledgers,
    which come from the credential and the asset), and the digest it claims: altered terms are
    the state machine's ``quote_altered`` (sticky), another user's its ``quote_other_user``."""
    if not isinstance(raw, dict):
        raise InvalidRequest("quote is the object POST /v1/bridge/quotes answered", param="quote")
    for name in sorted(_QUOTE_FIELDS - set(raw)):
        raise InvalidRequest(f"quote.{name} is required", code="parameter_missing",
                             param="quote." + name)  # fmt: skip
    for name in sorted(set(raw) - _QUOTE_FIELDS):
        raise InvalidRequest(f"unknown field quote.{name}", code="parameter_unknown",
                             param="quote." + name)  # fmt: skip
    if not isinstance(raw["asset"], str):
        raise InvalidRequest("quote.asset is your point asset's code", param="quote.asset")
    direction = _DIRECTIONS.get(raw["direction"])
    if direction is None:
        raise InvalidRequest("quote.direction is in or out", param="quote.direction")
    fields = {
        "wallet": hex_param(raw["wallet"], "quote.wallet", 16, 16),
        "direction": direction,
        **{n: _digits(raw[n], "quote." + n) for n in _QUOTE_AMOUNTS},
        "policy_version": int_param(raw["policy_version"], "quote.policy_version", 1, U32_MAX),
        "issued_ms": int_param(raw["issued_ms"], "quote.issued_ms", 0, 2**63 - 1),
        "expires_ms": int_param(raw["expires_ms"], "quote.expires_ms", 0, 2**63 - 1),
    }
    return fields, hex_param(raw["digest"], "quote.digest", 32, 32)


def _digits(raw: Any, param: str) -> int:
    return 0 if raw == "0" else amount_param(raw, param)


async def _swap_op(
    request: web.Request, approve: bool
) -> tuple[Any, LedgerContext, str, _Op, bytes, dict[str, Any]]:
    state, ctx, key = _writing(request)
    allowed = {"user", "quote", "approvals"} if approve else {"user", "quote"}
    body = await read_body(request, allowed, {"user", "quote"})
    user = user_id_param(body["user"], "user")
    approvals = _user_approvals(body) if approve else None
    fields, digest = _quote_param(body["quote"])
    ledger, _ = await _asset(state, ctx, body["quote"]["asset"])
    address, wallet = await _user(state, ctx, user, "user")
    quote = Quote(partner=ctx.pid16, ledger=ledger, baas_ledger=_baas_ledger(ctx), **fields)

    def make(rid: bytes) -> Request:
        return Swap(rid, ctx.pid16, ledger, wallet, quote, digest)

    refs = (user_ref(ctx.pid16, ctx.mode, user),)
    op = _operation(state, ctx, "bridge.swap", key, body, make, approvals, refs)
    return state, ctx, key, op, address, body


def _swap_object(
    ctx: LedgerContext, record_id: bytes, body: dict[str, Any], status: str, log_time_ms: int | None
) -> dict[str, Any]:
    quote = body["quote"]
    return {
        "id": SWAP_PREFIX + record_id.hex(),
        "object": "bridge_swap",
        "livemode": ctx.mode == Mode.LIVE,
        "status": status,
        "user": body["user"],
        "asset": quote["asset"],
        "direction": quote["direction"],
        **{name: str(quote[name]) for name in ("amount_in", "amount_out", "fee")},
        "policy_version": int(quote["policy_version"]),
        "quote_digest": quote["digest"],
        "operation": record_id.hex(),
        "log_time_ms": log_time_ms,
    }


async def post_swap_preview(request: web.Request) -> web.Response:
    _, ctx, key, op, address, body = await _swap_op(request, approve=False)
    swap = _swap_object(ctx, op.record_id, body, "preview", None)
    return _preview(ctx, key, op, address, "bridge_swap_preview", {"swap": swap})


async def post_swap(request: web.Request) -> web.Response:
    state, ctx, key, op, _, body = await _swap_op(request, approve=True)
    try:
        done = await _write(state, ctx, op)
    except BaasError as exc:
        state.bridge_swaps.labels(exc.code).inc()
        raise
    state.bridge_swaps.labels("ok").inc()
    return _answer(done, _swap_object(ctx, op.record_id, body, "succeeded", done.log_time_ms), key)


async def post_swap_batch(request: web.Request) -> web.Response:
    """Many swaps, each its own operation (own ``idempotency_key``, own approval, own outcome),
    proposed together: one result each, in order; an item refused before the log is answered
    in its slot and the others still run. At most ``limits.ledger_batch_operations_max``."""
    state, ctx = gateway_state(request), ledger_context(request)
    body = await read_body(request, {"swaps"}, {"swaps"})
    items = body["swaps"]
    bound = state.config.limits.ledger_batch_operations_max
    if not isinstance(items, list) or not items:
        raise InvalidRequest("swaps must be a non-empty list", param="swaps")
    if len(items) > bound:
        raise PayloadTooLarge(
            f"at most {bound} swaps per request (ledger_batch_operations_max)", param="swaps"
        )
    slots: list[_Op | BaasError] = []
    keys: set[str] = set()
    for i, raw in enumerate(items):
        try:
            slots.append(await _batch_swap(state, ctx, raw, f"swaps[{i}]."))
        except CallerError as exc:
            slots.append(exc)
        key = raw.get("idempotency_key") if isinstance(raw, dict) else None
        if isinstance(key, str) and key in keys:
            raise InvalidRequest("a batch repeats an idempotency key", code="duplicate_in_batch")
        keys.add(key if isinstance(key, str) else "")
    ops = [s for s in slots if isinstance(s, _Op)]
    with state.reserve(ctx.partner.partner_id, max(1, len(ops))):
        answers = iter(await state.nodes.write_operations([op.item for op in ops]) if ops else [])
    results = []
    for raw, slot in zip(items, slots, strict=True):
        key = raw.get("idempotency_key") if isinstance(raw, dict) else None
        outcome = slot if isinstance(slot, BaasError) else judge(next(answers))
        if isinstance(outcome, BaasError):
            state.bridge_swaps.labels(outcome.code).inc()
            problem: dict[str, Any] = {"code": outcome.code, "detail": outcome.detail}
            if outcome.param is not None:
                problem["param"] = outcome.param
            results.append({"status": outcome.http_status, "idempotency_key": key,
                            "error": problem})  # fmt: skip
            continue
        assert isinstance(slot, _Op)
        state.bridge_swaps.labels("ok").inc()
        swap = _swap_object(ctx, slot.record_id, raw, "succeeded", outcome.log_time_ms)
        results.append({"status": 200 if outcome.replayed else 201, "idempotency_key": key,
                        "swap": swap})  # fmt: skip
    return web.json_response({"object": "batch_result", "results": results})


async def _batch_swap(state: Any, ctx: LedgerContext, raw: Any, where: str) -> _Op:
    """One item of a swap batch, as ``POST /v1/bridge/swaps`` checks it (params prefixed)."""
    try:
        if not isinstance(raw, dict):
            raise InvalidRequest("each swap is a JSON object")
        for name in sorted(set(raw) - {"idempotency_key", "user", "quote", "approvals"}):
            raise InvalidRequest(f"unknown field {name!r}", code="parameter_unknown", param=name)
        for name in sorted({"idempotency_key", "user", "quote"} - set(raw)):
            raise InvalidRequest(f"{name} is required", code="parameter_missing", param=name)
        key = check_key(raw["idempotency_key"], "idempotency_key")
        user = user_id_param(raw["user"], "user")
        approvals = _user_approvals(raw)
        fields, digest = _quote_param(raw["quote"])
        ledger, _ = await _asset(state, ctx, raw["quote"]["asset"])
        _, wallet = await _user(state, ctx, user, "user")
    except CallerError as exc:
        if exc.http_status != 400:
            raise  # a 404 (asset, link) names its own param
        raise InvalidRequest(exc.detail, code=exc.code, param=where + (exc.param or "")) from exc
    quote = Quote(partner=ctx.pid16, ledger=ledger, baas_ledger=_baas_ledger(ctx), **fields)

    def make(rid: bytes) -> Request:
        return Swap(rid, ctx.pid16, ledger, wallet, quote, digest)

    body = {k: v for k, v in raw.items() if k != "idempotency_key"}
    refs = (user_ref(ctx.pid16, ctx.mode, user),)
    return _operation(state, ctx, "bridge.swap", key, body, make, approvals, refs)


async def _swap_request(
    state: Any, ctx: LedgerContext, record_id: bytes, kind: str = "bridge.swap"
) -> dict[str, Any] | None:
    """The swap's (an operation of ``kind``'s) request as sealed in its record, if it is this
    partner's in this mode (another partner's id, or any other operation's, is None: not
    found)."""
    try:
        reply = await state.nodes.read_record(ReadItem(record_id, ctx.deadline, ctx.request_id))
        opened = None
        if reply["meta"].get("pid") == ctx.partner.partner_id:
            opened = open_record(state.keyring, record_id, bytes(reply["blob"]))
    except NotFound:
        opened = None
    record = None if opened is None else opened.record
    if (
        opened is None
        or opened.owner != ctx.partner.partner_id
        or not isinstance(record, dict)
        or record.get("kind") != kind
        or record.get("livemode") != (ctx.mode == Mode.LIVE)
    ):
        return None
    found: dict[str, Any] = record["request"]
    return found


def _read_swap_object(
    ctx: LedgerContext, record_id: bytes, body: dict[str, Any], result: str, log_time_ms: int
) -> dict[str, Any]:
    """A swap as the reads answer it: its request, its outcome (``failure_code`` when it
    failed)."""
    status = "succeeded" if result in _SUCCESS else "failed"
    doc = _swap_object(ctx, record_id, body, status, log_time_ms)
    doc["failure_code"] = None if status == "succeeded" else problem_of(result).code
    return doc


async def get_swap(request: web.Request) -> web.Response:
    """The swap (its request as sealed in its record) and its outcome; another partner's id,
    or any other operation's, is not found."""
    state, ctx = gateway_state(request), ledger_context(request)
    record_id = hex_param(request.match_info["id"], "id", 32, 32, prefix=SWAP_PREFIX)
    return web.json_response(await read_swap(state, ctx, record_id))


async def read_swap(state: Any, ctx: LedgerContext, record_id: bytes) -> dict[str, Any]:
    """One swap of this partner in this mode as the reads answer it (404 ``swap_not_found``
    otherwise); the dashboard's swap page shows the same object."""
    body = await _swap_request(state, ctx, record_id)
    if body is None:
        raise NotFound("no such swap", code="swap_not_found", param="id")
    outcome = await ledger_doc(state, ctx, f"/internal/v1/ledger/operations/{record_id.hex()}")
    if outcome is None:
        raise NotFound("no such swap", code="swap_not_found", param="id")
    result = str(outcome.get("result", "ok"))
    return _read_swap_object(ctx, record_id, body, result, int(outcome["log_time_ms"]))


_LIST_STATUSES = frozenset({"succeeded", "failed"})


async def _swap_list_query(state: Any, ctx: LedgerContext, q: Mapping[str, str]) -> str:
    """The node's filter query of ``GET /v1/bridge/swaps``: ``user`` is the partner's user id
    (its opaque reference: swaps stay listed under it across relinks, and an unknown user
    lists nothing), ``asset`` the partner's point asset code, ``status``, and log-time bounds
    in ms (``created_gte`` <= log_time_ms < ``created_lt``)."""
    parts = [f"partner={ctx.pid16.hex()}", f"mode={int(ctx.mode)}"]
    if "user" in q:
        ref = user_ref(ctx.pid16, ctx.mode, user_id_param(q["user"], "user"))
        parts.append(f"user_ref={ref.hex()}")
    if "asset" in q:
        ledger, _ = await _asset(state, ctx, q["asset"])
        parts.append(f"ledger={ledger}")
    if "status" in q:
        if q["status"] not in _LIST_STATUSES:
            raise InvalidRequest("status is succeeded or failed", param="status")
        parts.append(f"status={q['status']}")
    for name in ("created_gte", "created_lt"):
        if name in q:  # a query's value is text: digits, then the range (any valid one passes)
            raw = q[name]
            value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else None
            parts.append(f"{name}={int_param(value, name, 0, 2**63 - 1)}")
    return "&".join(parts)


async def list_swaps(request: web.Request) -> web.Response:
    """Your swaps in this mode, newest first, as ``GET /v1/bridge/swaps/{id}`` answers each:
    ``limit`` (1..``limits.ledger_list_limit_max``, default 10), ``starting_after`` (a swap id),
    and the filters of :func:`_swap_list_query` (:func:`swaps_list` reads them)."""
    state, ctx = gateway_state(request), ledger_context(request)
    raw_limit = request.query.get("limit", "10")
    limit_max = state.config.limits.ledger_list_limit_max
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= limit_max:
        raise InvalidRequest(f"limit must be 1..{limit_max}", param="limit")
    cursor = request.query.get("starting_after")
    return web.json_response(await swaps_list(state, ctx, request.query, int(raw_limit), cursor))


async def swaps_list(
    state: Any, ctx: LedgerContext, filters: Mapping[str, str], limit: int, cursor: str | None
) -> dict[str, Any]:
    """The list object of ``GET /v1/bridge/swaps`` (the route and the dashboard's Swaps page
    and volume chart both call this): up to ``limit`` swaps after the swap id ``cursor``.
    Pages come from the node's index (log feature 11) in node calls from the cursor on, at
    most ``limits.ledger_list_node_calls_max``; the cursor is a swap's place in log time, so
    swaps made while paging never shift a page."""
    after_id = None
    if cursor is not None:
        after_id = hex_param(cursor, "starting_after", 32, 32, prefix=SWAP_PREFIX).hex()
    base = await _swap_list_query(state, ctx, filters)

    async def fetch(after: str | None, remaining: int) -> dict[str, Any] | None:
        query = f"{base}&limit={remaining}" + ("" if after is None else f"&starting_after={after}")
        try:
            return await _bridge_read(state, ctx, f"/swaps?{query}")
        except CallerError as exc:
            if exc.param == "starting_after":  # not a swap of yours: as if it did not exist
                raise NotFound("no such swap", code="swap_not_found", param=exc.param) from exc
            raise

    entries, has_more = await walk_pages(state, limit, after_id, fetch)
    # Each as its own read answers it: its request from its sealed record (read at once).
    bodies = await asyncio.gather(
        *(_swap_request(state, ctx, bytes.fromhex(e["operation"])) for e in entries)
    )
    data = []
    for e, body in zip(entries, bodies, strict=True):
        if body is None:
            raise OperationFailed(
                "a listed swap's record is not readable", code="record_unavailable"
            )
        record_id = bytes.fromhex(e["operation"])
        data.append(_read_swap_object(ctx, record_id, body, e["result"], int(e["log_time_ms"])))
    return {"object": "list", "data": data, "has_more": has_more, "url": BRIDGE_PREFIX + "/swaps"}


# The operation path, shared with the payments routes (gateway/payments_routes.py): one way to
# build, write, preview and read back an operation that carries a request.
Op = _Op
Done = _Done
request_operation = _operation
write_operation = _write
answer = _answer
point_asset = _asset
preview = _preview
user_approvals = _user_approvals
sealed_request = _swap_request


def add_bridge_routes(app: web.Application) -> None:
    p = BRIDGE_PREFIX
    app.router.add_post(p + "/points", post_points)
    app.router.add_get(p + "/points/{asset}", get_points)
    app.router.add_post(p + "/points/{asset}/issue", post_issue)
    app.router.add_post(p + "/points/{asset}/redeem/preview", post_redeem_preview)
    app.router.add_post(p + "/points/{asset}/redeem", post_redeem)
    app.router.add_post(p + "/points/{asset}/reverse", post_reverse)
    app.router.add_post(p + "/points/{asset}/liquidity", post_liquidity)
    app.router.add_get(p + "/points/{asset}/users/{user_id}", get_user_points)
    app.router.add_post(p + "/points/{asset}/policy", post_policy)
    app.router.add_get(p + "/points/{asset}/policy", get_policy)
    app.router.add_post(p + "/tokens", post_tokens)
    app.router.add_get(p + "/tokens", get_tokens)
    app.router.add_get(p + "/tokens/{asset}", get_token)
    app.router.add_post(p + "/tokens/{asset}/liquidity", post_liquidity)
    app.router.add_post(p + "/tokens/{asset}/policy", post_policy)
    app.router.add_get(p + "/tokens/{asset}/policy", get_policy)
    app.router.add_post(p + "/reserve/top_up", post_top_up)
    app.router.add_post(p + "/reserve/threshold", post_threshold)
    app.router.add_get(p + "/reserve", get_reserve)
    app.router.add_post(p + "/quotes", post_quote)
    app.router.add_post(p + "/swaps/preview", post_swap_preview)
    app.router.add_post(p + "/swaps", post_swap)
    app.router.add_post(p + "/swaps/batch", post_swap_batch)
    app.router.add_get(p + "/swaps", list_swaps)
    app.router.add_get(p + "/swaps/{id}", get_swap)
