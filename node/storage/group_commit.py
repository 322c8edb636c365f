"""Group commit of shard writes: many concurrent put requests, one fsynced LevelDB batch.

Runs on the node's libp2p (trio) thread: put requests from peers and from the node itself
(routed through the same handler) call :meth:`GroupCommitter.submit`; one committer task takes
everything pending, writes it as one ``WriteBatch(sync=True)`` and wakes every waiter. While a
batch is being fsynced, new submissions gather for the next one, so the batch size follows the
load without a timer. Committing on the trio thread (not a worker thread) is deliberate: the
thread hop cost nodes 15-47% of their CPU in measurements (shared/REFERENCE.md).

The queue is bounded (``commit_queue_shards_max``): a full queue raises :class:`Overloaded`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from node.errors import BaasError, Overloaded
from node.records import Shard, ShardKey
from node.storage.shard_store import CollectItem, QuarantineItem, ShardStore

__all__ = ["GroupCommitter"]

log = logging.getLogger("baas.node.shards")


@dataclass(slots=True)
class _Waiter:
    shards: Sequence[Shard]
    exclusive: bool
    deletes: Sequence[ShardKey] = ()  # a delete request (then ``shards`` is empty)
    collects: Sequence[CollectItem] = ()  # a collection of settled records (likewise)
    expiries: Sequence[int] = ()  # with a put: per shard, its record's proposal expiry
    quarantines: Sequence[QuarantineItem] = ()  # bad shards out of service (the scrubber)
    collected: int = 0  # shards a collection removed
    done: trio.Event = field(default_factory=trio.Event)
    error: BaasError | None = None
    refused: frozenset[bytes] = frozenset()


class GroupCommitter:
    def __init__(
        self,
        store: ShardStore,
        *,
        queue_shards_max: int,
        batch_shards_max: int,
        on_commit: Callable[[int, float], None] | None = None,
        quarantine_kept_max: int = 1000,
    ) -> None:
        self._store = store
        # The committed index as this node applied it (record id -> indexed content hash),
        # read only when an exclusive put meets another version: set once the index exists
        # (node/main.py); None until then, and such puts are refused as before.
        self.indexed_version: Callable[[bytes], bytes | None] | None = None
        self._quarantine_kept_max = quarantine_kept_max
        self._on_commit = on_commit  # (shards, seconds): feeds the fsync latency histogram
        self._queue_shards_max = queue_shards_max
        self._batch_shards_max = batch_shards_max
        self._pending: list[_Waiter] = []
        self._pending_shards = 0
        self._wakeup = trio.Event()
        self.batches_committed = 0
        self.shards_committed = 0
        self.shards_deleted = 0
        self.shards_quarantined = 0

    def _indexed_or_none(self, record_id: bytes) -> bytes | None:
        """The indexed version of a record; None (the put is refused, as without an index)
        when unknown or unreadable: a failed index read must not fail the whole batch."""
        if self.indexed_version is None:
            return None
        try:
            return self.indexed_version(record_id)
        except BaasError as exc:
            log.warning("index read for an exclusive put failed: %s", exc)
            return None

    @property
    def queued_shards(self) -> int:
        return self._pending_shards

    def stats(self) -> dict[str, int]:
        return {
            "queued_shards": self._pending_shards,
            "queue_max": self._queue_shards_max,
            "batches_committed": self.batches_committed,
            "shards_committed": self.shards_committed,
            "shards_deleted": self.shards_deleted,
            "shards_quarantined": self.shards_quarantined,
        }

    async def submit(
        self, shards: Sequence[Shard], *, exclusive: bool = False, expiries: Sequence[int] = ()
    ) -> frozenset[bytes]:
        """Return once ``shards`` are durable; raise if the batch failed or the queue is full.

        With ``exclusive`` a shard is not stored when the node holds another version of its
        record; the ids of such records are returned (empty: everything was stored).
        """
        if not shards:
            return frozenset()
        if self._pending_shards + len(shards) > self._queue_shards_max:
            raise Overloaded("shard commit queue is full")
        waiter = _Waiter(shards, exclusive, expiries=expiries)
        self._pending.append(waiter)
        self._pending_shards += len(shards)
        self._wakeup.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.refused

    async def collect(self, items: Sequence[CollectItem]) -> int:
        """Settle records whose proposal expired (node/storage/orphans.py); returns the
        shards removed. In the committer, so the pending marker it checks cannot move under
        it: a record written again meanwhile (a higher marker) is left alone."""
        if not items:
            return 0
        return (await self._run_queued(_Waiter((), False, collects=items), len(items))).collected

    async def quarantine(self, items: Sequence[QuarantineItem]) -> int:
        """Take bad shards out of service (node/scrub.py); returns how many were. In the
        committer, so a repair's put of the same key is ordered with it: a value that changed
        since it was judged is left alone."""
        if not items:
            return 0
        waiter = _Waiter((), False, quarantines=items)
        return (await self._run_queued(waiter, len(items))).collected

    async def delete(self, keys: Sequence[ShardKey]) -> None:
        """Return once the shards are gone (durably); absent ones are skipped. Deletes go
        through the committer so they never fall between a put batch's prepare and commit."""
        if not keys:
            return
        await self._run_queued(_Waiter((), False, keys), len(keys))

    async def _run_queued(self, waiter: _Waiter, count: int) -> _Waiter:
        """Queue a delete-like request (``count`` items against the queue bound) and wait for
        the committer to run it; raise what it raised."""
        if self._pending_shards + count > self._queue_shards_max:
            raise Overloaded("shard commit queue is full")
        self._pending.append(waiter)
        self._pending_shards += count
        self._wakeup.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter

    async def _run_delete(self, waiter: _Waiter) -> None:
        try:
            if waiter.quarantines:
                prepared, taken = self._store.prepare_quarantine(
                    waiter.quarantines, self._quarantine_kept_max
                )
                await trio.to_thread.run_sync(self._store.commit, prepared)
                waiter.collected = taken
                self.shards_quarantined += taken
            else:
                if waiter.collects:
                    prepared = self._store.prepare_collect(waiter.collects)
                else:
                    prepared = self._store.prepare_delete(waiter.deletes)
                removed = self._store.shard_count - prepared.shard_count
                await trio.to_thread.run_sync(self._store.commit, prepared)
                waiter.collected = removed
                self.shards_deleted += removed
        except BaasError as exc:
            waiter.error = exc
        waiter.done.set()

    @staticmethod
    def _is_delete(waiter: _Waiter) -> bool:
        return bool(waiter.deletes or waiter.collects or waiter.quarantines)

    def _take_batch(self) -> list[_Waiter]:
        taken: list[_Waiter] = []
        count = 0
        while (
            self._pending
            and not self._is_delete(self._pending[0])
            and (not taken or count + len(self._pending[0].shards) <= self._batch_shards_max)
        ):
            waiter = self._pending.pop(0)
            taken.append(waiter)
            count += len(waiter.shards)
        self._pending_shards -= count
        return taken

    async def serve(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await trio.sleep(0)  # let requests already runnable join this batch
            while self._pending:
                if self._is_delete(self._pending[0]):
                    waiter = self._pending.pop(0)
                    self._pending_shards -= (
                        len(waiter.deletes) + len(waiter.collects) + len(waiter.quarantines)
                    )
                    await self._run_delete(waiter)
                    continue
                batch = self._take_batch()
                shards = [s for w in batch for s in w.shards]
                exclusive = [w.exclusive for w in batch for _ in w.shards]
                expiries = [
                    w.expiries[i] if w.expiries else 0 for w in batch for i in range(len(w.shards))
                ]
                error: BaasError | None = None
                refused: frozenset[bytes] = frozenset()
                try:
                    started = time.perf_counter()
                    prepared = self._store.prepare(
                        shards, exclusive, expiries, indexed_version=self._indexed_or_none
                    )
                    refused = prepared.refused
                    # The fsync runs on a worker thread (plyvel releases the GIL while it
                    # waits), so this trio thread keeps serving frames meanwhile; submissions
                    # arriving now gather for the next batch.
                    await trio.to_thread.run_sync(self._store.commit, prepared)
                    if self._on_commit is not None:
                        self._on_commit(len(shards), time.perf_counter() - started)
                    self.batches_committed += 1
                    self.shards_committed += len(shards)
                except BaasError as exc:
                    error = exc
                for waiter in batch:
                    waiter.error = error
                    if refused and waiter.exclusive:
                        waiter.refused = refused & {s.meta.record_id for s in waiter.shards}
                    waiter.done.set()
                await trio.sleep(0)
