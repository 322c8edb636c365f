"""The node's HTTP API (aiohttp), used by gateways. Authenticated by a bearer token.

Routes (bodies are msgpack, ``application/msgpack``, because they carry binary blobs):

* ``POST /internal/v1/records`` ``{"records": [{"rid", "blob", "pid", "fp"}, ...]}`` ->
  ``{"results": [{"ok": true, "ch", "ts", "durable", "replayed"}
  | {"ok": false, "code", "status", "detail"}, ...]}``
* ``GET /internal/v1/records/{record id hex}`` -> ``{"meta": shard meta, "blob": bytes}``
* ``GET /internal/v1/records/{record id hex}/local`` -> JSON: this node's own shards of it
* ``GET /internal/v1/status`` -> JSON: peer id, peers, shard and hint counts
* ``GET /internal/v1/health`` and ``/internal/v1/ready`` (no token; no details)

Every request is bounded in size (``http_body_bytes_max``) and in number in flight
(``http_inflight_requests_max``: past it, 503 with Retry-After).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from aiohttp import web

from node.api.problem import problem_middleware, problem_response
from node.config import NodeLimits
from node.coordinator import Coordinator, WriteRequest, WriteResult
from node.errors import (
    AuthenticationFailed,
    BaasError,
    InvalidRequest,
    Overloaded,
)
from node.records import HASH_BYTES
from node.storage.hints import HintStore
from node.storage.shard_store import ShardStore

__all__ = ["STATE", "NodeApiState", "build_node_app"]

MSGPACK = "application/msgpack"
PUBLIC_PATHS = frozenset({"/internal/v1/health", "/internal/v1/ready"})


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
    state.inflight += 1
    try:
        return await handler(request)
    finally:
        state.inflight -= 1


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


def _record_id_param(request: web.Request) -> bytes:
    try:
        record_id = bytes.fromhex(request.match_info["record_id"])
    except ValueError as exc:
        raise InvalidRequest("record id must be hex", code="invalid_record_id") from exc
    if len(record_id) != HASH_BYTES:
        raise InvalidRequest("record id must be 64 hex characters", code="invalid_record_id")
    return record_id


def _write_request(raw: Any) -> WriteRequest:
    if not isinstance(raw, dict):
        raise InvalidRequest("each record must be a map")
    try:
        return WriteRequest(
            record_id=bytes(raw["rid"]),
            blob=bytes(raw["blob"]),
            partner_id=str(raw["pid"]),
            body_fingerprint=bytes(raw["fp"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed record: {exc}") from exc


def _result_body(result: WriteResult | BaasError) -> dict[str, Any]:
    if isinstance(result, BaasError):
        return {
            "ok": False,
            "code": result.code,
            "status": result.http_status,
            "detail": result.detail,
        }
    return {
        "ok": True,
        "ch": result.content_hash,
        "ts": result.created_at_ms,
        "durable": result.shards_durable,
        "replayed": result.replayed,
    }


async def post_records(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _read_msgpack(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("records"), list)
        or not body["records"]
    ):
        raise InvalidRequest("body must be {records: [...]} with at least one record")
    requests = [_write_request(r) for r in body["records"]]
    results = await state.coordinator.write_records(requests)
    return _msgpack_response({"results": [_result_body(r) for r in results]})


async def get_record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    result = await state.coordinator.read_record(_record_id_param(request))
    return _msgpack_response(
        {"meta": result.meta.to_wire(), "blob": result.blob, "corrupt": result.corrupt_shards_seen}
    )


async def get_local_shards(request: web.Request) -> web.Response:
    state = request.app[STATE]
    shards, corrupt = state.store.get(_record_id_param(request))
    return web.json_response(
        {
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
            "hints": state.hints.count,
            "corrupt_entries_seen": state.store.corrupt_entries_seen,
            "inflight_requests": state.inflight,
            "queue_depth": state.coordinator.records_in_progress,
            "queue_max": state.coordinator.queue_max,
            "coalescing": state.coordinator.batcher_stats(),
            "commit": state.commit_stats(),
            "p2p": state.p2p_stats(),
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
        middlewares=[problem_middleware, auth_and_bound],
    )
    app[STATE] = state
    app.router.add_post("/internal/v1/records", post_records)
    app.router.add_get("/internal/v1/records/{record_id}", get_record)
    app.router.add_get("/internal/v1/records/{record_id}/local", get_local_shards)
    app.router.add_get("/internal/v1/status", get_status)
    app.router.add_get("/internal/v1/health", get_health)
    app.router.add_get("/internal/v1/ready", get_ready)
    return app
