"""The gateway's admin and audit routes: onboarding partners, reading them, the audit trail.

Who may call what:

* ``/v1/admin/...`` -- operators only: a request signed with an operator credential from the
  keyring (``baas-partners add-operator``; signed exactly like a partner request). A partner
  credential gets 404, as for a route that does not exist for it.
* ``GET /v1/audit`` -- a partner sees its own trail in its credential's mode; an operator sees
  every change (``partner=`` narrows it to one partner, ``mode=`` picks the mode, default
  test). A partner asking for another partner's trail, or for the other mode, gets 404 like a
  missing object (never a hint that it exists).

Routes:

* ``POST /v1/admin/partners`` ``{"id": "shop-x"}`` -> 201 the partner object with its test and
  live API credentials and their secrets (shown this once); 409 ``partner_exists`` after.
* ``GET /v1/admin/partners/{id}`` -> the partner object (credentials without secrets).
* ``GET /v1/admin/partners?limit=&starting_after=`` -> a list of partner objects, by id.
* ``GET /v1/audit?limit=&starting_after=&partner=&mode=`` -> a list of audit entries, newest
  first.

The steps and objects are :mod:`gateway.partners` (shared with ``baas-partners``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from business.identity import Mode
from gateway.keyring import Principal, PrincipalKind, parse_mode
from gateway.partners import (
    actor_of,
    audit_list,
    check_name,
    onboard,
    parse_audit_cursor,
    partner_object,
    read_partner,
)
from gateway.request_keys import DEADLINE, PRINCIPAL, REQUEST_ID
from node.api.problem import parse_json_body
from node.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from gateway.app import GatewayState

__all__ = ["ADMIN_PREFIX", "AUDIT_PATH", "LIST_LIMIT_DEFAULT", "add_admin_routes", "operator_path"]

ADMIN_PREFIX = "/v1/admin/"
AUDIT_PATH = "/v1/audit"
LIST_LIMIT_DEFAULT = 10  # Stripe's default page
LIST_LIMIT_MAX = 100  # partners per page (each is one node read) and audit entries per page


def operator_path(path: str) -> bool:
    """The routes an operator credential may sign (every other route is a partner's)."""
    return path.startswith(ADMIN_PREFIX) or path == AUDIT_PATH


def _operator(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    if principal.kind != PrincipalKind.OPERATOR:
        raise NotFound("no such route", code="not_found")
    return principal


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return LIST_LIMIT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise InvalidRequest(
            f"limit must be 1..{LIST_LIMIT_MAX}", code="parameter_invalid", param="limit"
        )
    return int(raw)


def _state(request: web.Request) -> GatewayState:
    from gateway.app import GATEWAY  # the app module imports this one: look the key up late

    return request.app[GATEWAY]


def _now_ms(request: web.Request) -> int:
    return int(_state(request).clock_s() * 1000)


async def post_partner(request: web.Request) -> web.Response:
    state = _state(request)
    principal = _operator(request)
    body = parse_json_body(await request.read())
    if not isinstance(body, dict) or set(body) != {"id"}:
        raise InvalidRequest('body must be {"id": "<partner id>"}', param="id")
    name = check_name(body["id"])
    master_key = state.keyring_writer_key()
    keyring, partner = await onboard(
        state.nodes,
        state.config.keyring_file,
        master_key,
        state.keyring,
        name,
        actor_of(principal),
        deadline=request[DEADLINE],
        request_id=request[REQUEST_ID],
    )
    state.serve_keyring(keyring)  # the new credentials
    on_log = await read_partner(
        state.nodes, name, deadline=request[DEADLINE], request_id=request[REQUEST_ID]
    )
    return web.json_response(
        partner_object(name, on_log, partner, _now_ms(request), secrets_once=partner),
        status=201,
    )


async def get_partner(request: web.Request) -> web.Response:
    state = _state(request)
    _operator(request)
    name = request.match_info["partner"]
    keys = state.keyring.partners.get(name)
    if keys is None:
        raise NotFound("no partner with this id", code="partner_not_found")
    on_log = await read_partner(
        state.nodes, name, deadline=request[DEADLINE], request_id=request[REQUEST_ID]
    )
    return web.json_response(partner_object(name, on_log, keys, _now_ms(request)))


async def list_partners(request: web.Request) -> web.Response:
    state = _state(request)
    _operator(request)
    limit = _limit(request)
    after = request.query.get("starting_after")
    keyring = state.keyring
    if after is not None and after not in keyring.partners:
        raise NotFound(
            "starting_after names no partner", code="partner_not_found", param="starting_after"
        )
    names = sorted(n for n in keyring.partners if after is None or n > after)
    page = names[:limit]
    on_log = await asyncio.gather(
        *(
            read_partner(state.nodes, n, deadline=request[DEADLINE], request_id=request[REQUEST_ID])
            for n in page
        )
    )
    now_ms = _now_ms(request)
    return web.json_response(
        {
            "object": "list",
            "url": "/v1/admin/partners",
            "has_more": len(names) > limit,
            "data": [
                partner_object(n, found, keyring.partners[n], now_ms)
                for n, found in zip(page, on_log, strict=True)
            ],
        }
    )


def _audit_scope(request: web.Request, principal: Principal) -> tuple[str | None, Mode]:
    asked = request.query.get("partner")
    raw_mode = request.query.get("mode")
    if principal.kind == PrincipalKind.PARTNER:
        # A partner's own trail in its own mode; anything else is answered like a miss.
        if asked is not None and asked != principal.name:
            raise NotFound("no partner with this id", code="partner_not_found", param="partner")
        if raw_mode is not None and parse_mode(raw_mode) != principal.mode:
            raise NotFound("no audit trail in this mode", code="not_found", param="mode")
        return principal.name, principal.mode
    mode = Mode.TEST if raw_mode is None else parse_mode(raw_mode)
    if asked is not None and asked not in _state(request).keyring.partners:
        raise NotFound("no partner with this id", code="partner_not_found", param="partner")
    return asked, mode


async def get_audit(request: web.Request) -> web.Response:
    state = _state(request)
    scope, mode = _audit_scope(request, request[PRINCIPAL])
    page = await audit_list(
        state.nodes,
        state.keyring,
        scope,
        mode,
        limit=_limit(request),
        starting_after=parse_audit_cursor(request.query.get("starting_after")),
        deadline=request[DEADLINE],
        request_id=request[REQUEST_ID],
    )
    return web.json_response(page)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_post(ADMIN_PREFIX + "partners", post_partner)
    app.router.add_get(ADMIN_PREFIX + "partners", list_partners)
    app.router.add_get(ADMIN_PREFIX + "partners/{partner}", get_partner)
    app.router.add_get(AUDIT_PATH, get_audit)
