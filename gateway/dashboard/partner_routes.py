"""The partner side of the dashboard: partner users' sign-in and the partner pages.

* ``GET|POST /dashboard/partner/signin`` -> partner id + user name + password + TOTP code
  (:mod:`.partner_users`), through the operators' one sign-in path
  (:func:`gateway.dashboard.routes.sign_in`: lockout, KDF, code once, bounded sessions). The
  session's ``role`` is ``partner_admin`` or ``partner_viewer`` and its ``scope`` the partner.
* ``GET /dashboard/partner/{mode}/{overview,points,reserve,policy,swaps,credentials}`` and
  ``POST`` ``points/define``, ``points/issue``, ``points/liquidity``, ``reserve/top_up``,
  ``reserve/threshold``, ``policy``, ``credentials/add``, ``credentials/retire``;
  ``GET policy/preview`` (JSON: the quote an edited policy would give; writes nothing).
  ``overview?volume=24h|7d|30d`` picks the swap volume's window; ``swaps`` takes ``id`` (one
  swap) and the list's filter form (``status``, ``user``, ``from``/``to`` days,
  ``starting_after``). Payments, the Market and webhooks: :mod:`.commerce_routes`.

Authority. A page acts for its session's partner (the scope; never a partner named in the
path or form) in the mode its path names, through the partner API's own cores
(:mod:`gateway.bridge_routes`, :mod:`gateway.keyring`): the same checks, the same problem codes,
the same idempotency (each form carries a key made when it was drawn). So one partner's session
asking for another's swap, or API key, gets the API's 404. A viewer's POST is refused 403
``role_read_only`` after its CSRF token is checked; viewers see no forms.

A removed or rotated dashboard user ends its sessions at its next request (the users file is
read at every request, as the operators file is).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from business.bridge.core import quote_terms
from business.bridge.model import BridgeResult, Direction, PolicyRecord, SetPolicy
from business.identity.ids import Mode
from gateway.bridge_routes import (
    POLICY_FIELDS,
    SWAP_PREFIX,
    current_policy,
    define_points,
    fund_liquidity,
    issue_points,
    own_point_asset,
    policy_terms,
    problem_of,
    read_swap,
    reserve_object,
    set_policy,
    set_reserve_threshold,
    swaps_list,
    top_up_reserve,
)
from gateway.dashboard import partner_pages as pp
from gateway.dashboard.partner_pages import (
    DAY_MS,
    VOLUME_WINDOW_DEFAULT,
    VOLUME_WINDOWS,
    PartnerView,
    SwapVolume,
    partner_path,
    swap_volume,
    volume_start_ms,
)
from gateway.dashboard.partner_users import ROLE_ADMIN, load_partner_users, user_key
from gateway.dashboard.routes import (
    DASHBOARD,
    SIGNIN_COOKIE,
    SigninCredential,
    _check_csrf,
    _form,
    _html,
    _session_of,
    sign_in,
    signin_form_response,
)
from gateway.dashboard.sessions import Session
from gateway.keyring import (
    PartnerKeys,
    add_api_credential,
    change_keyring,
    mode_name,
    parse_mode,
    retire_api_credential,
)
from gateway.ledger_routes import LedgerContext, check_key, hex_param, scope_of
from gateway.partners import dashboard_user_actor
from node.errors import BaasError, CallerError, InvalidRequest, NotFound, OperationFailed
from node.logs import request_id_or_new

if TYPE_CHECKING:
    from gateway.app import GatewayState

__all__ = ["PARTNER_ROLES", "ReadOnlyRole", "add_partner_routes", "partner_role"]

PARTNER_ADMIN = "partner_admin"
PARTNER_VIEWER = "partner_viewer"
PARTNER_ROLES = (PARTNER_ADMIN, PARTNER_VIEWER)
HISTORY_SHOWN_MAX = 100  # reserve levels drawn (the API's page bound)
SWAPS_SHOWN_MAX = 20  # swaps a page of the Swaps list shows


def partner_role(role: str) -> str:
    """The session role of a partner user's role."""
    return PARTNER_ADMIN if role == ROLE_ADMIN else PARTNER_VIEWER


def first_page() -> str:
    return partner_path("test", "overview")


class ReadOnlyRole(CallerError):
    """A viewer asked to change something."""

    code = "role_read_only"
    http_status = 403


# -- sign-in ---------------------------------------------------------------------------------


def _signin_page(
    request: web.Request, problem: tuple[str, str] | None, status: int, partner: str, name: str
) -> web.Response:
    return signin_form_response(
        request, lambda token: pp.partner_signin_page(token, problem, partner, name), status
    )


async def get_signin(request: web.Request) -> web.StreamResponse:
    return _signin_page(request, None, 200, "", "")


async def post_signin(request: web.Request) -> web.StreamResponse:
    state = request.app[DASHBOARD]
    form = await _form(request)
    _check_csrf(request.cookies.get(SIGNIN_COOKIE), form)
    partner, name = form.get("partner", "").strip(), form.get("name", "").strip()
    subject = user_key(partner, name)
    user = load_partner_users(state.config.dashboard.partner_users_file).get(subject)
    found = None
    if user is not None:
        found = SigninCredential(
            subject, partner_role(user.role), user.partner, user.credential_id, user.password,
            user.totp_secret,
        )  # fmt: skip

    def again(request: web.Request, problem: tuple[str, str] | None, status: int) -> web.Response:
        return _signin_page(request, problem, status, partner, name)

    return await sign_in(request, form, subject, found, again, first_page())


# -- acting for the session's partner --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acting:
    session: Session
    partner: PartnerKeys
    mode: Mode
    ctx: LedgerContext
    gateway: GatewayState
    app: Mapping[Any, Any]  # the request's config_dict: the gateway app's keys (webhooks)

    @property
    def admin(self) -> bool:
        return self.session.role == PARTNER_ADMIN

    def view(self, slug: str, notice: str = "", problem: BaasError | None = None) -> PartnerView:
        shown = None if problem is None else (problem.code, problem.detail)
        return PartnerView(
            self.session, self.partner.partner_id, self.admin, mode_name(self.mode), slug,
            notice, shown,
        )  # fmt: skip


def _partner_session(request: web.Request) -> Session:
    state = request.app[DASHBOARD]
    session = _session_of(request)
    if session is not None and session.role in PARTNER_ROLES:
        user = load_partner_users(state.config.dashboard.partner_users_file).get(session.subject)
        if user is None or user.credential_id != session.credential:
            state.sessions.close(session.session_id)
            session = None
    if session is None:
        raise web.HTTPSeeOther(f"{pp.PARTNER_BASE}/signin")
    if session.role not in PARTNER_ROLES:
        raise NotFound("no such page", code="not_found")  # never reveal another role's pages
    return session


def _acting(request: web.Request) -> Acting:
    state = request.app[DASHBOARD]
    session = _partner_session(request)
    try:
        mode = parse_mode(request.match_info["mode"])
    except InvalidRequest as exc:
        raise NotFound("no such page", code="not_found") from exc
    gateway = state.gateway
    if gateway is None:
        raise OperationFailed("this gateway serves no partner pages", code="partner_pages_off")
    partner = gateway.keyring.partners.get(session.scope)
    if partner is None:
        raise NotFound("the partner is not in the keyring", code="partner_not_found")
    deadline_s = gateway.config.timeouts.request_deadline_s
    ctx = LedgerContext(
        partner,
        mode,
        scope_of(partner.partner_id, mode),
        asyncio.get_running_loop().time() + deadline_s,
        request_id_or_new(None),
    )
    return Acting(session, partner, mode, ctx, gateway, request.config_dict)


async def _changing(request: web.Request) -> tuple[Acting, dict[str, str], str]:
    """A change's form: the session's CSRF token, then the role, then the form's key."""
    acting = _acting(request)
    form = await _form(request)
    _check_csrf(acting.session.csrf_token, form)
    if not acting.admin:
        raise ReadOnlyRole("a viewer reads only; an admin of the partner may change this")
    return acting, form, check_key(form.get("key"), "key")


def _int_field(form: dict[str, str], name: str) -> int:
    """A whole-number form field as the JSON integer the API takes (range: the API's check)."""
    raw = form.get(name, "").strip()
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidRequest(f"{name} must be a whole number", param=name)
    return int(raw)


def _text(form: dict[str, str], name: str) -> str:
    return form.get(name, "").strip()


# -- pages -----------------------------------------------------------------------------------

Draw = Callable[[Acting, str, BaasError | None], Awaitable[str]]


async def _asset_or_problem(acting: Acting) -> tuple[dict[str, Any] | None, BaasError | None]:
    try:
        return await own_point_asset(acting.gateway, acting.ctx), None
    except BaasError as exc:
        return None, exc


async def draw_overview(
    acting: Acting, notice: str, problem: BaasError | None, window: str = VOLUME_WINDOW_DEFAULT
) -> str:
    problems = [] if problem is None else [(problem.code, problem.detail)]
    asset, refused = await _asset_or_problem(acting)
    if refused is not None:
        problems.append((refused.code, refused.detail))
    reserve = None
    try:
        reserve = await reserve_object(acting.gateway, acting.ctx, "", HISTORY_SHOWN_MAX)
    except BaasError as exc:
        problems.append((exc.code, exc.detail))
    volume = None
    try:
        volume = await _swap_volume(acting, window)
    except BaasError as exc:
        problems.append((exc.code, exc.detail))
    return pp.overview_page(acting.view("overview", notice), asset, reserve, problems, volume)


async def _swap_volume(acting: Acting, window_key: str) -> SwapVolume:
    """The window's succeeded swaps from the swaps list, at most
    ``dashboard.swap_volume_pages_max`` pages of ``limits.ledger_list_limit_max``: past that,
    the volume counts the newest swaps read and says from when."""
    window = VOLUME_WINDOWS[window_key]
    start_ms = volume_start_ms(window, int(time.time() * 1000))
    filters = {"status": "succeeded", "created_gte": str(start_ms)}
    page_max = acting.gateway.config.limits.ledger_list_limit_max
    swaps: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(acting.gateway.config.dashboard.swap_volume_pages_max):
        listing = await swaps_list(acting.gateway, acting.ctx, filters, page_max, cursor)
        swaps += listing["data"]
        if not listing["has_more"] or not listing["data"]:
            return SwapVolume(window_key, swap_volume(swaps, window, start_ms))
        cursor = listing["data"][-1]["id"]
    read_from_ms = int(swaps[-1]["log_time_ms"])  # newest first: the oldest one read
    return SwapVolume(window_key, swap_volume(swaps, window, start_ms), read_from_ms)


async def draw_points(acting: Acting, notice: str, problem: BaasError | None) -> str:
    asset, refused = await _asset_or_problem(acting)
    return pp.points_page(acting.view("points", notice, problem or refused), asset)


async def draw_reserve(acting: Acting, notice: str, problem: BaasError | None) -> str:
    reserve = await reserve_object(acting.gateway, acting.ctx, "", HISTORY_SHOWN_MAX)
    return pp.reserve_page(acting.view("reserve", notice, problem), reserve)


async def draw_policy(acting: Acting, notice: str, problem: BaasError | None) -> str:
    asset, refused = await _asset_or_problem(acting)
    policy = None
    if asset is not None:
        try:
            code, ledger = asset["code"], asset["ledger"]
            policy = await current_policy(acting.gateway, acting.ctx, code, ledger)
        except NotFound:
            policy = None
    return pp.policy_page(acting.view("policy", notice, problem or refused), asset, policy)


async def draw_credentials(
    acting: Acting, notice: str, problem: BaasError | None, new: tuple[str, str] | None = None
) -> str:
    now_ms = int(time.time() * 1000)
    credentials = [
        {
            "id": c.api_key,
            "active": c.live(now_ms),
            "not_after_ms": c.not_after_ms,
        }
        for c in _credentials_now(acting).credentials
        if c.mode == acting.mode
    ]
    return pp.credentials_page(acting.view("credentials", notice, problem), credentials, new)


DRAW: dict[str, Draw] = {
    "overview": draw_overview,
    "points": draw_points,
    "reserve": draw_reserve,
    "policy": draw_policy,
    "credentials": draw_credentials,
}


def _getter(draw: Draw) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def get(request: web.Request) -> web.StreamResponse:
        return _html(await draw(_acting(request), "", None))

    return get


async def get_overview(request: web.Request) -> web.StreamResponse:
    window = request.query.get("volume", VOLUME_WINDOW_DEFAULT)
    if window not in VOLUME_WINDOWS:
        raise InvalidRequest(f"volume is one of {', '.join(VOLUME_WINDOWS)}", param="volume")
    return _html(await draw_overview(_acting(request), "", None, window))


def _day_ms(raw: str, param: str) -> int:
    """A ``YYYY-MM-DD`` day (the date input's value) as its UTC midnight in ms."""
    try:
        day = datetime.date.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{param} is a day, YYYY-MM-DD", param=param) from exc
    return (day - datetime.date(1970, 1, 1)).days * DAY_MS


def _list_filters(shown: dict[str, str]) -> dict[str, str]:
    """The Swaps page's filter form as the list's filters (the ``to`` day included)."""
    filters = {name: shown[name] for name in ("status", "user") if shown[name]}
    if shown["from"]:
        filters["created_gte"] = str(max(0, _day_ms(shown["from"], "from")))
    if shown["to"]:
        filters["created_lt"] = str(max(0, _day_ms(shown["to"], "to") + DAY_MS))
    return filters


async def get_swaps(request: web.Request) -> web.StreamResponse:
    """One swap by ``id`` (read as ``GET /v1/bridge/swaps/{id}``), and a page of the swaps
    list under the filter form, newest first, on from ``starting_after``."""
    acting = _acting(request)
    asked = request.query.get("id", "").strip()
    swap, problem, status = None, None, 200
    if asked:
        try:
            record_id = hex_param(asked, "id", 32, 32, prefix=SWAP_PREFIX)
            swap = await read_swap(acting.gateway, acting.ctx, record_id)
        except CallerError as exc:  # another partner's swap, or the other mode's: not found
            problem, status = exc, exc.http_status
    shown = {name: request.query.get(name, "").strip() for name in pp.SWAP_FILTERS}
    listing, refused = None, []
    try:
        cursor = request.query.get("starting_after")
        filters = _list_filters(shown)
        listing = await swaps_list(acting.gateway, acting.ctx, filters, SWAPS_SHOWN_MAX, cursor)
    except BaasError as exc:  # a refused filter, or no node answered: shown, never a blank
        refused.append((exc.code, exc.detail))
        status = max(status, getattr(exc, "http_status", 500))
    view = acting.view("swaps", "", problem)
    return _html(pp.swaps_page(view, swap, asked, listing, shown, refused), status)


# -- changes: each calls the partner API's core, then redraws its page -----------------------

Change = Callable[[Acting, dict[str, str], str], Awaitable[str]]


def _poster(slug: str, change: Change) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A change's handler: the refusal (its problem code and message) or what it did, shown
    on the page it came from."""

    async def post(request: web.Request) -> web.StreamResponse:
        acting, form, key = await _changing(request)
        try:
            notice = await change(acting, form, key)
        except BaasError as exc:
            return _html(await DRAW[slug](acting, "", exc), getattr(exc, "http_status", 500))
        return _html(await DRAW[slug](acting, notice, None))

    return post


async def _define(acting: Acting, form: dict[str, str], key: str) -> str:
    body = {
        "code": _text(form, "code"),
        "scale": _int_field(form, "scale"),
        "validity_days": _int_field(form, "validity_days"),
    }
    _, asset = await define_points(acting.gateway, acting.ctx, key, body)
    return f"Point asset {asset['code']} defined."


async def _code(acting: Acting) -> str:
    asset = await own_point_asset(acting.gateway, acting.ctx)
    if asset is None:
        raise NotFound("define your point asset first", code="asset_not_found", param="asset")
    return str(asset["code"])


async def _issue(acting: Acting, form: dict[str, str], key: str) -> str:
    body = {"user": _text(form, "user"), "amount": _text(form, "amount")}
    code = await _code(acting)
    _, moved = await issue_points(acting.gateway, acting.ctx, key, body, code)
    return f"Issued {moved['amount']} {code} to {moved['user']}."


async def _liquidity(acting: Acting, form: dict[str, str], key: str) -> str:
    code = await _code(acting)
    body = {"amount": _text(form, "amount")}
    _, moved = await fund_liquidity(acting.gateway, acting.ctx, key, body, code)
    return f"Moved {moved['amount']} {code} to the swap liquidity."


async def _top_up(acting: Acting, form: dict[str, str], key: str) -> str:
    _, reserve = await top_up_reserve(
        acting.gateway, acting.ctx, key, {"amount": _text(form, "amount")}
    )
    return f"Reserve topped up: level {reserve['level']}."


async def _threshold(acting: Acting, form: dict[str, str], key: str) -> str:
    body = {"threshold": _text(form, "threshold")}
    _, reserve = await set_reserve_threshold(acting.gateway, acting.ctx, key, body)
    return f"Threshold set to {reserve['threshold']}."


def _policy_body(form: dict[str, str]) -> dict[str, Any]:
    """The policy form as the API's JSON body (integers where the API takes integers)."""
    body: dict[str, Any] = {name: _text(form, name) for name in POLICY_FIELDS}
    body["window_s"] = _int_field(form, "window_s")
    body["fee_bps"] = _int_field(form, "fee_bps")
    body["enabled"] = form.get("enabled") == "true"
    return body


async def _policy(acting: Acting, form: dict[str, str], key: str) -> str:
    code = await _code(acting)
    actor = dashboard_user_actor(acting.partner.partner_id, acting.session.subject).credential
    _, policy = await set_policy(acting.gateway, acting.ctx, key, _policy_body(form), code, actor)
    return f"Policy version {policy['version']} saved."


async def get_policy_preview(request: web.Request) -> web.StreamResponse:
    """The quote the edited policy would give (the Bridge's own arithmetic, business.bridge's
    ``terms``): a computation, nothing written. Refusals answer as the quote route's would."""
    _acting(request)
    query = dict(request.query)
    try:
        terms = policy_terms(_policy_body(query))
        direction = {"in": Direction.IN, "out": Direction.OUT}.get(query.get("direction", ""))
        if direction is None:
            raise InvalidRequest("direction is in or out", param="direction")
        amount_in = _int_field(query, "amount_in")
        # The request's own checks (e.g. swap_max >= swap_min), as a save would run them.
        SetPolicy(bytes(32), bytes(16), 1, 1, **terms, actor=bytes(16))
        policy = PolicyRecord(version=0, baas_ledger=0, changed_ms=0, **terms)
        found = quote_terms(policy, direction, amount_in)
    except CallerError as exc:
        return web.json_response({"ok": False, "code": exc.code, "message": exc.detail,
                                  "param": exc.param})  # fmt: skip
    if isinstance(found, BridgeResult):
        refused = problem_of(found.value)
        return web.json_response({"ok": False, "code": refused.code, "message": refused.detail,
                                  "param": refused.param})  # fmt: skip
    amount_out, fee, _ = found
    return web.json_response({"ok": True, "amount_out": str(amount_out), "fee": str(fee)})


async def _keyring_change(acting: Acting, change: Callable[[Any], Any]) -> None:
    gateway = acting.gateway
    if gateway.master_key is None:
        raise OperationFailed(
            "this gateway only reads the keyring (no master key)", code="keyring_read_only"
        )
    after = await asyncio.to_thread(
        change_keyring, gateway.config.keyring_file, gateway.master_key, change
    )
    gateway.keyring = after  # serve the change now, not at the next reload


def _credentials_now(acting: Acting) -> PartnerKeys:
    """The partner's credentials in the keyring now (a change on this page replaced it)."""
    return acting.gateway.keyring.partners.get(acting.partner.partner_id, acting.partner)


async def post_credential_add(request: web.Request) -> web.StreamResponse:
    acting, _, _ = await _changing(request)
    made: list[tuple[str, str]] = []

    def add(keyring: Any) -> Any:
        now_ms = int(time.time() * 1000)
        after, credential = add_api_credential(
            keyring, acting.partner.partner_id, now_ms, mode=acting.mode
        )
        made.append((credential.api_key, credential.secret.hex()))
        return after

    try:
        await _keyring_change(acting, add)
    except BaasError as exc:
        return _html(await draw_credentials(acting, "", exc), exc.http_status)
    return _html(await draw_credentials(acting, f"Added {made[0][0]}.", None, made[0]))


async def _retire(acting: Acting, form: dict[str, str], key: str) -> str:
    api_key = _text(form, "api_key")
    own = [c for c in _credentials_now(acting).credentials if c.mode == acting.mode]
    if api_key not in {c.api_key for c in own}:  # another partner's, or the other mode's
        raise NotFound("no such API key", code="unknown_api_key", param="api_key")

    def retire(keyring: Any) -> Any:
        now_ms = int(time.time() * 1000)
        return retire_api_credential(keyring, acting.partner.partner_id, api_key, now_ms, now_ms)

    await _keyring_change(acting, retire)
    return f"Retired {api_key}."


def add_partner_routes(app: web.Application) -> None:
    base = "/partner"
    app.router.add_get(base + "/signin", get_signin)
    app.router.add_post(base + "/signin", post_signin)
    for slug, draw in DRAW.items():
        if slug != "overview":
            app.router.add_get(f"{base}/{{mode}}/{slug}", _getter(draw))
    app.router.add_get(base + "/{mode}/overview", get_overview)
    app.router.add_get(base + "/{mode}/swaps", get_swaps)
    app.router.add_get(base + "/{mode}/policy/preview", get_policy_preview)
    changes: tuple[tuple[str, str, Change], ...] = (
        ("points/define", "points", _define),
        ("points/issue", "points", _issue),
        ("points/liquidity", "points", _liquidity),
        ("reserve/top_up", "reserve", _top_up),
        ("reserve/threshold", "reserve", _threshold),
        ("policy", "policy", _policy),
        ("credentials/retire", "credentials", _retire),
    )
    for action, slug, change in changes:
        app.router.add_post(f"{base}/{{mode}}/{action}", _poster(slug, change))
    app.router.add_post(base + "/{mode}/credentials/add", post_credential_add)
    # Payments, the Market and webhooks build on this module's helpers: imported here.
    from gateway.dashboard.commerce_routes import add_commerce_routes

    add_commerce_routes(app, base)
