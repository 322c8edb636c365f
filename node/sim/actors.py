"""The actors of a simulated cluster: nodes and clients, driven by the world's events.

A :class:`NodeActor` is one node process: a :class:`~node.consensus.raft.RawNode`, its
:class:`~node.sim.disk.SimDisk` and its :class:`~node.sim.machine.DedupMachine`, run by the same
adapter loop as a real node (persist and flush -> send -> apply -> advance). A crash throws the
core and the machine away and keeps only the disk's durable part. A :class:`ClientActor` writes
one command at a time with an idempotency id and retries it until acknowledged.

Actors never touch the clock, the network or each other directly: they go through the
:class:`Env` the world gives them, so further actors (coordinator, shard holders) plug in the
same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol

from node.consensus.config import RaftConfig
from node.consensus.messages import Message
from node.consensus.raft import RawNode
from node.consensus.types import Entry, Membership, NodeId, Role, Snapshot
from node.errors import CallerError, OperationFailed
from node.sim.bugs import Bug
from node.sim.checkers import Checker
from node.sim.disk import SimDisk
from node.sim.machine import Command, DedupMachine, RequestId
from node.sim.rng import SimRng

__all__ = [
    "ClientActor",
    "ClientReply",
    "ClientRequest",
    "Env",
    "NodeActor",
    "NodeState",
    "SimMessage",
]

FORWARD_HOPS_MAX = 2


@dataclass(frozen=True, slots=True)
class ClientRequest:
    sender: str
    to: NodeId
    client: str
    seq: int
    value: int
    hops: int = 0  # times a node forwarded it towards the leader


@dataclass(frozen=True, slots=True)
class ClientReply:
    sender: NodeId
    to: str
    seq: int
    ok: bool
    index: int = 0  # ok: the log position of the id
    leader_hint: NodeId | None = None


SimMessage = Message | ClientRequest | ClientReply


class Env(Protocol):
    """What an actor may use of the world."""

    @property
    def now_ms(self) -> int: ...

    @property
    def rng(self) -> SimRng: ...

    @property
    def bug(self) -> Bug: ...

    @property
    def checker(self) -> Checker: ...

    @property
    def accepting_writes(self) -> bool: ...

    def send(self, message: SimMessage) -> None: ...

    def node_ids(self) -> list[NodeId]: ...

    def on_crashed(self, node_id: NodeId) -> None: ...


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"
    QUARANTINED = "quarantined"  # found a corrupt entry at restart; waits to be replaced
    RETIRED = "retired"  # removed from the membership and stopped for good


class NodeActor:
    def __init__(
        self, env: Env, config: RaftConfig, core: RawNode, *, compact_entries: int
    ) -> None:
        self.env = env
        self.id = config.node_id
        self.config = config
        self.disk = SimDisk()
        self.core = core
        self.machine = DedupMachine(dedupe=env.bug is not Bug.NO_DEDUPE)
        self.state = NodeState.UP
        self.incarnation = 0
        self.crash_at_persist = False
        self.compact_entries = compact_entries
        self.admitted = False  # seen in a committed membership (set by the world's operator)
        self.corrupt_found: int | None = None

    @classmethod
    def bootstrap(
        cls, env: Env, config: RaftConfig, membership: Membership, *, compact_entries: int
    ) -> NodeActor:
        core = RawNode.bootstrap(config, env.rng, membership)
        node = cls(env, config, core, compact_entries=compact_entries)
        node.admitted = True
        return node

    @classmethod
    def join(cls, env: Env, config: RaftConfig, *, compact_entries: int) -> NodeActor:
        return cls(env, config, RawNode.join(config, env.rng), compact_entries=compact_entries)

    @property
    def up(self) -> bool:
        return self.state is NodeState.UP

    # -- inputs

    def tick(self) -> None:
        self.core.tick(self.env.now_ms)
        self.process()

    def receive(self, message: SimMessage) -> None:
        if isinstance(message, ClientRequest):
            self._client_request(message)
        elif not isinstance(message, ClientReply):
            self.core.step(message)
        self.process()

    def _client_request(self, m: ClientRequest) -> None:
        core, env = self.core, self.env
        if core.role is Role.LEADER:
            command = Command(m.client, m.seq, self.id, m.value)
            try:
                proposal = core.propose([command.encode()], now_ms=env.now_ms)
            except (OperationFailed, CallerError):
                env.send(ClientReply(self.id, m.client, m.seq, False, leader_hint=self.id))
                return
            if env.bug is Bug.ACK_BEFORE_COMMIT:
                env.send(ClientReply(self.id, m.client, m.seq, True, proposal.first_index))
        elif core.leader_id not in (None, self.id) and m.hops < FORWARD_HOPS_MAX:
            assert core.leader_id is not None
            env.send(replace(m, sender=self.id, to=core.leader_id, hops=m.hops + 1))
        else:
            env.send(ClientReply(self.id, m.client, m.seq, False, leader_hint=core.leader_id))

    # -- the adapter loop: persist (and flush) -> send -> apply -> advance

    def process(self) -> None:
        core, disk, env = self.core, self.disk, self.env
        while self.up and core.has_ready():
            ready = core.ready()
            env.checker.on_ready(self.id, ready, core)
            disk.write_ready(ready)
            if self.crash_at_persist:
                self.crash(keep=env.rng.randint(0, disk.buffered))
                return
            if env.bug is not Bug.SKIP_FSYNC:
                disk.flush()
            for message in ready.messages:
                env.send(message)
            if ready.snapshot is not None:
                snapshot = ready.snapshot
                stream = DedupMachine.decode_stream(snapshot.data)
                self.machine.load(stream, snapshot.meta.index)  # on disk in step 1
            for entry in ready.committed_entries:
                self._apply(entry)
            core.advance(ready)
            self._maybe_compact()

    def _apply(self, entry: Entry) -> None:
        result = self.machine.apply(entry)
        self.disk.write_applied(entry.index, result[2] if result else None)
        if result is None or self.env.bug is Bug.ACK_BEFORE_COMMIT:
            return
        command, position, _ = result
        if command.origin == self.id:
            self.env.send(ClientReply(self.id, command.client, command.seq, True, position))

    def _maybe_compact(self) -> None:
        applied = self.machine.applied_index
        if applied - self.core.snapshot_index < self.compact_entries:
            return
        snapshot = Snapshot(self.core.snapshot_meta(applied), self.machine.data())
        self.core.compact(snapshot)
        self.disk.write_compaction(snapshot)

    # -- crash and restart

    def crash(self, keep: int = 0) -> None:
        """Power off: memory is lost, and all but the first ``keep`` unflushed writes."""
        self.disk.crash(keep)
        self.state = NodeState.DOWN
        self.crash_at_persist = False
        self.incarnation += 1
        self.env.on_crashed(self.id)

    def restart(self) -> bool:
        """Boot from the durable disk; a corrupt entry quarantines the node instead (False).

        A corrupt entry may be one this node acknowledged, and an acknowledgement counted
        towards a commit; repairing the log locally (truncating from the corrupt entry and
        fetching again) would let this node vote as if it never had it, so a leader without a
        committed entry could be elected. So the node never rejoins with this disk: it stays
        down until the operator removes it and a fresh member (a new id, empty disk, caught up
        from the leader by log or snapshot) takes its place.
        """
        loaded = self.disk.load(verify=self.env.bug is not Bug.ACCEPT_CORRUPT)
        if loaded.corrupt_index is not None:
            self.state = NodeState.QUARANTINED
            self.corrupt_found = loaded.corrupt_index
            return False
        self.core = RawNode(self.config, self.env.rng, loaded.persisted)
        self.machine.load(loaded.stream, loaded.persisted.applied or 0)
        self.state = NodeState.UP
        self.process()
        return True


@dataclass
class _Pending:
    seq: int
    value: int
    target: NodeId
    due_ms: int  # resend if not acknowledged by then


class ClientActor:
    """One client: a command at a time, retried with the same idempotency id until acked."""

    def __init__(self, env: Env, client_id: str, *, think_ms_max: int, retry_ms: int) -> None:
        self.env = env
        self.id = client_id
        self.think_ms_max = think_ms_max
        self.retry_ms = retry_ms
        self.seq = 0
        self.pending: _Pending | None = None
        self.target: NodeId | None = None
        self.acked = 0
        self.sends = 0

    @property
    def idle(self) -> bool:
        return self.pending is None

    def act(self) -> int:
        """Submit or resend as due; returns ms until the client wants to act again."""
        env = self.env
        if self.pending is None:
            if env.accepting_writes:
                self.seq += 1
                target = self.target or env.rng.choice(env.node_ids())
                self.pending = _Pending(self.seq, env.rng.randint(0, 10**6), target, 0)
                env.checker.on_submit((self.id, self.seq))
                self._send()
        elif env.now_ms >= self.pending.due_ms:
            self.pending.target = env.rng.choice(env.node_ids())
            self._send()
        return env.rng.randint(1, self.think_ms_max)

    def _send(self) -> None:
        assert self.pending is not None
        p = self.pending
        p.due_ms = self.env.now_ms + self.retry_ms
        self.sends += 1
        self.env.send(ClientRequest(self.id, p.target, self.id, p.seq, p.value))

    def receive(self, reply: ClientReply) -> None:
        env = self.env
        request_id: RequestId = (self.id, reply.seq)
        if reply.ok:
            env.checker.on_ack(request_id, reply.index)  # late duplicates are checked too
            if self.pending is not None and self.pending.seq == reply.seq:
                self.pending = None
                self.acked += 1
                self.target = reply.sender
            return
        if self.pending is None or self.pending.seq != reply.seq:
            return
        hint = reply.leader_hint
        self.target = hint if hint is not None and hint != reply.sender else None
        if self.target is not None:
            self.pending.target = self.target
            self._send()
        else:
            self.pending.due_ms = min(self.pending.due_ms, env.now_ms + 100)
