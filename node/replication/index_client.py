"""What a coordinator needs of the record index, on any node.

* :meth:`RecordIndexClient.lookup` -- the locally applied index. Committed index entries never
  change, so a hit needs no consensus round.
* :meth:`RecordIndexClient.lookup_confirmed` -- a local miss is confirmed with a read barrier
  (ReadIndex through the leader) before anyone is told "not found": this node may lag.
* :meth:`RecordIndexClient.propose` -- index entries go through the leader, gathered: every
  coordinator's proposals wait a moment in this node's gatherer (a :class:`Batcher`: at most
  ``index_batch_records_max`` records and ``index_batch_bytes_max`` bytes per call, a few
  calls in flight, the next one gathering meanwhile). On the leader a call is one
  ``ledger.ops`` log entry once log feature version 6 is enabled (every record as an operation,
  with its ledger events if it has any; node/consensus/ledger_ops.py), an ``index.put_batch``
  entry before (one ``index.put`` per record until feature version 4); on a follower it is
  one forward of many records to the leader's node API
  (``POST /internal/v1/index``), whose handler (:meth:`propose_local`) gathers the forwards
  of every follower and its own coordinator's proposals into the same kind of entries. Each
  caller gets its own records' outcomes. Routing and retries while leadership moves are the
  shared :class:`~node.replication.leader_route.LeaderRoute`. Each proposal carries an expiry
  (a term and ``last_index + proposal_expiry_entries``, stamped by the coordinator before it
  stores the shards, see :meth:`RecordIndexClient.stamp`), so a proposal lost in a leader
  change can never commit late.
* :meth:`RecordIndexClient.admit` -- refuses new writes up front (:class:`Overloaded`, 503
  with Retry-After) while the gatherer does not keep up, before any shard is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from business.ledger.outcome import OperationOutcome
from node.batcher import Batcher
from node.config import ClusterMember, RaftSettings
from node.consensus.ledger_ops import (
    LEDGER_FEATURE_VERSION,
    LEDGER_OPS,
    Operation,
    stored_outcome,
)
from node.consensus.record_index import (
    BATCH_FEATURE_VERSION,
    INDEX_PUT_BATCH,
    BatchOutcome,
    IndexEntry,
    IndexProposal,
    RecordIndex,
)
from node.consensus.state_machine import AppEntry, Applied, Dispatcher
from node.errors import OperationFailed, Overloaded
from node.replication.forward_auth import ForwardSigner
from node.replication.leader_route import LEADER_WAIT_S, LeaderRoute
from node.replication.log import ReplicatedLog

__all__ = ["INDEX_PATH", "GatherLimits", "RecordIndexClient", "outcome_wire"]

INDEX_PATH = "/internal/v1/index"
_HERE = "here"  # lane of proposals that must be proposed on this node (forwarded to it)
_ROUTED = "routed"  # lane of this node's coordinator: proposed here or forwarded to the leader


def outcome_wire(
    code: str, index: int, term: int, leader_time_ms: int, detail: Mapping[str, Any]
) -> dict[str, Any]:
    wire = {
        "code": code,
        "index": index,
        "term": term,
        "ts": leader_time_ms,
        "first_index": detail.get("index"),
        "first_ch": detail.get("content_hash"),
    }
    outcome = detail.get("outcome")  # an operation's ledger outcome (a retry's: the first one)
    if isinstance(outcome, OperationOutcome):
        wire["outcome"] = outcome.summary()
    return wire


def outcomes_of(applied: Sequence[Applied], records: int) -> list[dict[str, Any]]:
    """One wire outcome per record, from the entries proposed for ``records`` records.

    Either one ``index.put`` entry per record, or one ``index.put_batch`` or ``ledger.ops``
    entry for all of them (its per-record results; a batch refused as a whole gives every
    record its code).
    """
    if not (len(applied) == 1 and applied[0].type in (INDEX_PUT_BATCH, LEDGER_OPS)):
        return [_wire(a, a.outcome.code, a.outcome.detail) for a in applied]
    (batch,) = applied
    results: Sequence[BatchOutcome] = batch.outcome.detail.get("results", ())
    if len(results) != records:
        return [_wire(batch, batch.outcome.code, batch.outcome.detail)] * records
    return [_wire(batch, r.code, r.detail) for r in results]


def _wire(applied: Applied, code: str, detail: Mapping[str, Any]) -> dict[str, Any]:
    at = applied.position
    return outcome_wire(code, at.index, at.term, at.leader_time_ms, detail)


def _past_max_index(proposal: IndexProposal, outcome: Mapping[str, Any]) -> bool:
    """Whether an expired proposal landed past the coordinator's maximum index (final)."""
    landed = outcome.get("index")
    limit = proposal.expiry_max_index
    return limit > 0 and isinstance(landed, int) and landed > limit


class _View:
    def __init__(self, log: ReplicatedLog) -> None:
        self._log = log

    def get(self, key: bytes) -> bytes | None:
        return self._log.state_get(key)


@dataclass(frozen=True, slots=True)
class GatherLimits:
    """The gatherer's bounds (``[raft]`` index_* settings, node/config.py)."""

    batch_records_max: int = 512
    batch_bytes_max: int = 384 * 1024
    window_s: float = 0.002
    inflight_max: int = 4
    pending_max: int = 20_000
    queue_wait_s_max: float = 1.0
    commit_timeout_s: float = 8.0

    @classmethod
    def of(cls, raft: RaftSettings) -> GatherLimits:
        return cls(
            batch_records_max=raft.index_batch_records_max,
            batch_bytes_max=raft.index_batch_bytes_max,
            window_s=raft.index_gather_window_s,
            inflight_max=raft.index_gather_inflight_max,
            pending_max=raft.index_gather_pending_max,
            queue_wait_s_max=raft.index_queue_wait_s_max,
            commit_timeout_s=raft.index_commit_timeout_s,
        )


class RecordIndexClient:
    def __init__(
        self,
        log: ReplicatedLog,
        members: Sequence[ClusterMember],
        *,
        api_token: str,
        proposal_expiry_entries: int,
        request_timeout_s: float,
        address_of: Callable[[str], str | None] | None = None,
        gather: GatherLimits | None = None,
        signer: ForwardSigner | None = None,
    ) -> None:
        self._log = log
        configured = {m.peer_id: m.http_addr for m in members}
        # Where a leader's node API listens: the committed membership knows members that
        # joined after this node started (node/membership.py); else the configuration.
        self._route = LeaderRoute(
            log,
            address_of=address_of or configured.get,
            api_token=api_token,
            request_timeout_s=request_timeout_s,
            signer=signer,  # the leader takes a forwarded deposit credit only signed
        )
        self._expiry_entries = proposal_expiry_entries
        self._timeout_s = request_timeout_s
        self._limits = gather or GatherLimits()
        self.retried_expired = 0  # records proposed again after their term ended
        self._gatherer: Batcher[str, Operation, dict[str, Any]] = Batcher(
            self._propose_gathered,
            window_s=self._limits.window_s,
            items_max=self._limits.batch_records_max,
            bytes_max=self._limits.batch_bytes_max,
            inflight_max=self._limits.inflight_max,
            pending_max=self._limits.pending_max,
            size_of=Operation.encoded_bytes_max,
        )

    async def start(self) -> None:
        await self._route.start()

    async def stop(self) -> None:
        await self._gatherer.close()
        await self._route.stop()

    def gatherer_stats(self) -> dict[str, int]:
        return {**self._gatherer.snapshot(), "retried_expired": self.retried_expired}

    def admit(self, records: int) -> None:
        """Refuse ``records`` new records up front while the gatherer does not keep up.

        Called before any shard is stored: a record admitted here gets its index proposal
        through unless the leader is lost, instead of failing ``index_unavailable`` after its
        shards were stored because the queue ahead of it could not be committed in time.
        """
        held_s = self._gatherer.held_back_s()
        waiting = self._gatherer.pending_items + self._gatherer.inflight_items
        if held_s > self._limits.queue_wait_s_max:
            raise Overloaded(
                f"record index proposals have waited {held_s:.2f} s for the leader "
                "(raft.index_queue_wait_s_max)",
                retry_after_s=int(held_s) + 1,
            )
        if waiting + records > self._limits.pending_max:
            raise Overloaded(
                f"{waiting} records wait for the record index (raft.index_gather_pending_max)"
            )

    def lookup(self, record_id: bytes) -> IndexEntry | None:
        return RecordIndex.lookup(_View(self._log), record_id)

    def outcome(self, record_id: bytes) -> OperationOutcome | None:
        """The applied first outcome of the operation that created ``record_id``."""
        return stored_outcome(_View(self._log), record_id)

    def ledger_enabled(self) -> bool:
        """Whether the log has enabled ledger operations (feature version 6)."""
        return Dispatcher.feature_version(_View(self._log)) >= LEDGER_FEATURE_VERSION

    def feature_version(self) -> int:
        """The log's applied feature version (the coordinator checks a request's against it)."""
        return Dispatcher.feature_version(_View(self._log))

    async def lookup_confirmed(self, record_id: bytes) -> IndexEntry | None:
        found = self.lookup(record_id)
        if found is not None:
            return found
        await self._log.read_barrier(timeout_s=self._timeout_s)
        return self.lookup(record_id)

    def stamp(self) -> tuple[int, int]:
        """(term, max log index) for a proposal about to be made from this node.

        The coordinator stamps before it stores any shard, and every holder keeps the max
        index as the record's pending marker: the apply refuses the entry outside the term or
        beyond the index, so once the log passes it an unindexed record's shards are orphans.
        Stamped from this node's view: a lagging node stamps a lower index (an earlier
        expiry, never a later one than the leader would).
        """
        status = self._log.status()
        return status.term, status.last_index + self._expiry_entries

    async def propose_local(self, proposals: Sequence[Operation]) -> list[dict[str, Any]]:
        """On the leader (forwarded proposals): gathered with every other caller's, proposed here.

        Raises NotLeader once this node no longer leads (the forwarder retries elsewhere).
        """
        return await self._gatherer.run_many(_HERE, proposals)

    async def propose(self, proposals: Sequence[Operation]) -> list[dict[str, Any]]:
        """Through the leader, wherever it is; one wire outcome per proposal.

        An admitted record's proposal is retried until ``commit_timeout_s`` when it was lost
        (a leader change, a full queue at the leader, a slow round) and when it ``expired``
        because the term it was stamped in ended: the index makes retries idempotent, and the
        coordinator's maximum index is kept, so a retry can never commit past the point where
        holders collect the record's shards. Raises OperationFailed (``index_unavailable``,
        retryable by the client) only once that time is spent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limits.commit_timeout_s
        results: list[dict[str, Any] | None] = [None] * len(proposals)
        todo = list(range(len(proposals)))
        while True:
            try:
                got = await self._gatherer.run_many(_ROUTED, [proposals[i] for i in todo])
            except OperationFailed as exc:  # NotLeader, proposal_lost, overloaded, timed out
                if loop.time() + LEADER_WAIT_S >= deadline:
                    raise OperationFailed(
                        f"the record index could not take the entries: {exc.detail}",
                        code="index_unavailable",
                    ) from exc
                await asyncio.sleep(LEADER_WAIT_S)
                continue
            again = []
            for i, outcome in zip(todo, got, strict=True):
                results[i] = outcome
                expired = outcome.get("code") == "expired"
                if expired and not _past_max_index(proposals[i].proposal, outcome):
                    again.append(i)  # its term ended before it committed: stamp it anew
            todo = again
            if not todo or loop.time() + LEADER_WAIT_S >= deadline:
                return [r for r in results if r is not None]
            self.retried_expired += len(todo)
            await asyncio.sleep(LEADER_WAIT_S)

    async def _propose_gathered(
        self, lane: str, proposals: list[Operation]
    ) -> list[dict[str, Any]]:
        """One gatherer call: one batch entry here, or one forward of the batch to the leader."""
        if lane == _HERE:
            return await self._propose_here(proposals)
        return await self._route.run(
            lambda: self._propose_here(proposals),
            lambda leader, left_s: self._forward(leader, proposals, left_s),
            timeout_s=self._timeout_s,
        )

    async def _propose_here(self, proposals: Sequence[Operation]) -> list[dict[str, Any]]:
        """On the leader: stamp the term, append one entry for all, wait until applied.

        The term is the leader's own (a coordinator that has not heard of the latest election
        yet would stamp an older one, and its write would expire for nothing). The maximum
        index is the coordinator's whenever it gave one: holders collect shards by it, so it is
        never raised here.
        """
        term, max_index = self.stamp()
        stamped = [
            dataclasses.replace(
                op,
                proposal=dataclasses.replace(
                    op.proposal,
                    expiry_term=term,
                    expiry_max_index=op.proposal.expiry_max_index or max_index,
                ),
            )
            for op in proposals
        ]
        version = Dispatcher.feature_version(_View(self._log))
        if version >= LEDGER_FEATURE_VERSION:  # every record as an operation: one entry type
            return await self._append([Operation.batch_entry(stamped)], len(stamped))
        # Before feature 6 only plain records go in. An operation can only come from a node
        # that applied feature 6 before this leader did (a forward in that short window): it
        # is refused on its own, retryable, and the records gathered with it still go in.
        plain = [op.proposal for op in stamped if op.events is None]
        if not plain:
            got: list[dict[str, Any]] = []
        elif version >= BATCH_FEATURE_VERSION:
            got = await self._append([IndexProposal.batch_entry(plain)], len(plain))
        else:  # a cluster still running older code: one index.put per record
            got = await self._append([p.to_entry() for p in plain], len(plain))
        answers = iter(got)
        refused = outcome_wire("ledger_not_enabled", 0, term, 0, {})
        return [refused if op.events is not None else next(answers) for op in stamped]

    async def _append(self, entries: list[AppEntry], records: int) -> list[dict[str, Any]]:
        """Append ``entries`` for ``records`` records and wait until applied here."""
        try:
            applied = await self._log.propose(entries, timeout_s=self._timeout_s)
        except TimeoutError as exc:
            raise OperationFailed(
                f"the index entries were not applied within {self._timeout_s} s",
                code="index_unavailable",
            ) from exc
        return outcomes_of(applied, records)

    async def _forward(
        self, leader: str, proposals: Sequence[Operation], timeout_s: float
    ) -> list[dict[str, Any]]:
        body = {"proposals": [op.to_body() for op in proposals]}
        reply = await self._route.post(leader, INDEX_PATH, body, timeout_s)
        results = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(results, list) or len(results) != len(proposals):
            raise OperationFailed("malformed answer from the leader", code="index_unavailable")
        return results
