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
from business.identity.model import LinkEntry
from business.identity.scope import WALLET_ACCOUNT_CODE
from gateway.ledger_routes import (
    ASSETS,
    LedgerRefused,
    account_object,
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
from node.errors import OperationFailed

__all__ = ["LINK_PROBLEMS", "WALLET_LINKS_PATH", "add_wallet_routes"]

WALLET_LINKS_PATH = "/v1/wallets/links"
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
}


def _link_object(user_id: str, ref: bytes, wallet: bytes, mode: Mode) -> dict[str, Any]:
    return {
        "object": "wallet_link",
        "user_id": user_id,
        "user_ref": ref.hex(),
        "wallet": "0x" + wallet.hex(),
        "livemode": mode == Mode.LIVE,
    }


async def post_link(request: web.Request) -> web.Response:
    state, ctx = gateway_state(request), ledger_context(request)
    key = require_idempotency_key(request)
    fields = {"user_id", "wallet", "deadline", "nonce", "signature"}
    body = await read_body(request, fields, fields)
    user_id = user_id_param(body["user_id"], "user_id")
    ref = user_ref(ctx.pid16, ctx.mode, user_id)
    entry = LinkEntry(
        partner=ctx.pid16,
        mode=ctx.mode,
        user_ref=ref,
        wallet=hex_param(body["wallet"], "wallet", 20, 20, prefix="0x"),
        deadline=int_param(body["deadline"], "deadline", 1, DEADLINE_S_MAX),
        nonce=hex_param(body["nonce"], "nonce", 32, 32, prefix="0x"),
        signature=hex_param(body["signature"], "signature", 65, 65, prefix="0x"),
        actor=actor_of(request[PRINCIPAL]),
    )
    outcome = await state.nodes.identity_propose(
        AppEntry("wallet.link", entry.to_body()),
        deadline=ctx.deadline,
        request_id=ctx.request_id,
    )
    code = str(outcome.get("code"))
    if code == "feature_not_enabled":
        raise OperationFailed(
            "the cluster does not apply identity entries yet (log feature 7)",
            code="feature_not_enabled",
        )
    if code not in ("ok", "exists"):
        status, problem, param = LINK_PROBLEMS.get(code, (409, code, None))
        raise LedgerRefused(
            f"the link was refused: {code}", code=problem, status=status, param=param
        )
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
    return web.json_response({**_link_object(user_id, ref, wallet, ctx.mode), "balances": balances})


_COUNTERS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def add_wallet_routes(app: web.Application) -> None:
    app.router.add_post(WALLET_LINKS_PATH, post_link)
    app.router.add_get(WALLET_LINKS_PATH + "/{user_id}", get_link)
