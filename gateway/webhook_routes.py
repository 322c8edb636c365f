"""Webhook endpoints and deliveries in the partner API, and the deliverer's place in the app.

Routes (signed by a partner; endpoints and deliveries of the request's mode only):

* ``POST /v1/webhook_endpoints`` ``{"url", "enabled_events": [...]}`` -> 201 the endpoint with
  its signing ``secret`` (``whsec_...``), shown this once; the URL passes the SSRF rule
  (:func:`gateway.webhook_endpoints.check_url`). Needs a gateway that can write the keyring.
* ``GET /v1/webhook_endpoints`` -> the partner's endpoints (no secrets).
* ``POST /v1/webhook_endpoints/{id}`` ``{"disabled": false|true}`` (Stripe's update) -> the
  endpoint: re-enabled (its paused deliveries go out again, ``disabled_reason`` cleared) or
  disabled by its partner (``disabled_reason`` ``partner``).
* ``DELETE /v1/webhook_endpoints/{id}`` -> ``{"id", "object", "deleted": true}``.
* ``POST /v1/webhook_endpoints/{id}/rotate_secret`` ``{"overlap_s"?}`` -> the endpoint and its
  new secret (once); the old one signs too until the overlap ends.
* ``GET /v1/webhook_endpoints/{id}/deliveries?limit=&starting_after=`` -> its deliveries,
  newest first, with every recorded attempt (the delivering gateway only).
* ``POST /v1/webhook_deliveries/{id}/resend`` -> the delivery, pending again (a manual resend).

The delivering gateway (``[webhooks] deliver = true``) runs the
:class:`~gateway.webhook_deliverer.WebhookDeliverer` in the app's cleanup context; any other
gateway answers the delivery routes with 503 ``webhooks_not_delivered_here``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from business.identity.ids import Mode
from business.payments.delivery import Delivery, EndpointDisabled
from gateway.config import GatewayConfig
from gateway.keyring import Keyring, PartnerKeys, change_keyring
from gateway.request_keys import MODE, PARTNER_KEYS
from gateway.webhook_deliverer import WebhookDeliverer
from gateway.webhook_endpoints import (
    UrlPolicy,
    WebhookEndpoint,
    add_endpoint,
    endpoint_object,
    find,
    remove_endpoint,
    rotate_secret,
    set_enabled,
)
from node.api.problem import parse_json_body
from node.config import parse_host_port
from node.errors import InvalidRequest, NotFound, OperationFailed

if TYPE_CHECKING:
    from gateway.app import GatewayState

__all__ = [
    "DELIVERY_ID_PREFIX",
    "add_webhook_routes",
    "change_endpoints",
    "create_endpoint",
    "deliverer_of",
    "deliveries_page",
    "delivery_number",
    "disable_in_keyring",
    "own_endpoint",
    "resend_delivery",
    "rotate_endpoint",
    "url_policy",
    "write_endpoints",
]

DELIVERY_ID_PREFIX = "whd_"
LIST_LIMIT_MAX = 100


@dataclass(slots=True)
class _Holder:
    deliverer: WebhookDeliverer | None = None


WEBHOOKS = web.AppKey("webhooks", _Holder)


def url_policy(config: GatewayConfig) -> UrlPolicy:
    """The SSRF rule of ``[webhooks]`` and the cluster's own hosts (nodes, this gateway)."""
    own = {parse_host_port(n.http_addr, "nodes")[0].lower() for n in config.nodes}
    own.add(parse_host_port(config.http_listen, "gateway.http_listen")[0].lower())
    return UrlPolicy(
        frozenset(config.webhooks.allow_hosts),
        config.webhooks.allow_private_addresses,
        frozenset(own),
    )


async def change_endpoints(
    keyring_file: Path,
    master_key: bytes,
    partner: str,
    operation: Callable[[tuple[WebhookEndpoint, ...]], tuple[WebhookEndpoint, ...]],
) -> Keyring:
    """Change one partner's endpoints under the keyring's lock (a thread: it blocks)."""

    def change(keyring: Keyring) -> Keyring:
        keys = keyring.partner(partner)
        return keyring.with_partner(
            replace(keys, webhook_endpoints=operation(keys.webhook_endpoints))
        )

    return await asyncio.to_thread(change_keyring, keyring_file, master_key, change)


async def disable_in_keyring(
    keyring_file: Path, master_key: bytes, marks: Sequence[tuple[str, EndpointDisabled]]
) -> Keyring:
    """The deliverer's disable decisions (partner, decision), saved in one keyring change."""

    def change(keyring: Keyring) -> Keyring:
        partners = dict(keyring.partners)
        for partner, mark in marks:
            keys = partners.get(partner)
            if keys is None or all(e.id != mark.endpoint for e in keys.webhook_endpoints):
                continue  # removed meanwhile
            endpoints = set_enabled(
                keys.webhook_endpoints, mark.endpoint, False, mark.at_ms, mark.reason
            )
            partners[partner] = replace(keys, webhook_endpoints=endpoints)
        return replace(keyring, version=keyring.version + 1, partners=partners)  # one change

    return await asyncio.to_thread(change_keyring, keyring_file, master_key, change)


def _state(request: web.Request) -> GatewayState:
    from gateway.app import GATEWAY  # the app module imports this one: look the key up late

    return request.app[GATEWAY]


def _now_ms(request: web.Request) -> int:
    return int(_state(request).clock_s() * 1000)


def _mine(request: web.Request) -> tuple[PartnerKeys, Mode]:
    return request[PARTNER_KEYS], request[MODE]


def _endpoint(request: web.Request) -> WebhookEndpoint:
    keys, mode = _mine(request)
    return own_endpoint(keys, mode, request.match_info["id"])


def own_endpoint(keys: PartnerKeys, mode: Mode, endpoint_id: str) -> WebhookEndpoint:
    """The partner's endpoint in ``mode`` (another partner's or mode's: 404)."""
    found = find(keys.webhook_endpoints, endpoint_id)
    if found.mode != mode:  # another mode's endpoint is invisible, as Stripe's are
        raise NotFound(f"no webhook endpoint {found.id!r}", code="webhook_endpoint_not_found")
    return found


async def _write(request: web.Request, operation: Callable[..., Any]) -> Keyring:
    return await write_endpoints(_state(request), _mine(request)[0].partner_id, operation)


async def write_endpoints(
    state: GatewayState, partner: str, operation: Callable[..., Any]
) -> Keyring:
    """Change ``partner``'s endpoints in the keyring file, and serve the change at once."""
    master_key = state.keyring_writer_key()
    keyring = await change_endpoints(state.config.keyring_file, master_key, partner, operation)
    state.serve_keyring(keyring)
    state.keyring_written()
    return keyring


async def post_endpoint(request: web.Request) -> web.Response:
    body = parse_json_body(await request.read())
    if not isinstance(body, dict) or not set(body) <= {"url", "enabled_events"}:
        raise InvalidRequest('body must be {"url", "enabled_events": [...]}', param="url")
    events = body.get("enabled_events", ["*"])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise InvalidRequest("enabled_events is a list of event types", param="enabled_events")
    keys, mode = _mine(request)
    shown = await create_endpoint(_state(request), keys, mode, body.get("url"), events)
    return web.json_response(shown, status=201)


async def create_endpoint(
    state: GatewayState, keys: PartnerKeys, mode: Mode, url: object, events: list[str]
) -> dict[str, Any]:
    """A new endpoint of the partner's in ``mode``: its object with its ``secret`` (once)."""
    made: list[WebhookEndpoint] = []
    now_ms = int(state.clock_s() * 1000)

    def add(endpoints: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        after, endpoint = add_endpoint(
            endpoints, url, mode, events, url_policy(state.config), now_ms
        )
        made.append(endpoint)
        return after

    await write_endpoints(state, keys.partner_id, add)
    return endpoint_object(made[0], now_ms, secret_once=made[0].secrets[0].secret)


async def list_endpoints(request: web.Request) -> web.Response:
    keys, mode = _mine(request)
    data = [endpoint_object(e, _now_ms(request)) for e in keys.webhook_endpoints if e.mode == mode]
    return web.json_response(
        {"object": "list", "url": "/v1/webhook_endpoints", "data": data, "has_more": False}
    )


async def delete_endpoint(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    await _write(request, lambda endpoints: remove_endpoint(endpoints, endpoint.id))
    return web.json_response({"id": endpoint.id, "object": "webhook_endpoint", "deleted": True})


async def post_update(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    body = parse_json_body(await request.read())
    if (
        not isinstance(body, dict)
        or set(body) != {"disabled"}
        or type(body["disabled"]) is not bool
    ):
        raise InvalidRequest('body must be {"disabled": true|false}', param="disabled")
    enabled = not body["disabled"]
    keyring = await _write(
        request, lambda endpoints: set_enabled(endpoints, endpoint.id, enabled, _now_ms(request))
    )
    changed = find(keyring.partner(_mine(request)[0].partner_id).webhook_endpoints, endpoint.id)
    return web.json_response(endpoint_object(changed, _now_ms(request)))


async def post_rotate(request: web.Request) -> web.Response:
    state = _state(request)
    endpoint = _endpoint(request)
    raw = await request.read()
    body = parse_json_body(raw) if raw else {}
    if not isinstance(body, dict) or not set(body) <= {"overlap_s"}:
        raise InvalidRequest('body must be {"overlap_s"?}', param="overlap_s")
    overlap_s = body.get("overlap_s", state.config.webhooks.rotation_overlap_s)
    keys, _ = _mine(request)
    return web.json_response(await rotate_endpoint(state, keys, endpoint, overlap_s))


async def rotate_endpoint(
    state: GatewayState, keys: PartnerKeys, endpoint: WebhookEndpoint, overlap_s: Any
) -> dict[str, Any]:
    """A new signing secret for ``endpoint`` (one of ``keys``'): the endpoint and the secret
    (once); the old one signs too for ``overlap_s``."""
    fresh: list[bytes] = []
    now_ms = int(state.clock_s() * 1000)

    def rotate(endpoints: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        after, secret = rotate_secret(endpoints, endpoint.id, overlap_s, now_ms)
        fresh.append(secret.secret)
        return after

    keyring = await write_endpoints(state, keys.partner_id, rotate)
    rotated = find(keyring.partner(keys.partner_id).webhook_endpoints, endpoint.id)
    return endpoint_object(rotated, now_ms, secret_once=fresh[0])


def delivery_object(d: Delivery) -> dict[str, Any]:
    return {
        "id": f"{DELIVERY_ID_PREFIX}{d.number}",
        "object": "webhook_delivery",
        "event": "evt_" + d.event_id.hex(),
        "event_sequence": d.event_seq,
        "endpoint": d.endpoint,
        "status": d.status.value,
        "reason": d.reason or None,
        "created_ms": d.created_ms,
        "next_attempt_ms": d.next_attempt_ms if d.status.value == "pending" else None,
        "attempts_total": d.attempts_total,
        "attempts": [
            {"at_ms": a.at_ms, "status": a.status, "error": a.error or None,
             "duration_ms": a.duration_ms}
            for a in d.attempts
        ],
    }  # fmt: skip


def _deliverer(request: web.Request) -> WebhookDeliverer:
    return deliverer_of(request.config_dict)


def deliverer_of(app: Mapping[Any, Any]) -> WebhookDeliverer:
    """The gateway's deliverer (``app``: the gateway's app, or a sub-app's ``config_dict``)."""
    holder: _Holder = app[WEBHOOKS]
    deliverer = holder.deliverer
    if deliverer is None:
        raise OperationFailed(
            "this gateway does not deliver webhooks ([webhooks] deliver): ask the one that does",
            code="webhooks_not_delivered_here",
        )
    return deliverer


def delivery_number(text: str, param: str) -> int:
    digits = text.removeprefix(DELIVERY_ID_PREFIX)
    if not text.startswith(DELIVERY_ID_PREFIX) or not digits.isdigit() or len(digits) > 19:
        raise InvalidRequest(
            f"{param} is a delivery id (whd_<n>)", code="parameter_invalid", param=param
        )
    return int(digits)


async def list_deliveries(request: web.Request) -> web.Response:
    endpoint = _endpoint(request)
    deliverer = _deliverer(request)
    raw_limit = request.query.get("limit", "10")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise InvalidRequest(
            f"limit must be 1..{LIST_LIMIT_MAX}", code="parameter_invalid", param="limit"
        )
    after = request.query.get("starting_after")
    before = None if after is None else delivery_number(after, "starting_after")
    return web.json_response(deliveries_page(deliverer, endpoint, int(raw_limit), before))


def deliveries_page(
    deliverer: WebhookDeliverer, endpoint: WebhookEndpoint, limit: int, before: int | None
) -> dict[str, Any]:
    """The endpoint's deliveries, newest first, older than delivery number ``before``."""
    page = deliverer.core.listing({endpoint.id}, limit + 1, before)
    return {
        "object": "list",
        "url": f"/v1/webhook_endpoints/{endpoint.id}/deliveries",
        "data": [delivery_object(d) for d in page[:limit]],
        "has_more": len(page) > limit,
    }


async def post_resend(request: web.Request) -> web.Response:
    deliverer = _deliverer(request)
    keys, mode = _mine(request)
    shown = resend_delivery(deliverer, keys, mode, request.match_info["id"], _now_ms(request))
    return web.json_response(shown)


def resend_delivery(
    deliverer: WebhookDeliverer, keys: PartnerKeys, mode: Mode, raw_id: str, now_ms: int
) -> dict[str, Any]:
    """A delivery to one of the partner's endpoints in ``mode``, pending again (a manual
    resend); another partner's or mode's delivery reads as none."""
    number = delivery_number(raw_id, "id")
    mine = {e.id for e in keys.webhook_endpoints if e.mode == mode}
    d = deliverer.core.get(number)
    if d.endpoint not in mine:  # another partner's delivery reads as none
        raise NotFound(f"no webhook delivery {raw_id}", code="delivery_not_found")
    again = deliverer.core.resend(number, now_ms)
    deliverer.wake()
    return delivery_object(again)


def add_webhook_routes(app: web.Application, state: GatewayState) -> None:
    """The routes, and the deliverer when this gateway delivers (``[webhooks] deliver``)."""
    holder = _Holder()
    app[WEBHOOKS] = holder
    p = "/v1/webhook_endpoints"
    app.router.add_post(p, post_endpoint)
    app.router.add_get(p, list_endpoints)
    app.router.add_post(p + "/{id}", post_update)
    app.router.add_delete(p + "/{id}", delete_endpoint)
    app.router.add_post(p + "/{id}/rotate_secret", post_rotate)
    app.router.add_get(p + "/{id}/deliveries", list_deliveries)
    app.router.add_post("/v1/webhook_deliveries/{id}/resend", post_resend)
    if not state.config.webhooks.deliver:
        return

    async def save_disabled(marks: Sequence[tuple[str, EndpointDisabled]]) -> int:
        master_key = state.keyring_writer_key()
        keyring = await disable_in_keyring(state.config.keyring_file, master_key, marks)
        state.serve_keyring(keyring)
        return keyring.version

    async def deliver_ctx(app: web.Application) -> AsyncIterator[None]:
        deliverer = WebhookDeliverer(
            state.config.webhooks,
            state.nodes,
            lambda: state.keyring,
            url_policy(state.config),
            state.metrics,
            clock_s=state.clock_s,
            save_disabled=save_disabled,
        )
        holder.deliverer = deliverer
        state.keyring_written = deliverer.wake  # reconcile its queue with a change now
        task = asyncio.create_task(deliverer.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        holder.deliverer = None
        state.keyring_written = lambda: None

    app.cleanup_ctx.append(deliver_ctx)
