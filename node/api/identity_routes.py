"""The node's identity API: propose identity entries through the leader, read the identity state.

The identity core (:mod:`business.identity`, prefix ``id/``, log feature 7) is applied by every
node; these routes are how a gateway or the ``baas-partners`` command reaches it. Proposals
go through the leader on the one shared path (:class:`~node.anchoring.forwarding.
ForwardingProposer` over :class:`~node.replication.leader_route.LeaderRoute`); reads answer
from this node's own applied state (no consensus round: a lagging node may not know a change
yet, and says 404 like for anything it does not know).

The node trusts the caller (the node API token) for the entry's ``actor``: the gateway and the
operator command authenticate people, the node records who they said it was. The state
machine still judges every entry (an actor may only do what its kind allows).

Routes (bodies msgpack where they carry an entry, JSON for reads):

* ``POST /internal/v1/identity/entries`` ``{"entry": <encoded app entry>}`` -> ``{"code",
  "detail", "index"}`` once applied on this node (any node; forwarded to the leader);
* ``POST /internal/v1/identity/propose`` the same, leader only (the forwarded call);
* ``GET /internal/v1/identity/partners/{partner hex}`` -> the partner, its status and accounts;
* ``GET /internal/v1/identity/audit?scope=<hex>&mode=test|live&limit=&starting_after=`` -> one
  page of a scope's audit trail (a partner's, or ``00``*16 for the platform's), newest first;
* ``GET /internal/v1/identity/links/{partner hex}/{mode}/{user_ref hex}`` -> the linked wallet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import Any

import msgpack
from aiohttp import web

from business.identity.core import ENTRY_TYPES, role_ledger
from business.identity.ids import Mode, partner_account_id
from business.identity.views import get_partner, linked_wallet, list_audit
from node.anchoring.forwarding import ForwardingProposer, decode_forwarded, outcome_body
from node.api.problem import problem_response
from node.api.wire import APPLIED_INDEX_HEADER, MSGPACK
from node.consensus.state_machine import AppEntry, Applied, StateView
from node.errors import InvalidRequest, NotLeader

__all__ = [
    "IDENTITY_ENTRIES_PATH",
    "IDENTITY_PATH",
    "IDENTITY_PROPOSE_PATH",
    "IdentityRoutes",
    "add_identity_routes",
    "partner_json",
    "read_forwarded",
]

IDENTITY_PATH = "/internal/v1/identity"
IDENTITY_ENTRIES_PATH = IDENTITY_PATH + "/entries"
IDENTITY_PROPOSE_PATH = IDENTITY_PATH + "/propose"
PARTNER_ID_BYTES = 16
USER_REF_BYTES = 32


@dataclass(frozen=True, slots=True)
class IdentityRoutes:
    view: Callable[[], StateView]  # the applied state
    # The applied index, read BEFORE the view (no await between them): the answer is at least
    # as fresh as it says, so a write acknowledged at index i is seen by a read that says >= i.
    applied_index: Callable[[], int]
    proposer: ForwardingProposer  # local on the leader, else forwarded to it
    propose_local: Callable[[AppEntry], Awaitable[Applied]]  # on this node's own log
    is_leader: Callable[[], bool]
    propose_timeout_s: float
    audit_limit_max: int


ROUTES = web.AppKey("identity_routes", IdentityRoutes)


async def read_forwarded(request: web.Request, accepts: Container[str]) -> AppEntry:
    """The entry of a msgpack ``{entry}`` body, of one of the ``accepts`` types (else 400):
    the body of every entries route that proposes through the leader (identity's, the
    payments outbox's acknowledgement)."""
    if request.content_type != MSGPACK:
        raise InvalidRequest("body must be application/msgpack", code="unsupported_media_type")
    try:
        body = msgpack.unpackb(await request.read(), raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise InvalidRequest("body is not valid msgpack") from exc
    return decode_forwarded(body, accepts=accepts)


async def _entry(request: web.Request) -> AppEntry:
    return await read_forwarded(request, ENTRY_TYPES)


def _msgpack(body: dict[str, Any]) -> web.Response:
    return web.Response(body=msgpack.packb(body, use_bin_type=True), content_type=MSGPACK)


async def post_entry(request: web.Request) -> web.Response:
    """Any node: propose through the leader, answer once applied here too."""
    routes = request.app[ROUTES]
    entry = await _entry(request)
    outcome = await routes.proposer.propose(entry, timeout_s=routes.propose_timeout_s)
    return _msgpack({"code": outcome.code, "detail": dict(outcome.detail)})


async def post_propose(request: web.Request) -> web.Response:
    """Leader only: append a forwarded identity entry, answer once applied."""
    routes = request.app[ROUTES]
    entry = await _entry(request)
    if not routes.is_leader():
        raise NotLeader("this node is not the leader")
    return _msgpack(outcome_body(await routes.propose_local(entry)))


def _hex(raw: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{what} must be hex", code="parameter_invalid", param=what) from exc
    if len(value) != size:
        raise InvalidRequest(
            f"{what} must be {2 * size} hex characters", code="parameter_invalid", param=what
        )
    return value


def _mode(raw: str | None) -> Mode:
    if raw not in ("test", "live"):
        raise InvalidRequest(
            'mode must be "test" or "live"', code="parameter_invalid", param="mode"
        )
    return Mode.TEST if raw == "test" else Mode.LIVE


def _count(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidRequest(f"{name} must be a non-negative integer", param=name)
    return int(raw)


def partner_json(partner: bytes, view: StateView) -> dict[str, Any] | None:
    """The partner as the node answers it: status, point asset index, accounts per mode."""
    record = get_partner(view, partner)
    if record is None:
        return None
    status, asset_index, roles = record
    accounts = []
    for r in roles:
        ledger = role_ledger(r.mode, r.asset, asset_index)
        role = r.role.name.lower()
        accounts.append(
            {
                "mode": r.mode.name.lower(),
                "role": role,
                "asset": r.asset.name.lower(),
                "ledger": ledger,
                "account": f"{partner_account_id(partner, r.mode, role, ledger):032x}",
            }
        )
    return {
        "partner": partner.hex(),
        "status": status.name.lower(),
        "asset_index": asset_index,
        "accounts": accounts,
    }


async def get_partner_route(request: web.Request) -> web.Response:
    partner = _hex(request.match_info["partner"], PARTNER_ID_BYTES, "partner")
    routes = request.app[ROUTES]
    applied = routes.applied_index()
    found = partner_json(partner, routes.view())
    if found is None:
        return _not_found(applied, "partner_not_found", "no such partner on this node")
    return web.json_response({**found, "applied_index": applied})


async def get_audit(request: web.Request) -> web.Response:
    routes = request.app[ROUTES]
    scope = _hex(request.query.get("scope", ""), PARTNER_ID_BYTES, "scope")
    limit = _count(request, "limit")
    applied = routes.applied_index()
    entries, has_more = list_audit(
        routes.view(),
        scope,
        _mode(request.query.get("mode")),
        limit=routes.audit_limit_max if limit is None else limit,
        limit_max=routes.audit_limit_max,
        starting_after=_count(request, "starting_after"),
    )
    return web.json_response(
        {
            "data": [
                {
                    "seq": e.seq,
                    "mode": e.mode.name.lower(),
                    "actor_kind": e.actor_kind.name.lower(),
                    "actor_credential": e.actor_credential.hex(),
                    "actor_partner": e.actor_partner.hex(),
                    "log_time_ms": e.log_time_ms,
                    "kind": e.kind,
                    "partner": e.partner.hex(),
                    "summary": e.summary.hex(),
                }
                for e in entries
            ],
            "has_more": has_more,
            "applied_index": applied,
        }
    )


async def get_link(request: web.Request) -> web.Response:
    partner = _hex(request.match_info["partner"], PARTNER_ID_BYTES, "partner")
    user_ref = _hex(request.match_info["user_ref"], USER_REF_BYTES, "user_ref")
    routes = request.app[ROUTES]
    applied = routes.applied_index()
    wallet = linked_wallet(routes.view(), partner, _mode(request.match_info["mode"]), user_ref)
    if wallet is None:  # never linked, not yet, or unlinked: the index tells which is newer
        return _not_found(applied, "link_not_found", "no link for this user reference")
    return web.json_response({"wallet": "0x" + wallet.hex(), "applied_index": applied})


def _not_found(applied: int, code: str, detail: str) -> web.Response:
    return problem_response(404, code, detail, headers={APPLIED_INDEX_HEADER: str(applied)})


def add_identity_routes(app: web.Application, routes: IdentityRoutes) -> None:
    app[ROUTES] = routes
    app.router.add_post(IDENTITY_ENTRIES_PATH, post_entry)
    app.router.add_post(IDENTITY_PROPOSE_PATH, post_propose)
    app.router.add_get(IDENTITY_PATH + "/partners/{partner}", get_partner_route)
    app.router.add_get(IDENTITY_PATH + "/audit", get_audit)
    app.router.add_get(IDENTITY_PATH + "/links/{partner}/{mode}/{user_ref}", get_link)
