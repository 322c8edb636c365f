"""The node's verifiable-log API: the Merkle log's head, receipts and anchor documents.

Every node answers from its own applied state (no consensus round): a lagging node may not
know a record or an anchor yet (404 / 409, and the gateway asks another node). Documents are
the JSON formats of docs/verifiable-log.md, built by :mod:`node.anchoring.receipts`.

* ``GET /internal/v1/log`` -> ``{"size", "root", "anchored_through", "final_through"}``
* ``GET /internal/v1/log/receipts/{record_id}`` -> the record's receipt: v1, or v2 for a ledger
  operation's record, its outcome read through the lookup the ledger gives
  :func:`add_log_routes` (``outcomes``: a state view -> record id -> encoded outcome)
* ``GET /internal/v1/log/consistency?from=A&to=B`` -> consistency document between batches
* ``GET /internal/v1/log/anchors?from=A&limit=L`` -> anchor chain document
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from node.anchoring.receipts import OutcomeLookup, anchor_chain_doc, consistency_doc, receipt_for
from node.anchoring.state import progress_of
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest
from node.merkle.log import MerkleReader
from node.records import HASH_BYTES

__all__ = ["LOG_PATH", "add_log_routes", "record_id_param"]

LOG_PATH = "/internal/v1/log"
ANCHORS_PER_REQUEST_MAX = 1000
ViewFactory = Callable[[], StateView]
LOG_VIEW: web.AppKey[ViewFactory] = web.AppKey("log_view")
OutcomesOf = Callable[[StateView], OutcomeLookup]
LOG_OUTCOMES: web.AppKey[OutcomesOf | None] = web.AppKey("log_outcomes")

_JSON = "application/json"


def _int_param(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(f"query parameter {name} is required", code="invalid_query")
        return default
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidRequest(f"{name} must be a non-negative integer", code="invalid_query")
    return int(raw)


def record_id_param(request: web.Request) -> bytes:
    """The ``{record_id}`` of a route: 64 hex characters (a typed 400 otherwise)."""
    raw = request.match_info["record_id"]
    try:
        record_id = bytes.fromhex(raw)
    except ValueError as exc:
        raise InvalidRequest("record id must be hex", code="invalid_record_id") from exc
    if len(record_id) != HASH_BYTES:
        raise InvalidRequest("record id must be 64 hex characters", code="invalid_record_id")
    return record_id


async def get_log_head(request: web.Request) -> web.Response:
    view = request.app[LOG_VIEW]()
    reader = MerkleReader(view)
    progress = progress_of(view)
    return web.json_response(
        {
            "size": reader.size,
            "root": reader.root().hex(),
            "anchored_through": progress.included_through,
            "final_through": progress.final_through,
        }
    )


async def get_receipt(request: web.Request) -> web.Response:
    view = request.app[LOG_VIEW]()
    outcomes_of = request.app[LOG_OUTCOMES]
    # The outcome is read from the same view as the leaf: one applied state, one answer.
    outcomes = outcomes_of(view) if outcomes_of is not None else None
    receipt = receipt_for(view, record_id_param(request), outcomes)
    return web.Response(text=receipt.to_json(), content_type=_JSON)


async def get_consistency(request: web.Request) -> web.Response:
    doc = consistency_doc(
        request.app[LOG_VIEW](), _int_param(request, "from"), _int_param(request, "to")
    )
    return web.Response(text=doc.to_json(), content_type=_JSON)


async def get_anchors(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", ANCHORS_PER_REQUEST_MAX)
    if not 1 <= limit <= ANCHORS_PER_REQUEST_MAX:
        raise InvalidRequest(f"limit must be 1..{ANCHORS_PER_REQUEST_MAX}", code="invalid_query")
    doc = anchor_chain_doc(request.app[LOG_VIEW](), _int_param(request, "from", 1), limit)
    return web.Response(text=doc.to_json(), content_type=_JSON)


def add_log_routes(
    app: web.Application, view: ViewFactory, outcomes: OutcomesOf | None = None
) -> None:
    """The routes over ``view``; ``outcomes`` reads ledger operations' outcomes (receipt v2)."""
    app[LOG_VIEW] = view
    app[LOG_OUTCOMES] = outcomes
    app.router.add_get(LOG_PATH, get_log_head)
    app.router.add_get(LOG_PATH + "/receipts/{record_id}", get_receipt)
    app.router.add_get(LOG_PATH + "/consistency", get_consistency)
    app.router.add_get(LOG_PATH + "/anchors", get_anchors)
