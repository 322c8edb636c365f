"""The node's Bridge reads: assets, policies and their audited versions, a user's lots, a point
asset's supply, reserves and their history, a quote now, and the Bridge state digest.

Like the ledger reads (:mod:`node.api.ledger_routes`, whose :class:`LedgerReads` these share),
every node answers from its own applied state, with no consensus round; amounts and account
ids are strings of digits, partner ids and wallet ids hex. For the gateway's Bridge API (which
checks that a partner only ever reads its own objects: these internal routes do not), the
tests and the simulator's checks:

* ``GET /internal/v1/bridge/assets/{ledger}`` -> the asset (partner, kind, scale, code,
  validity in days, token address, start day)
* ``GET /internal/v1/bridge/tokens/{partner hex}/{mode}`` -> the partner's tokens in the mode
  (log feature 12), each as the asset read answers it, in registration order
* ``GET /internal/v1/bridge/policies/{ledger}`` -> the current policy with its ``version``;
  ``?version=N`` -> the audit entry of the change that made version N (actor, log time, the
  policy it set)
* ``GET /internal/v1/bridge/lots/{ledger}/{account}`` -> a user's lots (oldest first) and
  their total; ``?at_ms=T`` adds what is spendable at log time T
* ``GET /internal/v1/bridge/supply/{ledger}`` -> the point asset's outstanding supply (the
  partner's liability)
* ``GET /internal/v1/bridge/reserves/{partner hex}/{ledger}`` -> the reserve's level,
  threshold and low flag, its last ``reserve.low`` event and their count (feature 11), and
  ``history``: its balances after each change, oldest first,
  ``?after_ts=`` / ``?limit=`` (at most :data:`HISTORY_LIMIT_MAX`) to page on
* ``GET /internal/v1/bridge/quotes?ledger=&wallet=&direction=in|out&amount_in=&now_ms=`` ->
  the terms of a swap now under the asset's policy (its version, the rate, both amounts, the
  fee, issue and expiry), or 400 with the refusal a swap would get (``policy_disabled``, ...);
  ``now_ms`` defaults to the log time this node applied last
  (:func:`business.bridge.views.last_log_time_ms`): a swap is stamped at or after it, so its
  quote is never "issued after the log time", even right after an election, when a new
  leader's first stamps carry the last one until a quorum reports its clocks
* ``GET /internal/v1/bridge/swaps?partner=&mode=&limit=&starting_after=&wallet=&user_ref=
  &ledger=&status=succeeded|failed&created_gte=&created_lt=`` -> one page of the partner's
  swaps of the mode, newest first (its index, log feature 11): ``{"data", "has_more",
  "scanned_to", "applied_index"}``; the time filter bounds the range read, the others are
  checked per key, at most ``limits.ledger_list_scan_keys_max`` keys a page (past that
  ``has_more`` and ``scanned_to``, the swap id to go on from); ``starting_after`` is a swap
  (its record id hex) of that partner and mode
* ``GET /internal/v1/bridge/digest`` -> ``{"applied_index", "digest", "keys"}``: SHA-256 over
  the ``br/`` state (:func:`business.bridge.views.bridge_state_digest`), read from one pinned
  view; refused (503) past ``limits.ledger_digest_keys_max`` keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from business.bridge import (
    Bridge,
    BridgeResult,
    Direction,
    Quote,
    get_asset,
    get_policy,
    points_supply,
    policy_change,
    reserve_level,
    role_account,
    sorted_bridge_digest,
    spendable_points,
    tokens_of,
    user_lots,
)
from business.bridge.model import (
    EVENT_RESERVE_LOW,
    PREFIX,
    AssetRecord,
    PolicyRecord,
    ReserveLowRecord,
    SwapEntry,
    reserve_key,
    swap_index_key,
    swap_index_prefix,
    unpack,
)
from business.bridge.views import (
    SwapFilter,
    last_log_time_ms,
    reserve_low,
    swap_page,
    swap_range,
)
from business.ledger.core import Ledger
from business.ledger.model import BALANCES_PREFIX, decode_balance
from business.ledger.views import LIST_LIMIT_MAX
from node.api.ledger_routes import LEDGER_READS, LedgerReads
from node.consensus.bridge_ops import BRIDGE_CONFIG
from node.consensus.ledger_ops import LEDGER_CONFIG, stored_outcome
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest, NotFound, OperationFailed

__all__ = [
    "BRIDGE_PATH",
    "HISTORY_LIMIT_MAX",
    "add_bridge_routes",
    "bridge_digest_items",
    "capped",
]

BRIDGE_PATH = "/internal/v1/bridge"
HISTORY_LIMIT_MAX = 100
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_AMOUNT_MAX = (1 << 128) - 1
_QUOTER = Bridge(BRIDGE_CONFIG, Ledger(LEDGER_CONFIG))  # quotes are reads: no state of its own


def _int(raw: str | None, name: str, low: int, high: int, default: int | None = None) -> int:
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isdigit() or len(raw) > 39 or not low <= int(raw) <= high:
        raise InvalidRequest(
            f"{name} is a string of digits in {low}..{high}", code="field_invalid", param=name
        )
    return int(raw)


def _hex(raw: str | None, name: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(raw or "")
    except ValueError:
        value = b""
    if len(value) != size:
        raise InvalidRequest(f"{name} is {size} bytes in hex", code="field_invalid", param=name)
    return value


def _ledger(request: web.Request) -> int:
    return _int(request.match_info["ledger"], "ledger", 1, _U32_MAX)


def _view(request: web.Request) -> StateView:
    return request.app[LEDGER_READS].view()


_NO_KEYS = PREFIX + b"\xff"  # a prefix under which nothing is stored


async def _applied(request: web.Request) -> int:
    """The applied index, read BEFORE the view the answer comes from: a lower bound of the
    state it answers (applying only moves on), so the gateway, which asks every node and keeps
    the freshest answer (``applied_index``), reads its own writes (a policy just set)."""
    reads: LedgerReads = request.app[LEDGER_READS]
    applied, _ = await asyncio.to_thread(reads.read_at, _NO_KEYS, lambda items: None)
    return applied


def policy_doc(p: PolicyRecord) -> dict[str, Any]:
    return {
        "object": "bridge_policy",
        "version": p.version,
        "baas_ledger": p.baas_ledger,
        "rate_num": str(p.rate_num),
        "rate_den": str(p.rate_den),
        "swap_min": str(p.swap_min),
        "swap_max": str(p.swap_max),
        "window_s": p.window_s,
        "user_window_max": str(p.user_window_max),
        "partner_window_max": str(p.partner_window_max),
        "fee_bps": p.fee_bps,
        "fee_min": str(p.fee_min),
        "enabled": p.enabled,
        "changed_ms": p.changed_ms,
    }


def quote_doc(q: Quote) -> dict[str, Any]:
    return {
        "object": "bridge_quote",
        "partner": q.partner.hex(),
        "ledger": q.ledger,
        "baas_ledger": q.baas_ledger,
        "wallet": q.wallet.hex(),
        "direction": "in" if q.direction == Direction.IN else "out",
        "amount_in": str(q.amount_in),
        "amount_out": str(q.amount_out),
        "fee": str(q.fee),
        "rate_num": str(q.rate_num),
        "rate_den": str(q.rate_den),
        "policy_version": q.policy_version,
        "issued_ms": q.issued_ms,
        "expires_ms": q.expires_ms,
        "digest": q.digest().hex(),
    }


def asset_doc(ledger: int, asset: AssetRecord) -> dict[str, Any]:
    return {
        "object": "bridge_asset",
        "ledger": ledger,
        "partner": asset.partner.hex(),
        "kind": {2: "points", 3: "token"}.get(asset.kind, str(asset.kind)),
        "scale": asset.scale,
        "code": asset.code,
        "validity_days": asset.validity_days,
        "address": asset.address.hex(),
        "start_day": asset.start_day,
    }


async def get_asset_route(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    applied = await _applied(request)
    asset = get_asset(_view(request), ledger)
    if asset is None:
        raise NotFound("no such Bridge asset on this node", code="asset_not_found")
    return web.json_response({**asset_doc(ledger, asset), "applied_index": applied})


async def get_tokens_route(request: web.Request) -> web.Response:
    """A partner's tokens in one mode, in registration order (bounded by the Bridge's
    ``tokens_per_partner_max``: one page)."""
    partner = _hex(request.match_info["partner"], "partner", 16)
    mode = _int(request.match_info["mode"], "mode", 0, 1)
    applied = await _applied(request)
    tokens = tokens_of(_view(request), partner, mode)
    data = [asset_doc(ledger, asset) for ledger, asset in tokens]
    return web.json_response({"object": "list", "data": data, "applied_index": applied})


async def get_policy_route(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    applied = await _applied(request)
    view = _view(request)
    version = request.query.get("version")
    if version is None:
        policy = get_policy(view, ledger)
        if policy is None:
            raise NotFound("no policy for this asset on this node", code="policy_not_found")
        return web.json_response({**policy_doc(policy), "ledger": ledger, "applied_index": applied})
    change = policy_change(view, ledger, _int(version, "version", 1, _U32_MAX))
    if change is None:
        raise NotFound("no such policy version on this node", code="policy_not_found")
    actor, changed_ms, policy = change
    return web.json_response(
        {
            "object": "bridge_policy_change",
            "ledger": ledger,
            "actor": actor.hex(),
            "changed_ms": changed_ms,
            "policy": policy_doc(policy),
            "applied_index": applied,
        }
    )


async def get_lots_route(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    account = _int(request.match_info["account"], "account", 1, _AMOUNT_MAX - 1)
    applied = await _applied(request)
    view = _view(request)
    lots = user_lots(view, ledger, account)
    doc: dict[str, Any] = {
        "object": "bridge_lots",
        "ledger": ledger,
        "account": str(account),
        "lots": [
            {"expiry_day": lot.expiry_day, "origin": lot.origin, "amount": str(lot.amount)}
            for lot in lots
        ],
        "total": str(sum(lot.amount for lot in lots)),
        "applied_index": applied,
    }
    if "at_ms" in request.query:
        at_ms = _int(request.query["at_ms"], "at_ms", 0, _U64_MAX)
        doc["spendable"] = str(spendable_points(view, ledger, account, at_ms))
    return web.json_response(doc)


async def get_supply_route(request: web.Request) -> web.Response:
    ledger = _ledger(request)
    applied = await _applied(request)
    view = _view(request)
    asset = get_asset(view, ledger)
    if asset is None:
        raise NotFound("no such Bridge asset on this node", code="asset_not_found")
    supply = points_supply(view, asset.partner, ledger)
    return web.json_response(
        {
            "object": "bridge_supply",
            "ledger": ledger,
            "supply": str(supply),
            "applied_index": applied,
        }
    )


async def get_reserve_route(request: web.Request) -> web.Response:
    partner = _hex(request.match_info["partner"], "partner", 16)
    ledger = _ledger(request)
    after_ts = _int(request.query.get("after_ts"), "after_ts", 0, _U64_MAX, default=0)
    limit = _int(request.query.get("limit"), "limit", 1, HISTORY_LIMIT_MAX, default=10)
    reads: LedgerReads = request.app[LEDGER_READS]
    view = reads.view()
    raw = view.get(reserve_key(ledger, partner))
    threshold_raw, low = (bytes(16), False) if raw is None else unpack(raw, "reserve", 2)
    prefix = BALANCES_PREFIX + role_account(partner, ledger, "reserve").to_bytes(16, "big")

    def page(items: Iterator[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, value in items:
            ts = int.from_bytes(key[len(prefix) :], "big")
            if ts <= after_ts:
                continue
            b = decode_balance(ts, value)
            out.append(
                {
                    "timestamp": str(ts),
                    "level": str(b.credits_posted - b.debits_posted - b.debits_pending),
                }
            )
            if len(out) == limit:
                break
        return out

    applied, history = await asyncio.to_thread(reads.read_at, prefix, page)
    low_record = reserve_low(view, partner, ledger)
    return web.json_response(
        {
            "object": "bridge_reserve",
            "partner": partner.hex(),
            "ledger": ledger,
            "level": str(reserve_level(view, partner, ledger)),
            "threshold": str(int.from_bytes(threshold_raw, "big")),
            "low": bool(low),
            "last_low_event": reserve_low_doc(low_record),
            "low_events": 0 if low_record is None else low_record.count,
            "history": history,
            "applied_index": applied,
        }
    )


def reserve_low_doc(record: ReserveLowRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "id": record.event.hex(),
        "type": EVENT_RESERVE_LOW,
        "operation": record.op.hex(),
        "created_ms": record.created_ms,
        "level": str(record.level),
        "threshold": str(record.threshold),
    }


def swap_entry_doc(log_ms: int, op: bytes, e: SwapEntry) -> dict[str, Any]:
    return {
        "object": "bridge_swap_entry",
        "operation": op.hex(),
        "log_time_ms": log_ms,
        "wallet": e.wallet.hex(),
        "user_ref": e.user_ref.hex(),
        "ledger": e.ledger,
        "direction": "in" if e.direction == Direction.IN else "out",
        "amount_in": str(e.amount_in),
        "amount_out": str(e.amount_out),
        "fee": str(e.fee),
        "policy_version": e.policy_version,
        "quote_digest": e.quote_digest.hex(),
        "result": e.result,
    }


def _swap_filter(q: Any) -> SwapFilter:
    status = q.get("status")
    if status not in (None, "succeeded", "failed"):
        raise InvalidRequest("status is succeeded or failed", code="field_invalid", param="status")
    return SwapFilter(
        wallet=None if q.get("wallet") is None else _hex(q.get("wallet"), "wallet", 16),
        user_ref=None if q.get("user_ref") is None else _hex(q.get("user_ref"), "user_ref", 32),
        ledger=None if q.get("ledger") is None else _int(q.get("ledger"), "ledger", 1, _U32_MAX),
        succeeded=None if status is None else status == "succeeded",
        created_gte=None if q.get("created_gte") is None
        else _int(q.get("created_gte"), "created_gte", 0, _U64_MAX),
        created_lt=None if q.get("created_lt") is None
        else _int(q.get("created_lt"), "created_lt", 0, _U64_MAX),
    )  # fmt: skip


async def list_swaps_route(request: web.Request) -> web.Response:
    q = request.query
    reads: LedgerReads = request.app[LEDGER_READS]
    partner = _hex(q.get("partner"), "partner", 16)
    mode = _int(q.get("mode"), "mode", 0, 1)
    limit = _int(q.get("limit"), "limit", 1, LIST_LIMIT_MAX, default=10)
    filters = _swap_filter(q)
    after = None
    if q.get("starting_after") is not None:
        op = _hex(q.get("starting_after"), "starting_after", 32)
        view = _view(request)
        outcome = stored_outcome(view, op)
        if (
            outcome is None
            or view.get(swap_index_key(partner, mode, outcome.log_time_ms, op)) is None
        ):
            raise InvalidRequest(
                "starting_after is no swap of this partner and mode", param="starting_after"
            )
        after = (outcome.log_time_ms, op)
    if reads.read_range_at is None:
        raise OperationFailed("this node serves no ledger lists", code="not_enabled")
    start, stop = swap_range(partner, mode, filters, after)
    prefix_len = len(swap_index_prefix(partner, mode))
    applied, page = await asyncio.to_thread(
        reads.read_range_at,
        start,
        stop,
        lambda items: swap_page(items, prefix_len, filters, limit, reads.list_scan_keys_max),
        reverse=True,
    )
    scanned_to = None if page.scanned_to is None else page.scanned_to[1].hex()
    return web.json_response(
        {
            "data": [swap_entry_doc(*item) for item in page.data],
            "has_more": page.has_more,
            "scanned_to": scanned_to,
            "applied_index": applied,
        }
    )


async def get_quote_route(request: web.Request) -> web.Response:
    q = request.query
    ledger = _int(q.get("ledger"), "ledger", 1, _U32_MAX)
    wallet = _hex(q.get("wallet"), "wallet", 16)
    direction = {"in": Direction.IN, "out": Direction.OUT}.get(q.get("direction", ""))
    if direction is None:
        raise InvalidRequest("direction is in or out", code="field_invalid", param="direction")
    amount_in = _int(q.get("amount_in"), "amount_in", 1, _AMOUNT_MAX)
    applied = await _applied(request)
    view = _view(request)
    now_ms = _int(q.get("now_ms"), "now_ms", 0, _U64_MAX, default=last_log_time_ms(view))
    asset = get_asset(view, ledger)
    if asset is None:
        raise NotFound("no such Bridge asset on this node", code="asset_not_found")
    quote = _QUOTER.quote(view, asset.partner, ledger, wallet, direction, amount_in, now_ms)
    if isinstance(quote, BridgeResult):
        raise InvalidRequest(f"a swap would be refused: {quote.value}", code=quote.value)
    return web.json_response({**quote_doc(quote), "applied_index": applied})


def capped(
    items: Iterator[tuple[bytes, bytes]], keys_max: int, what: str
) -> Iterator[tuple[bytes, bytes]]:
    """``items`` as they are read, refused (503) past ``keys_max`` of them: a digest route's
    bound (the Bridge's and payments' states)."""
    for count, item in enumerate(items, 1):
        if count > keys_max:
            raise OperationFailed(
                f"the {what} state holds more than {keys_max} keys (limits.ledger_digest_keys_max)",
                code="ledger_too_large",
            )
        yield item


def bridge_digest_items(items: Iterator[tuple[bytes, bytes]], keys_max: int) -> tuple[int, bytes]:
    """The number of ``br/`` items (in key order) and their digest, read once."""
    count = 0

    def counted() -> Iterator[tuple[bytes, bytes]]:
        nonlocal count
        for item in capped(items, keys_max, "Bridge"):
            count += 1
            yield item

    digest = sorted_bridge_digest(counted())
    return count, digest


async def get_digest_route(request: web.Request) -> web.Response:
    reads: LedgerReads = request.app[LEDGER_READS]
    applied, (keys, digest) = await asyncio.to_thread(
        reads.read_at, PREFIX, lambda items: bridge_digest_items(items, reads.digest_keys_max)
    )
    return web.json_response({"applied_index": applied, "digest": digest.hex(), "keys": keys})


def add_bridge_routes(app: web.Application) -> None:
    """The Bridge reads, over the ledger reads' state (add_ledger_routes first)."""
    app.router.add_get(BRIDGE_PATH + "/assets/{ledger}", get_asset_route)
    app.router.add_get(BRIDGE_PATH + "/tokens/{partner}/{mode}", get_tokens_route)
    app.router.add_get(BRIDGE_PATH + "/policies/{ledger}", get_policy_route)
    app.router.add_get(BRIDGE_PATH + "/lots/{ledger}/{account}", get_lots_route)
    app.router.add_get(BRIDGE_PATH + "/supply/{ledger}", get_supply_route)
    app.router.add_get(BRIDGE_PATH + "/reserves/{partner}/{ledger}", get_reserve_route)
    app.router.add_get(BRIDGE_PATH + "/quotes", get_quote_route)
    app.router.add_get(BRIDGE_PATH + "/swaps", list_swaps_route)
    app.router.add_get(BRIDGE_PATH + "/digest", get_digest_route)
