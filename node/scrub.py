"""Scrubbing: every node reads its own shards back in the background and takes bad ones out of
service, so that repair rebuilds them -- the I/O driver of :mod:`node.dataplane.scrub_plan`.

Each node runs one :class:`Scrubber` on its asyncio loop. It asks the pure planner for the
next step (read a page after the cursor, or wait: the pace is ``[scrub] shards_per_s_max``
and ``bytes_per_s_max``, a pass at most every ``pass_interval_s``), reads the page from the
shard database on a worker thread (:meth:`ShardStore.scrub_page`: each entry decoded, so its
checksum checked), and judges it:

* a **corrupt** entry (checksum, format or key mismatch) is quarantined;
* a sample of the intact ones (``cross_check_records_per_s_max``) is **cross-checked** against
  the record as the replicated log has it: the indexed version and the SHA-256 of shard ``i``
  in the record's Merkle leaf. A shard that disagrees (checksummed, but not the bytes the
  writer encoded: a bug, a bad rebuild) is quarantined too.

Quarantine goes through the node's group committer (on the libp2p thread): the entry leaves
the shard key space like a delete, its bytes are kept aside for an operator, and from then on
no read returns it and no repair inventory (``HasRecords``) lists it. That is how repair
learns of it, the same way it learns of a wiped disk: the leader's next pass over that record
finds the shard missing on a holder that answered, rebuilds it from ``k`` others and puts it
back in place (:mod:`node.repair`). So that this happens soon rather than when the leader's
walk over the index comes by, the scrubber also reports the records to the leader, which
plans them ahead of its walk (:mod:`node.repair_suspects`). The cursor is saved after every
page, so a restarted node resumes its pass where it was.

Counted in :class:`ScrubStats` (``/internal/v1/status`` ``scrub``, ``baas_node_scrub_*`` in
``/metrics``, a line in ``baas-cluster status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from node.config import ScrubSettings
from node.dataplane.scrub_plan import (
    CrossCheck,
    Read,
    ScrubRules,
    ScrubState,
    after_page,
    cross_check,
    next_step,
)
from node.errors import BaasError
from node.merkle.leaf import LeafData
from node.storage.shard_store import QuarantineItem, ScrubbedEntry, ShardStore

__all__ = ["RecordView", "ScrubStats", "Scrubber", "rules_of"]

log = logging.getLogger("baas.node.scrub")

ERROR_PAUSE_S = 5.0  # after a page that failed (an overloaded committer, a read error)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def rules_of(settings: ScrubSettings) -> ScrubRules:
    return ScrubRules(
        shards_per_s_max=settings.shards_per_s_max,
        bytes_per_s_max=settings.bytes_per_s_max,
        pass_interval_s=settings.pass_interval_s,
        page_shards_max=settings.page_shards_max,
        page_bytes_max=settings.page_bytes_max,
        cross_check_records_per_s_max=settings.cross_check_records_per_s_max,
    )


@dataclass(frozen=True, slots=True)
class RecordView:
    """What this node's applied log says of a record: its indexed version and leaf."""

    indexed_version: Callable[[bytes], bytes | None]
    leaf: Callable[[bytes], LeafData | None]


@dataclass(slots=True)
class ScrubStats:
    passes: int = 0  # complete passes over this node's shards
    shards_checked: int = 0  # entries read back and checksum-verified
    bytes_checked: int = 0
    cross_checked: int = 0  # intact shards also compared with the record's leaf
    cross_not_comparable: int = 0  # sampled, but not indexed (yet), another version, no leaf
    # Bad shards found, by why: "checksum" (the stored entry is damaged) or "shard_hash"
    # (intact, but not the bytes the record's leaf names).
    corrupt: dict[str, int] = field(default_factory=lambda: {"checksum": 0, "shard_hash": 0})
    quarantined: int = 0  # taken out of service (a shard rebuilt meanwhile is left alone)
    resumed_at_cursor: bool = False  # this life started mid-pass, from the saved cursor
    pass_shards_checked: int = 0  # the pass in progress
    last_pass_s: float = 0.0
    last_pass_finished_ms: int = 0
    last_pass_shards_checked: int = 0


class Scrubber:
    def __init__(
        self,
        *,
        store: ShardStore,
        settings: ScrubSettings,
        records: RecordView,
        quarantine: Callable[[Sequence[QuarantineItem]], Awaitable[int]],
        report: Callable[[Sequence[bytes]], Awaitable[None]] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._rules = rules_of(settings)
        self._records = records
        self._quarantine = quarantine
        self._report = report  # to the leader's repairer (node/repair_suspects.py)
        self._clock_ms = clock_ms
        cursor = store.scrub_cursor()
        self._state = ScrubState(cursor=cursor)
        self._task: asyncio.Task[None] | None = None
        self.stats = ScrubStats(resumed_at_cursor=bool(cursor))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scrubber")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            step = next_step(self._state, time.monotonic(), self._rules)
            if not isinstance(step, Read):
                await asyncio.sleep(step.seconds)
                continue
            try:
                await self.page_once(step)
            except BaasError as exc:
                log.info("scrub page failed, retried later: %s", exc.detail)
                await asyncio.sleep(ERROR_PAUSE_S)
            except Exception:  # a bug here must not stop the node; the next page tries again
                log.exception("scrub page failed")
                await asyncio.sleep(ERROR_PAUSE_S)

    async def page_once(self, step: Read | None = None) -> int:
        """Read, judge and settle one page (the planner's next, paced or not); returns the
        shards it quarantined."""
        step = step or Read(
            self._state.cursor, self._rules.page_shards_max, self._rules.page_bytes_max
        )
        started = time.monotonic()
        entries, exhausted = await asyncio.to_thread(
            self._store.scrub_page, step.after, step.shards_max, step.bytes_max
        )
        page = after_page(
            self._state,
            started_s=started,
            now_s=time.monotonic(),
            keys=[e.db_key for e in entries],
            sizes=[len(e.raw) for e in entries],
            intact=[e.shard is not None for e in entries],
            exhausted=exhausted,
            rules=self._rules,
        )
        bad = [QuarantineItem(e.key, e.raw, "checksum") for e in entries if e.shard is None]
        bad += self._cross_check([entries[i] for i in page.cross_check])
        quarantined = await self._quarantine(bad) if bad else 0
        if bad:
            log.warning(
                "scrub: %d bad shards (%s), %d quarantined; repair rebuilds them",
                len(bad),
                ", ".join(sorted({b.reason for b in bad})),
                quarantined,
            )
        if quarantined and self._report is not None:
            await self._report(list(dict.fromkeys(b.key.record_id for b in bad)))
        self._state = page.state
        self._count(entries, bad, quarantined, page.pass_s)
        await asyncio.to_thread(self._store.save_scrub_cursor, self._state.cursor)
        return quarantined

    def _cross_check(self, sampled: Sequence[ScrubbedEntry]) -> list[QuarantineItem]:
        bad: list[QuarantineItem] = []
        for entry in sampled:
            assert entry.shard is not None  # the planner samples intact entries only
            rid = entry.key.record_id
            leaf = self._records.leaf(rid)
            verdict = cross_check(
                content_hash=entry.key.content_hash,
                shard_index=entry.key.index,
                data_hash=hashlib.sha256(entry.shard.data).digest(),
                indexed_version=self._records.indexed_version(rid),
                leaf_content_hash=None if leaf is None else leaf.content_hash,
                leaf_shard_hashes=() if leaf is None else leaf.shard_hashes,
            )
            self.stats.cross_checked += 1
            if verdict is CrossCheck.NOT_COMPARABLE:
                self.stats.cross_not_comparable += 1
            elif verdict is CrossCheck.DISAGREES:
                bad.append(QuarantineItem(entry.key, entry.raw, "shard_hash"))
        return bad

    def _count(
        self,
        entries: Sequence[ScrubbedEntry],
        bad: Sequence[QuarantineItem],
        quarantined: int,
        pass_s: float | None,
    ) -> None:
        stats = self.stats
        stats.shards_checked += len(entries)
        stats.bytes_checked += sum(len(e.raw) for e in entries)
        stats.pass_shards_checked += len(entries)
        for item in bad:
            stats.corrupt[item.reason] += 1
        stats.quarantined += quarantined
        if pass_s is not None:
            stats.passes += 1
            stats.last_pass_s = round(pass_s, 3)
            stats.last_pass_finished_ms = self._clock_ms()
            stats.last_pass_shards_checked = stats.pass_shards_checked
            stats.pass_shards_checked = 0
