"""The replicated log of a node: the asyncio adapter that drives the sans-IO Raft core.

It owns one :class:`~node.consensus.raft.RawNode` and does its I/O, in the order the core
requires for every Ready: **persist** (one fsynced LevelDB batch, on a worker thread) ->
**send** (frames over ``/baas/raft/1.0.0``, fire-and-forget) -> **apply** (committed entries
through the state-machine :class:`~node.consensus.state_machine.Dispatcher`; their writes and
the applied index in one fsynced batch) -> **advance**.

Inputs, all on the asyncio loop: inbound frames (handed over from the libp2p thread into a
bounded inbox; a full inbox drops frames, which Raft retransmits), ticks every ``tick_s``
(the core counts elections in ticks: ``election_ticks * tick_s`` is the election timeout, at
least 1 s so a compaction stall on 2 cores does not start an election), and proposals.

:meth:`ReplicatedLog.propose` returns once the entries are *applied* locally, with each
entry's outcome; a proposal overwritten by a new leader fails with ``proposal_lost`` (retry:
the record index makes retries idempotent). Only the leader accepts proposals; elsewhere it
raises :class:`NotLeader` naming the leader, and the caller forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgpack

from node.consensus.config import RaftConfig
from node.consensus.messages import Message, WireLimits, message_from_wire
from node.consensus.raft import RawNode, Ready
from node.consensus.state_machine import (
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.consensus.types import ConfChangeKind, EntryKind, Membership, Role
from node.errors import BaasError, NotLeader, OperationFailed, Overloaded, PeerProtocolError
from node.replication.durable import DurableRaftStorage

__all__ = ["LogStatus", "ReplicatedLog"]

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
    voters: tuple[str, ...]
    learners: tuple[str, ...]


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
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = _now_ms,
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
        self._wire = WireLimits(raft.entries_per_message_max, raft.bytes_per_message_max)
        self._inbox: list[bytes] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._node: RawNode | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[int, tuple[int, asyncio.Future[Applied]]] = {}  # index -> term
        self._reads: dict[bytes, asyncio.Future[int]] = {}  # read-index context -> index
        # Proposals waiting for the next loop turn: (payloads, their futures).
        self._queued: list[tuple[list[bytes], list[asyncio.Future[Applied]]]] = []
        self._queued_entries = 0
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_ready: Ready | None = None
        self.frames_dropped = 0
        self.frames_malformed = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._storage.has_state:
            self._node = RawNode(self._cfg, self._rng, self._storage.state())
        elif self._membership.is_member(self._cfg.node_id):
            self._node = RawNode.bootstrap(self._cfg, self._rng, self._membership)
        else:  # joining a running cluster: an empty log, filled by the leader once added
            self._node = RawNode.join(self._cfg, self._rng)
        self._task = asyncio.create_task(self._run(), name="replicated-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        if len(self._inbox) >= self._inbox_max:
            self.frames_dropped += 1
            return
        self._inbox.append(payload)
        self._wake.set()

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]:
        """Append entries through the leader and wait until they are applied here.

        Proposals made while the loop is busy are handed to the core together, once per loop
        turn: one Append per follower then carries all of them (one core call per proposal
        would send one Append per proposal and make every follower acknowledge each alone).
        """
        node = self._require_node()
        if node.role is not Role.LEADER:
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
        if node.role is not Role.LEADER:
            for _, future in live:
                future.set_exception(
                    NotLeader("leadership moved before the proposal", leader_hint=node.leader_id)
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
        """
        node = self._require_node()
        if len(self._reads) >= self._proposals_max:
            raise Overloaded("too many reads waiting for a read index")
        assert self._loop is not None
        context = os.urandom(16)
        answer: asyncio.Future[int] = self._loop.create_future()
        self._reads[context] = answer
        try:
            async with asyncio.timeout(timeout_s):
                node.read_index(context)
                self._wake.set()
                index = await answer
                await self._applied(index)
                return index
        except TimeoutError as exc:
            raise OperationFailed(
                "no read index from the leader in time", code="index_unavailable"
            ) from exc
        finally:
            self._reads.pop(context, None)

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

    def match_index(self, peer: str) -> int | None:
        """How far ``peer``'s log is known to match the leader's (None unless leader)."""
        node = self._require_node()
        progress = node.progress(peer) if node.role is Role.LEADER else None
        return None if progress is None else progress.match

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
            voters=tuple(sorted(membership.voters)),
            learners=tuple(sorted(membership.learners)),
        )

    def state_get(self, key: bytes) -> bytes | None:
        """Read applied state (committed entries never change: no consensus round needed)."""
        return self._storage.state_get(key)

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
            inbox, self._inbox = self._inbox, []
            for payload in inbox:
                self._step(node, payload)
            if self._queued:
                self._hand_queued_to_core(node)
            if asyncio.get_running_loop().time() >= next_tick:
                node.tick(self._clock_ms())
                next_tick += self._tick_s
            while node.has_ready():
                await self._handle(node, node.ready())

    def _step(self, node: RawNode, payload: bytes) -> None:
        try:
            message: Message = message_from_wire(msgpack.unpackb(payload, raw=False), self._wire)
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
            self._send(message.to, msgpack.packb(message.to_wire(), use_bin_type=True))
        # 3. apply
        if ready.snapshot is not None and ready.snapshot.meta.index > 0:
            items = msgpack.unpackb(ready.snapshot.data, raw=False) if ready.snapshot.data else []
            await asyncio.to_thread(
                self._storage.restore_applied,
                [(bytes(k), bytes(v)) for k, v in items],
                ready.snapshot.meta.index,
            )
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
        except BaasError as exc:  # e.g. upgrade_required: stop applying, loudly
            log.error("cannot apply committed entries: %s", exc.detail)
            raise
        last = ready.committed_entries[-1].index
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
