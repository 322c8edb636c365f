"""The gateway's verifiable-log routes: receipts for owners, the public append-only audit.

Documents come from the nodes (``/internal/v1/log/...``, :mod:`node.api.log_routes`); a node
that lags passes the call on to the next. Each is parsed with its strict format
(:mod:`node.merkle.receipt`) before it is handed out, so a partner never gets a malformed one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.node_client import NodeClient
from gateway.request_keys import DEADLINE, PARTNER_KEYS, REQUEST_ID
from node.errors import CorruptEntry, InvalidRequest, NotFound, UnsupportedFormat
from node.merkle.leaf import LeafData
from node.merkle.receipt import AnchorChainDoc, ConsistencyDoc, Receipt
from node.records import HASH_BYTES

__all__ = ["AUDIT_ROUTES", "add_log_routes"]

NODE_LOG_PATH = "/internal/v1/log"
ANCHORS_PER_REQUEST_MAX = 1000
AUDIT_ROUTES = ("/v1/log", "/v1/log/anchors", "/v1/log/consistency")
_JSON = "application/json"
NODES = web.AppKey("log_nodes", NodeClient)


def _batch_param(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isdigit() or len(raw) > 19:
        raise InvalidRequest(f"{name} must be a non-negative integer", code="invalid_query")
    return int(raw)


async def _document(request: web.Request, path: str) -> dict[str, Any]:
    return await request.app[NODES].log_document(
        path, deadline=request[DEADLINE], request_id=request[REQUEST_ID]
    )


def _strict(parse: Callable[[str], Any], document: dict[str, Any]) -> Any:
    try:
        return parse(json.dumps(document))
    except UnsupportedFormat as exc:
        raise CorruptEntry(f"a node served a malformed log document: {exc.detail}") from exc


async def get_receipt(request: web.Request) -> web.Response:
    partner = request[PARTNER_KEYS]
    try:
        record_id = bytes.fromhex(request.match_info["record_id"])
    except ValueError as exc:
        raise InvalidRequest("record id must be hex", code="invalid_record_id") from exc
    if len(record_id) != HASH_BYTES:
        raise InvalidRequest("record id must be 64 hex characters", code="invalid_record_id")
    try:
        document = await _document(request, f"{NODE_LOG_PATH}/receipts/{record_id.hex()}")
    except NotFound as exc:
        raise NotFound("no record with this id", code="record_not_found") from exc
    receipt: Receipt = _strict(Receipt.from_json, document)
    owner = LeafData.decode(receipt.leaf_data).owner
    if owner != partner.partner_id or receipt.record_id != record_id:
        raise NotFound("no record with this id", code="record_not_found")  # never reveal it
    return web.Response(text=receipt.to_json(), content_type=_JSON)


async def get_log_head(request: web.Request) -> web.Response:
    return web.json_response(await _document(request, NODE_LOG_PATH))


async def get_anchors(request: web.Request) -> web.Response:
    first = _batch_param(request, "from", 1)
    limit = _batch_param(request, "limit", ANCHORS_PER_REQUEST_MAX)
    if not 1 <= limit <= ANCHORS_PER_REQUEST_MAX:
        raise InvalidRequest(f"limit must be 1..{ANCHORS_PER_REQUEST_MAX}", code="invalid_query")
    document = await _document(request, f"{NODE_LOG_PATH}/anchors?from={first}&limit={limit}")
    chain: AnchorChainDoc = _strict(AnchorChainDoc.from_json, document)
    return web.Response(text=chain.to_json(), content_type=_JSON)


async def get_consistency(request: web.Request) -> web.Response:
    old, new = _batch_param(request, "from"), _batch_param(request, "to")
    document = await _document(request, f"{NODE_LOG_PATH}/consistency?from={old}&to={new}")
    doc: ConsistencyDoc = _strict(ConsistencyDoc.from_json, document)
    return web.Response(text=doc.to_json(), content_type=_JSON)


def add_log_routes(app: web.Application, nodes: NodeClient) -> None:
    app[NODES] = nodes
    app.router.add_get("/v1/records/{record_id}/receipt", get_receipt)
    app.router.add_get("/v1/log", get_log_head)
    app.router.add_get("/v1/log/anchors", get_anchors)
    app.router.add_get("/v1/log/consistency", get_consistency)
