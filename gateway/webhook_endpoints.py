"""Partners' webhook endpoints: where they live, how they are changed, which URLs are allowed.

Endpoints live in the partner keyring (:mod:`gateway.keyring`), next to the partner's API
secrets, encrypted at rest under the master key: only gateways hold a webhook secret; nodes
never see one (their outbox holds event ids). ``baas-partners webhook add|list|remove|
rotate-secret|enable|disable`` change them under the keyring's file lock
(:func:`gateway.keyring.change_keyring`); running gateways reload the keyring by themselves.

An endpoint (:class:`WebhookEndpoint`) has an id ``we_<hex>``, a URL, a mode (test or live:
it gets that mode's events only), the event types it wants (``*``: all), an enabled flag (with
``disabled_reason`` and ``disabled_at_ms`` when off: ``partner`` when its partner disabled it,
``failing`` when the deliverer did because every attempt failed for ``[webhooks]
endpoint_failing_s_max``; :func:`set_enabled` clears them on re-enable) and one or two signing
secrets (``whsec_<hex>``, shown once when made). :func:`rotate_secret`
adds a new secret and ends the old one ``overlap_s`` later: until then every delivery
carries one ``v1`` signature per live secret, so a receiver can switch without a gap.

**URLs (SSRF).** :func:`check_url` admits ``http``/``https`` URLs with a host and no
user-info. The host must not be a loopback, private, link-local, multicast, reserved or
unspecified address, nor one of the cluster's own hosts (the nodes', the gateway's) -- unless
the operator's ``[webhooks] allow_hosts`` names it or ``allow_private_addresses`` is set.
Registration checks the URL as written; the deliverer checks again every address the name
resolves to at delivery (:class:`gateway.webhook_deliverer.GuardedResolver`), and follows no
redirect.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from business.identity.ids import Mode
from business.payments.outbox import EventType
from node.errors import InvalidRequest, NotFound, UnsupportedFormat

__all__ = [
    "DISABLED_BY_PARTNER",
    "ENDPOINTS_PER_PARTNER_MAX",
    "EVENT_TYPES",
    "SECRETS_LIVE_MAX",
    "UrlPolicy",
    "WebhookEndpoint",
    "WebhookSecret",
    "add_endpoint",
    "address_allowed",
    "check_url",
    "endpoints_from_json",
    "endpoints_to_json",
    "remove_endpoint",
    "rotate_secret",
    "set_enabled",
]

ENDPOINTS_PER_PARTNER_MAX = 16
SECRETS_LIVE_MAX = 2  # the one in use and the one rolling in
URL_CHARS_MAX = 2048
SECRET_BYTES = 32
EVENT_TYPES = frozenset(t.api_name for t in EventType)
ALL_EVENTS = "*"


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    secret: bytes
    not_after_ms: int | None = None  # None: until rotated out

    def live(self, now_ms: int) -> bool:
        return self.not_after_ms is None or now_ms <= self.not_after_ms


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    url: str
    mode: Mode
    events: tuple[str, ...]  # api names, or ("*",)
    enabled: bool
    secrets: tuple[WebhookSecret, ...]
    created_ms: int
    disabled_reason: str | None = None  # when not enabled: "partner" or "failing"
    disabled_at_ms: int | None = None

    def wants(self, event_type: str, mode: Mode) -> bool:
        return (
            self.enabled
            and self.mode == mode
            and (ALL_EVENTS in self.events or event_type in self.events)
        )

    def signing_secrets(self, now_ms: int) -> list[bytes]:
        return [s.secret for s in self.secrets if s.live(now_ms)]


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """The operator's SSRF rule (``[webhooks]``) and the cluster's own hosts."""

    allow_hosts: frozenset[str] = frozenset()
    allow_private_addresses: bool = False
    own_hosts: frozenset[str] = frozenset()


def _host_allowed_by_name(host: str, policy: UrlPolicy) -> bool:
    return policy.allow_private_addresses or host in policy.allow_hosts


def address_allowed(address: str, host: str, policy: UrlPolicy) -> bool:
    """Whether the deliverer may connect to ``address`` (an IP) for URL host ``host``."""
    if _host_allowed_by_name(host, policy):
        return True
    if address in policy.own_hosts:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: object, policy: UrlPolicy) -> str:
    """The URL, if a webhook may be registered to it (module docstring); else 400."""

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"webhook url: {why}", code="webhook_url_invalid", param="url")

    if not isinstance(url, str) or not 1 <= len(url) <= URL_CHARS_MAX or not url.isprintable():
        raise refuse(f"1..{URL_CHARS_MAX} printable characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise refuse("only http:// and https:// URLs")
    if parts.username is not None or parts.password is not None:
        raise refuse("no user-info in the URL (the signature authenticates)")
    try:
        parts.port  # noqa: B018 -- parsing it refuses a bad port
    except ValueError as exc:
        raise refuse("bad port") from exc
    host = (parts.hostname or "").lower()
    if not host:
        raise refuse("a host is required")
    if _host_allowed_by_name(host, policy):
        return url
    if host in policy.own_hosts or host == "localhost" or host.endswith(".localhost"):
        raise InvalidRequest(
            "webhook url: the cluster's own or a loopback host (not in [webhooks] allow_hosts)",
            code="webhook_url_forbidden",
            param="url",
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return url  # a name: its addresses are checked at every delivery
    if not address_allowed(host, host, policy):
        raise InvalidRequest(
            "webhook url: a private, loopback or reserved address (not in [webhooks] allow_hosts)",
            code="webhook_url_forbidden",
            param="url",
        )
    return url


def _check_events(events: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(sorted(set(events)))
    if not chosen or (ALL_EVENTS in chosen and len(chosen) > 1):
        raise InvalidRequest(
            'events: one or more event types, or "*" alone',
            code="parameter_invalid",
            param="events",
        )
    unknown = [e for e in chosen if e != ALL_EVENTS and e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(
            f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)}",
            code="parameter_invalid",
            param="events",
        )
    return chosen


def add_endpoint(
    endpoints: tuple[WebhookEndpoint, ...],
    url: object,
    mode: Mode,
    events: Iterable[str],
    policy: UrlPolicy,
    now_ms: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[tuple[WebhookEndpoint, ...], WebhookEndpoint]:
    """A new endpoint (with its first secret) after ``endpoints``."""
    if len(endpoints) >= ENDPOINTS_PER_PARTNER_MAX:
        raise InvalidRequest(
            f"at most {ENDPOINTS_PER_PARTNER_MAX} webhook endpoints per partner",
            code="webhook_endpoint_limit_reached",
        )
    taken = {e.id for e in endpoints}
    endpoint_id = f"we_{secrets.token_hex(8)}"
    while endpoint_id in taken:
        endpoint_id = f"we_{secrets.token_hex(8)}"
    made = WebhookEndpoint(
        endpoint_id,
        check_url(url, policy),
        mode,
        _check_events(events),
        True,
        (WebhookSecret(random_bytes(SECRET_BYTES)),),
        now_ms,
    )
    return (*endpoints, made), made


def find(endpoints: tuple[WebhookEndpoint, ...], endpoint_id: str) -> WebhookEndpoint:
    for e in endpoints:
        if e.id == endpoint_id:
            return e
    raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="webhook_endpoint_not_found")


def _replace_one(
    endpoints: tuple[WebhookEndpoint, ...], changed: WebhookEndpoint
) -> tuple[WebhookEndpoint, ...]:
    return tuple(changed if e.id == changed.id else e for e in endpoints)


def remove_endpoint(
    endpoints: tuple[WebhookEndpoint, ...], endpoint_id: str
) -> tuple[WebhookEndpoint, ...]:
    find(endpoints, endpoint_id)
    return tuple(e for e in endpoints if e.id != endpoint_id)


DISABLED_BY_PARTNER = "partner"


def set_enabled(
    endpoints: tuple[WebhookEndpoint, ...],
    endpoint_id: str,
    enabled: bool,
    now_ms: int,
    reason: str = DISABLED_BY_PARTNER,
) -> tuple[WebhookEndpoint, ...]:
    """Enabled (the reason cleared), or disabled now for ``reason``; an endpoint already
    disabled keeps its first reason and time."""
    endpoint = find(endpoints, endpoint_id)
    if enabled:
        changed = replace(endpoint, enabled=True, disabled_reason=None, disabled_at_ms=None)
    elif not endpoint.enabled:
        return endpoints
    else:
        changed = replace(endpoint, enabled=False, disabled_reason=reason, disabled_at_ms=now_ms)
    return _replace_one(endpoints, changed)


def rotate_secret(
    endpoints: tuple[WebhookEndpoint, ...],
    endpoint_id: str,
    overlap_s: int,
    now_ms: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[tuple[WebhookEndpoint, ...], WebhookSecret]:
    """A new secret; the live ones end ``overlap_s`` from now (both sign until then)."""
    if type(overlap_s) is not int or not 0 <= overlap_s <= 7 * 86_400:
        raise InvalidRequest("overlap is 0..604800 s", code="parameter_invalid", param="overlap_s")
    endpoint = find(endpoints, endpoint_id)
    end_ms = now_ms + overlap_s * 1000
    kept = tuple(
        replace(s, not_after_ms=end_ms if s.not_after_ms is None else min(s.not_after_ms, end_ms))
        for s in endpoint.secrets
        if s.live(now_ms)
    )
    fresh = WebhookSecret(random_bytes(SECRET_BYTES))
    if len(kept) + 1 > SECRETS_LIVE_MAX and overlap_s > 0:
        raise InvalidRequest(
            f"at most {SECRETS_LIVE_MAX} live secrets: wait for the last rotation's overlap "
            "to end, or rotate with overlap 0",
            code="webhook_secret_limit_reached",
        )
    if overlap_s == 0:
        kept = ()
    return _replace_one(endpoints, replace(endpoint, secrets=(*kept, fresh))), fresh


def endpoint_object(
    e: WebhookEndpoint, now_ms: int, secret_once: bytes | None = None
) -> dict[str, Any]:
    """The endpoint as the CLI and the API show it (the secret only once, when made)."""
    shown: dict[str, Any] = {
        "id": e.id,
        "object": "webhook_endpoint",
        "url": e.url,
        "livemode": e.mode == Mode.LIVE,
        "enabled_events": list(e.events),
        "status": "enabled" if e.enabled else "disabled",
        "disabled_reason": None if e.enabled else e.disabled_reason or DISABLED_BY_PARTNER,
        "disabled_at": None if e.enabled or e.disabled_at_ms is None else e.disabled_at_ms // 1000,
        "created_ms": e.created_ms,
        "secrets_live": len(e.signing_secrets(now_ms)),
    }
    if secret_once is not None:
        shown["secret"] = "whsec_" + secret_once.hex()
    return shown


def endpoints_to_json(endpoints: tuple[WebhookEndpoint, ...]) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "url": e.url,
            "mode": "live" if e.mode == Mode.LIVE else "test",
            "events": list(e.events),
            "enabled": e.enabled,
            "secrets": [
                {"secret": s.secret.hex(), "not_after_ms": s.not_after_ms} for s in e.secrets
            ],
            "created_ms": e.created_ms,
            "disabled_reason": e.disabled_reason,
            "disabled_at_ms": e.disabled_at_ms,
        }
        for e in endpoints
    ]


def endpoints_from_json(raw: Any) -> tuple[WebhookEndpoint, ...]:
    """The keyring's stored endpoints (absent in keyrings from before webhooks: none)."""
    if raw is None:
        return ()
    try:
        endpoints = tuple(
            WebhookEndpoint(
                str(e["id"]),
                str(e["url"]),
                Mode.LIVE if e["mode"] == "live" else Mode.TEST,
                tuple(str(x) for x in e["events"]),
                bool(e["enabled"]),
                tuple(
                    WebhookSecret(bytes.fromhex(s["secret"]), s["not_after_ms"])
                    for s in e["secrets"]
                ),
                int(e["created_ms"]),
                # absent in keyrings from before the disable rule
                None if e.get("disabled_reason") is None else str(e["disabled_reason"]),
                None if e.get("disabled_at_ms") is None else int(e["disabled_at_ms"]),
            )
            for e in raw
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnsupportedFormat(f"keyring webhook endpoint is malformed: {exc}") from exc
    if len({e.id for e in endpoints}) != len(endpoints) or any(not e.secrets for e in endpoints):
        raise UnsupportedFormat("keyring webhook endpoints: an id twice, or no secret")
    return endpoints
