"""The replicated log of a node: the asyncio adapter that drives the sans-IO Raft core.

It owns one :class:`~node.consensus.raft.RawNode` and does its I/O, in the order the core
requires for every Ready: **persist** (one fsynced LevelDB batch, on a worker thread) ->
**send** (frames over ``/baas/raft/1.0.0``, fire-and-forget) -> **apply** (committed entries
through the state-machine :class:`~node.consensus.state_machine.Dispatcher`; their writes and
the applied index in one batch, unsynced: a power loss takes both and the fsynced log applies
the entries again) -> **advance**. One Ready per loop turn: inbound frames and ticks are
handled between Readys, so a backlog never keeps a leader from answering and heartbeating.

Inputs, all on the asyncio loop: inbound frames (handed over from the libp2p thread into a
bounded inbox; a full inbox drops frames, which Raft retransmits), ticks every ``tick_s``
(the core counts elections in ticks: ``election_ticks * tick_s`` is the election timeout, at
least 1 s so a compaction stall on 2 cores does not start an election), and proposals.

:meth:`ReplicatedLog.propose` returns once the entries are *applied* locally, with each
entry's outcome; a proposal overwritten by a new leader fails with ``proposal_lost`` (retry:
the record index makes retries idempotent). Only the leader accepts proposals; elsewhere it
raises :class:`NotLeader` naming the leader, and the caller forwards.

Log time (:mod:`node.consensus.log_time`). The core gets the clock every loop turn before the
inbound frames (``observe_time``), so each answer carries a fresh clock report and a fresh
leader stamps with it. An idle leader proposes a ``ledger.tick`` entry once it appended
nothing for ``log_tick_interval_ms``, so log time (and the ledger's expiry) moves in an idle
cluster: only once the log committed feature version 6, one tick in flight at most, never
while proposals wait or entries are on their way to commit. Ticks are tiny (about 30 bytes)
and, at one a second, fill ``SnapshotPolicy.entries`` (20,000) in about 5.5 idle hours: one
cheap compaction (an idle memtable), not churn.

Compaction and snapshots (:class:`SnapshotPolicy`). The applied state lives in the Raft
database with its applied index, so it is the snapshot: compacting copies nothing. Once
``entries`` (plus a per-node offset) and ``trailing_entries`` more were applied since the
compaction point, a worker thread makes the state on disk durable
(:meth:`~node.replication.durable.DurableRaftStorage.flush_state`), then the loop records the
new compaction point ``trailing_entries`` behind the applied index (one fsynced batch),
deletes the entries before it in bounded batches and tells the core
(``RawNode.compact``). The cost is the dropped entries', not the state's: a follower lagging
by fewer than ``trailing_entries`` still catches up by entries.

A follower further behind gets a snapshot made on demand: when the core sends an
``InstallSnapshot``, the adapter pins a LevelDB view of the state at its applied index ``A``
(at or past the compaction point; the meta is the core's ``snapshot_meta(A)``), sizes it, and
streams its format-2 data (:mod:`node.replication.snapshot`) straight from the view, chunk by
chunk (at most ``chunks_queued_max`` frames waiting in the link per peer, ``sends_max``
transfers at once): never held whole, never written on the sender. It reports a failed
transfer to the core (``report_snapshot(ok=False)``) so the core probes and sends again, and
leaves success to the follower's answer. Until that answer (or the core gives up),
compaction keeps the entries after ``A``, so the follower goes on by entries, not by another
snapshot (under load a transfer outlasts ``trailing_entries``). A follower writes one incoming
transfer at a time
into a staged generation, refuses one over ``bytes_max``, a gap or a failed digest, and steps
the core with a reference only when the whole transfer checked out; applying it replaces the
state in bounded batches (again at restart if a crash cut that short).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import msgpack

from business.ledger.ops_entry import LEDGER_FEATURE_VERSION, LEDGER_TICK
from node.config import RaftSettings
from node.consensus.config import RaftConfig
from node.consensus.log_time import clock_alarm
from node.consensus.messages import InstallSnapshot, Message, WireLimits, message_from_wire
from node.consensus.progress import ProgressState
from node.consensus.raft import RawNode, Ready
from node.consensus.state_machine import (
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.consensus.types import (
    ConfChangeKind,
    EntryKind,
    Membership,
    Role,
    Snapshot,
    SnapshotMeta,
)
from node.errors import (
    BaasError,
    ConfigError,
    CorruptEntry,
    InvariantViolation,
    NotLeader,
    OperationFailed,
    Overloaded,
    PeerProtocolError,
    StorageDamaged,
)
from node.replication.durable import DurableRaftStorage, PinnedState, SnapshotWriter
from node.replication.snapshot import (
    StateCheck,
    decode_state,
    encode_pieces,
    encoded_size,
)

__all__ = ["LogStatus", "ReplicatedLog", "SnapshotPolicy"]

log = logging.getLogger("baas.node.replication")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LogStatus:
    node_id: str
    role: str
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    log_time_ms: int  # the stamp of the last applied entry (0: none applied since the start)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to compact the log and the bounds on moving snapshots (``[raft]`` settings).

    The log is compacted once ``entries`` (plus a per-node offset of up to a quarter of it)
    and ``trailing_entries`` more were applied since the last compaction point; the new one
    is ``trailing_entries`` behind the applied index: a follower that lags by fewer still
    catches up by entries, only one further behind needs the whole state.
    """

    entries: int = 20_000
    trailing_entries: int = 5_000
    chunk_bytes_max: int = 1024 * 1024  # one InstallSnapshot frame; <= bytes_per_message_max
    bytes_max: int = 2 * 1024 * 1024 * 1024  # refuse to send or receive a larger one
    sends_max: int = 2  # transfers out at once (each to another follower)
    chunks_queued_max: int = 4  # a transfer's frames waiting in the link's queue to a peer

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"snapshot policy {name} must be a positive integer")


@dataclass(slots=True)
class _Compaction:
    """The state being flushed to disk on a worker thread before the log is compacted."""

    task: asyncio.Task[int]  # the applied index the flush covers
    started_s: float


@dataclass(slots=True)
class _Incoming:
    """The one snapshot being received, chunk by chunk, into a staged generation."""

    first: InstallSnapshot
    offset: int
    writer: SnapshotWriter
    check: StateCheck


def core_config(node_id: str, settings: RaftSettings) -> RaftConfig:
    """The Raft core settings a node runs with (node/main.py; the raft bench uses the same)."""
    return RaftConfig(
        node_id=node_id,
        election_ticks=settings.election_ticks,
        heartbeat_ticks=settings.heartbeat_ticks,
        inflight_messages_max=settings.append_inflight_max,
        lazy_commit_notify=True,  # followers only read locally; halves frames per commit
        clock_offset_max_ms=settings.clock_offset_max_ms,
    )


class _StateView:
    """The applied state in the Raft database, as the state machines' read-only view."""

    def __init__(self, storage: DurableRaftStorage) -> None:
        self._storage = storage

    def get(self, key: bytes) -> bytes | None:
        return self._storage.state_get(key)


class ReplicatedLog:
    def __init__(
        self,
        *,
        raft: RaftConfig,
        storage: DurableRaftStorage,
        dispatcher: Dispatcher,
        send: Callable[[str, bytes], bool],
        initial_membership: Membership,
        tick_s: float,
        inbox_frames_max: int,
        proposals_pending_max: int,
        inbox_bytes_max: int = 256 * 1024 * 1024,
        snapshots: SnapshotPolicy | None = None,
        send_backlog: Callable[[str], int] | None = None,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        log_tick_interval_ms: int = 1000,
    ) -> None:
        self._cfg = raft
        self._storage = storage
        self._dispatcher = dispatcher
        self._send = send
        self._membership = initial_membership
        self._tick_s = tick_s
        self._inbox_max = inbox_frames_max
        self._proposals_max = proposals_pending_max
        self._rng = rng or random.Random()
        self._clock_ms = clock_ms
        if log_tick_interval_ms <= 0:
            raise ConfigError("log_tick_interval_ms must be positive")
        self._log_tick_interval_ms = log_tick_interval_ms
        self._tick_task: asyncio.Task[None] | None = None  # the one tick entry in flight
        self._log_time_ms = 0
        self.log_ticks = 0  # tick entries this node proposed and saw applied, as leader
        self.log_ticks_failed = 0  # lost to a leader change, overload or a timeout
        self._wire = WireLimits(raft.entries_per_message_max, raft.bytes_per_message_max)
        self._snapshots = snapshots or SnapshotPolicy()
        # Each node compacts at its own point (up to a quarter of ``entries`` later): nodes that
        # all snapshot at the same index stall a shared box at once (seen as latency spikes).
        spread = self._snapshots.entries // 4 + 1
        self._snapshot_offset = (
            int.from_bytes(hashlib.sha256(raft.node_id.encode()).digest()[:8], "big") % spread
        )
        if self._snapshots.chunk_bytes_max > raft.bytes_per_message_max:
            raise ConfigError("snapshot chunk_bytes_max must fit raft bytes_per_message_max")
        if storage.snapshot_chunk_bytes_max > self._snapshots.chunk_bytes_max:
            raise ConfigError("the raft database's snapshot chunks must fit one frame")
        # Frames of a transfer waiting in the link to a peer; without it, no pacing (tests).
        self._send_backlog = send_backlog or (lambda _peer: 0)
        self._inbox_bytes_max = inbox_bytes_max
        self._inbox_bytes = 0
        self._inbox: list[bytes] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._node: RawNode | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when the consensus loop ends other than by stop() (see _note_death).
        self._dead = asyncio.Event()
        self.died: InvariantViolation | None = None
        self._waiting: dict[int, tuple[int, asyncio.Future[Applied]]] = {}  # index -> term
        self._reads: dict[bytes, asyncio.Future[int]] = {}  # read-index context -> index
        # Proposals waiting for the next loop turn: (payloads, their futures).
        self._queued: list[tuple[list[bytes], list[asyncio.Future[Applied]]]] = []
        self._queued_entries = 0
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_ready: Ready | None = None
        self._compaction: _Compaction | None = None
        self._compact_after = 0  # applied index before which no new attempt starts (back-off)
        self._sending: dict[str, tuple[SnapshotMeta, asyncio.Task[None]]] = {}
        # Peer -> the index of the snapshot streamed to it, until it answers or the core gives
        # up: compaction keeps the entries after it (else the follower, once it installed the
        # snapshot, would find them gone and need another: forever, under load).
        self._sent_at: dict[str, int] = {}
        self._incoming: _Incoming | None = None
        self.frames_dropped = 0
        self.frames_malformed = 0
        self.compactions = 0
        self.compactions_failed = 0  # the flush before one failed; retried later
        self.compacted_entries = 0  # log entries dropped by compaction, in total
        self.compaction_ms = 0  # the latest one: flush (worker thread) and compaction
        self.snapshots_sent = 0
        self.snapshot_sends_failed = 0
        self.snapshot_sent_bytes = 0  # in total, over every completed transfer
        self.snapshot_send_ms = 0  # how long the latest completed transfer took
        self.snapshots_received = 0  # transfers complete and checked
        self.snapshots_rejected = 0  # transfers refused: oversize, malformed, digest mismatch
        self.snapshots_installed = 0  # state replaced from a snapshot (received or at restart)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._storage.has_state:
            snapshot = self._storage.snapshot
            if self._storage.applied_index < snapshot.meta.index:  # crashed before restoring
                await asyncio.to_thread(self._restore, snapshot)
            self._node = RawNode(self._cfg, self._rng, self._storage.state())
        elif self._membership.is_member(self._cfg.node_id):
            self._node = RawNode.bootstrap(self._cfg, self._rng, self._membership)
        else:  # joining a running cluster: an empty log, filled by the leader once added
            self._node = RawNode.join(self._cfg, self._rng)
        self._task = asyncio.create_task(self._run(), name="replicated-log")
        self._task.add_done_callback(self._note_death)

    def _note_death(self, task: asyncio.Task[None]) -> None:
        """The consensus loop ended on its own: a node must not run on without consensus."""
        if task.cancelled():
            return  # stop()
        exc = task.exception()
        if isinstance(exc, StorageDamaged):  # keep its type: its line tells the operator what to do
            self.died = StorageDamaged(f"the raft loop died: {exc.detail}")
        else:
            self.died = InvariantViolation(
                f"the raft loop died: {type(exc).__name__}: {exc}"
                if exc is not None
                else "the raft loop returned"
            )
        self.died.__cause__ = exc
        self._dead.set()

    async def wait_dead(self) -> InvariantViolation:
        """Wait until the consensus loop dies (never, while the node is healthy)."""
        await self._dead.wait()
        assert self.died is not None
        return self.died

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        if self._task is not None and not self._task.done():  # a dead one: see self.died
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, sending in self._sending.values():
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        self._sending.clear()
        job, self._compaction = self._compaction, None
        if job is not None:  # its thread flushes the database: let it finish first
            with contextlib.suppress(BaasError):
                await job.task
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(OperationFailed("the log stopped", code="proposal_lost"))
        self._waiting.clear()
        for _, futures in self._queued:
            for future in futures:
                if not future.done():
                    future.set_exception(OperationFailed("the log stopped", code="proposal_lost"))
        self._queued.clear()

    # ------------------------------------------------------------------ inputs

    def deliver(self, peer: str, payload: bytes) -> None:
        """Hand over one inbound frame; safe to call from the libp2p thread."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: we are shutting down
            loop.call_soon_threadsafe(self._enqueue, payload)

    def _enqueue(self, payload: bytes) -> None:
        # Bytes bound too: snapshot chunks are large, and a receiver slower than its link
        # drops them here (the leader sends the snapshot again) rather than growing.
        full = self._inbox_bytes + len(payload) > self._inbox_bytes_max
        if len(self._inbox) >= self._inbox_max or full:
            self.frames_dropped += 1
            return
        self._inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._wake.set()

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]:
        """Append entries through the leader and wait until they are applied here.

        Proposals made while the loop is busy are handed to the core together, once per loop
        turn: one Append per follower then carries all of them (one core call per proposal
        would send one Append per proposal and make every follower acknowledge each alone).
        """
        node = self._require_node()
        if node.role is not Role.LEADER or node.transferring_to is not None:
            raise NotLeader("this node is not the leader", leader_hint=node.leader_id)
        if self._queued_entries + len(self._waiting) + len(entries) > self._proposals_max:
            raise Overloaded("too many proposals waiting to be applied")
        assert self._loop is not None
        payloads = [encode_app_entry(e) for e in entries]
        futures: list[asyncio.Future[Applied]] = [self._loop.create_future() for _ in payloads]
        self._queued.append((payloads, futures))
        self._queued_entries += len(payloads)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # no-op once done; a timed-out one is dropped below

    def _hand_queued_to_core(self, node: RawNode) -> None:
        queued, self._queued = self._queued, []
        self._queued_entries = 0
        live = [
            (p, f)
            for payloads, futures in queued
            for p, f in zip(payloads, futures, strict=True)
            if not f.done()
        ]
        if not live:
            return
        if node.role is not Role.LEADER or node.transferring_to is not None:
            hint = node.transferring_to or node.leader_id
            for _, future in live:
                future.set_exception(
                    NotLeader("leadership moved before the proposal", leader_hint=hint)
                )
            return
        chunk = self._cfg.proposal_entries_max
        for start in range(0, len(live), chunk):
            part = live[start : start + chunk]
            proposal = node.propose([p for p, _ in part], now_ms=self._clock_ms())
            for offset, (_, future) in enumerate(part):
                self._waiting[proposal.first_index + offset] = (proposal.term, future)

    async def read_barrier(self, *, timeout_s: float) -> int:
        """Wait until this node has applied everything committed when the call began.

        ReadIndex, not a lease: the leader confirms it is still leader with a heartbeat round
        before answering, which needs no bound on clock drift between nodes (a lease does);
        it costs one round trip, paid only for a local miss. Returns the read index.

        Raft does not retransmit a ReadIndex request, and a leader that steps down (a
        leadership hand-over, a crash) drops the ones it holds: an unanswered request is
        asked again, with a new context, every election timeout until ``timeout_s``.
        """
        node = self._require_node()
        if len(self._reads) >= self._proposals_max:
            raise Overloaded("too many reads waiting for a read index")
        assert self._loop is not None
        deadline = self._loop.time() + timeout_s
        attempt_s = self._cfg.election_ticks * self._tick_s
        while True:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise OperationFailed(
                    "no read index from the leader in time", code="index_unavailable"
                )
            context = os.urandom(16)
            answer: asyncio.Future[int] = self._loop.create_future()
            self._reads[context] = answer
            try:
                async with asyncio.timeout(min(remaining, attempt_s)):
                    try:
                        node.read_index(context)
                    except NotLeader:  # an election is under way: ask once it is decided
                        await asyncio.sleep(self._tick_s)
                        continue
                    self._wake.set()
                    index = await answer
            except TimeoutError:
                continue
            finally:
                self._reads.pop(context, None)
            try:
                async with asyncio.timeout(max(0.0, deadline - self._loop.time())):
                    await self._applied(index)
            except TimeoutError as exc:
                raise OperationFailed(
                    "the read index was not applied in time", code="index_unavailable"
                ) from exc
            return index

    async def propose_change(self, kind: ConfChangeKind, node_id: str, *, timeout_s: float) -> None:
        """Propose one Raft membership change (leader only); return once applied here."""
        node = self._require_node()
        if node.role is not Role.LEADER:
            raise NotLeader("this node is not the leader", leader_hint=node.leader_id)
        proposal = node.propose_change(kind, node_id, now_ms=self._clock_ms())
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._applied(proposal.last_index)
        except TimeoutError as exc:
            raise OperationFailed(
                "the membership change was not applied in time", code="proposal_lost"
            ) from exc

    async def transfer_leadership(self, target: str, *, timeout_s: float) -> bool:
        """Hand leadership to voter ``target``; True once this node is no longer leader."""
        node = self._require_node()
        if node.role is not Role.LEADER:
            raise NotLeader("this node is not the leader", leader_hint=node.leader_id)
        node.transfer_leadership(target)
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if node.role is not Role.LEADER:
                return True
            if node.transferring_to is None:
                return False  # given up (the target did not take over in time)
            await asyncio.sleep(self._tick_s / 2)
        return node.role is not Role.LEADER

    def match_index(self, peer: str) -> int | None:
        """How far ``peer``'s log is known to match the leader's (None unless leader)."""
        node = self._require_node()
        progress = node.progress(peer) if node.role is Role.LEADER else None
        return None if progress is None else progress.match

    async def wait_applied(self, index: int, *, timeout_s: float) -> None:
        """Return once this node has applied entry ``index`` (TimeoutError past ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            await self._applied(index)

    async def _applied(self, index: int) -> None:
        if self._storage.applied_index >= index:
            return
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._applied_waiters.append((index, done))
        await done

    # ------------------------------------------------------------------ state

    def _require_node(self) -> RawNode:
        if self._node is None:
            raise OperationFailed("the replicated log is not running", code="not_ready")
        return self._node

    def status(self) -> LogStatus:
        node = self._require_node()
        ready = self._last_ready
        membership = ready.membership if ready is not None else self._membership
        return LogStatus(
            node_id=self._cfg.node_id,
            role=node.role.name.lower(),
            term=node.term,
            leader_id=node.leader_id,
            commit_index=node.commit_index,
            applied_index=self._storage.applied_index,
            last_index=node.last_index,
            snapshot_index=node.snapshot_index,
            voters=tuple(sorted(membership.voters)),
            learners=tuple(sorted(membership.learners)),
            log_time_ms=self._log_time_ms,
        )

    def log_time_stats(self) -> dict[str, object]:
        """Log time and, on the leader, its measured clock offsets to each peer (peer's clock
        minus ours, in ms) with an alarm when one exceeds ``clock_offset_max_ms``."""
        node = self._require_node()
        offsets = node.clock_offsets()
        limit = self._cfg.clock_offset_max_ms
        return {
            "log_time_ms": self._log_time_ms,
            "clock_offsets_ms": offsets,
            "clock_offset_max_ms": limit,
            "clock_alarm": clock_alarm(offsets, limit),
            "log_ticks": self.log_ticks,
            "log_ticks_failed": self.log_ticks_failed,
        }

    def state_get(self, key: bytes) -> bytes | None:
        """Read applied state (committed entries never change: no consensus round needed)."""
        return self._storage.state_get(key)

    def snapshot_stats(self) -> dict[str, int]:
        """Counters of compaction and snapshot transfers, for status and metrics."""
        return {
            "snapshot_index": self._require_node().snapshot_index,
            "compactions": self.compactions,
            "compactions_failed": self.compactions_failed,
            "compacted_entries": self.compacted_entries,
            "compaction_ms": self.compaction_ms,
            "snapshots_sent": self.snapshots_sent,
            "snapshot_sends_failed": self.snapshot_sends_failed,
            "snapshot_sent_bytes": self.snapshot_sent_bytes,
            "snapshot_send_ms": self.snapshot_send_ms,
            "snapshots_received": self.snapshots_received,
            "snapshots_rejected": self.snapshots_rejected,
            "snapshots_installed": self.snapshots_installed,
        }

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        node = self._require_node()
        next_tick = asyncio.get_running_loop().time() + self._tick_s
        while True:
            timeout = max(0.0, next_tick - asyncio.get_running_loop().time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            node.observe_time(self._clock_ms())  # fresh clock reports and stamps
            inbox, self._inbox = self._inbox, []
            self._inbox_bytes = 0
            for payload in inbox:
                await self._step(node, payload)
            if self._queued:
                self._hand_queued_to_core(node)
            if asyncio.get_running_loop().time() >= next_tick:
                node.tick(self._clock_ms())
                next_tick += self._tick_s
                self._maybe_propose_tick(node)
            # One Ready per turn, then inbound frames and ticks again: under a backlog (a
            # burst of large proposals, a long apply) the leader keeps answering and sending
            # heartbeats between Readys instead of going silent until the backlog is gone,
            # which cost it its term (check-quorum) in the bench.
            if node.has_ready():
                await self._handle(node, node.ready())
                if node.has_ready():
                    self._wake.set()
            await self._compact(node)

    def _maybe_propose_tick(self, node: RawNode) -> None:
        """Idle leader: append a tick entry so log time moves (see the module docstring)."""
        busy = bool(self._queued or self._waiting) or self._tick_task is not None
        if not node.tick_entry_due(self._log_tick_interval_ms, busy=busy):
            return
        if Dispatcher.feature_version(_StateView(self._storage)) < LEDGER_FEATURE_VERSION:
            return
        self._tick_task = asyncio.create_task(self._propose_tick(), name="log-tick")

    async def _propose_tick(self) -> None:
        timeout_s = 2 * self._cfg.election_ticks * self._tick_s
        try:
            await self.propose([AppEntry(LEDGER_TICK, {})], timeout_s=timeout_s)
            self.log_ticks += 1
        except (BaasError, TimeoutError) as exc:
            self.log_ticks_failed += 1  # the next idle interval proposes another
            log.debug("tick entry not applied: %s", exc)
        finally:
            self._tick_task = None

    async def _step(self, node: RawNode, payload: bytes) -> None:
        try:
            message: Message = message_from_wire(msgpack.unpackb(payload, raw=False), self._wire)
            if isinstance(message, InstallSnapshot):
                await self._receive_snapshot(node, message)
            else:
                node.step(message)
        except (PeerProtocolError, msgpack.UnpackException, ValueError) as exc:
            self.frames_malformed += 1
            log.warning("dropped a malformed raft frame: %s", exc)

    async def _handle(self, node: RawNode, ready: Ready) -> None:
        # 1. persist (fsynced before anything of this Ready leaves the node)
        if ready.must_sync:
            await asyncio.to_thread(self._storage.persist, ready)
        # 2. send
        for message in ready.messages:
            if isinstance(message, InstallSnapshot):
                self._send_snapshot(node, message)
            else:
                self._send(message.to, msgpack.packb(message.to_wire(), use_bin_type=True))
        # 3. apply
        if ready.snapshot is not None and ready.snapshot.meta.index > 0:
            await asyncio.to_thread(self._restore, ready.snapshot)
        if ready.committed_entries:
            await self._apply(ready)
        for read in ready.read_states:
            waiting = self._reads.get(read.context)
            if waiting is not None and not waiting.done():
                waiting.set_result(read.index)
        applied = self._storage.applied_index
        still = []
        for index, done in self._applied_waiters:
            if index <= applied:
                if not done.done():
                    done.set_result(None)
            else:
                still.append((index, done))
        self._applied_waiters = still
        self._last_ready = ready
        # 4. advance
        node.advance(ready)

    async def _apply(self, ready: Ready) -> None:
        batch = [
            (LogPosition(e.index, e.term, e.leader_time_ms), e.payload)
            for e in ready.committed_entries
            if e.kind is EntryKind.NORMAL
        ]
        try:
            applied, writes = self._dispatcher.apply_batch(batch, _StateView(self._storage))
        except CorruptEntry as exc:  # a state value on our disk: this replica cannot go on
            raise self._storage.damaged(f"applying: {exc.detail}") from exc
        except BaasError as exc:  # e.g. upgrade_required: stop applying, loudly
            log.error("cannot apply committed entries: %s", exc.detail)
            raise
        last = ready.committed_entries[-1].index
        self._log_time_ms = ready.committed_entries[-1].leader_time_ms
        # Unsynced, inline: the state and applied index are rebuilt from the fsynced log if a
        # power loss takes this batch (durable.py); the proposer's ack rests on the commit.
        self._storage.commit_applied(writes, last, sync=False)
        by_index = {a.position.index: a for a in applied}
        for entry in ready.committed_entries:
            held = self._waiting.pop(entry.index, None)
            if held is None:
                continue
            term, future = held
            if future.done():
                continue
            result = by_index.get(entry.index)
            if entry.term != term or result is None:
                future.set_exception(
                    OperationFailed(
                        "a new leader replaced this proposal; retry", code="proposal_lost"
                    )
                )
            else:
                future.set_result(result)

    # ------------------------------------------------------------------ snapshots

    def _restore(self, snapshot: Snapshot) -> None:
        """Replace the applied state with the snapshot's (worker thread; streamed from disk)."""
        size, chunks = self._storage.snapshot_chunks(snapshot.data)
        self._storage.restore_applied(_checked_state(chunks, size), snapshot.meta.index)
        self.snapshots_installed += 1
        log.info("state restored from the snapshot at %d (%d bytes)", snapshot.meta.index, size)

    async def _compact(self, node: RawNode) -> None:
        """Flush the state when compaction is due; compact the log once the flush is done.

        The flush runs on a worker thread while applying goes on; the loop only waits for
        the compaction itself (one fsynced batch, then deleting the dropped entries in bounded
        batches), which costs what the dropped entries cost.
        """
        policy, applied, job = self._snapshots, self._storage.applied_index, self._compaction
        if job is None:
            due = policy.entries + self._snapshot_offset + policy.trailing_entries
            if applied - node.snapshot_index >= due and applied >= self._compact_after:
                task = asyncio.create_task(asyncio.to_thread(self._storage.flush_state))
                task.add_done_callback(lambda _: self._wake.set())
                self._compaction = _Compaction(task, time.monotonic())
            return
        if not job.task.done():
            return
        self._compaction = None
        error = job.task.exception()
        if isinstance(error, StorageDamaged):
            raise error  # the node stops (see _note_death), never compacts on past it
        if error is not None:
            self.compactions_failed += 1
            self._compact_after = applied + policy.entries
            log.error("flushing the state before compacting failed: %s", error)
            return
        index = min(job.task.result(), applied - policy.trailing_entries, self._floor(node))
        if index <= node.snapshot_index:
            return  # a snapshot received meanwhile moved the log past it
        meta = node.snapshot_meta(index)
        dropped = await asyncio.to_thread(self._storage.compact, meta)
        node.compact(Snapshot(meta, b""))  # no data: a follower is sent the state on demand
        self.compactions += 1
        self.compacted_entries += dropped
        self.compaction_ms = int((time.monotonic() - job.started_s) * 1000)
        log.info(
            "log compacted to %d: %d entries dropped in %d ms",
            index,
            dropped,
            self.compaction_ms,
        )

    def _floor(self, node: RawNode) -> int:
        """The lowest index a follower is being sent (or is installing) a snapshot at."""
        for peer in list(self._sent_at):
            progress = node.progress(peer) if node.role is Role.LEADER else None
            if progress is None or progress.state is not ProgressState.SNAPSHOT:
                del self._sent_at[peer]
        return min(self._sent_at.values(), default=node.last_index)

    def _send_snapshot(self, node: RawNode, message: InstallSnapshot) -> None:
        """Stream the state to a follower the core wants to send a snapshot to."""
        peer = message.to
        running = self._sending.get(peer)
        if running is not None and not running[1].done():
            if running[0] == message.meta:
                return  # the core timed out and asks again: that transfer is still going
            running[1].cancel()
        busy = sum(1 for _, task in self._sending.values() if not task.done())
        if busy >= self._snapshots.sends_max:
            node.report_snapshot(peer, ok=False)  # the core asks again after a probe
            return
        # Pinned here, on the loop: the view and the applied index are of the same moment.
        pinned = self._storage.pin_state()
        self._sent_at[peer] = pinned.applied_index
        task = asyncio.create_task(self._stream_snapshot(node, message, pinned))
        self._sending[peer] = (message.meta, task)

    async def _stream_snapshot(
        self, node: RawNode, message: InstallSnapshot, pinned: PinnedState
    ) -> None:
        """Send the pinned state as one snapshot at its applied index, in bounded chunks.

        Two passes over the view, both on worker threads: one sizes the data (the first frame
        announces it), one encodes and sends it; at most one chunk is held at a time.
        """
        peer, started = message.to, time.monotonic()
        try:
            meta = node.snapshot_meta(pinned.applied_index)
            size = await asyncio.to_thread(encoded_size, pinned.items())
            if size > self._snapshots.bytes_max:
                raise OperationFailed(
                    f"a snapshot of {size} bytes exceeds bytes_max", code="snapshot_too_large"
                )
            chunks = _chunked(encode_pieces(pinned.items()), self._snapshots.chunk_bytes_max)
            offset = 0
            while True:
                piece = await asyncio.to_thread(next, chunks, b"")
                last = offset + len(piece) >= size
                if (not piece and not last) or offset + len(piece) > size:
                    raise InvariantViolation("snapshot data is not the size announced")
                frame = replace(
                    message, meta=meta, offset=offset, total_bytes=size, chunk=piece, last=last
                )
                await self._wait_link(peer)
                if node.role is not Role.LEADER or node.term != message.term:
                    return  # no longer ours to send
                if not self._send(peer, msgpack.packb(frame.to_wire(), use_bin_type=True)):
                    raise OperationFailed(f"the link to {peer} dropped a snapshot chunk")
                offset += len(piece)
                if last:
                    break
            if await asyncio.to_thread(next, chunks, None) is not None:
                raise InvariantViolation("snapshot data longer than announced")
            self.snapshots_sent += 1
            self.snapshot_sent_bytes += size
            self.snapshot_send_ms = int((time.monotonic() - started) * 1000)
            log.info("snapshot at %d (%d bytes) sent to %s", meta.index, size, peer)
        except BaasError as exc:
            self.snapshot_sends_failed += 1
            log.warning("snapshot to %s not sent: %s", peer, exc.detail)
            node.report_snapshot(peer, ok=False)
            self._wake.set()
        finally:
            pinned.close()

    async def _wait_link(self, peer: str) -> None:
        """Wait until the link to ``peer`` has room for one more chunk (bounded memory)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._tick_s * self._cfg.snapshot_timeout
        while self._send_backlog(peer) >= self._snapshots.chunks_queued_max:
            if loop.time() > deadline:
                raise OperationFailed(f"the link to {peer} stalled during a snapshot")
            await asyncio.sleep(0.005)

    async def _receive_snapshot(self, node: RawNode, m: InstallSnapshot) -> None:
        """One chunk of a snapshot from the leader: staged on disk, checked, then stepped.

        The core sees the snapshot once complete and checked, as a reference to its chunks.
        One transfer at a time: a chunk that does not continue it starts over (offset 0 of a
        newer one) or is dropped; the leader resends after its snapshot timeout.
        """
        if m.offset == 0 and (
            m.term < node.term
            or m.meta.index <= node.commit_index
            or node.term_at(m.meta.index) == m.meta.term
        ):
            # The core answers these without the data (stale, or entries already held).
            node.step(replace(m, total_bytes=0, chunk=b"", last=True))
            return
        incoming = self._incoming
        if m.offset == 0:
            if incoming is not None and m.term < incoming.first.term:
                return
            incoming = self._begin_incoming(m)
            if incoming is None:
                return
        same = incoming is not None and (m.sender, m.term, m.meta, m.total_bytes) == (
            incoming.first.sender,
            incoming.first.term,
            incoming.first.meta,
            incoming.first.total_bytes,
        )
        if incoming is None or not same:
            return  # a chunk of a transfer we are not receiving
        if m.offset != incoming.offset:
            self._drop_incoming("a chunk went missing")
            return
        try:
            incoming.check.update(m.chunk)
            await asyncio.to_thread(incoming.writer.write, m.chunk)
            incoming.offset += len(m.chunk)
            if not m.last:
                return
            incoming.check.finish()
            ref = await asyncio.to_thread(incoming.writer.finish)
        except BaasError as exc:
            self.snapshots_rejected += 1
            self._drop_incoming(f"refused: {exc.detail}")
            return
        self._incoming = None
        self.snapshots_received += 1
        data = ref.encode()
        before = node.snapshot_index
        node.step(replace(m, offset=0, total_bytes=len(data), chunk=data, last=True))
        if node.snapshot_index == before or node.snapshot_index != m.meta.index:
            self._storage.discard_generation(ref.generation)  # the core did not need it

    def _begin_incoming(self, m: InstallSnapshot) -> _Incoming | None:
        if self._incoming is not None:
            self._drop_incoming("a newer transfer began")
        if m.total_bytes > self._snapshots.bytes_max:
            self.snapshots_rejected += 1
            log.warning("refused a snapshot of %d bytes (bytes_max)", m.total_bytes)
            return None
        try:
            check = StateCheck(m.total_bytes)
        except BaasError as exc:
            self.snapshots_rejected += 1
            log.warning("refused a snapshot from %s: %s", m.sender, exc.detail)
            return None
        writer = SnapshotWriter(self._storage, self._storage.reserve_generation())
        self._incoming = _Incoming(m, 0, writer, check)
        return self._incoming

    def _drop_incoming(self, why: str) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            log.warning(
                "snapshot at %d from %s dropped: %s",
                incoming.first.meta.index,
                incoming.first.sender,
                why,
            )
            self._storage.discard_generation(incoming.writer.generation)


def _chunked(pieces: Iterator[bytes], chunk_bytes_max: int) -> Iterator[bytes]:
    """The data of ``pieces`` regrouped in chunks of ``chunk_bytes_max`` (the last shorter)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= chunk_bytes_max:
            yield bytes(buffer[:chunk_bytes_max])
            del buffer[:chunk_bytes_max]
    if buffer:
        yield bytes(buffer)


def _checked_state(chunks: Iterator[bytes], size: int) -> Iterator[tuple[bytes, bytes]]:
    """The stored snapshot's state items; on disk a malformed stream is corruption."""
    try:
        yield from decode_state(chunks, size)
    except (PeerProtocolError, msgpack.UnpackException, ValueError) as exc:
        raise CorruptEntry(f"stored snapshot data is malformed: {exc}") from exc
