"""Reading the ledger state: views, the reads the API needs, the digest and conservation.

:meth:`~business.ledger.core.Ledger.apply` needs only ``get`` (the node's ``StateView``).
Lists (an account's transfers, a history account's balances) and the digest need ordered
scans, so they take a :class:`RangeView`: ``get`` plus ``scan(start, stop)`` in key order.
:class:`MemoryView` implements both over a dict (tests, the simulator);
:mod:`business.ledger.leveldb` implements them over plyvel for the node and the benchmark.
Keeping scans out of ``apply`` keeps the state machine's reads point lookups, cheap in
LevelDB and trivial to overlay.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from typing import Protocol

from business.ledger.model import (
    ACCOUNT_PREFIX,
    ACCOUNT_TRANSFERS_PREFIX,
    BALANCES_PREFIX,
    PREFIX,
    TOTALS_PREFIX,
    Account,
    AccountBalance,
    Asset,
    LedgerTotals,
    PendingStatus,
    Transfer,
    account_key,
    asset_key,
    decode_account,
    decode_asset,
    decode_balance,
    decode_index,
    decode_pending_status,
    decode_totals,
    decode_transfer,
    pending_key,
    totals_key,
    transfer_key,
)
from node.consensus.state_machine import StateView, Write
from node.errors import InvalidRequest

__all__ = [
    "LIST_LIMIT_MAX",
    "MemoryView",
    "RangeView",
    "account_balances",
    "account_transfers",
    "all_totals",
    "get_account",
    "get_asset",
    "get_pending_status",
    "get_totals",
    "get_transfer",
    "sorted_state_digest",
    "state_digest",
]

LIST_LIMIT_MAX = 100  # Stripe's page size bound


class RangeView(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(
        self, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < stop`` in key order (descending when ``reverse``)."""
        ...


class MemoryView:
    """A dict as ledger state: ``get``, ordered ``scan`` and :meth:`apply` of writes."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, writes: Iterable[Write]) -> None:
        for key, value in writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self._sorted = None

    def scan(
        self, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        if self._sorted is None:
            self._sorted = sorted(self.data)
        keys = self._sorted[
            bisect.bisect_left(self._sorted, start) : bisect.bisect_left(self._sorted, stop)
        ]
        for key in reversed(keys) if reverse else keys:
            yield key, self.data[key]


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def get_asset(view: StateView, ledger: int) -> Asset | None:
    raw = view.get(asset_key(ledger))
    return None if raw is None else decode_asset(ledger, raw)


def get_account(view: StateView, account_id: int) -> Account | None:
    raw = view.get(account_key(account_id))
    return None if raw is None else decode_account(account_id, raw)


def get_transfer(view: StateView, transfer_id: int) -> Transfer | None:
    """The transfer with this id; None if there is none (or the id only ever failed)."""
    raw = view.get(transfer_key(transfer_id))
    if raw is None:
        return None
    found = decode_transfer(transfer_id, raw)
    return found if isinstance(found, Transfer) else None


def get_pending_status(view: StateView, transfer_id: int) -> PendingStatus | None:
    raw = view.get(pending_key(transfer_id))
    return None if raw is None else decode_pending_status(raw)


def get_totals(view: StateView, ledger: int) -> LedgerTotals | None:
    raw = view.get(totals_key(ledger))
    return None if raw is None else decode_totals(ledger, raw)


def all_totals(view: RangeView) -> list[LedgerTotals]:
    return [
        decode_totals(int.from_bytes(key[len(TOTALS_PREFIX) :], "big"), raw)
        for key, raw in view.scan(TOTALS_PREFIX, _prefix_end(TOTALS_PREFIX))
    ]


def _page(
    view: RangeView, prefix: bytes, after_ts: int | None, limit: int, newest_first: bool
) -> Iterator[tuple[int, bytes]]:
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1..{LIST_LIMIT_MAX}", code="limit_invalid")
    start, stop = prefix, _prefix_end(prefix)
    if after_ts is not None:
        cut = prefix + after_ts.to_bytes(8, "big")
        if newest_first:
            stop = cut
        else:
            start = cut + b"\x00"
    for n, (key, raw) in enumerate(view.scan(start, stop, reverse=newest_first)):
        if n == limit:
            return
        yield int.from_bytes(key[len(prefix) :], "big"), raw


def account_transfers(
    view: RangeView,
    account_id: int,
    *,
    after_ts: int | None = None,
    limit: int = 10,
    newest_first: bool = True,
) -> list[Transfer]:
    """Up to ``limit`` of an account's transfers, paged by timestamp (Stripe's default order:
    newest first; ``after_ts`` is the timestamp of the last one of the previous page)."""
    prefix = ACCOUNT_TRANSFERS_PREFIX + account_id.to_bytes(16, "big")
    out = []
    for _ts, raw in _page(view, prefix, after_ts, limit, newest_first):
        transfer = get_transfer(view, decode_index(raw))
        if transfer is None:
            raise InvalidRequest("the account transfer index names a missing transfer")
        out.append(transfer)
    return out


def account_balances(
    view: RangeView,
    account_id: int,
    *,
    after_ts: int | None = None,
    limit: int = 10,
    newest_first: bool = True,
) -> list[AccountBalance]:
    """A ``history`` account's balances after each change, paged like the transfers."""
    prefix = BALANCES_PREFIX + account_id.to_bytes(16, "big")
    return [
        decode_balance(ts, raw) for ts, raw in _page(view, prefix, after_ts, limit, newest_first)
    ]


def iter_accounts(view: RangeView) -> Iterator[Account]:
    for key, raw in view.scan(ACCOUNT_PREFIX, _prefix_end(ACCOUNT_PREFIX)):
        yield decode_account(int.from_bytes(key[len(ACCOUNT_PREFIX) :], "big"), raw)


def state_digest(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over every ``lg/`` item in key order (replica and re-batching checks)."""
    return sorted_state_digest(sorted((k, v) for k, v in items if k.startswith(PREFIX)))


def sorted_state_digest(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """:func:`state_digest` of items already in key order, all under ``lg/``, read once.

    For a node's LevelDB scan: nothing is held in memory, whatever the state's size.
    """
    digest = hashlib.sha256(b"baas-ledger-state-v1")
    for key, value in items:
        digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return digest.digest()
