"""Repair back to ``n`` healthy shards: the leader's I/O driver of
:mod:`node.dataplane.repair_plan`.

The leader walks the record index in pages of ``[repair] page_records_max`` records. For each
page it asks every active member the page names which of those records' shards it holds
intact (one ``HasRecords`` frame per node: metas only; a corrupt entry is not listed), feeds
the answers, how long each silent node has been silent, and the committed membership to the
pure planner, and carries the plan out:

* **rebuild in place** -- the records are read back through the coordinator (``k`` shards
  checked against the indexed content hash; concurrent reads of a page share ``GetRecords``
  frames per holder), the missing shards re-encoded and sent to their holders in few
  ``PutShards`` frames (exclusive: a holder keeping another version refuses, unless its
  own index names the version put, which then replaces that unindexed orphan: a retry's
  leftover under the same record id, issue 17; see :mod:`node.storage.shard_store`), then verified
  with one more inventory query per holder. The index does not change: no log entry. This is
  what a wiped node that rejoined at its placement position (``baas-cluster rejoin-node``), a
  lost or a corrupt entry needs;
* **relocate** -- a shard whose holder has been silent for ``node_down_repair_after_s`` moves
  to the next placement candidate through the mover's own path (copy, verify, ``index.move``,
  grace, delete the old copy: :meth:`node.mover.ShardMover.run_moves`);
* **stale copies** -- an old copy past its move's grace that a former leader never deleted, on
  a node outside the record's placement, is deleted now (space, and no leak); an old copy on
  a placement node holding no shard of the record (a node the shards were relocated off,
  back again) makes the repairer ask the mover for a pass over the index: it brings the
  shard back there, onto the same key, and the relocated copy goes after the grace;
* records below ``k`` are counted as lost; records whose holder is only briefly away wait.

Order: most endangered first, as far as the pass knows. A pass plans only records missing at
least its *deficit* of shards (1 at the start); a page showing records missing more raises it
for the rest of the pass, and the records it then holds back get the next pass at once, at
their largest deficit, before any rest (see :mod:`node.dataplane.repair_plan`). So once a
more endangered record is seen, nothing less endangered is rebuilt before it; records in the
pages already passed were the most endangered known when they were rebuilt. A single wiped
node (every deficit 1) costs no extra scan.

Pace: a page is planned again until nothing in it is deferred by ``shards_per_round_max``;
after each round the repairer sleeps so that rebuilt shards stay under ``shards_per_s_max``,
and ``page_pause_s`` between pages; a full pass is followed by ``pass_interval_s`` of rest.
A pass that has found nothing missing walks the index at ``scan_records_per_s_max`` at most
(anti-entropy in the background, a flat cost per second whatever the data); the first page
with a shard missing switches that pass, and the next, to full speed. A new leader's first
pass goes at full speed: it knows nothing of the cluster's health yet, and leaders change when
nodes fail (``baas-chaos`` seed 11: a leader elected while the cluster healed walked 16,833
clean records at 100 a second, and no clean pass ended within the 300 s the run allows).
The rebuild reads and puts go through the coordinator's coalescing lanes, which bound what is
in flight per peer next to the traffic. Progress and backlog are in :class:`RepairStats`
(``/internal/v1/status`` ``repair``, ``/metrics``, ``baas-cluster status``).

Reported records: a node's scrubber (:mod:`node.scrub`) that quarantined a shard reports its
record to the leader (:meth:`ShardRepairer.report_suspects`, ``POST
/internal/v1/repair/suspects`` from another node). They wait in a bounded list
(``suspects_max``) and get a round of their own, a page of them at a time, before the walk's
next page: the same inventories and planner (the quarantined shard is missing on a holder
that answered, so it is rebuilt in place) and the same rate bound. A report only makes repair
sooner: a dropped one (a full list, a leader change) leaves the record to the walk.

Only the leader repairs (one planner, no two nodes rebuilding the same shard); a leader change
drops the pass in progress and the new leader starts its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from node.config import RepairSettings
from node.consensus.members import MemberStore
from node.consensus.record_index import PREFIX as INDEX_PREFIX
from node.consensus.record_index import IndexEntry, RecordIndex
from node.coordinator import Coordinator
from node.dataplane.repair_plan import RecordRepair, RepairPlan, RepairRules, plan_repairs
from node.errors import BaasError, OperationFailed, PeerError
from node.membership import MembershipManager, StoreView
from node.mover import ShardMover
from node.periodic import Periodic
from node.records import Shard, ShardKey
from node.replication.log import ReplicatedLog

__all__ = ["RepairStats", "ShardRepairer"]

log = logging.getLogger("baas.node.repair")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class RepairStats:
    passes: int = 0  # complete passes over the index
    pages: int = 0  # rounds planned (a page planned again counts again)
    records_scanned: int = 0
    shards_rebuilt: int = 0  # put back in place and verified there
    shard_bytes_rebuilt: int = 0
    shards_relocated: int = 0  # moved off a node gone too long (index.move committed)
    shards_failed: int = 0  # rebuilds or relocations that did not complete (planned again)
    stale_copies_deleted: int = 0
    busy_s: float = 0.0  # time spent in rounds that repaired something (rate sleeps included)
    rate_shards_per_s: float = 0.0  # (rebuilt + relocated) / busy_s: the repair rate
    # The pass in progress (reset when a pass starts):
    pass_records_scanned: int = 0
    pass_shards_repaired: int = 0
    pass_deficit_min: int = 0  # it repairs records missing at least this many shards
    # The last complete pass:
    last_pass_finished_ms: int = 0
    last_pass_s: float = 0.0
    last_pass_shards_repaired: int = 0
    last_pass_rate_shards_per_s: float = 0.0  # repaired shards / the pass's duration
    backlog_records: int = 0  # records still below n when it ended (lost, waiting, failed)
    lost_records: int = 0  # records with fewer than k healthy shards
    # Records it found below n, by healthy count (before its repairs).
    below_n_by_healthy: dict[str, int] = field(default_factory=dict)
    # Records reported by scrubbers (a quarantined shard), planned ahead of the walk:
    suspects_reported: int = 0
    suspects_dropped: int = 0  # the list was full: left to the walk
    suspects_waiting: int = 0
    suspect_shards_repaired: int = 0


@dataclass(slots=True)
class _Pass:
    """What the pass in progress found so far."""

    started: float
    scan: Iterator[tuple[bytes, bytes]]
    deficit_min: int  # plan only records missing at least this many shards
    page: list[bytes] = field(default_factory=list)  # record ids being planned
    page_counted: bool = False  # the page's first round added its findings
    below_n: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    still_below_n: int = 0
    lost: int = 0
    held_back: int = 0  # records left for a later pass at a lower deficit
    held_back_deficit_max: int = 0
    urgent: bool = False  # shards found missing: no scan pacing (page_pause_s only)
    page_started: float = 0.0


class ShardRepairer:
    def __init__(
        self,
        *,
        log: ReplicatedLog,
        store: MemberStore,
        coordinator: Coordinator,
        membership: MembershipManager,
        mover: ShardMover,
        settings: RepairSettings,
        grace_entries: int,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._log = log
        self._store = store
        self._coordinator = coordinator
        self._membership = membership
        self._mover = mover
        self._settings = settings
        self._clock_ms = clock_ms
        self._rules = RepairRules(
            node_down_repair_after_ms=int(settings.node_down_repair_after_s * 1000),
            fresh_record_ms=int(settings.fresh_record_s * 1000),
            shards_per_round_max=settings.shards_per_round_max,
            grace_entries=grace_entries,
        )
        self._periodic = Periodic("shard-repair", settings.page_pause_s, self.round_once)
        self._pass: _Pass | None = None
        self._rested_until = 0.0  # monotonic: no new pass before this
        self._next_deficit_min = 1  # held-back records raise it for the pass that follows
        # The last pass found shards missing, or this node has just become leader: the next
        # pass goes at full speed.
        self._next_urgent = True
        self._silent_since: dict[str, float] = {}  # node -> monotonic time of its first silence
        self._asked_at: dict[str, float] = {}  # silent node -> when it was last asked
        self._suspects: dict[bytes, None] = {}  # reported record ids, oldest first
        self.stats = RepairStats()

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def report_suspects(self, record_ids: Sequence[bytes]) -> int:
        """Records with a shard a scrubber quarantined: planned ahead of the walk while this
        node leads. Returns how many were taken (the rest: the list is full)."""
        taken = 0
        for rid in record_ids:
            if rid in self._suspects:
                continue
            if len(self._suspects) >= self._settings.suspects_max:
                self.stats.suspects_dropped += 1
                continue
            self._suspects[rid] = None
            taken += 1
        self.stats.suspects_reported += taken
        self.stats.suspects_waiting = len(self._suspects)
        return taken

    async def _suspect_round(self) -> int:
        """One page of reported records, planned at any deficit (they were reported because a
        shard went missing); the walk's pass is left as it was."""
        ids = list(itertools.islice(self._suspects, self._settings.page_records_max))
        for rid in ids:
            del self._suspects[rid]
        self.stats.suspects_waiting = len(self._suspects)
        started = time.monotonic()
        entries = self._entries(ids)
        scratch = _Pass(started, iter(()), deficit_min=1)
        plan = await self._plan(entries, scratch, raise_deficit=False)
        repaired, _ = await self._carry_out(plan)
        self.stats.suspect_shards_repaired += repaired
        # More than a round holds: the rest go back to the front -- unless the round made no
        # progress (its rebuilds all failed), which would spin here ahead of the walk.
        if plan.deferred and repaired:
            planned = {r.entry.record_id for r in plan.repairs}
            rest = [e.record_id for e in entries if e.record_id not in planned]
            self._suspects = dict.fromkeys([*rest, *self._suspects])
            self.stats.suspects_waiting = len(self._suspects)
        await self._rate_rest(repaired, started)
        return repaired

    async def _rate_rest(self, repaired: int, started: float) -> None:
        """Rate bound: a round's shards take at least repaired / shards_per_s_max seconds."""
        rest_s = repaired / self._settings.shards_per_s_max - (time.monotonic() - started)
        if rest_s > 0:
            await asyncio.sleep(rest_s)
        if repaired:
            stats = self.stats
            stats.busy_s = round(stats.busy_s + time.monotonic() - started, 3)
            done = stats.shards_rebuilt + stats.shards_relocated
            stats.rate_shards_per_s = round(done / stats.busy_s, 1)

    # ------------------------------------------------------------------ the loop

    async def round_once(self) -> int:
        """Plan and carry out one round (a page, or the same page again); returns the shards
        repaired. Starts a pass when none is running and the rest after the last one is over."""
        if self._log.status().role != "leader":
            self._pass = None  # the new leader plans its own pass
            self._next_urgent = True  # and if this node leads again, its first one at once
            self._next_deficit_min = 1
            self._rested_until = 0.0
            self._suspects.clear()  # reported to a leader this node no longer is
            self.stats.suspects_waiting = 0
            return 0
        if self._suspects:
            return await self._suspect_round()
        now = time.monotonic()
        if self._pass is None:
            if now < self._rested_until:
                return 0
            scan = iter(self._store.state_items(INDEX_PREFIX))
            self._pass = _Pass(now, scan, self._next_deficit_min, urgent=self._next_urgent)
            self.stats.pass_records_scanned = self.stats.pass_shards_repaired = 0
            self.stats.pass_deficit_min = self._next_deficit_min
        current = self._pass
        if not current.page:
            current.page = [
                key[len(INDEX_PREFIX) :]
                for key, _ in itertools.islice(current.scan, self._settings.page_records_max)
            ]
            if not current.page:
                self._finish_pass(current)
                return 0
            self.stats.records_scanned += len(current.page)
            self.stats.pass_records_scanned += len(current.page)
            current.page_started = time.monotonic()
        started = time.monotonic()
        entries = self._entries(current.page)
        plan = await self._plan(entries, current)
        repaired, short = await self._carry_out(plan)
        self.stats.pages += 1
        self.stats.pass_shards_repaired += repaired
        if not current.page_counted:  # what the page was like before this pass repaired it
            current.page_counted = True
            for healthy, count in plan.backlog.items():
                current.below_n[healthy] += count
            current.lost += len(plan.lost)
        # The page is done when nothing was left out by the round bound, or when a round
        # made no progress (its rebuilds all failed: planning it again would spin).
        if plan.deferred == 0 or repaired == 0:
            current.held_back += plan.held_back
            current.held_back_deficit_max = max(
                current.held_back_deficit_max, plan.held_back_deficit_max
            )
            left = len(plan.lost) + plan.waiting + plan.held_back + plan.deferred + short
            current.still_below_n += left
            if current.below_n or current.lost:
                current.urgent = True
            elif not current.urgent:
                # Background pace: at most scan_records_per_s_max index records per second.
                pace_s = len(current.page) / self._settings.scan_records_per_s_max
                scan_rest_s = pace_s - (time.monotonic() - current.page_started)
                if scan_rest_s > 0:
                    await asyncio.sleep(scan_rest_s)
            current.page = []
            current.page_counted = False
        await self._rate_rest(repaired, started)
        return repaired

    def _finish_pass(self, finished: _Pass) -> None:
        elapsed_s = time.monotonic() - finished.started
        stats = self.stats
        stats.passes += 1
        stats.last_pass_finished_ms = self._clock_ms()
        stats.last_pass_s = round(elapsed_s, 3)
        stats.last_pass_shards_repaired = stats.pass_shards_repaired
        stats.last_pass_rate_shards_per_s = round(stats.pass_shards_repaired / elapsed_s, 1)
        stats.backlog_records = finished.still_below_n
        stats.lost_records = finished.lost
        stats.below_n_by_healthy = {str(h): c for h, c in sorted(finished.below_n.items())}
        self._pass = None
        self._next_urgent = bool(finished.below_n or finished.lost or finished.held_back)
        if finished.held_back:  # less endangered records wait: their pass starts at once
            self._next_deficit_min = finished.held_back_deficit_max
        else:
            self._next_deficit_min = 1
            self._rested_until = time.monotonic() + self._settings.pass_interval_s
        if finished.below_n or stats.pass_shards_repaired:
            log.info(
                "repair pass: %d records scanned in %.1f s, below n %s, %d shards repaired, "
                "%d records still below n (%d lost)",
                stats.pass_records_scanned,
                elapsed_s,
                stats.below_n_by_healthy,
                stats.pass_shards_repaired,
                stats.backlog_records,
                stats.lost_records,
            )

    def _entries(self, record_ids: Sequence[bytes]) -> list[IndexEntry]:
        """The page's entries as applied now (a page planned again sees moves since)."""
        view = StoreView(self._store)
        found = (RecordIndex.lookup(view, rid) for rid in record_ids)
        return [entry for entry in found if entry is not None]

    # ------------------------------------------------------------------ planning

    async def _plan(
        self, entries: Sequence[IndexEntry], current: _Pass, *, raise_deficit: bool = True
    ) -> RepairPlan:
        """The page's plan at the pass's deficit; a page showing records more endangered
        than that raises it for the rest of the pass (they go first)."""
        members = self._membership.members().active_ids
        active = set(members)
        wanted: dict[str, list[bytes]] = defaultdict(list)
        for entry in entries:
            named = set(entry.shard_nodes) | {p.node for p in entry.previous}
            for node in sorted(named & active):
                wanted[node].append(entry.record_id)
        inventories, down_for_ms = await self._inventories(wanted)
        now_ms = self._clock_ms()
        applied_index = self._log.status().applied_index

        def plan(deficit_min: int) -> RepairPlan:
            return plan_repairs(
                entries,
                inventories,
                down_for_ms,
                members,
                now_ms=now_ms,
                applied_index=applied_index,
                rules=self._rules,
                deficit_min=deficit_min,
            )

        found = plan(current.deficit_min)
        if raise_deficit and found.deficit_max > current.deficit_min:
            current.deficit_min = self.stats.pass_deficit_min = found.deficit_max
            found = plan(current.deficit_min)
        return found

    async def _inventories(
        self, wanted: dict[str, list[bytes]]
    ) -> tuple[dict[str, frozenset[ShardKey]], dict[str, int]]:
        """Per node that answered, what it holds of the records asked; per silent node, for
        how long (ms) it has been silent. A silent node is asked again only every
        ``silent_retry_s``, so a dead one does not cost every page a timeout."""
        now = time.monotonic()
        asked = {
            node: rids
            for node, rids in wanted.items()
            if now - self._asked_at.get(node, 0.0) >= self._settings.silent_retry_s
            or node not in self._silent_since
        }
        answers = await asyncio.gather(
            *(self._coordinator.held_shards(node, rids) for node, rids in asked.items()),
            return_exceptions=True,
        )
        inventories: dict[str, frozenset[ShardKey]] = {}
        for node, answer in zip(asked, answers, strict=True):
            if isinstance(answer, frozenset):
                inventories[node] = answer
                self._silent_since.pop(node, None)
                self._asked_at.pop(node, None)
            elif isinstance(answer, BaasError):
                self._silent_since.setdefault(node, now)
                self._asked_at[node] = now
            else:
                raise answer
        down_for_ms = {
            node: int((now - self._silent_since[node]) * 1000)
            for node in wanted
            if node not in inventories and node in self._silent_since
        }
        return inventories, down_for_ms

    # ------------------------------------------------------------------ carrying it out

    async def _carry_out(self, plan: RepairPlan) -> tuple[int, int]:
        """(shards repaired, records left short: a rebuild or relocation did not complete)."""
        if self._mover.moves_in_flight == 0:
            # Never while the mover copies shards around: a membership change may make an
            # old holder a move's target again (the copy it puts there must stay).
            deletes = [self._delete_stale(node, key) for node, key in plan.stale_copies]
            await asyncio.gather(*deletes)
            if plan.returnable:  # shards off their placement, whose old home is back
                self._mover.replan()
        in_place = [r for r in plan.repairs if r.rebuild]
        rebuilt, short = await self._rebuild(in_place) if in_place else (0, 0)
        moves = [m for r in plan.repairs for m in r.relocate]
        relocated = 0
        for start in range(0, len(moves), self._settings.rebuilds_inflight_max):
            chunk = moves[start : start + self._settings.rebuilds_inflight_max]
            committed, abandoned = await self._mover.run_moves(chunk)
            relocated += committed
            short += abandoned  # about one record each: a record rarely loses two holders
            self.stats.shards_failed += abandoned
        self.stats.shards_relocated += relocated
        return rebuilt + relocated, short

    async def _delete_stale(self, node: str, key: ShardKey) -> None:
        try:
            await self._coordinator.delete_shard(node, key)
            self.stats.stale_copies_deleted += 1
        except (OperationFailed, PeerError) as exc:
            log.debug("stale copy on %s stays for now: %s", node, exc)

    async def _rebuild(self, repairs: Sequence[RecordRepair]) -> tuple[int, int]:
        """Rebuild, store and verify every in-place shard of ``repairs``; returns how many
        were verified on their holder, and how many records were left short."""
        limit = asyncio.Semaphore(self._settings.rebuilds_inflight_max)

        async def rebuilt_shards(repair: RecordRepair) -> list[tuple[str, Shard]]:
            async with limit:
                try:
                    result = await self._coordinator.read_indexed(repair.entry, "repair")
                except (OperationFailed, PeerError):
                    return []
            return [
                (job.node, self._coordinator.reencode_shard(result, job.shard))
                for job in repair.rebuild
            ]

        per_node: dict[str, list[Shard]] = defaultdict(list)
        for found in await asyncio.gather(*(rebuilt_shards(r) for r in repairs)):
            for node, shard in found:
                per_node[node].append(shard)
        stored = await asyncio.gather(
            *(self._store_and_verify(node, shards) for node, shards in per_node.items())
        )
        done = {key for keys, _ in stored for key in keys}
        self.stats.shards_rebuilt += len(done)
        self.stats.shard_bytes_rebuilt += sum(size for _, size in stored)
        self.stats.shards_failed += sum(len(r.rebuild) for r in repairs) - len(done)
        short = sum(
            1
            for r in repairs
            if any(
                ShardKey(r.entry.record_id, r.entry.content_hash, j.shard) not in done
                for j in r.rebuild
            )
        )
        return len(done), short

    async def _store_and_verify(self, node: str, shards: list[Shard]) -> tuple[set[ShardKey], int]:
        """(the shards verified on ``node``, their bytes): put, then an inventory of them."""
        try:
            refused = await self._coordinator.store_shards(node, shards, "repair")
            rids = list(dict.fromkeys(s.meta.record_id for s in shards))
            held = await self._coordinator.held_shards(node, rids)
        except (OperationFailed, PeerError) as exc:
            log.info("repair: %d shards for %s not stored: %s", len(shards), node, exc)
            return set(), 0
        ok = [s for s in shards if s.meta.record_id not in refused and s.meta.key in held]
        return {s.meta.key for s in ok}, sum(len(s.data) for s in ok)
