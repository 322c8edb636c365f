"""Background shard moves after a membership change: the I/O driver of the pure cores in
:mod:`node.dataplane` (which shards move: ``move_plan``; how one move proceeds: ``shard_move``).

The leader runs it. Every ``[moves] interval_s`` it compares the committed storage membership
epoch with the epoch of its last complete pass; when they differ it walks the record index and
plans, record by record, the shards whose rendezvous placement over the active members changed
(a 6th node takes about 1/6 of the shards; a removed node gives up all of its own). Each move,
at most ``moves_inflight_max`` at once, goes:

* **copy** -- rebuild the record from ``k`` of its shards where the index says they are (the
  old holder may be gone: a removed node's shards are rebuilt from the others), check the
  rebuilt blob against the indexed content hash, re-encode shard ``i``, and store it on the
  new holder (an exclusive put: a node holding another version refuses, unless its index
  names the version put: then the other one is an unindexed orphan and is replaced);
* **verify** -- read shard ``i`` back from the new holder; it must hash as sent;
* **commit** -- propose ``index.move`` (a compare-and-set on the index); once applied, readers
  ask the new holder and fall back to the old one (``read_indexed`` in the coordinator).

* **delete** -- once this node has applied ``grace_entries`` log positions past the move,
  the old copy is deleted on the old holder (exactly that record, version and shard index).
  Readers that had not yet applied the move found it there meanwhile.

A move that fails ``attempts_max`` times is abandoned for this pass and planned again in the
next one (the index still names the old copy, which was never touched). Deletions wait in a
bounded list (``deletes_pending_max``) on the leader that committed the move; a leader change
or a full list leaves the old copy in place (space, not safety), as does a delete on a holder
that has left the membership (it is being retired anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from node.config import MoveSettings
from node.consensus.members import MemberStore
from node.consensus.record_index import PREFIX as INDEX_PREFIX
from node.consensus.record_index import IndexEntry, MoveProposal, RecordIndex
from node.coordinator import Coordinator
from node.dataplane.move_plan import ShardMove, plan_record
from node.dataplane.shard_move import (
    Committed,
    Copied,
    CopyFailed,
    LogAt,
    MovePhase,
    MoveRules,
    MoveState,
    ReadBack,
    step,
)
from node.errors import OperationFailed, PeerError
from node.membership import MembershipManager, StoreView
from node.periodic import Periodic
from node.records import ShardKey
from node.replication.log import ReplicatedLog

__all__ = ["MoverStats", "ShardMover"]

log = logging.getLogger("baas.node.mover")

_YIELD_EVERY_ENTRIES = 256  # give the event loop a turn while scanning the index


@dataclass(slots=True)
class MoverStats:
    passes: int = 0
    entries_scanned: int = 0
    moves_planned: int = 0
    moves_committed: int = 0
    moves_abandoned: int = 0
    old_copies_deleted: int = 0
    old_copies_left: int = 0  # not deleted: the pending list was full or the holder left
    settled_epoch: int = 0  # the membership epoch of the last pass that left nothing to move


class ShardMover:
    def __init__(
        self,
        *,
        log: ReplicatedLog,
        store: MemberStore,
        coordinator: Coordinator,
        membership: MembershipManager,
        settings: MoveSettings,
        request_timeout_s: float,
    ) -> None:
        self._log = log
        self._store = store
        self._coordinator = coordinator
        self._membership = membership
        self._settings = settings
        self._rules = MoveRules(settings.grace_entries, settings.attempts_max)
        self._timeout_s = request_timeout_s
        self._periodic = Periodic("shard-mover", settings.interval_s, self._one_round)
        self._in_grace: list[MoveState] = []  # committed moves whose old copy still exists
        self.moves_in_flight = 0  # being copied, verified or committed right now
        self.stats = MoverStats()

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _one_round(self) -> None:
        await self.pass_once()
        await self.delete_due_copies()

    async def pass_once(self) -> int:
        """One pass over the index if the membership moved since the last settled one;
        returns the moves committed."""
        if self._log.status().role != "leader":
            return 0
        members = self._membership.members()
        if members.epoch == 0 or members.epoch == self.stats.settled_epoch:
            return 0
        active = members.active_ids
        self.stats.passes += 1
        committed = abandoned = 0
        pending: list[ShardMove] = []

        async def flush() -> None:
            nonlocal committed, abandoned
            done, failed = await self.run_moves(pending)
            pending.clear()
            committed += done
            abandoned += failed

        for scanned, (key, raw) in enumerate(self._store.state_items(INDEX_PREFIX), 1):
            entry = IndexEntry.decode(key[len(INDEX_PREFIX) :], raw)
            moves = plan_record(entry, active)
            self.stats.moves_planned += len(moves)
            pending.extend(moves)
            if len(pending) >= self._settings.moves_inflight_max:
                await flush()
            self.stats.entries_scanned += 1
            if scanned % _YIELD_EVERY_ENTRIES == 0:
                await asyncio.sleep(0)
                if self._log.status().role != "leader":
                    return committed  # the new leader plans its own pass
        await flush()
        self.stats.moves_committed += committed
        self.stats.moves_abandoned += abandoned
        if abandoned == 0 and self._membership.members().epoch == members.epoch:
            self.stats.settled_epoch = members.epoch
        log.info(
            "shard mover: epoch %d, %d moves committed, %d to retry",
            members.epoch,
            committed,
            abandoned,
        )
        return committed

    def replan(self) -> None:
        """Make the next round pass over the index even though the epoch has not changed: a
        node the repairer moved shards off (node/repair.py) is back, and its placement
        position wants them again (its old copies are overwritten with the same bytes)."""
        self.stats.settled_epoch = 0

    async def run_moves(self, moves: Sequence[ShardMove]) -> tuple[int, int]:
        """Copy, verify and commit these moves at once (the caller bounds how many); their old
        copies wait for the grace. Returns (committed, abandoned). The repairer's relocations
        off a node gone too long (node/repair.py) go through here too."""
        self.moves_in_flight += len(moves)
        try:
            states = await asyncio.gather(*(self._run_move(m) for m in moves))
        finally:
            self.moves_in_flight -= len(moves)
        committed = 0
        for state in states:
            if state.phase is MovePhase.GRACE:
                committed += 1
                if len(self._in_grace) < self._settings.deletes_pending_max:
                    self._in_grace.append(state)
                else:
                    self.stats.old_copies_left += 1
        return committed, len(states) - committed

    async def delete_due_copies(self) -> int:
        """Delete the old copies whose grace is over; returns how many were deleted."""
        if not self._in_grace:
            return 0
        if self._log.status().role != "leader":
            self.stats.old_copies_left += len(self._in_grace)
            self._in_grace.clear()  # a new leader's index is the truth now; copies stay
            return 0
        applied = self._log.status().applied_index
        active = set(self._membership.members().active_ids)
        due: list[MoveState] = []
        waiting: list[MoveState] = []
        for state in self._in_grace:
            state = step(state, LogAt(applied), self._rules)
            (due if state.phase is MovePhase.DELETE else waiting).append(state)
        self._in_grace = waiting
        deleted = 0
        for start in range(0, len(due), self._settings.moves_inflight_max):
            chunk = due[start : start + self._settings.moves_inflight_max]
            outcomes = await asyncio.gather(
                *(self._delete_old(s.move, active) for s in chunk), return_exceptions=True
            )
            for state, outcome in zip(chunk, outcomes, strict=True):
                if outcome is True:
                    deleted += 1
                elif outcome is False:
                    self.stats.old_copies_left += 1
                elif len(self._in_grace) < self._settings.deletes_pending_max:
                    self._in_grace.append(replace(state, phase=MovePhase.GRACE))  # retry
                else:
                    self.stats.old_copies_left += 1
        self.stats.old_copies_deleted += deleted
        return deleted

    async def _delete_old(self, move: ShardMove, active: set[str]) -> bool:
        """True: deleted; False: left in place (its holder left); raises to retry later."""
        if move.from_node not in active:
            return False
        entry = RecordIndex.lookup(StoreView(self._store), move.record_id)
        if entry is None or entry.shard_nodes[move.shard] == move.from_node:
            return False  # the index names it again (moved back): it must stay
        key = ShardKey(move.record_id, move.content_hash, move.shard)
        await self._coordinator.delete_shard(move.from_node, key)
        return True

    async def _run_move(self, move: ShardMove) -> MoveState:
        state = MoveState(move)
        while not state.finished and state.phase is not MovePhase.GRACE:
            if state.phase is MovePhase.COPY:
                state = step(state, await self._copy(move), self._rules)
            elif state.phase is MovePhase.VERIFY:
                state = step(state, await self._verify(move), self._rules)
            else:  # COMMIT
                state = step(state, await self._commit(move), self._rules)
        return state

    async def _copy(self, move: ShardMove) -> Copied | CopyFailed:
        entry = RecordIndex.lookup(StoreView(self._store), move.record_id)
        if entry is None:
            return CopyFailed("no index entry")
        try:
            result = await self._coordinator.read_indexed(entry, "shard-move")
            shard = self._coordinator.reencode_shard(result, move.shard)
            await self._coordinator.store_shard(move.to_node, shard, "shard-move")
        except (OperationFailed, PeerError) as exc:
            return CopyFailed(exc.detail)
        return Copied(hashlib.sha256(shard.data).digest())

    async def _verify(self, move: ShardMove) -> ReadBack:
        try:
            digest = await self._coordinator.shard_digest(
                move.to_node, move.record_id, move.shard, move.content_hash
            )
        except (OperationFailed, PeerError):
            digest = None
        return ReadBack(digest)

    async def _commit(self, move: ShardMove) -> Committed:
        proposal = MoveProposal(
            move.record_id, move.content_hash, move.shard, move.from_node, move.to_node
        )
        try:
            (applied,) = await self._log.propose([proposal.to_entry()], timeout_s=self._timeout_s)
        except (OperationFailed, TimeoutError):
            return Committed("lost")
        code = applied.outcome.code
        moved_at = applied.position.index
        if code == "existing":
            moved_at = int(applied.outcome.detail.get("moved_at") or 0)
        return Committed(code, moved_at)
