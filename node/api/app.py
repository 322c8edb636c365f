"""The node's HTTP API (aiohttp), used by gateways. Authenticated by a bearer token.

Routes (bodies are msgpack, ``application/msgpack``, because they carry binary blobs):

* ``POST /internal/v1/records`` ``{"records": [{"rid", "blob", "pid", "fp"[, "pc", "ev",
  "ap", "pt", "md", "ur", "br", "pm"]}, ...]}`` -> ``{"results": [{"ok": true, "ch", "ts",
  "durable", "replayed"[, "outcome"]} | {"ok": false, "code", "status", "detail"}, ...]}``:
  ``ev`` are a record's ledger events (wire form, business/ledger/wire.py; refused until log
  feature 6 is enabled), ``ap`` its users' approvals, ``pt``/``md``/``ur`` the proposer the gateway
  authenticated (partner id, mode, linked user references; node/consensus/ledger_ops.py),
  ``br`` instead of ``ev`` a Bridge request (business/bridge/wire.py, its op id the record id;
  refused until log feature 8: 503 ``bridge_not_enabled``), ``pm`` likewise a payments or
  Market request (business/payments/wire.py; until log feature 9: 503
  ``payments_not_enabled``), and
  ``outcome`` what the ledger did (the first
  outcome, for a retry too: ``{"log_time_ms", "events": [{"id", "result", "amount", ...}]}``,
  ids and amounts as strings of digits)
* ``GET /internal/v1/records/{record id hex}`` -> ``{"meta": shard meta, "blob": bytes}``
* ``GET /internal/v1/records/{record id hex}/local`` -> JSON: this node's own shards of it
* ``GET /internal/v1/status`` -> JSON: peer id, peers, shard and hint counts
* ``GET /internal/v1/health`` and ``/internal/v1/ready`` (no token; no details)
* ``GET|POST /internal/v1/members``, ``DELETE .../{peer}``, ``POST .../{peer}/rejoin``: the
  storage membership (node/membership.py)
* ``GET /internal/v1/incarnation/{peer}`` -> JSON: the incarnation the committed membership
  records for a peer (node/incarnation.py)
* ``GET /internal/v1/ledger/...``: ledger accounts, transfers, operation outcomes and the
  ledger state digest (node/api/ledger_routes.py)
* ``GET /internal/v1/payments/...``: payments, a merchant's payments, orders, listings search,
  the webhook outbox and the payments state digest (node/api/payments_routes.py)

Every request is bounded in size (``http_body_bytes_max``) and in number in flight
(``http_inflight_requests_max``: past it, 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from aiohttp import web

from node.anchoring.forwarding import ANCHORING_PROPOSE_PATH, decode_forwarded, outcome_body
from node.api.bridge_routes import add_bridge_routes
from node.api.ledger_routes import LedgerReads, add_ledger_routes
from node.api.log_routes import add_log_routes, record_id_param
from node.api.node_metrics import node_stat_families
from node.api.payments_routes import add_payments_routes
from node.api.problem import parse_json_body, problem_middleware, problem_response
from node.api.wire import (
    DEADLINE_HEADER,
    INCARNATION_PATH,
    MEMBERS_PATH,
    MSGPACK,
    QUEUE_DEPTH_HEADER,
    QUEUE_MAX_HEADER,
)
from node.config import NodeLimits
from node.consensus.ledger_ops import Operation, outcome_reader
from node.consensus.members import ACTIVE, Member
from node.consensus.record_index import PUT_BATCH_RECORDS_MAX
from node.consensus.state_machine import AppEntry, Applied, StateView
from node.coordinator import Coordinator, ReadResult, WriteRequest, WriteResult
from node.errors import (
    AuthenticationFailed,
    BaasError,
    ConfigError,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    NotLeader,
    Overloaded,
    UnsupportedFormat,
)
from node.logs import REQUEST_ID_HEADER, request_id_or_new, request_id_var
from node.membership import MembershipManager, validate_member_addresses
from node.metrics import Metrics
from node.records import HASH_BYTES
from node.replication.forward_auth import verify_forwarder
from node.replication.index_client import INDEX_PATH, RecordIndexClient
from node.storage.hints import HintStore
from node.storage.shard_store import ShardStore

__all__ = ["STATE", "NodeApiState", "build_node_app"]

log = logging.getLogger("baas.node.api")
SLOW_REQUEST_S = 1.0
PUBLIC_PATHS = frozenset({"/internal/v1/health", "/internal/v1/ready", "/metrics"})


@dataclass(slots=True)
class NodeApiState:
    coordinator: Coordinator
    store: ShardStore
    hints: HintStore
    limits: NodeLimits
    api_token: bytes
    peer_id: str
    connected_peers: Callable[[], frozenset[str]]
    ready: Callable[[], bool]
    p2p_stats: Callable[[], dict[str, int]]
    commit_stats: Callable[[], dict[str, int]]
    request_deadline_s_max: float
    metrics: Metrics
    raft_status: Callable[[], dict[str, Any]]
    index: RecordIndexClient
    membership: MembershipManager
    mover_stats: Callable[[], dict[str, int]]
    repair_stats: Callable[[], dict[str, Any]]
    gc_stats: Callable[[], dict[str, int]]
    scrub_stats: Callable[[], dict[str, Any]]
    log_view: Callable[[], StateView]  # the applied replicated state (Merkle log, anchors)
    propose_entry: Callable[[AppEntry], Awaitable[Applied]]  # on this node's own log
    anchoring_status: Callable[[], dict[str, Any]]
    ledger_reads: LedgerReads | None = None  # the ledger read routes (node/api/ledger_routes.py)
    deposits_status: Callable[[], dict[str, Any]] | None = None  # node/chain/deposit_service.py
    inflight: int = 0


STATE = web.AppKey("node_api_state", NodeApiState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_and_bound(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path not in PUBLIC_PATHS:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").encode()
        if not header.startswith("Bearer ") or not hmac.compare_digest(token, state.api_token):
            raise AuthenticationFailed("missing or wrong node API token")
    if state.inflight >= state.limits.http_inflight_requests_max:
        raise Overloaded("node has too many requests in flight")
    request_id_var.set(request_id_or_new(request.headers.get(REQUEST_ID_HEADER)))
    budget_s = _deadline_budget_s(request, state.request_deadline_s_max)
    state.inflight += 1
    started = time.perf_counter()
    try:
        async with asyncio.timeout(budget_s):
            return await handler(request)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"gave up after {budget_s:.3f} s (the caller's deadline)") from exc
    finally:
        state.inflight -= 1
        elapsed_s = time.perf_counter() - started
        if elapsed_s > SLOW_REQUEST_S:
            log.info("slow request %s %s took %.3f s", request.method, request.path, elapsed_s)


def _deadline_budget_s(request: web.Request, budget_max_s: float) -> float:
    """The caller's remaining budget (``X-Baas-Deadline-Ms``, relative), capped by our own."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return budget_max_s
    try:
        budget_ms = int(raw)
    except ValueError as exc:
        raise InvalidRequest(
            f"{DEADLINE_HEADER} must be an integer", code="invalid_deadline"
        ) from exc
    if budget_ms <= 0:
        raise DeadlineExceeded("the request arrived after its deadline")
    return min(budget_ms / 1000, budget_max_s)


async def add_queue_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer tells the gateway how full this node is, so it can steer and back off."""
    state = request.app[STATE]
    response.headers[QUEUE_DEPTH_HEADER] = str(state.coordinator.records_in_progress)
    response.headers[QUEUE_MAX_HEADER] = str(state.coordinator.queue_max)
    request_id = request_id_var.get()
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id


def _msgpack_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=msgpack.packb(body, use_bin_type=True), status=status, content_type=MSGPACK
    )


async def _read_msgpack(request: web.Request) -> Any:
    if request.content_type != MSGPACK:
        raise InvalidRequest("body must be application/msgpack", code="unsupported_media_type")
    raw = await request.read()
    try:
        return msgpack.unpackb(raw, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise InvalidRequest("body is not valid msgpack") from exc


def _request_ids(body: dict[str, Any], count: int) -> list[str]:
    """Per-record request ids sent by the gateway (``reqs``), else this call's own id."""
    tags = body.get("reqs")
    if isinstance(tags, list) and len(tags) == count:
        return [request_id_or_new(t if isinstance(t, str) else None) for t in tags]
    return [request_id_var.get() or ""] * count


def _bytes_field(raw: dict[str, Any], name: str) -> bytes:
    # bytes(value) would take an integer as a size and build a zero-filled buffer of it (a
    # caller's 2**62 was a MemoryError, 10**9 a gigabyte): only msgpack bin is taken.
    value = raw.get(name)
    if not isinstance(value, bytes):
        raise InvalidRequest(f"malformed record: {name} must be bytes")
    return value


def _write_request(raw: Any, request_id: str) -> WriteRequest:
    if not isinstance(raw, dict):
        raise InvalidRequest("each record must be a map")
    if not isinstance(raw.get("pid"), str):
        raise InvalidRequest("malformed record: pid must be a string")
    return WriteRequest(
        record_id=_bytes_field(raw, "rid"),
        blob=_bytes_field(raw, "blob"),
        partner_id=raw["pid"],
        body_fingerprint=_bytes_field(raw, "fp"),
        request_id=request_id,
        plaintext_commitment=_bytes_field(raw, "pc") if raw.get("pc") is not None else None,
        events=_bytes_field(raw, "ev") if raw.get("ev") is not None else None,
        approvals=_bytes_field(raw, "ap") if raw.get("ap") is not None else None,
        proposer=_bytes_field(raw, "pt") if raw.get("pt") is not None else None,
        mode=_int_or_none(raw.get("md")),
        user_refs=_user_refs(raw.get("ur")),
        bridge=_bytes_field(raw, "br") if raw.get("br") is not None else None,
        payments=_bytes_field(raw, "pm") if raw.get("pm") is not None else None,
    )


def _user_refs(value: Any) -> tuple[bytes, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(r, bytes) for r in value):
        raise InvalidRequest("malformed record: ur must be a list of bytes", param="ur")
    return tuple(value)


def _int_or_none(value: Any) -> int | None:
    if value is not None and type(value) is not int:
        raise InvalidRequest("md must be an integer", param="md")
    return value


def _error_body(error: BaasError) -> dict[str, Any]:
    return {"code": error.code, "status": error.http_status, "detail": error.detail}


def _result_body(result: WriteResult | BaasError) -> dict[str, Any]:
    if isinstance(result, BaasError):
        return {"ok": False, **_error_body(result)}
    return {
        "ok": True,
        "ch": result.content_hash,
        "ts": result.created_at_ms,
        "durable": result.shards_durable,
        "replayed": result.replayed,
        **({"outcome": result.outcome} if result.outcome is not None else {}),
    }


async def post_records(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.membership.require_serving()
    body = await _read_msgpack(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("records"), list)
        or not body["records"]
    ):
        raise InvalidRequest("body must be {records: [...]} with at least one record")
    tags = _request_ids(body, len(body["records"]))
    requests = [_write_request(r, tag) for r, tag in zip(body["records"], tags, strict=True)]
    results = await state.coordinator.write_records(requests)
    return _msgpack_response({"results": [_result_body(r) for r in results]})


async def get_record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.membership.require_serving()
    result = await state.coordinator.read_record(record_id_param(request))
    return _msgpack_response(
        {"meta": result.meta.to_wire(), "blob": result.blob, "corrupt": result.corrupt_shards_seen}
    )


def _read_body(result: ReadResult | BaasError) -> dict[str, Any]:
    if isinstance(result, BaasError):
        return {"ok": False, **_error_body(result)}
    return {
        "ok": True,
        "meta": result.meta.to_wire(),
        "blob": result.blob,
        "corrupt": result.corrupt_shards_seen,
    }


async def post_records_read(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.membership.require_serving()
    body = await _read_msgpack(request)
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list) or not body["ids"]:
        raise InvalidRequest("body must be {ids: [...]} with at least one record id")
    ids = body["ids"]
    if not all(isinstance(rid, bytes) and len(rid) == HASH_BYTES for rid in ids):
        raise InvalidRequest("every record id must be 32 bytes", code="invalid_record_id")
    results = await state.coordinator.read_records(ids, _request_ids(body, len(ids)))
    return _msgpack_response({"results": [_read_body(r) for r in results]})


async def post_index(request: web.Request) -> web.Response:
    """Leader only: append record index entries, answer once applied (others: 503 not_leader)."""
    state = request.app[STATE]
    body = await _read_msgpack(request)
    raw = body.get("proposals") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not 0 < len(raw) <= PUT_BATCH_RECORDS_MAX:
        # A forward carries one gatherer call: at most raft.index_batch_records_max records.
        raise InvalidRequest(f"body must be {{proposals: [...]}} with 1..{PUT_BATCH_RECORDS_MAX}")
    try:
        proposals = [Operation.from_body(p) for p in raw if isinstance(p, dict)]
    except UnsupportedFormat as exc:
        raise InvalidRequest(f"malformed index proposal: {exc.detail}") from exc
    if len(proposals) != len(raw):
        raise InvalidRequest("every proposal must be a map")
    if any(op.deposit is not None for op in proposals):
        # Credits the vault's deposits: only a member node's watcher makes one, and the node
        # API token is the gateways' too (node/replication/forward_auth.py).
        verify_forwarder(
            request.headers,
            INDEX_PATH,
            await request.read(),
            int(time.time() * 1000),
            state.membership.member_ids(),
        )
    if state.raft_status()["role"] != "leader":
        raise NotLeader("this node is not the leader")
    results = await state.index.propose_local(proposals)
    return _msgpack_response({"results": results})


async def post_anchoring_propose(request: web.Request) -> web.Response:
    """Leader only: append an anchoring entry forwarded by a key holder, answer once applied."""
    state = request.app[STATE]
    entry = decode_forwarded(await _read_msgpack(request))
    if state.raft_status()["role"] != "leader":
        raise NotLeader("this node is not the leader")
    return _msgpack_response(outcome_body(await state.propose_entry(entry)))


async def get_members(request: web.Request) -> web.Response:
    """The committed storage membership (epoch, addresses, state) and Raft's voters/learners."""
    return web.json_response(request.app[STATE].membership.describe())


async def post_member(request: web.Request) -> web.Response:
    """Add a member, or change its addresses or state (through the leader)."""
    state = request.app[STATE]
    body = parse_json_body(await request.read())
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    try:
        member = Member.from_body(
            {
                "peer": body.get("peer_id"),
                "name": body.get("name"),
                "p2p": body.get("p2p_addr"),
                "http": body.get("http_addr"),
                "state": body.get("state", ACTIVE),
                "incarnation": body.get("incarnation", ""),
            }
        )
        validate_member_addresses(member)
    except (UnsupportedFormat, ConfigError) as exc:
        raise InvalidRequest(f"malformed member: {exc.detail}", code="invalid_member") from exc
    return web.json_response(await state.membership.submit(member))


async def delete_member(request: web.Request) -> web.Response:
    """Remove a member from placement; the leader then removes it from Raft."""
    state = request.app[STATE]
    member = state.membership.removal_of(request.match_info["peer_id"])
    return web.json_response(await state.membership.submit(member))


async def post_member_rejoin(request: web.Request) -> web.Response:
    """Bring back a member whose disk was lost: out of Raft, then in again as a new member."""
    state = request.app[STATE]
    member = state.membership.rejoin_of(request.match_info["peer_id"])
    return web.json_response(await state.membership.submit(member))


async def get_incarnation(request: web.Request) -> web.Response:
    """What the committed membership records for a peer (asked by a node starting fresh)."""
    state = request.app[STATE]
    return web.json_response(state.membership.incarnation_view(request.match_info["peer_id"]))


async def get_index_entry(request: web.Request) -> web.Response:
    """This node's applied index entry for a record (no consensus round: may lag)."""
    state = request.app[STATE]
    entry = state.index.lookup(record_id_param(request))
    if entry is None:
        raise NotFound("no index entry on this node", code="record_not_found")
    return web.json_response(
        {
            "index": entry.index,
            "term": entry.term,
            "content_hash": entry.content_hash.hex(),
            "owner": entry.owner,
            "shard_nodes": list(entry.shard_nodes),
            "created_at_ms": entry.leader_time_ms,
            "membership_epoch": entry.membership_epoch,
            "moved": [
                {"shard": p.shard, "from": p.node, "at_index": p.moved_at} for p in entry.previous
            ],
        }
    )


async def get_local_shards(request: web.Request) -> web.Response:
    state = request.app[STATE]
    record_id = record_id_param(request)
    shards, corrupt = state.store.get(record_id)
    return web.json_response(
        {
            "pending_expiry": state.store.pending(record_id),
            "shards": [
                {
                    "index": s.meta.index,
                    "content_hash": s.meta.content_hash.hex(),
                    "bytes": len(s.data),
                }
                for s in shards
            ],
            "corrupt": corrupt,
        }
    )


async def get_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "peer_id": state.peer_id,
            "connected_peers": sorted(state.connected_peers()),
            "shards": state.store.count(),
            "shard_bytes": state.store.shard_bytes,
            "hints": state.hints.count,
            "hints_corrupt": state.hints.corrupt,
            "corrupt_entries_seen": state.store.corrupt_entries_seen,
            "inflight_requests": state.inflight,
            "queue_depth": state.coordinator.records_in_progress,
            "queue_max": state.coordinator.queue_max,
            "coalescing": state.coordinator.batcher_stats(),
            "index_gathering": state.index.gatherer_stats(),
            "commit": state.commit_stats(),
            "p2p": state.p2p_stats(),
            "python_allocated_blocks": sys.getallocatedblocks(),
            "raft": state.raft_status(),
            "moves": state.mover_stats(),
            "repair": state.repair_stats(),
            "gc": state.gc_stats(),
            "scrub": state.scrub_stats(),
            "anchoring": state.anchoring_status(),
            "deposits": None if state.deposits_status is None else state.deposits_status(),
        }
    )


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def get_ready(request: web.Request) -> web.Response:
    if not request.app[STATE].ready():
        return problem_response(
            503, "not_ready", "node is starting or stopping", headers={"Retry-After": "1"}
        )
    return web.json_response({"status": "ready"})


def build_node_app(state: NodeApiState) -> web.Application:
    app = web.Application(
        client_max_size=state.limits.http_body_bytes_max,
        middlewares=[state.metrics.middleware, problem_middleware, auth_and_bound],
    )
    app[STATE] = state
    state.metrics.add_stats(node_stat_families(state))
    app.on_response_prepare.append(add_queue_headers)
    app.router.add_get("/metrics", state.metrics.handle)
    app.router.add_post("/internal/v1/records", post_records)
    app.router.add_post("/internal/v1/records/read", post_records_read)
    app.router.add_post(INDEX_PATH, post_index)
    app.router.add_post(ANCHORING_PROPOSE_PATH, post_anchoring_propose)
    app.router.add_get(INDEX_PATH + "/{record_id}", get_index_entry)
    app.router.add_get(MEMBERS_PATH, get_members)
    app.router.add_post(MEMBERS_PATH, post_member)
    app.router.add_delete(MEMBERS_PATH + "/{peer_id}", delete_member)
    app.router.add_post(MEMBERS_PATH + "/{peer_id}/rejoin", post_member_rejoin)
    app.router.add_get(INCARNATION_PATH + "/{peer_id}", get_incarnation)
    app.router.add_get("/internal/v1/records/{record_id}", get_record)
    app.router.add_get("/internal/v1/records/{record_id}/local", get_local_shards)
    app.router.add_get("/internal/v1/status", get_status)
    app.router.add_get("/internal/v1/health", get_health)
    app.router.add_get("/internal/v1/ready", get_ready)
    add_log_routes(app, state.log_view, outcomes=outcome_reader)
    if state.ledger_reads is not None:
        add_ledger_routes(app, state.ledger_reads)
        add_bridge_routes(app)
        add_payments_routes(app)
    return app
