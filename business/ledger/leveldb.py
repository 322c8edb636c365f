"""The ledger state in a real LevelDB (plyvel): the node's and the benchmark's view.

:class:`LevelDBView` gives the core its ``get`` and the reads their ordered ``scan`` over a
plyvel database (or a prefixed database / snapshot: anything with ``get`` and ``iterator``),
and :meth:`LevelDBView.commit` applies one batch's writes in one ``WriteBatch``.
:class:`AccountCacheView` adds a bounded write-through cache of account values. Not a pure
module (it does I/O); :mod:`business.ledger.core` never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import plyvel

from node.consensus.state_machine import Write
from node.errors import ConfigError, OperationFailed

__all__ = ["AccountCacheView", "LevelDBView"]


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


class AccountCacheView(LevelDBView):
    """A :class:`LevelDBView` that keeps up to ``entries_max`` account values in memory.

    Accounts are the ledger's hot random reads; with many accounts they fall out of LevelDB's
    block cache, and compactions of the random in-place updates rewrite the tables they live
    in. The cache is write-through: :meth:`commit` updates it with the batch's account
    writes, so it never serves a value LevelDB does not hold, as long as every write to the
    database goes through this view (a state replaced from a snapshot must :meth:`clear` it).
    When full, the oldest entry goes first (insertion order, no per-read bookkeeping).
    """

    def __init__(self, db: Any, *, entries_max: int) -> None:
        super().__init__(db)
        if entries_max < 1:
            raise ConfigError("the ledger account cache needs entries_max >= 1")
        self.entries_max = entries_max
        self._cache: dict[bytes, bytes] = {}
        self._db_get = db.get
        self.get = self._cached_get

    def _cached_get(self, key: bytes) -> bytes | None:
        value = self._cache.get(key)
        if value is not None:
            return value
        stored: bytes | None = self._db_get(key)
        if stored is not None and key.startswith(b"lg/a/"):
            self._remember(key, stored)
        return stored

    def _remember(self, key: bytes, value: bytes) -> None:
        cache = self._cache
        if key not in cache and len(cache) >= self.entries_max:
            del cache[next(iter(cache))]
        cache[key] = value

    def commit(self, writes: Iterable[Write], *, sync: bool = False) -> None:
        writes = list(writes)
        super().commit(writes, sync=sync)
        for key, value in writes:
            if key.startswith(b"lg/a/"):
                if value is None:
                    self._cache.pop(key, None)
                else:
                    self._remember(key, value)

    def warm(self, key: bytes, value: bytes) -> None:
        """Load one stored account value (read from this database) into the cache."""
        if key.startswith(b"lg/a/"):
            self._remember(key, value)

    def clear(self) -> None:
        self._cache.clear()
