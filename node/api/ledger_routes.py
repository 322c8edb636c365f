"""The node's ledger reads: accounts, transfers and operation outcomes by id, and the state digest.

Every node answers from its own applied state (no consensus round: a lagging node may not know
an id yet, 404). Ids and amounts are strings of digits (JSON numbers lose precision above
2^53). For the next steps (the partner API) and for tests and the simulator's checks:

* ``GET /internal/v1/ledger/accounts/{id}`` -> the account and its four balances
* ``GET /internal/v1/ledger/transfers/{id}`` -> the transfer (a failed id: 404)

both with ``applied_index``, the index the answer is as of (read from a pinned view), so the
gateway can read every node and answer the freshest: a write is acknowledged once applied on
its coordinating node, and any other node may still lag (read-your-writes).
* ``GET /internal/v1/ledger/accounts?scope=&limit=&starting_after=`` -> one page of the
  accounts whose ``user_data_128`` is ``scope`` (a partner's tag in one mode), in id order
  after ``starting_after``;
* ``GET /internal/v1/ledger/transfers?scope=&limit=&starting_after=&account=`` -> one page of
  the transfers tagged ``scope``: with ``account``, that account's, newest first (the
  ledger's per-account index); without, in id order;

both lists ``{"data", "has_more", "scanned_to", "applied_index"}``. Once the ledger's index by
scope tag is complete (log feature 13 enabled before the ledger's first object:
:func:`business.ledger.index.index_complete`), a page without ``account`` reads that index
from the cursor on: ``limit`` items or the end, in one call, ``scanned_to`` null. Before
that (an older log, or a ledger upgraded to feature 13 with objects in it: no backfill yet)
a page walks the keys after the cursor and keeps the tagged ones, reading at most
``limits.ledger_list_scan_keys_max`` keys: past that it answers what it found, ``has_more``
and ``scanned_to`` (the last id it read) for the caller to go on from.
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
from typing import Any, Protocol

from aiohttp import web

from business.ledger.index import TAG_ACCOUNTS_PREFIX, TAG_TRANSFERS_PREFIX, index_complete
from business.ledger.model import (
    ACCOUNT_PREFIX,
    ACCOUNT_TRANSFERS_PREFIX,
    ID_MAX,
    TOTALS_PREFIX,
    TRANSFER_PREFIX,
    Account,
    Transfer,
    account_key,
    decode_account,
    decode_index,
    decode_totals,
    decode_transfer,
    transfer_key,
)
from business.ledger.views import LIST_LIMIT_MAX, sorted_state_digest
from node.api.log_routes import record_id_param
from node.consensus.ledger_ops import stored_outcome
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest, InvariantViolation, NotFound, OperationFailed

__all__ = ["LEDGER_PATH", "LedgerDigest", "LedgerReads", "add_ledger_routes", "digest_items"]

LEDGER_PATH = "/internal/v1/ledger"
PREFIX = b"lg/"
ID_DIGITS_MAX = 39  # 2^128 - 1 has 39 digits

ReadAt = Callable[[bytes, Callable[[Iterator[tuple[bytes, bytes]]], Any]], tuple[int, Any]]
Items = Iterator[tuple[bytes, bytes]]


class ReadRangeAt(Protocol):
    def __call__(
        self, start: bytes, stop: bytes, read: Callable[[Items], Any], *, reverse: bool = False
    ) -> tuple[int, Any]: ...  # DurableRaftStorage.read_state_range_at


@dataclass(frozen=True, slots=True)
class LedgerReads:
    view: Callable[[], StateView]  # the applied state
    read_at: ReadAt  # DurableRaftStorage.read_state_at
    digest_keys_max: int
    read_range_at: ReadRangeAt | None = None  # the list routes need it
    list_scan_keys_max: int = 10_000  # limits.ledger_list_scan_keys_max


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


def _query_id(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > ID_DIGITS_MAX or not 0 < int(raw) < ID_MAX:
        raise InvalidRequest(f"{name} is a string of digits in 1..2^128-2", param=name)
    return int(raw)


def _list_params(request: web.Request) -> tuple[int, int, int | None]:
    """(scope, limit, starting_after) of a list request."""
    scope = _query_id(request, "scope")
    if scope is None:
        raise InvalidRequest("scope is required", code="parameter_missing", param="scope")
    raw = request.query.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1..{LIST_LIMIT_MAX}", param="limit")
    return scope, int(raw), _query_id(request, "starting_after")


@dataclass(slots=True)
class _Page:
    """One page being filled: the tagged items, whether there are more, where the walk got."""

    limit: int
    scan_max: int
    data: list[dict[str, Any]]
    has_more: bool = False
    scanned_to: int | None = None
    scanned: int = 0

    def full(self) -> bool:
        """Call before each key: True once the page holds ``limit`` or may read no more."""
        if self.scanned == self.scan_max:
            self.has_more = True
            return True
        self.scanned += 1
        return False

    def add(self, doc: dict[str, Any]) -> bool:
        """Add one tagged item; True when it was one too many (then: has_more, stop)."""
        if len(self.data) == self.limit:
            self.has_more = True
            return True
        self.data.append(doc)
        return False

    def body(self, applied: int) -> dict[str, Any]:
        scanned_to = None if self.scanned_to is None else str(self.scanned_to)
        return {
            "data": self.data,
            "has_more": self.has_more,
            "scanned_to": scanned_to if self.has_more else None,
            "applied_index": applied,
        }


def _end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _after(prefix: bytes, after: int | None) -> bytes:
    # ids are fixed-width keys: the first key after ``after`` is ``after``'s key + a zero byte
    return prefix if after is None else prefix + after.to_bytes(16, "big") + b"\x00"


def _tag_range(prefix: bytes, scope: int, after: int | None) -> tuple[bytes, bytes]:
    """The index keys of ``scope``'s objects after ``after`` (business/ledger/index.py)."""
    start = prefix + scope.to_bytes(16, "big")
    stop = prefix + (scope + 1).to_bytes(16, "big")  # scope < 2^128 - 1: no carry out
    return (start if after is None else start + after.to_bytes(16, "big") + b"\x00"), stop


async def _indexed_page(
    reads: LedgerReads,
    prefix: bytes,
    scope: int,
    limit: int,
    after: int | None,
    doc: Callable[[int, bytes], dict[str, Any] | None],
) -> web.Response:
    """One page read off the index by scope tag: at most ``limit`` + 1 index keys, so no scan
    bound and never a short page. Objects are read from the live state (accounts may be
    fresher than ``applied_index``, never older; transfers never change)."""
    page = _Page(limit, limit + 1, [])
    view = reads.view()

    def walk(items: Items) -> _Page:
        for key, _ in items:
            object_id = int.from_bytes(key[-16:], "big")
            stored = view.get(prefix + key[-16:])
            found = None if stored is None else doc(object_id, stored)
            if found is None:
                raise InvariantViolation(f"the ledger index names a missing object {object_id}")
            if page.add(found):
                break
        return page

    start, stop = _tag_range(
        TAG_ACCOUNTS_PREFIX if prefix == ACCOUNT_PREFIX else TAG_TRANSFERS_PREFIX, scope, after
    )
    applied, _ = await _range(reads, start, stop, walk)
    return web.json_response(page.body(applied))


def _transfer_doc_of(transfer_id: int, raw: bytes) -> dict[str, Any] | None:
    found = decode_transfer(transfer_id, raw)
    return transfer_doc(found) if isinstance(found, Transfer) else None


async def list_accounts_route(request: web.Request) -> web.Response:
    reads = request.app[LEDGER_READS]
    scope, limit, after = _list_params(request)
    if index_complete(reads.view()):
        return await _indexed_page(
            reads,
            ACCOUNT_PREFIX,
            scope,
            limit,
            after,
            lambda account, raw: account_doc(decode_account(account, raw)),
        )
    page = _Page(limit, reads.list_scan_keys_max, [])

    def walk(items: Items) -> _Page:
        for key, raw in items:
            if page.full():
                break
            account = decode_account(int.from_bytes(key[len(ACCOUNT_PREFIX) :], "big"), raw)
            if account.user_data_128 == scope and page.add(account_doc(account)):
                break
            page.scanned_to = account.id
        return page

    applied, _ = await _range(reads, _after(ACCOUNT_PREFIX, after), _end(ACCOUNT_PREFIX), walk)
    return web.json_response(page.body(applied))


async def list_transfers_route(request: web.Request) -> web.Response:
    reads = request.app[LEDGER_READS]
    scope, limit, after = _list_params(request)
    account = _query_id(request, "account")
    if account is None and index_complete(reads.view()):
        return await _indexed_page(reads, TRANSFER_PREFIX, scope, limit, after, _transfer_doc_of)
    page = _Page(limit, reads.list_scan_keys_max, [])
    if account is None:
        start, stop, reverse = _after(TRANSFER_PREFIX, after), _end(TRANSFER_PREFIX), False
    else:
        # The account's index is keyed by timestamp: newest first, before the cursor's.
        start = ACCOUNT_TRANSFERS_PREFIX + account.to_bytes(16, "big")
        stop = _end(start)
        if after is not None:
            _, raw = await _pinned(reads, transfer_key(after))
            cursor = None if raw is None else decode_transfer(after, raw)
            if not isinstance(cursor, Transfer):
                raise InvalidRequest("starting_after is no transfer", param="starting_after")
            stop = start + cursor.timestamp.to_bytes(8, "big")
        reverse = True
    view = reads.view()

    def walk(items: Items) -> _Page:
        for key, raw in items:
            if page.full():
                break
            found: object  # a Transfer, a sticky failure's result, or None
            if account is None:
                found = decode_transfer(int.from_bytes(key[len(TRANSFER_PREFIX) :], "big"), raw)
            else:
                tid = decode_index(raw)
                stored = view.get(transfer_key(tid))  # live, not pinned: transfers never change
                found = None if stored is None else decode_transfer(tid, stored)
            if not isinstance(found, Transfer):  # a sticky failure keeps its id: no transfer
                continue
            if found.user_data_128 == scope and page.add(transfer_doc(found)):
                break
            page.scanned_to = found.id
        return page

    applied, _ = await _range(reads, start, stop, walk, reverse=reverse)
    return web.json_response(page.body(applied))


async def _range(
    reads: LedgerReads,
    start: bytes,
    stop: bytes,
    walk: Callable[[Items], _Page],
    *,
    reverse: bool = False,
) -> tuple[int, _Page]:
    if reads.read_range_at is None:
        raise OperationFailed("this node serves no ledger lists", code="not_enabled")
    found: tuple[int, _Page] = await asyncio.to_thread(
        reads.read_range_at, start, stop, walk, reverse=reverse
    )
    return found


def add_ledger_routes(app: web.Application, reads: LedgerReads) -> None:
    app[LEDGER_READS] = reads
    app.router.add_get(LEDGER_PATH + "/accounts", list_accounts_route)
    app.router.add_get(LEDGER_PATH + "/transfers", list_transfers_route)
    app.router.add_get(LEDGER_PATH + "/accounts/{id}", get_account_route)
    app.router.add_get(LEDGER_PATH + "/transfers/{id}", get_transfer_route)
    app.router.add_get(LEDGER_PATH + "/operations/{record_id}", get_operation_route)
    app.router.add_get(LEDGER_PATH + "/digest", get_digest_route)
