"""A deterministic in-memory cluster of Raft cores, for tests and simulations.

:class:`Cluster` runs each core's Ready cycle (persist into a :class:`MemoryStorage`, queue the
messages, apply to a tiny recording state machine, advance) and delivers messages one at a time
from a single queue. Faults are explicit calls, so a test reads as a transcript: ``block(a, b)``
(one direction), ``isolate(a)``, ``heal()``, ``crash(a)`` / ``restart(a)`` (restart reloads
only what was persisted), and dropping, duplicating or reordering queued messages. Nothing here
reads a clock or global randomness: the caller's seeded generator drives every timeout.
With ``clock`` (node id -> that node's clock now, in ms; the caller moves it) every tick,
delivered message, campaign and proposal first gives the node its clock, as the adapter does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from node.consensus.config import RaftConfig
from node.consensus.messages import Message
from node.consensus.raft import RawNode, Ready
from node.consensus.storage import MemoryStorage
from node.consensus.types import Membership, NodeId, ReadState, Rng, Role, Snapshot

__all__ = ["AppliedEntry", "Cluster", "RecordingMachine"]

AppliedEntry = tuple[int, int, int, bytes]  # (index, term, kind, payload)


@dataclass
class RecordingMachine:
    """A state machine that records every entry it applies; its snapshot is that record."""

    applied: list[AppliedEntry] = field(default_factory=list)
    applied_index: int = 0
    read_states: list[ReadState] = field(default_factory=list)

    def restore(self, snapshot: Snapshot) -> None:
        raw: list[Any] = msgpack.unpackb(snapshot.data) if snapshot.data else []
        self.applied = [(int(i), int(t), int(k), bytes(p)) for i, t, k, p in raw]
        self.applied_index = snapshot.meta.index

    def data(self) -> bytes:
        return msgpack.packb([list(a) for a in self.applied], use_bin_type=True)  # type: ignore[no-any-return]


@dataclass
class _Member:
    core: RawNode
    storage: MemoryStorage
    machine: RecordingMachine
    up: bool = True


class Cluster:
    def __init__(
        self,
        node_ids: Iterable[NodeId],
        *,
        rng: Rng,
        membership: Membership | None = None,
        config: Callable[[NodeId], RaftConfig] | None = None,
        on_ready: Callable[[NodeId, Ready], None] | None = None,
        clock: Callable[[NodeId], int] | None = None,
    ) -> None:
        self.rng = rng
        self._clock = clock  # shared by every core: deterministic, as the call order is
        self._config = config or (lambda node_id: RaftConfig(node_id))
        self._on_ready = on_ready
        self.queue: list[Message] = []
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.members: dict[NodeId, _Member] = {}
        ids = sorted(node_ids)
        initial = membership or Membership.of(ids)
        for node_id in ids:
            self._create(node_id, RawNode.bootstrap(self._config(node_id), self.rng, initial))

    # -- members

    def _create(self, node_id: NodeId, core: RawNode) -> None:
        self.members[node_id] = _Member(core, MemoryStorage(), RecordingMachine())
        self.process(node_id)

    def join(self, node_id: NodeId) -> None:
        """Start a new, empty node that waits for the leader to replicate to it."""
        self._create(node_id, RawNode.join(self._config(node_id), self.rng))

    def core(self, node_id: NodeId) -> RawNode:
        return self.members[node_id].core

    def machine(self, node_id: NodeId) -> RecordingMachine:
        return self.members[node_id].machine

    def storage(self, node_id: NodeId) -> MemoryStorage:
        return self.members[node_id].storage

    @property
    def up_ids(self) -> list[NodeId]:
        return [n for n in sorted(self.members) if self.members[n].up]

    def leaders(self) -> list[NodeId]:
        return [n for n in self.up_ids if self.core(n).role is Role.LEADER]

    def leader(self) -> NodeId | None:
        """The leader with the highest term among running nodes, if any."""
        leaders = sorted(self.leaders(), key=lambda n: self.core(n).term)
        return leaders[-1] if leaders else None

    # -- the Ready cycle

    def process(self, node_id: NodeId) -> None:
        member = self.members[node_id]
        while member.up and member.core.has_ready():
            ready = member.core.ready()
            if self._on_ready is not None:
                self._on_ready(node_id, ready)
            member.storage.persist(ready)  # 1. persist
            self.queue.extend(ready.messages)  # 2. send
            if ready.snapshot is not None:  # 3. apply
                member.machine.restore(ready.snapshot)
            for entry in ready.committed_entries:
                record = (entry.index, entry.term, int(entry.kind), entry.payload)
                member.machine.applied.append(record)
                member.machine.applied_index = entry.index
            member.machine.read_states.extend(ready.read_states)
            member.core.advance(ready)  # 4. advance

    def compact(self, node_id: NodeId) -> Snapshot:
        """Snapshot the node's state machine at its applied index and compact its log."""
        member = self.members[node_id]
        index = member.machine.applied_index
        snapshot = Snapshot(member.core.snapshot_meta(index), member.machine.data())
        member.core.compact(snapshot)
        member.storage.save_snapshot(snapshot)
        return snapshot

    # -- inputs

    def tick(self, node_ids: Iterable[NodeId] | None = None, *, times: int = 1) -> None:
        for _ in range(times):
            for node_id in sorted(node_ids) if node_ids is not None else self.up_ids:
                if self.members[node_id].up:
                    self._observe(node_id)
                    self.core(node_id).tick()
                    self.process(node_id)

    def _observe(self, node_id: NodeId) -> None:
        if self._clock is not None:
            self.core(node_id).observe_time(self._clock(node_id))

    def propose(self, node_id: NodeId, *payloads: bytes, now_ms: int | None = None) -> None:
        self._observe(node_id)
        self.core(node_id).propose(payloads, now_ms=now_ms or self.core(node_id).now_ms)
        self.process(node_id)

    def campaign(self, node_id: NodeId) -> None:
        self._observe(node_id)
        self.core(node_id).campaign()
        self.process(node_id)

    # -- the network

    def deliver_one(self, position: int = 0) -> Message:
        """Deliver the message at ``position`` of the queue (dropped if blocked or down)."""
        message = self.queue.pop(position)
        target = self.members.get(message.to)
        if (message.sender, message.to) in self.blocked or target is None or not target.up:
            return message
        self._observe(message.to)
        target.core.step(message)
        self.process(message.to)
        return message

    def deliver(self, rounds_max: int = 10_000) -> int:
        """Deliver until the queue is empty (bounded); returns how many were delivered."""
        delivered = 0
        while self.queue and delivered < rounds_max:
            self.deliver_one()
            delivered += 1
        return delivered

    def settle(self, ticks: int = 1) -> None:
        """Deliver everything, then tick every node and deliver again, ``ticks`` times."""
        self.deliver()
        for _ in range(ticks):
            self.tick()
            self.deliver()

    def elect(self, node_id: NodeId) -> None:
        self.campaign(node_id)
        self.deliver()

    def drop_where(self, predicate: Callable[[Message], bool]) -> int:
        kept = [m for m in self.queue if not predicate(m)]
        dropped = len(self.queue) - len(kept)
        self.queue = kept
        return dropped

    def duplicate(self, position: int) -> None:
        self.queue.append(replace(self.queue[position]))

    def block(self, sender: NodeId, to: NodeId) -> None:
        self.blocked.add((sender, to))

    def isolate(self, node_id: NodeId) -> None:
        for other in self.members:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def partition(self, *groups: Iterable[NodeId]) -> None:
        sets = [set(g) for g in groups]
        for a in self.members:
            for b in self.members:
                if a != b and not any(a in s and b in s for s in sets):
                    self.blocked.add((a, b))

    def heal(self) -> None:
        self.blocked.clear()

    # -- crashes

    def crash(self, node_id: NodeId) -> None:
        """Stop a node: its memory is lost, its storage stays, its queued input is dropped."""
        self.members[node_id].up = False
        self.queue = [m for m in self.queue if m.to != node_id]

    def restart(self, node_id: NodeId) -> None:
        """Restart from storage only; the state machine reloads the snapshot and re-applies."""
        member = self.members[node_id]
        machine = RecordingMachine()
        machine.restore(member.storage.snapshot)
        state = member.storage.state(applied=None)
        core = RawNode(self._config(node_id), self.rng, state)
        self.members[node_id] = _Member(core, member.storage, machine)
        self.process(node_id)
