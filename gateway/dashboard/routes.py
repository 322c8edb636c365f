"""The dashboard's aiohttp side: routes, sessions in cookies, CSRF, sign-in, node status reads.

Mounted by the gateway as a sub-application under ``/dashboard`` (:func:`build_dashboard_app`):

* ``GET /dashboard/`` -> the signed-in role's first page, else the sign-in page.
* ``GET|POST /dashboard/signin`` -> operator name + password + TOTP code. Failures are counted
  per name and per client address (:class:`~gateway.dashboard.sessions.SigninGuard`) and shown;
  past ``signin_failures_max`` the answer is 429 until ``signin_lockout_s`` has passed.
* ``POST /dashboard/signout``.
* ``GET /dashboard/operator/{nodes,anchors,moves}`` -> operators only, read from every node's
  ``/internal/v1/status`` (bearer token) at once, each bounded by ``node_status_timeout_s``.
* ``GET /dashboard/verify`` -> the self-contained receipt verifier, byte for byte the file the
  docs publish with its SHA-256 (``static/verifier.html``); public. Without a query it first
  redirects to ``?rpc=`` the configured ``chain_rpc_url``, which fills the page's RPC field.
* ``GET /dashboard/static/dashboard.css``.

Sessions live in the gateway's memory (a restart signs everyone out) behind a random id in an
``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` when the gateway serves TLS). Every POST
carries a CSRF token: the session's, or before sign-in a random one also set in a cookie
(double submit). Every answer carries a Content-Security-Policy that lets pages load only
from the gateway and connect only to it and the configured chain RPC; the verifier's inline
script and style are allowed by their hashes. Errors render as a page with the problem code
and message, never as a blank page.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.dashboard import pages
from gateway.dashboard.operators import (
    PasswordHash,
    hash_password,
    load_operators,
    totp_match,
)
from gateway.dashboard.pages import BASE, NodeView
from gateway.dashboard.sessions import Session, SessionStore, SigninGuard
from gateway.node_client import NodeClient
from node.errors import (
    AuthenticationFailed,
    BaasError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
)

if TYPE_CHECKING:
    from gateway.app import GatewayState

__all__ = ["DASHBOARD", "DashboardState", "build_dashboard_app", "verifier_html"]

SESSION_COOKIE = "baas_session"
SIGNIN_COOKIE = "baas_signin"
STATUS_PATH = "/internal/v1/status"
NODE_LOG_ANCHORS = "/internal/v1/log/anchors"
ROLE_OPERATOR = "operator"
FIRST_PAGE = {ROLE_OPERATOR: f"{BASE}/operator/nodes"}
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> bytes:
    return (resources.files("gateway.dashboard") / "static" / name).read_bytes()


def verifier_html() -> bytes:
    """The self-contained verifier, as published (docs/dashboard.md gives its SHA-256)."""
    return _static("verifier.html")


def _inline_hashes(html: bytes) -> dict[str, str]:
    """CSP source expressions ('sha256-...') of the page's inline script and style."""
    found: dict[str, str] = {}
    for kind, content in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        found[kind.decode()] = f"'sha256-{digest}'"
    return found


@dataclass(slots=True)
class DashboardState:
    config: GatewayConfig
    node_token: str
    nodes: NodeClient
    # The partner API's state: the partner pages act through its cores (keyring, node client,
    # limits, metrics). None: no partner pages (e.g. a dashboard tested without a gateway).
    gateway: GatewayState | None = None
    clock_s: Callable[[], float] = time.time
    sessions: SessionStore = field(init=False)
    guard: SigninGuard = field(init=False)
    http: aiohttp.ClientSession | None = None
    inflight: int = 0
    verifier: bytes = field(default_factory=verifier_html)
    css: bytes = field(default_factory=lambda: _static("dashboard.css"))
    preview_js: bytes = field(default_factory=lambda: _static("policy-preview.js"))

    def __post_init__(self) -> None:
        d = self.config.dashboard
        self.sessions = SessionStore(d.sessions_max, d.session_idle_s, d.session_absolute_s)
        self.guard = SigninGuard(d.signin_failures_max, d.signin_lockout_s, d.signin_trackers_max)

    def csp(self, verifier: bool) -> str:
        chain = self.config.dashboard.chain_rpc_url
        origin = ""
        if chain:
            parts = urllib.parse.urlsplit(chain)
            origin = f" {parts.scheme}://{parts.netloc}"
        script = style = "'self'"
        if verifier:
            hashes = _inline_hashes(self.verifier)
            script, style = hashes["script"], hashes["style"]
            # The verifier reads whichever chain RPC its user names: that is its purpose.
            origin = " http: https:"
        return (
            f"default-src 'none'; script-src {script}; style-src {style}; img-src 'self'; "
            f"connect-src 'self'{origin}; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'"
        )


DASHBOARD = web.AppKey("dashboard_state", DashboardState)


# -- middleware ------------------------------------------------------------------------------


def _session_of(request: web.Request) -> Session | None:
    state = request.app[DASHBOARD]
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    return state.sessions.get(session_id, state.clock_s())


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def dashboard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bound the requests in flight, add the security headers, render errors as pages."""
    state = request.app[DASHBOARD]
    response: web.StreamResponse
    if state.inflight >= state.config.dashboard.requests_inflight_max:
        response = _html(
            pages.error_page(503, Overloaded.code, "The dashboard is busy; retry.", None), 503
        )
    else:
        state.inflight += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects
            code = "not_found" if exc.status == 404 else f"http_{exc.status}"
            response = _html(
                pages.error_page(exc.status, code, exc.reason, _session_of(request)), exc.status
            )
        except BaasError as exc:
            status = getattr(exc, "http_status", 500)
            response = _html(
                pages.error_page(status, exc.code, exc.detail, _session_of(request)), status
            )
            if isinstance(exc, RateLimited | Overloaded):
                response.headers["Retry-After"] = str(int(getattr(exc, "retry_after_s", 1)))
        finally:
            state.inflight -= 1
    response.headers["Content-Security-Policy"] = state.csp(request.path == pages.VERIFY_PATH)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _require(request: web.Request, role: str) -> Session:
    state = request.app[DASHBOARD]
    session = _session_of(request)
    if session is not None and session.role == ROLE_OPERATOR:
        # A removed or rotated credential ends its sessions at once (the file is small).
        operator = load_operators(state.config.dashboard.operators_file).get(session.subject)
        if operator is None or operator.credential_id != session.credential:
            state.sessions.close(session.session_id)
            session = None
    if session is None:
        raise web.HTTPSeeOther(f"{BASE}/signin")
    if not session.allows(role):
        raise NotFound("no such page", code="not_found")  # never reveal another role's pages
    return session


async def _form(request: web.Request) -> dict[str, str]:
    limit = request.app[DASHBOARD].config.dashboard.form_bytes_max
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"a form is at most {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"a form is at most {limit} bytes")
    try:
        pairs = urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the form is not UTF-8") from exc
    return dict(pairs)


def _check_csrf(expected: str | None, form: dict[str, str]) -> None:
    given = form.get("csrf", "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise AuthenticationFailed(
            "the form's CSRF token is missing or stale; reload the page and try again",
            code="csrf_token_invalid",
        )


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    state = request.app[DASHBOARD]
    response.set_cookie(
        name,
        value,
        path=BASE,
        httponly=True,
        samesite="Strict",
        secure=state.config.scheme == "https",
        max_age=int(state.config.dashboard.session_absolute_s),
    )


# -- sign-in ---------------------------------------------------------------------------------


async def get_root(request: web.Request) -> web.StreamResponse:
    session = _session_of(request)
    first = {**FIRST_PAGE, **dict.fromkeys(("partner_admin", "partner_viewer"),
                                           f"{BASE}/partner/test/overview")}  # fmt: skip
    target = first.get(session.role) if session else None
    raise web.HTTPSeeOther(target or f"{BASE}/signin")


def _signin_response(
    request: web.Request, problem: tuple[str, str] | None = None, name: str = "", status: int = 200
) -> web.Response:
    return signin_form_response(request, lambda token: pages.signin_page(token, problem, name),
                                status)  # fmt: skip


def signin_form_response(
    request: web.Request, draw: Callable[[str], str], status: int = 200
) -> web.Response:
    """A sign-in page drawn with a fresh CSRF token, the same token set in a cookie."""
    token = secrets.token_urlsafe(24)
    response = _html(draw(token), status)
    _set_cookie(request, response, SIGNIN_COOKIE, token)
    return response


async def get_signin(request: web.Request) -> web.StreamResponse:
    return _signin_response(request)


@dataclass(frozen=True, slots=True)
class SigninCredential:
    """What a sign-in checks, whoever signs in (an operator, a partner's user)."""

    subject: str
    role: str
    scope: str
    credential_id: str
    password: PasswordHash
    totp_secret: str


SigninPage = Callable[[web.Request, tuple[str, str] | None, int], web.Response]


async def sign_in(
    request: web.Request,
    form: dict[str, str],
    subject: str,
    found: SigninCredential | None,
    again: SigninPage,
    first_page: str,
) -> web.StreamResponse:
    """The one sign-in path: lockout, the KDF (also for an unknown subject), the TOTP code
    once, the failure counts, then a session (role, scope and credential of ``found``).
    ``again`` draws the sign-in page with a problem; the form's CSRF token is checked first."""
    state = request.app[DASHBOARD]
    config = state.config.dashboard
    keys = (f"name:{subject}", f"addr:{request.remote}")
    now = state.clock_s()
    wait_s = state.guard.locked_for_s(keys, now)
    if wait_s > 0:
        raise RateLimited(
            f"too many failed sign-ins; try again in {int(wait_s) + 1} s "
            f"(signin_failures_max {config.signin_failures_max})",
            code="signin_locked",
            retry_after_s=int(wait_s) + 1,
        )
    password = form.get("password", "")
    # Always run the KDF, also for an unknown name: the answer's timing says nothing.
    password_ok = await asyncio.to_thread(
        _password_ok, None if found is None else found.password, password
    )
    step = totp_match(found.totp_secret, form.get("totp", ""), now) if found else None
    if found is None or not password_ok or step is None:
        failures = state.guard.failed(keys, now)
        message = (
            f"Wrong name, password or code. Failed attempts: {failures} of "
            f"{state.guard.failures_max} before sign-in is locked for "
            f"{int(config.signin_lockout_s)} s."
        )
        return again(request, ("signin_failed", message), 401)
    if not state.guard.fresh_totp_step(subject, step):
        failures = state.guard.failed(keys, now)
        message = f"This code was used already; wait for the next one. Failed attempts: {failures}."
        return again(request, ("totp_reused", message), 401)
    state.guard.succeeded(keys)
    session = state.sessions.open(
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        found.subject,
        found.role,
        now,
        scope=found.scope,
        credential=found.credential_id,
    )
    response = web.HTTPSeeOther(first_page)
    _set_cookie(request, response, SESSION_COOKIE, session.session_id)
    response.del_cookie(SIGNIN_COOKIE, path=BASE)
    raise response


async def post_signin(request: web.Request) -> web.StreamResponse:
    state = request.app[DASHBOARD]
    form = await _form(request)
    _check_csrf(request.cookies.get(SIGNIN_COOKIE), form)
    name = form.get("name", "").strip()
    operator = load_operators(state.config.dashboard.operators_file).get(name)
    found = None
    if operator is not None:
        found = SigninCredential(
            name, operator.role, "", operator.credential_id, operator.password,
            operator.totp_secret,
        )  # fmt: skip

    def again(request: web.Request, problem: tuple[str, str] | None, status: int) -> web.Response:
        return _signin_response(request, problem, name, status)

    return await sign_in(request, form, name, found, again, FIRST_PAGE[ROLE_OPERATOR])


@functools.cache
def _dummy_hash() -> PasswordHash:
    return hash_password(secrets.token_urlsafe(16))


def _password_ok(password_hash: PasswordHash | None, password: str) -> bool:
    if password_hash is not None:
        return password_hash.matches(password)
    _dummy_hash().matches(password)
    return False


async def post_signout(request: web.Request) -> web.StreamResponse:
    state = request.app[DASHBOARD]
    session = _session_of(request)
    if session is not None:
        _check_csrf(session.csrf_token, await _form(request))
        state.sessions.close(session.session_id)
    response = web.HTTPSeeOther(f"{BASE}/signin")
    response.del_cookie(SESSION_COOKIE, path=BASE)
    raise response


# -- operator pages --------------------------------------------------------------------------


async def _node_view(state: DashboardState, name: str, addr: str) -> NodeView:
    url = f"http://{addr}"
    assert state.http is not None
    try:
        async with state.http.get(url + STATUS_PATH) as response:
            if response.status != 200:
                return NodeView(name, url, False, f"status API answered {response.status}")
            return NodeView(name, url, True, status=await response.json())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return NodeView(name, url, False, _why(exc))


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused"
    return type(exc).__name__


async def node_views(state: DashboardState) -> list[NodeView]:
    return list(
        await asyncio.gather(*(_node_view(state, n.name, n.http_addr) for n in state.config.nodes))
    )


async def get_nodes(request: web.Request) -> web.StreamResponse:
    session = _require(request, ROLE_OPERATOR)
    views = await node_views(request.app[DASHBOARD])
    return _html(pages.nodes_page(session, views, request.path))


async def get_moves(request: web.Request) -> web.StreamResponse:
    session = _require(request, ROLE_OPERATOR)
    views = await node_views(request.app[DASHBOARD])
    return _html(pages.moves_page(session, views, request.path))


async def get_anchors(request: web.Request) -> web.StreamResponse:
    session = _require(request, ROLE_OPERATOR)
    state = request.app[DASHBOARD]
    config = state.config.dashboard
    views = await node_views(state)
    latest = max(
        (int(v.get("anchoring", "next_batch_id") or 1) - 1 for v in views if v.up), default=0
    )
    recent: list[dict[str, Any]] = []
    problem = None
    if latest > 0:
        first = max(1, latest - config.anchors_shown_max + 1)
        try:
            document = await state.nodes.log_document(
                f"{NODE_LOG_ANCHORS}?from={first}&limit={latest - first + 1}",
                deadline=asyncio.get_running_loop().time() + config.node_status_timeout_s,
                request_id=None,
            )
            recent = [a for a in document.get("anchors", []) if isinstance(a, dict)]
        except BaasError as exc:
            problem = (exc.code, exc.detail)
    return _html(
        pages.anchors_page(session, views, recent, problem, config.chain_rpc_url, request.path)
    )


# -- static ----------------------------------------------------------------------------------


async def get_verifier(request: web.Request) -> web.StreamResponse:
    chain = request.app[DASHBOARD].config.dashboard.chain_rpc_url
    if chain and not request.query:
        # The page reads its fields from the query: point it at the configured chain.
        raise web.HTTPSeeOther(f"{pages.VERIFY_PATH}?{urllib.parse.urlencode({'rpc': chain})}")
    return web.Response(
        body=request.app[DASHBOARD].verifier,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _asset(body: bytes, content_type: str) -> web.Response:
    return web.Response(
        body=body, content_type=content_type, charset="utf-8",
        headers={"Cache-Control": "max-age=300"},
    )  # fmt: skip


async def get_css(request: web.Request) -> web.StreamResponse:
    return _asset(request.app[DASHBOARD].css, "text/css")


async def get_preview_js(request: web.Request) -> web.StreamResponse:
    return _asset(request.app[DASHBOARD].preview_js, "text/javascript")


def build_dashboard_app(state: DashboardState) -> web.Application:
    """The sub-application the gateway mounts at ``/dashboard``."""
    app = web.Application(middlewares=[dashboard_middleware])
    app[DASHBOARD] = state

    async def http_ctx(app: web.Application) -> Any:
        d = state.config.dashboard
        state.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=d.requests_inflight_max),
            headers={"Authorization": f"Bearer {state.node_token}"},
            timeout=aiohttp.ClientTimeout(total=d.node_status_timeout_s),
        )
        yield
        await state.http.close()

    app.cleanup_ctx.append(http_ctx)
    app.router.add_get("/", get_root)
    app.router.add_get("/signin", get_signin)
    app.router.add_post("/signin", post_signin)
    app.router.add_post("/signout", post_signout)
    app.router.add_get("/operator/nodes", get_nodes)
    app.router.add_get("/operator/anchors", get_anchors)
    app.router.add_get("/operator/moves", get_moves)
    app.router.add_get("/verify", get_verifier)
    app.router.add_get("/static/dashboard.css", get_css)
    app.router.add_get("/static/policy-preview.js", get_preview_js)
    # The partner module builds on this one's sign-in and helpers: imported here, not above.
    from gateway.dashboard.partner_routes import add_partner_routes

    add_partner_routes(app)
    return app
