"""The ledger state in a real LevelDB (plyvel): the node's and the benchmark's view.

:class:`LevelDBView` gives the core its ``get`` and the reads their ordered ``scan`` over a
plyvel database (or a prefixed database / snapshot: anything with ``get`` and ``iterator``),
and :meth:`LevelDBView.commit` applies one batch's writes in one ``WriteBatch``. Not a pure
module (it does I/O); :mod:`business.ledger.core` never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import plyvel

from node.consensus.state_machine import Write
from node.errors import OperationFailed

__all__ = ["LevelDBView"]


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
