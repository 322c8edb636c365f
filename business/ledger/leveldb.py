"""The ledger state in a real LevelDB (plyvel): the node's and the benchmark's view.

:class:`LevelDBView` gives the core its ``get`` and the reads their ordered ``scan`` over a
plyvel database (or a prefixed database / snapshot: anything with ``get`` and ``iterator``),
and :meth:`LevelDBView.commit` applies one batch's writes in one ``WriteBatch``.
:class:`AccountCacheView` adds a bounded write-through cache of account values
(:class:`AccountCache`, which the node's Raft storage keeps too: node/replication/durable.py,
``[raft] ledger_account_cache_max``). Not a pure
module (it does I/O); :mod:`business.ledger.core` never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import plyvel

from business.ledger.model import ACCOUNT_PREFIX
from node.consensus.state_machine import Write
from node.errors import ConfigError, OperationFailed

__all__ = ["AccountCache", "AccountCacheView", "LevelDBView"]


class LevelDBView:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.get = db.get  # the core's hot path: one bound method, no wrapper frame

    def scan(
        self, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        with self.db.iterator(start=start, stop=stop, reverse=reverse) as it:
            yield from it

    def commit(self, writes: Iterable[Write], *, sync: bool = False) -> None:
        """All of one apply's writes in one atomic LevelDB batch."""
        try:
            with self.db.write_batch(sync=sync) as batch:
                put, delete = batch.put, batch.delete
                for key, value in writes:
                    if value is None:
                        delete(key)
                    else:
                        put(key, value)
        except plyvel.Error as exc:
            raise OperationFailed(f"ledger write batch failed: {exc}") from exc


class AccountCache:
    """Up to ``entries_max`` ledger account values (``lg/a/`` keys) in memory.

    Accounts are the ledger's hot random reads; with many accounts they fall out of LevelDB's
    block cache (a miss costs ~5x a hit) and compactions of the random in-place updates keep
    rewriting the tables they live in. The cache never serves a value the database does not
    hold, provided its owner keeps the one rule: it puts in only a value just read from the
    database (:meth:`remember`) or the writes of a batch that landed (:meth:`committed`), and
    empties it (:meth:`clear`) whenever the state is replaced by other means (a snapshot install).
    Other keys are ignored. When full, the oldest entry goes first (insertion order: no
    per-read bookkeeping on the hot path).
    """

    def __init__(self, entries_max: int) -> None:
        if entries_max < 1:
            raise ConfigError("the ledger account cache needs entries_max >= 1")
        self.entries_max = entries_max
        self._values: dict[bytes, bytes] = {}
        self.get = self._values.get  # the hot path: one bound method, no wrapper frame

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self._values.items())

    def remember(self, key: bytes, value: bytes) -> None:
        """Keep ``value``, just read from the database under ``key`` (if an account's)."""
        if not key.startswith(ACCOUNT_PREFIX):
            return
        values = self._values
        if key not in values and len(values) >= self.entries_max:
            del values[next(iter(values))]
        values[key] = value

    def committed(self, writes: Iterable[Write]) -> None:
        """Follow a write batch that landed (a None value deletes)."""
        for key, value in writes:
            if value is None:
                if key.startswith(ACCOUNT_PREFIX):
                    self._values.pop(key, None)
            else:
                self.remember(key, value)

    def clear(self) -> None:
        self._values.clear()


class AccountCacheView(LevelDBView):
    """A :class:`LevelDBView` with an :class:`AccountCache` of ``entries_max`` values
    (write-through: :meth:`commit` updates it with the batch's account writes). Every write
    to the database must go through this view; a state replaced otherwise must
    :meth:`clear` it."""

    def __init__(self, db: Any, *, entries_max: int) -> None:
        super().__init__(db)
        self.cache = AccountCache(entries_max)
        self._db_get = db.get
        self.get = self._cached_get

    def _cached_get(self, key: bytes) -> bytes | None:
        value = self.cache.get(key)
        if value is not None:
            return value
        stored: bytes | None = self._db_get(key)
        if stored is not None and key.startswith(ACCOUNT_PREFIX):  # no call for other keys
            self.cache.remember(key, stored)
        return stored

    def commit(self, writes: Iterable[Write], *, sync: bool = False) -> None:
        writes = list(writes)
        super().commit(writes, sync=sync)
        self.cache.committed(writes)

    def warm(self, key: bytes, value: bytes) -> None:
        """Load one stored account value (read from this database) into the cache."""
        self.cache.remember(key, value)

    def clear(self) -> None:
        self.cache.clear()
