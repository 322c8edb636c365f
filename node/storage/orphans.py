"""Collection of orphan shards: shards of records whose index entry never committed.

A coordinator stamps every write with the expiry of its index proposal -- a term and a maximum
log index -- before it stores any shard, and every holder keeps the highest such index per
record as a *pending marker* (:mod:`node.storage.shard_store`). The record index refuses, at
apply, a proposal that lands beyond its maximum index (:mod:`node.consensus.record_index`).
So once a node has applied the log up to a record's marker, the record's fate is settled:

* indexed -- its indexed version stays; shards of any other version (a retry's leftovers)
  go, and so does the marker;
* not indexed -- it never will be: every shard of it goes, and the marker.

:func:`settle` is that decision, pure. :class:`OrphanCollector` runs it over the markers every
``interval_s``, a bounded number per pass (``records_per_pass_max``), and hands the verdicts to
the node's group committer, which re-reads each marker before deleting: a record written again
meanwhile carries a higher marker and is left for a later pass.

Shards delivered later from hints carry no marker and are not collected.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from node.periodic import Periodic
from node.storage.shard_store import CollectItem, ShardStore

__all__ = ["CollectorStats", "OrphanCollector", "settle"]

log = logging.getLogger("baas.node.orphans")


def settle(
    record_id: bytes,
    expiry: int,
    applied_index: int,
    indexed_version: Callable[[bytes], bytes | None],
) -> CollectItem | None:
    """The verdict on one pending record: None while its proposal may still commit.

    ``indexed_version`` (an index read) is called only for a record whose fate is settled: a
    marker waits up to ``proposal_expiry_entries`` (100,000 entries), and every pass over it
    before then would read and decode its index entry for nothing.
    """
    if applied_index < expiry:
        return None
    return CollectItem(record_id, expiry, indexed_version(record_id))


@dataclass(slots=True)
class CollectorStats:
    passes: int = 0
    records_settled: int = 0
    orphan_records: int = 0  # settled without an index entry: every shard went
    shards_removed: int = 0


class OrphanCollector:
    def __init__(
        self,
        *,
        store: ShardStore,
        applied_index: Callable[[], int],
        indexed_version: Callable[[bytes], bytes | None],
        run_collect: Callable[[Sequence[CollectItem]], Awaitable[int]],
        interval_s: float,
        records_per_pass_max: int,
    ) -> None:
        self._store = store
        self._applied_index = applied_index
        self._indexed_version = indexed_version
        self._run_collect = run_collect
        self._per_pass = records_per_pass_max
        self._cursor = b""
        self._periodic = Periodic("orphan-collector", interval_s, self.pass_once)
        self.stats = CollectorStats()

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def pass_once(self) -> int:
        """One bounded pass over the pending markers; returns the records settled."""
        self.stats.passes += 1
        markers = self._store.pending_items(after=self._cursor, limit=self._per_pass)
        self._cursor = markers[-1][0] if len(markers) == self._per_pass else b""
        applied = self._applied_index()
        verdicts = [
            verdict
            for record_id, expiry in markers
            if (verdict := settle(record_id, expiry, applied, self._indexed_version)) is not None
        ]
        if not verdicts:
            return 0
        removed = await self._run_collect(verdicts)
        self.stats.records_settled += len(verdicts)
        self.stats.orphan_records += sum(1 for v in verdicts if v.keep is None)
        self.stats.shards_removed += removed
        return len(verdicts)
