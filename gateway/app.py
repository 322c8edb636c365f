"""The gateway's partner API (aiohttp).

Routes (JSON; every error is a JSON problem with a stable ``code``):

* ``POST /v1/records`` ``{"record": {...}}`` with an optional ``Idempotency-Key`` header (made
  and returned when absent) -> 201 ``{"record_id", "idempotency_key", "content_hash",
  "created_at_ms", "shards_durable", "replayed": false}``; a retry of a completed write -> 200
  with the first result and ``"replayed": true``; the same key with another body -> 409.
* ``POST /v1/records/batch`` ``{"records": [{"idempotency_key"?, "record"}, ...]}`` -> 200
  ``{"results": [...]}``, one result (with its own ``status``) per record, in order.
* ``GET /v1/records/{record_id}`` -> 200 ``{"record_id", "record", ...}`` for the owning partner
  only; anyone else gets 404, exactly as for a record that does not exist.
* ``GET /v1/records/{record_id}/receipt`` -> the record's receipt (docs/verifiable-log.md: v1,
  or v2 with the outcome for a ledger operation's record), for the owning partner only; 409
  ``receipt_not_ready`` until an anchor covering it is mined.
* ``GET /v1/log``, ``GET /v1/log/anchors?from=&limit=``, ``GET /v1/log/consistency?from=&to=``
  -> the log head, a chain of anchors, a consistency proof between two anchors: public, so
  anyone can audit that the log only grew (``baas-verify``).
* ``GET /healthz`` (the process is up) and ``GET /readyz`` (at least one node is ready).
* ``GET /v1/openapi.json`` -> the OpenAPI 3.1 document of every route here
  (:mod:`gateway.openapi`), public.
* ``/dashboard/...`` -> the web dashboard (:mod:`gateway.dashboard`), a sub-application with
  its own sessions, limits and error pages; not signed like the partner API.
* ``/v1/ledger/...`` and ``POST /v1/test/faucet``: the ledger's accounts, balances and
  transfers, :mod:`gateway.ledger_routes` (docs/ledger-guide.md); ``/v1/wallets/links``:
  users' wallets linked with their signature, :mod:`gateway.wallet_routes`; ``/v1/bridge/...``:
  point assets, reserves, policies, quotes and swaps, :mod:`gateway.bridge_routes`
  (docs/bridge-guide.md); ``/v1/payment_intents``, ``/v1/payments...``, ``/v1/market/...``:
  merchant QR intents, payments and the Market, :mod:`gateway.payments_routes`
  (docs/payments-guide.md);
  ``/v1/webhook_endpoints...`` and ``/v1/webhook_deliveries...``:
  partners' webhooks, :mod:`gateway.webhook_routes` (docs/webhooks.md).
* ``/v1/admin/partners...`` (operators) and ``GET /v1/audit`` (partners and operators):
  :mod:`gateway.admin_routes`.

Every signed request has a mode, test or live: its API credential's (:mod:`gateway.keyring`).
An operator credential signs the admin and audit routes only.

Every partner request is signed (:mod:`gateway.auth`); bodies are bounded
(``http_body_bytes_max``), and so is the number of requests in flight
(``inflight_requests_max``: past it, 503 with Retry-After), and so is each API credential's
request rate (:mod:`gateway.rate_limit`: past it, 429 ``rate_limited`` with Retry-After). One
partner may have at most ``partner_inflight_records_max`` records in flight (past it, 429 with
Retry-After); a full cluster (every node reports a full queue) or a full gateway queue gives
503 with Retry-After.

Every answer carries ``Baas-Version``: the dated API version it was made under (the caller's
``Baas-Version`` header, else the newest; an unknown one is 400 ``invalid_api_version``).

Every request has a request id (the caller's ``X-Request-Id`` if well-formed, else a new one),
returned in ``X-Request-Id`` and passed to every node it touches, and a deadline
(``request_deadline_s``): past it the caller gets 504 ``deadline_exceeded`` and the nodes drop
the work they have not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from gateway.admin_routes import add_admin_routes, operator_path
from gateway.auth import HEADER_KEY, ReplayCache, SignedRequest, authenticate_principal
from gateway.bridge_routes import add_bridge_routes
from gateway.config import GatewayConfig
from gateway.keyring import Keyring, PartnerKeys
from gateway.ledger_routes import add_ledger_routes
from gateway.log_routes import AUDIT_ROUTES, add_log_routes
from gateway.node_client import NodeClient, ReadItem, WriteItem
from gateway.openapi import (
    API_VERSION,
    API_VERSION_HEADER,
    API_VERSIONS,
    OPENAPI_PATH,
    openapi_document,
)
from gateway.payments_routes import add_payments_routes
from gateway.rate_limit import CredentialRateLimiter
from gateway.record_codec import canonical_record, open_record, sealed_wire
from gateway.request_keys import API_VERSION as API_VERSION_KEY
from gateway.request_keys import DEADLINE, MODE, PARTNER_KEYS, PRINCIPAL, REQUEST_ID
from gateway.wallet_routes import add_wallet_routes
from gateway.webhook_routes import add_webhook_routes
from node.api.problem import parse_json_body, problem_middleware, problem_response
from node.errors import (
    AuthenticationFailed,
    BaasError,
    CorruptEntry,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    OperationFailed,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
)
from node.logs import REQUEST_ID_HEADER, request_id_or_new, request_id_var
from node.metrics import Metrics, StatFamily
from node.records import HASH_BYTES, record_id_for

__all__ = ["GATEWAY", "GatewayState", "build_gateway_app"]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", OPENAPI_PATH})
DASHBOARD_PREFIX = "/dashboard"  # its sub-application bounds and authenticates on its own
# The append-only audit of the log (anchors and consistency between them) is public: anyone
# may check that the log only grew. Bounded and timed like partner calls, not signed.
AUDIT_PATHS = frozenset(AUDIT_ROUTES)


@dataclass(slots=True)
class GatewayState:
    config: GatewayConfig
    keyring: Keyring
    nodes: NodeClient
    replay: ReplayCache
    clock_s: Callable[[], float] = time.time
    # To write the keyring (onboarding through the admin API); None: this gateway only reads it.
    master_key: bytes | None = field(default=None, repr=False)
    # Called after a route wrote the keyring: the webhook deliverer, where this gateway runs
    # one, reconciles its queue with the endpoints at once instead of at its next round.
    keyring_written: Callable[[], None] = field(default=lambda: None, repr=False)
    inflight: int = 0
    partner_inflight: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=lambda: Metrics("baas_gateway"))
    rate_limits: CredentialRateLimiter = field(init=False)
    records_written: Counter = field(init=False)
    records_read: Counter = field(init=False)
    ledger_operations: Counter = field(init=False)
    bridge_quotes: Counter = field(init=False)
    bridge_swaps: Counter = field(init=False)

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.rate_limits = CredentialRateLimiter(
            limits.credential_requests_per_s,
            limits.credential_burst_requests_max,
            limits.credential_buckets_max,
        )
        self.records_written = self.metrics.counter(
            "records_written", "records written, by result status", ("status",)
        )
        self.records_read = self.metrics.counter(
            "records_read", "records read, by result status", ("status",)
        )
        self.ledger_operations = self.metrics.counter(
            "ledger_operations",
            "ledger API operations answered, by kind and status (a refusal is 4xx)",
            ("kind", "status"),
        )
        # Quote-to-swap conversion is bridge_swaps{result="ok"} over bridge_quotes; limit
        # refusals are the swaps whose result is user_window_limit or partner_window_limit.
        self.bridge_quotes = self.metrics.counter("bridge_quotes", "Bridge quotes answered")
        self.bridge_swaps = self.metrics.counter(
            "bridge_swaps", "Bridge swaps answered, by result code", ("result",)
        )
        self.metrics.add_stats(gateway_stat_families(self))

    def keyring_writer_key(self) -> bytes:
        """The master key to write the keyring with; a gateway that only reads it refuses."""
        if self.master_key is None:
            raise OperationFailed("this gateway cannot write its keyring", code="keyring_read_only")
        return self.master_key

    def serve_keyring(self, keyring: Keyring) -> None:
        """Serve a keyring this gateway just wrote now, not at the next reload (unless the
        reloader already serves a newer one)."""
        if keyring.version > self.keyring.version:
            self.keyring = keyring

    @contextlib.contextmanager
    def reserve(self, partner_id: str, records: int) -> Iterator[None]:
        """Count a partner's records in flight; past its share the caller gets 429."""
        held = self.partner_inflight.get(partner_id, 0)
        if held + records > self.config.limits.partner_inflight_records_max:
            raise RateLimited(
                f"{held} records of this partner are already in flight "
                "(partner_inflight_records_max)",
                retry_after_s=self.nodes.retry_after_s(),
            )
        self.partner_inflight[partner_id] = held + records
        try:
            yield
        finally:
            left = self.partner_inflight[partner_id] - records
            if left:
                self.partner_inflight[partner_id] = left
            else:
                del self.partner_inflight[partner_id]


GATEWAY = web.AppKey("gateway_state", GatewayState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")


@web.middleware
async def bound_and_authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[GATEWAY]
    request_id = request_id_or_new(request.headers.get(REQUEST_ID_HEADER))
    request_id_var.set(request_id)
    request[REQUEST_ID] = request_id
    version = request.headers.get(API_VERSION_HEADER, API_VERSION)
    if version not in API_VERSIONS:
        raise InvalidRequest(
            f"unknown API version; known: {', '.join(API_VERSIONS)}",
            code="invalid_api_version",
            param=API_VERSION_HEADER,
        )
    request[API_VERSION_KEY] = version
    if request.path in PUBLIC_PATHS or _is_dashboard(request.path):
        return await handler(request)
    if state.inflight >= state.config.limits.inflight_requests_max:
        raise Overloaded(
            "gateway has too many requests in flight", retry_after_s=state.nodes.retry_after_s()
        )
    state.inflight += 1
    deadline_s = state.config.timeouts.request_deadline_s
    request[DEADLINE] = asyncio.get_running_loop().time() + deadline_s
    try:
        async with asyncio.timeout(deadline_s):
            if request.path in AUDIT_PATHS and request.method == "GET":
                return await handler(request)
            body = await request.read()
            principal = authenticate_principal(
                SignedRequest(request.method, request.path_qs, dict(request.headers), body),
                state.keyring,
                state.replay,
                int(state.clock_s()),
                state.config.limits.signature_window_s,
            )
            request[PRINCIPAL] = principal
            request[MODE] = principal.mode
            if principal.partner is not None:
                request[PARTNER_KEYS] = principal.partner
            elif not operator_path(request.path):
                raise AuthenticationFailed(
                    "an operator credential signs the admin and audit routes only",
                    code="operator_credential",
                )
            wait_s = state.rate_limits.take(request.headers[HEADER_KEY], time.monotonic())
            if wait_s:
                raise RateLimited(
                    "this API credential is over its request rate (credential_requests_per_s)",
                    code="rate_limited",
                    retry_after_s=wait_s,
                )
            return await handler(request)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"no answer within {deadline_s} s (request_deadline_s)") from exc
    finally:
        state.inflight -= 1


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    response.headers[API_VERSION_HEADER] = request.get(API_VERSION_KEY, API_VERSION)


def _uuid4() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` at a fraction of its cost
    (building a ``uuid.UUID`` cost ~10% of the gateway's time on big batches)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _idempotency_key(value: Any) -> str:
    if value is None:
        return _uuid4()
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1..255 printable characters", code="invalid_idempotency_key"
        )
    return value


@dataclass(frozen=True, slots=True)
class _Prepared:
    idempotency_key: str
    record_id: bytes
    wire: dict[str, Any]


def _prepare(state: GatewayState, partner: PartnerKeys, key: str, record: Any) -> _Prepared:
    plaintext = canonical_record(record, state.config.limits.record_json_bytes_max)
    record_id = record_id_for(partner.partner_id, key)
    return _Prepared(key, record_id, sealed_wire(partner, record_id, plaintext))


def _result_json(prepared: _Prepared, result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if not result.get("ok"):
        status = int(result.get("status", 503))
        return status, {
            "status": status,
            "code": result.get("code"),
            "detail": result.get("detail"),
            "record_id": prepared.record_id.hex(),
            "idempotency_key": prepared.idempotency_key,
        }
    status = 200 if result["replayed"] else 201
    return status, {
        "status": status,
        "record_id": prepared.record_id.hex(),
        "idempotency_key": prepared.idempotency_key,
        "content_hash": bytes(result["ch"]).hex(),
        "created_at_ms": int(result["ts"]),
        "shards_durable": int(result["durable"]),
        "replayed": bool(result["replayed"]),
    }


def _write_item(request: web.Request, prepared: _Prepared) -> WriteItem:
    return WriteItem(prepared.wire, request[DEADLINE], request[REQUEST_ID])


async def post_record(request: web.Request) -> web.Response:
    state = request.app[GATEWAY]
    partner = request[PARTNER_KEYS]
    body = parse_json_body(await request.read())
    if not isinstance(body, dict) or set(body) != {"record"}:
        raise InvalidRequest('body must be {"record": {...}}')
    prepared = _prepare(
        state, partner, _idempotency_key(request.headers.get("Idempotency-Key")), body["record"]
    )
    with state.reserve(partner.partner_id, 1):
        (result,) = await state.nodes.write_records([_write_item(request, prepared)])
    status, payload = _result_json(prepared, result)
    state.records_written.labels(str(status)).inc()
    if status >= 400:
        return problem_response(
            status,
            str(payload["code"]),
            str(payload["detail"]),
            headers={"Retry-After": str(state.nodes.retry_after_s())} if status == 503 else None,
        )
    return web.json_response(
        payload, status=status, headers={"Idempotency-Key": prepared.idempotency_key}
    )


async def post_records_batch(request: web.Request) -> web.Response:
    state = request.app[GATEWAY]
    partner = request[PARTNER_KEYS]
    body = parse_json_body(await request.read())
    if (
        not isinstance(body, dict)
        or set(body) != {"records"}
        or not isinstance(body["records"], list)
    ):
        raise InvalidRequest('body must be {"records": [{"idempotency_key"?, "record"}, ...]}')
    items = body["records"]
    if not items:
        raise InvalidRequest("records is empty")
    if len(items) > state.config.limits.records_per_batch_max:
        raise PayloadTooLarge(
            f"at most {state.config.limits.records_per_batch_max} records per batch"
        )
    prepared: list[_Prepared] = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not set(item) <= {"idempotency_key", "record"}
            or "record" not in item
        ):
            raise InvalidRequest('each item must be {"idempotency_key"?, "record"}')
        prepared.append(
            _prepare(state, partner, _idempotency_key(item.get("idempotency_key")), item["record"])
        )
    if len({p.record_id for p in prepared}) != len(prepared):
        raise InvalidRequest("a batch repeats an idempotency key", code="duplicate_in_batch")
    with state.reserve(partner.partner_id, len(prepared)):
        results = await state.nodes.write_records([_write_item(request, p) for p in prepared])
    payloads = [_result_json(p, r)[1] for p, r in zip(prepared, results, strict=True)]
    for payload in payloads:
        state.records_written.labels(str(payload["status"])).inc()
    return web.json_response({"results": payloads})


async def get_record(request: web.Request) -> web.Response:
    state = request.app[GATEWAY]
    partner = request[PARTNER_KEYS]
    try:
        record_id = bytes.fromhex(request.match_info["record_id"])
    except ValueError as exc:
        raise InvalidRequest(
            "record id must be 64 hex characters", code="invalid_record_id"
        ) from exc
    if len(record_id) != HASH_BYTES:
        raise InvalidRequest("record id must be 64 hex characters", code="invalid_record_id")
    with state.reserve(partner.partner_id, 1):
        reply = await state.nodes.read_record(
            ReadItem(record_id, request[DEADLINE], request[REQUEST_ID])
        )
    meta = reply["meta"]
    if meta.get("pid") != partner.partner_id:
        raise NotFound("no record with this id", code="record_not_found")  # never reveal existence
    try:
        opened = open_record(state.keyring, record_id, bytes(reply["blob"]))
    except BaasError as exc:
        raise CorruptEntry(f"record could not be opened: {exc.code}") from exc
    if opened.owner != partner.partner_id:
        raise NotFound("no record with this id", code="record_not_found")
    state.records_read.labels("200").inc()
    salt = opened.plaintext_salt
    return web.json_response(
        {
            "record_id": record_id.hex(),
            "record": opened.record,
            # With the record, the owner can check its Merkle leaf: baas-verify --salt.
            "plaintext_salt": salt.hex() if salt is not None else None,
            "content_hash": bytes(meta["ch"]).hex(),
            "created_at_ms": int(meta["ts"]),
            "k": int(meta["k"]),
            "n": int(meta["n"]),
        }
    )


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def get_ready(request: web.Request) -> web.Response:
    healthy = request.app[GATEWAY].nodes.healthy_nodes()
    if not healthy:
        return problem_response(503, "not_ready", "no node is ready", headers={"Retry-After": "1"})
    return web.json_response({"status": "ready", "healthy_nodes": healthy})


def gateway_stat_families(state: GatewayState) -> list[StatFamily]:
    nodes = state.nodes

    def by_op(field_name: str) -> Callable[[], dict[str, float]]:
        return lambda: {op: s[field_name] for op, s in nodes.batcher_stats().items()}

    return [
        StatFamily("http_inflight_requests", "partner requests in flight", lambda: state.inflight),
        StatFamily(
            "partner_inflight_records",
            "records in flight, all partners",
            lambda: sum(state.partner_inflight.values()),
        ),
        StatFamily(
            "queue_records", "records waiting for a node call", by_op("pending"), label="op"
        ),
        StatFamily("node_call_records", "records in node calls", by_op("inflight"), label="op"),
        StatFamily("node_calls", "node calls made", lambda: nodes.node_calls, counter=True),
        StatFamily(
            "node_call_failures",
            "node calls failed over",
            lambda: nodes.node_call_failures,
            counter=True,
        ),
        StatFamily(
            "refused_overloaded",
            "records refused: queue full",
            by_op("refused_overloaded"),
            counter=True,
            label="op",
        ),
        StatFamily(
            "node_healthy",
            "1 if the node answers its readiness probe",
            lambda: {name: float(s.healthy) for name, s in nodes.node_state.items()},
            label="node",
        ),
        StatFamily(
            "node_queue_fill_percent",
            "queue fill the node last reported",
            lambda: {name: s.fill_percent for name, s in nodes.node_state.items()},
            label="node",
        ),
        StatFamily(
            "rate_limited_requests",
            "signed requests refused: their API credential was over its rate",
            lambda: state.rate_limits.refused,
            counter=True,
        ),
        StatFamily(
            "retry_after_seconds",
            "the Retry-After an overloaded caller gets now",
            nodes.retry_after_s,
        ),
    ]


def build_gateway_app(
    state: GatewayState, dashboard: web.Application | None = None
) -> web.Application:
    app = web.Application(
        client_max_size=state.config.limits.http_body_bytes_max,
        middlewares=[state.metrics.middleware, problem_middleware, bound_and_authenticate],
    )
    app[GATEWAY] = state
    app.router.add_get("/metrics", state.metrics.handle)
    app.on_response_prepare.append(add_request_id_header)

    async def nodes_ctx(app: web.Application) -> Any:
        await state.nodes.start()
        yield
        await state.nodes.stop()

    app.cleanup_ctx.append(nodes_ctx)
    app.router.add_post("/v1/records", post_record)
    app.router.add_post("/v1/records/batch", post_records_batch)
    app.router.add_get("/v1/records/{record_id}", get_record)
    add_log_routes(app, state.nodes)
    add_admin_routes(app)
    add_ledger_routes(app)
    add_wallet_routes(app)
    add_bridge_routes(app)
    add_payments_routes(app)
    add_webhook_routes(app, state)  # after nodes_ctx: the deliverer reads through the nodes
    app.router.add_get("/healthz", get_health)
    app.router.add_get(OPENAPI_PATH, get_openapi)
    app.router.add_get("/readyz", get_ready)
    if dashboard is not None:
        app.add_subapp(DASHBOARD_PREFIX, dashboard)
    return app
