"""Wallet links on the gateway: a partner links its own user id to a user's wallet, with the
user's signature, and reads the link and the wallet's balances.

* ``POST /v1/wallets/links`` ``{"user_id", "wallet", "deadline", "nonce", "signature"}`` (the
  user's EIP-712 ``Link`` signature over partner, mode, user reference, wallet, deadline and
  nonce: :mod:`business.identity.eip712`) -> the identity machine's ``wallet.link`` through
  any node (forwarded to the leader); 201 the link, 200 when it already was (a retry), else a
  problem from :data:`LINK_PROBLEMS`. ``Idempotency-Key`` is required like on every ledger
  POST; the link's own idempotency is the signed (wallet, nonce): a retry answers the verdict
  it got the first time.
* ``GET /v1/wallets/links/{user_id}`` -> the link (the wallet's address) and the wallet's
  balances in the credential's mode; 404 ``link_not_found`` for a user id this partner has not
  linked in this mode (another partner's links are keyed by that partner: never reachable).

* ``GET /v1/wallets/links/{user_id}/balances`` -> the same balances as a Stripe list of
  ``wallet_balance`` objects (one per asset);
* ``POST /v1/wallets/links/{user_id}/unlink`` ``{}`` (the partner's authority) or ``{"wallet",
  "deadline", "nonce", "signature"}`` (the user's EIP-712 ``Unlink``) -> the identity machine's
  ``wallet.unlink``; 200 the deleted link (Stripe's ``"deleted": true``), also when nothing
  was linked any more (a retry). Unlinking never moves value: the wallet and its balances stay
  the user's; the partner only loses the right to credit it by its user id.
* ``POST /v1/wallets/codes`` ``{"wallet", "code_hash", "asset", "amount_limit", "expiry",
  "signature"}`` (the user's EIP-712 ``CodeIssue``) -> the identity machine's ``code.issue``;
  201 the code (only its hash: the code itself is the user's bearer secret, shown at a till
  and sent once, in a debit's ``approvals``), 200 when it already was (a retry), else a
  problem from :data:`CODE_PROBLEMS`.

The state holds ``user_ref = H(partner, mode, user_id)``, never the raw user id; the user signs
that reference (``GET`` answers it as ``user_ref`` so a wallet app can show what it signs).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from business.identity.ids import (
    Mode,
    ledger_number,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import CodeIssueEntry, LinkEntry, UnlinkEntry
from business.identity.scope import WALLET_ACCOUNT_CODE
from business.ledger.amounts import format_amount
from gateway.ledger_routes import (
    ASSETS,
    LedgerContext,
    LedgerRefused,
    account_object,
    amount_param,
    gateway_state,
    hex_param,
    int_param,
    ledger_context,
    ledger_doc,
    linked_wallet,
    read_body,
    require_idempotency_key,
    user_id_param,
)
from gateway.partners import actor_of
from gateway.request_keys import PRINCIPAL
from node.consensus.state_machine import AppEntry
from node.errors import InvalidRequest, OperationFailed

__all__ = [
    "CODE_PROBLEMS",
    "LINK_PROBLEMS",
    "WALLET_CODES_PATH",
    "WALLET_LINKS_PATH",
    "add_wallet_routes",
]

WALLET_LINKS_PATH = "/v1/wallets/links"
WALLET_CODES_PATH = "/v1/wallets/codes"
DEADLINE_S_MAX = (1 << 63) - 1
# wallet.link result -> (status, code, param); ok and exists are successes.
LINK_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    "malformed": (400, "invalid_request", None),
    "signature_invalid": (400, "signature_invalid", "signature"),
    "signer_mismatch": (400, "signer_mismatch", "signature"),
    "nonce_used": (409, "nonce_used", "nonce"),
    "deadline_expired": (400, "deadline_expired", "deadline"),
    "deadline_too_far": (400, "deadline_too_far", "deadline"),
    "partner_not_found": (404, "partner_not_found", None),  # not onboarded in this mode
    "partner_not_active": (403, "partner_not_active", None),
    "exists_with_different_wallet": (409, "user_linked_to_another_wallet", "user_id"),
    "actor_not_allowed": (404, "partner_not_found", None),
    "link_not_found": (404, "link_not_found", "user_id"),  # a user's unlink of another wallet
}
# code.issue result -> (status, code, param); ok and exists are successes.
CODE_PROBLEMS: dict[str, tuple[int, str, str | None]] = {
    "malformed": (400, "invalid_request", None),
    "signature_invalid": (400, "signature_invalid", "signature"),
    "signer_mismatch": (400, "signer_mismatch", "signature"),
    "code_exists": (409, "code_exists", "code_hash"),
    "ledger_wrong_mode": (400, "asset_mismatch", "asset"),
    "expiry_passed": (400, "expiry_passed", "expiry"),
    "expiry_too_far": (400, "expiry_too_far", "expiry"),
}
CODE_ID_PREFIX = "otc_"
_SIGNED_LINK_FIELDS = {"wallet", "deadline", "nonce", "signature"}


async def _propose(
    state: Any,
    ctx: LedgerContext,
    entry: AppEntry,
    problems: dict[str, tuple[int, str, str | None]],
    success: frozenset[str] = frozenset({"ok", "exists"}),
) -> str:
    """Propose an identity entry through any node; its result code if a success, else the
    problem ``problems`` maps it to (sticky: the state machine stored the verdict)."""
    outcome = await state.nodes.identity_propose(
        entry, deadline=ctx.deadline, request_id=ctx.request_id
    )
    code = str(outcome.get("code"))
    if code == "feature_not_enabled":
        raise OperationFailed(
            "the cluster does not apply identity entries yet (log feature 7)",
            code="feature_not_enabled",
        )
    if code not in success:
        status, problem, param = problems.get(code, (409, code, None))
        raise LedgerRefused(
            f"{entry.type} was refused: {code}", code=problem, status=status, param=param
        )
    return code


def _link_object(user_id: str, ref: bytes, wallet: bytes | None, mode: Mode) -> dict[str, Any]:
    shown = {
        "object": "wallet_link",
        "user_id": user_id,
        "user_ref": ref.hex(),
        "livemode": mode == Mode.LIVE,
    }
    if wallet is not None:  # an unlink by the partner does not know it (nor need to)
        shown["wallet"] = "0x" + wallet.hex()
    return shown


async def post_link(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    key = require_idempotency_key(request)
    fields = {"user_id"} | _SIGNED_LINK_FIELDS
    body = await read_body(request, fields, fields)
    user_id = user_id_param(body["user_id"], "user_id")
    ref = user_ref(ctx.pid16, ctx.mode, user_id)
    entry = _signed_link(request, ctx, ref, body)
    code = await _propose(state, ctx, AppEntry("wallet.link", entry.to_body()), LINK_PROBLEMS)
    return web.json_response(
        _link_object(user_id, ref, entry.wallet, ctx.mode),
        status=201 if code == "ok" else 200,
        headers={"Idempotency-Key": key},
    )


async def get_link(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    user_id = user_id_param(request.match_info["user_id"], "user_id")
    ref = user_ref(ctx.pid16, ctx.mode, user_id)
    wallet = await linked_wallet(state, ctx, user_id, "user_id")
    balances = await _balances(state, ctx, wallet)
    return web.json_response({**_link_object(user_id, ref, wallet, ctx.mode), "balances": balances})


async def get_balances(request: web.Request) -> web.Response:
    """The linked wallet's balances as a Stripe list (one item per asset of the API: all of
    them in one page, so ``has_more`` is always false)."""
    state, ctx = gateway_state(request), ledger_context(request)
    user_id = user_id_param(request.match_info["user_id"], "user_id")
    wallet = await linked_wallet(state, ctx, user_id, "user_id")
    data = [
        {"object": "wallet_balance", "livemode": ctx.mode == Mode.LIVE, **b}
        for b in await _balances(state, ctx, wallet)
    ]
    return web.json_response(
        {"object": "list", "data": data, "has_more": False, "url": request.path}
    )


async def _balances(state: Any, ctx: LedgerContext, wallet: bytes) -> list[dict[str, Any]]:
    """Per asset of the API: the wallet's balance (zeros on an asset it never used)."""
    balances = []
    for index, _kind, _scale in ASSETS.values():
        ledger = ledger_number(ctx.mode, index)
        account = wallet_account_id(wallet_id(wallet, ctx.mode), ctx.mode, ledger)
        doc = await ledger_doc(state, ctx, f"/internal/v1/ledger/accounts/{account}")
        if doc is None:  # the state machine opens it on the first credit: nothing yet
            doc = {"id": account, "ledger": ledger, "code": WALLET_ACCOUNT_CODE, "flags": 0}
            doc.update(dict.fromkeys(_COUNTERS, 0))
        shown = account_object(doc, ctx.mode)
        balances.append(
            {"asset": shown["asset"], "scale": shown["scale"], "ledger": ledger, **shown["balance"]}
        )
    return balances


_COUNTERS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def _signed_link(
    request: web.Request, ctx: LedgerContext, ref: bytes, body: dict[str, Any]
) -> LinkEntry:
    """The user-signed fields of a link or unlink (the signature covers all of them)."""
    return LinkEntry(
        partner=ctx.pid16,
        mode=ctx.mode,
        user_ref=ref,
        wallet=hex_param(body["wallet"], "wallet", 20, 20, prefix="0x"),
        deadline=int_param(body["deadline"], "deadline", 1, DEADLINE_S_MAX),
        nonce=hex_param(body["nonce"], "nonce", 32, 32, prefix="0x"),
        signature=hex_param(body["signature"], "signature", 65, 65, prefix="0x"),
        actor=actor_of(request[PRINCIPAL]),
    )


async def post_unlink(request: web.Request) -> web.Response:
    """By the user (the signed fields) or by the partner (an empty body): identity's rules."""
    state, ctx = gateway_state(request), ledger_context(request)
    key = require_idempotency_key(request)
    body = await read_body(request, _SIGNED_LINK_FIELDS, set())
    user_id = user_id_param(request.match_info["user_id"], "user_id")
    ref = user_ref(ctx.pid16, ctx.mode, user_id)
    if body:
        for name in sorted(_SIGNED_LINK_FIELDS - set(body)):
            raise InvalidRequest(
                f"{name} is required for the user's unlink (send {{}} for the partner's)",
                code="parameter_missing",
                param=name,
            )
        link: LinkEntry | None = _signed_link(request, ctx, ref, body)
    else:
        link = None
    entry = UnlinkEntry(ctx.pid16, ctx.mode, ref, actor_of(request[PRINCIPAL]), link)
    # not_linked: nothing is linked (any more): a retry of a done unlink answers as a success.
    await _propose(
        state,
        ctx,
        AppEntry("wallet.unlink", entry.to_body()),
        LINK_PROBLEMS,
        frozenset({"ok", "not_linked"}),
    )
    return web.json_response(
        {**_link_object(user_id, ref, None, ctx.mode), "deleted": True},
        headers={"Idempotency-Key": key},
    )


async def post_code(request: web.Request) -> web.Response:
    """A one-time code the user issued (its hash only), for a later debit of the wallet."""
    state, ctx = gateway_state(request), ledger_context(request)
    key = require_idempotency_key(request)
    fields = {"wallet", "code_hash", "asset", "amount_limit", "expiry", "signature"}
    body = await read_body(request, fields, fields)
    if body["asset"] not in ASSETS:
        raise InvalidRequest(
            f"asset must be one of {', '.join(ASSETS)}", code="asset_not_found", param="asset"
        )
    entry = CodeIssueEntry(
        mode=ctx.mode,
        wallet=hex_param(body["wallet"], "wallet", 20, 20, prefix="0x"),
        code_hash=hex_param(body["code_hash"], "code_hash", 32, 32, prefix="0x"),
        ledger=ledger_number(ctx.mode, ASSETS[body["asset"]][0]),
        amount_limit=amount_param(body["amount_limit"], "amount_limit"),
        expiry=int_param(body["expiry"], "expiry", 1, DEADLINE_S_MAX),
        signature=hex_param(body["signature"], "signature", 65, 65, prefix="0x"),
    )
    code = await _propose(state, ctx, AppEntry("code.issue", entry.to_body()), CODE_PROBLEMS)
    return web.json_response(
        {
            "id": CODE_ID_PREFIX + entry.code_hash.hex(),
            "object": "one_time_code",
            "livemode": ctx.mode == Mode.LIVE,
            "code_hash": "0x" + entry.code_hash.hex(),
            "wallet": "0x" + entry.wallet.hex(),
            "asset": body["asset"],
            "ledger": entry.ledger,
            "amount_limit": format_amount(entry.amount_limit),
            "expiry": entry.expiry,
        },
        status=201 if code == "ok" else 200,
        headers={"Idempotency-Key": key},
    )


def add_wallet_routes(app: web.Application) -> None:
    app.router.add_post(WALLET_LINKS_PATH, post_link)
    app.router.add_get(WALLET_LINKS_PATH + "/{user_id}", get_link)
    app.router.add_get(WALLET_LINKS_PATH + "/{user_id}/balances", get_balances)
    app.router.add_post(WALLET_LINKS_PATH + "/{user_id}/unlink", post_unlink)
    app.router.add_post(WALLET_CODES_PATH, post_code)
