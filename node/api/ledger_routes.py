"""The node's ledger reads: accounts, transfers and operation outcomes by id, and the state digest.

Every node answers from its own applied state (no consensus round: a lagging node may not know
an id yet, 404). Ids and amounts are strings of digits (JSON numbers lose precision above
2^53). For the next steps (the partner API) and for tests and the simulator's checks:

* ``GET /internal/v1/ledger/accounts/{id}`` -> the account and its four balances
* ``GET /internal/v1/ledger/transfers/{id}`` -> the transfer (a failed id: 404)

both with ``applied_index``, the index the answer is as of (read from a pinned view), so the
gateway can read every node and answer the freshest: a write is acknowledged once applied on
its coordinating node, and any other node may still lag (read-your-writes).
* ``GET /internal/v1/ledger/operations/{record id hex}`` -> the operation's first outcome
* ``GET /internal/v1/ledger/digest`` -> ``{"applied_index", "digest", "keys", "totals"}``:
  the ledger state digest (:func:`business.ledger.views.sorted_state_digest`) and per-ledger
  totals, read from one pinned view on a worker thread; refused (503) past
  ``limits.ledger_digest_keys_max`` keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from business.ledger.model import (
    ID_MAX,
    TOTALS_PREFIX,
    Account,
    Transfer,
    account_key,
    decode_account,
    decode_totals,
    decode_transfer,
    transfer_key,
)
from business.ledger.views import sorted_state_digest
from node.api.log_routes import record_id_param
from node.consensus.ledger_ops import stored_outcome
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest, NotFound, OperationFailed

__all__ = ["LEDGER_PATH", "LedgerDigest", "LedgerReads", "add_ledger_routes", "digest_items"]

LEDGER_PATH = "/internal/v1/ledger"
PREFIX = b"lg/"
ID_DIGITS_MAX = 39  # 2^128 - 1 has 39 digits

ReadAt = Callable[[bytes, Callable[[Iterator[tuple[bytes, bytes]]], Any]], tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class LedgerReads:
    view: Callable[[], StateView]  # the applied state
    read_at: ReadAt  # DurableRaftStorage.read_state_at
    digest_keys_max: int


@dataclass(frozen=True, slots=True)
class LedgerDigest:
    keys: int
    digest: bytes
    totals: tuple[dict[str, Any], ...]


LEDGER_READS: web.AppKey[LedgerReads] = web.AppKey("ledger_reads", LedgerReads)


def digest_items(items: Iterator[tuple[bytes, bytes]], keys_max: int) -> LedgerDigest:
    """The digest of the ``lg/`` items (in key order) and the ledgers' totals, read once."""
    count = 0
    totals: list[dict[str, Any]] = []

    def counted() -> Iterator[tuple[bytes, bytes]]:
        nonlocal count
        for key, value in items:
            count += 1
            if count > keys_max:
                raise OperationFailed(
                    f"the ledger holds more than {keys_max} keys (limits.ledger_digest_keys_max)",
                    code="ledger_too_large",
                )
            if key.startswith(TOTALS_PREFIX):
                t = decode_totals(int.from_bytes(key[len(TOTALS_PREFIX) :], "big"), value)
                totals.append(
                    {
                        "ledger": t.ledger,
                        "debits_posted": str(t.debits_posted),
                        "credits_posted": str(t.credits_posted),
                        "debits_pending": str(t.debits_pending),
                        "credits_pending": str(t.credits_pending),
                        "balanced": t.balanced,
                    }
                )
            yield key, value

    digest = sorted_state_digest(counted())
    return LedgerDigest(count, digest, tuple(totals))


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > ID_DIGITS_MAX or not 0 < int(raw) < ID_MAX:
        raise InvalidRequest("an id is a string of digits in 1..2^128-2", code="invalid_id")
    return int(raw)


def account_doc(a: Account) -> dict[str, Any]:
    return {
        "object": "ledger_account",
        "id": str(a.id),
        "ledger": a.ledger,
        "code": a.code,
        "flags": a.flags,
        "user_data_128": str(a.user_data_128),
        "timestamp": str(a.timestamp),
        "debits_pending": str(a.debits_pending),
        "debits_posted": str(a.debits_posted),
        "credits_pending": str(a.credits_pending),
        "credits_posted": str(a.credits_posted),
    }


def transfer_doc(t: Transfer) -> dict[str, Any]:
    return {
        "object": "ledger_transfer",
        "id": str(t.id),
        "debit_account_id": str(t.debit_account_id),
        "credit_account_id": str(t.credit_account_id),
        "amount": str(t.amount),
        "pending_id": str(t.pending_id),
        "user_data_128": str(t.user_data_128),
        "timeout": t.timeout,
        "ledger": t.ledger,
        "code": t.code,
        "flags": t.flags,
        "timestamp": str(t.timestamp),
    }


async def _pinned(reads: LedgerReads, key: bytes) -> tuple[int, bytes | None]:
    """One key's value and the applied index it is as of (a pinned view, on a worker thread):
    a caller reading from several nodes keeps the freshest answer."""

    def exact(items: Iterator[tuple[bytes, bytes]]) -> bytes | None:
        for found, value in items:
            return value if found == key else None
        return None

    return await asyncio.to_thread(reads.read_at, key, exact)


async def get_account_route(request: web.Request) -> web.Response:
    account = _id(request)
    applied, raw = await _pinned(request.app[LEDGER_READS], account_key(account))
    if raw is None:
        raise NotFound("no such ledger account on this node", code="account_not_found")
    return web.json_response(
        {**account_doc(decode_account(account, raw)), "applied_index": applied}
    )


async def get_transfer_route(request: web.Request) -> web.Response:
    transfer = _id(request)
    applied, raw = await _pinned(request.app[LEDGER_READS], transfer_key(transfer))
    found = None if raw is None else decode_transfer(transfer, raw)
    if not isinstance(found, Transfer):  # none, or the id only ever failed
        raise NotFound("no such ledger transfer on this node", code="transfer_not_found")
    return web.json_response({**transfer_doc(found), "applied_index": applied})


async def get_operation_route(request: web.Request) -> web.Response:
    record_id = record_id_param(request)
    found = stored_outcome(request.app[LEDGER_READS].view(), record_id)
    if found is None:
        raise NotFound("no ledger operation for this record on this node", code="not_found")
    return web.json_response({"object": "ledger_operation", **found.summary()})


async def get_digest_route(request: web.Request) -> web.Response:
    reads = request.app[LEDGER_READS]
    applied, got = await asyncio.to_thread(
        reads.read_at, PREFIX, lambda items: digest_items(items, reads.digest_keys_max)
    )
    return web.json_response(
        {
            "applied_index": applied,
            "digest": got.digest.hex(),
            "keys": got.keys,
            "totals": list(got.totals),
        }
    )


def add_ledger_routes(app: web.Application, reads: LedgerReads) -> None:
    app[LEDGER_READS] = reads
    app.router.add_get(LEDGER_PATH + "/accounts/{id}", get_account_route)
    app.router.add_get(LEDGER_PATH + "/transfers/{id}", get_transfer_route)
    app.router.add_get(LEDGER_PATH + "/operations/{record_id}", get_operation_route)
    app.router.add_get(LEDGER_PATH + "/digest", get_digest_route)
