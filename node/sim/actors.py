"""The actors of a simulated cluster: nodes and clients, driven by the world's events.

A :class:`NodeActor` is one node process: a :class:`~node.consensus.raft.RawNode`, its
:class:`~node.sim.disk.SimDisk` and its :class:`~node.sim.machine.DedupMachine`, run by the same
adapter loop as a real node (persist and flush -> send -> apply -> advance), plus its data plane
(:mod:`node.sim.dataplane`): a shard store and holder, a coordinator and, while it leads, the
mover. A crash throws the core, the machine and the data plane's memory away and keeps only the
durable part of the disk and the shard store. A node removed from the membership *drains*: its
Raft core stops, but it keeps serving its shards until the mover has moved them away.

A :class:`ClientActor` writes one command (or, as a record client, one record through a
coordinator) at a time with an idempotency id and retries it until acknowledged.

Actors never touch the clock, the network or each other directly: they go through the
:class:`Env` the world gives them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from business.ledger.ops_entry import LEDGER_FEATURE_VERSION, LEDGER_TICK
from node.consensus.config import RaftConfig
from node.consensus.ledger_ops import LEDGER_OPS
from node.consensus.messages import InstallSnapshot, Message
from node.consensus.raft import RawNode
from node.consensus.record_index import INDEX_MOVE, INDEX_PUT, INDEX_PUT_BATCH
from node.consensus.state_machine import AppEntry, Dispatcher, decode_app_entry
from node.consensus.types import Entry, Membership, NodeId, Role, Snapshot
from node.errors import CallerError, OperationFailed
from node.sim.bugs import Bug
from node.sim.checkers import Checker
from node.sim.dataplane import (
    Coordinator,
    DataMessage,
    DataParams,
    Holder,
    IndexForward,
    Mover,
    RecordReply,
    RecordWrite,
    ShardDelete,
    ShardDeleteReply,
    ShardGet,
    ShardGetReply,
    ShardPut,
    ShardPutReply,
    app_entry_fields,
    batch_outcomes,
    propose_app_entry,
)
from node.sim.disk import SimDisk
from node.sim.ledger_load import RETRY_CHANCE, OpFields, Workload
from node.sim.machine import Command, CommandResult, DedupMachine, decode_state
from node.sim.rng import SimRng
from node.sim.shards import SimShardStore

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
LOG_TICK_INTERVAL_MS = 1_000  # an idle leader's tick entries (once feature 6 is enabled)
BROKEN_REPLICA = "n1"  # the replica skip-expiry and skip-refund-record break (every seed has one)


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


SimMessage = Message | ClientRequest | ClientReply | DataMessage | RecordReply
ReplyHandler = Callable[[ShardPutReply | ShardGetReply | ShardDeleteReply], None]


class Env(Protocol):
    """What an actor may use of the world."""

    @property
    def now_ms(self) -> int: ...

    def clock_ms(self, node_id: NodeId) -> int:
        """Node ``node_id``'s clock now: the simulated time plus its clock's offset."""
        ...

    @property
    def rng(self) -> SimRng: ...

    @property
    def bug(self) -> Bug: ...

    @property
    def checker(self) -> Checker: ...

    @property
    def accepting_writes(self) -> bool: ...

    @property
    def data(self) -> DataParams: ...

    @property
    def feature_version(self) -> int:
        """The log feature version the leader enables (the newest a node understands)."""
        ...

    @property
    def setup_entries(self) -> Sequence[tuple[bytes, AppEntry]]:
        """The workload's identity entries, each with the state key that shows it applied."""
        ...

    def send(self, message: SimMessage) -> None: ...

    def count(self, what: str) -> None:
        """Add one to the run's statistic ``what``."""
        ...

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
        self.machine = DedupMachine(
            dedupe=env.bug is not Bug.NO_DEDUPE,
            skip_expiry=env.bug is Bug.SKIP_EXPIRY and self.id == BROKEN_REPLICA,
            skip_refund_record=env.bug is Bug.SKIP_REFUND_RECORD and self.id == BROKEN_REPLICA,
        )
        self.state = NodeState.UP
        self.incarnation = 0
        self.crash_at_persist = False
        self.compact_entries = compact_entries
        self.admitted = False  # seen in a committed membership (set by the world's operator)
        self.corrupt_found: int | None = None
        self.draining = False  # removed from the membership; serves its shards until moved
        self.shards = SimShardStore()
        self._reset_memory()

    def _reset_memory(self) -> None:
        """The data plane's in-memory state, as a (re)started process has it."""
        self.holder = Holder(self)
        self.coordinator = Coordinator(self)
        self.mover = Mover(self)
        self._waiting: dict[int, ReplyHandler] = {}
        self._next_tag = 0

    def new_tag(self, handler: ReplyHandler) -> int:
        self._next_tag += 1
        self._waiting[self._next_tag] = handler
        return self._next_tag

    def forget_tag(self, tag: int) -> None:
        self._waiting.pop(tag, None)

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

    @property
    def clock_ms(self) -> int:
        return self.env.clock_ms(self.id)

    def tick(self) -> None:
        if not self.draining:
            self.core.tick(self.clock_ms)
            self._maybe_propose_tick()
        self.holder.group_commit()
        if not self.draining:
            self.coordinator.tick()
            self.mover.tick()
        self.process()

    def receive(self, message: SimMessage) -> None:
        match message:
            case ShardPut() | ShardGet() | ShardDelete():
                self.holder.receive(message)
            case ShardPutReply() | ShardGetReply() | ShardDeleteReply():
                handler = self._waiting.pop(message.tag, None)
                if handler is not None:
                    handler(message)
            case RecordWrite():
                self.coordinator.on_request(message)
            case IndexForward():
                if not self.draining:
                    self.coordinator.on_forward(message)
            case ClientRequest():
                self._client_request(message)
            case ClientReply() | RecordReply():
                pass
            case _:
                if not self.draining:
                    self.core.observe_time(self.clock_ms)  # as the adapter does each turn
                    self.core.step(message)
        self.process()

    def _maybe_propose_tick(self) -> None:
        """An idle leader appends a tick entry, as the real adapter does: only once the log
        enabled the tick's feature version, never while entries are on their way to commit."""
        core = self.core
        if Dispatcher.feature_version(self.machine) < LEDGER_FEATURE_VERSION:
            return
        if not core.tick_entry_due(LOG_TICK_INTERVAL_MS):
            return
        if propose_app_entry(self, AppEntry(LEDGER_TICK, {})):
            self.env.count("log_ticks")

    def _client_request(self, m: ClientRequest) -> None:
        core, env = self.core, self.env
        if self.draining:
            env.send(ClientReply(self.id, m.client, m.seq, False))
        elif core.role is Role.LEADER:
            command = Command(m.client, m.seq, self.id, m.value)
            try:
                proposal = core.propose([command.encode()], now_ms=self.clock_ms)
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
                env.send(
                    self._with_state(message) if isinstance(message, InstallSnapshot) else message
                )
            if ready.snapshot is not None:
                snapshot = ready.snapshot
                state = decode_state(snapshot.data)
                self.machine.load(state, snapshot.meta.index)  # on disk in step 1
            for entry in ready.committed_entries:
                self._apply(entry)
            core.advance(ready)
            self._maybe_compact()

    def _apply(self, entry: Entry) -> None:
        result = self.machine.apply(entry)
        if result is None:
            self.disk.write_applied(entry.index, None, [])
        elif isinstance(result, CommandResult):
            self.disk.write_applied(entry.index, result.record, [])
            self._command_applied(result)
        else:
            applied, writes = result
            self.disk.write_applied(entry.index, None, writes)
            if applied.type in (INDEX_PUT_BATCH, LEDGER_OPS):
                body = decode_app_entry(entry.payload).body
                for record_id, one in batch_outcomes(body, applied):
                    self.env.count("index_batch_records_applied")
                    self.coordinator.on_applied(record_id, one)
                return
            if applied.type not in (INDEX_PUT, INDEX_MOVE):
                return
            fields = app_entry_fields(decode_app_entry(entry.payload).body, applied.type)
            if fields is None:
                return
            if applied.type == INDEX_PUT:
                self.coordinator.on_applied(fields[0], applied)
            elif applied.type == INDEX_MOVE:
                self.mover.on_applied(*fields, applied)

    def _command_applied(self, result: CommandResult) -> None:
        if self.env.bug is Bug.ACK_BEFORE_COMMIT:
            return
        command = result.command
        if command.origin == self.id:
            reply = ClientReply(self.id, command.client, command.seq, True, result.position)
            self.env.send(reply)

    def _maybe_compact(self) -> None:
        """Compact as node/replication/log.py does: the state on disk is the snapshot, so only
        the compaction point is written (after the applied writes it covers: the disk keeps
        writes in order, as flush_state makes LevelDB do), and the core keeps no data."""
        applied = self.machine.applied_index
        if applied - self.core.snapshot_index < self.compact_entries:
            return
        snapshot = Snapshot(self.core.snapshot_meta(applied), b"")
        self.core.compact(snapshot)
        self.disk.write_compaction(snapshot)

    def _with_state(self, message: InstallSnapshot) -> InstallSnapshot:
        """The snapshot a lagging follower is sent: the state at this node's applied index,
        made on demand (the real adapter streams it from a pinned view), not the core's."""
        data = self.machine.data()
        meta = self.core.snapshot_meta(self.machine.applied_index)
        return replace(message, meta=meta, total_bytes=len(data), chunk=data)

    # -- crash and restart

    def crash(self, keep: int = 0) -> None:
        """Power off: memory is lost, and all but the first ``keep`` unflushed writes (the
        shard store keeps a random prefix of its own)."""
        self.disk.crash(keep)
        self.shards.crash(self.env.rng.randint(0, self.shards.buffered))
        self._reset_memory()
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
        self.machine.load(loaded.state, loaded.persisted.applied or 0)
        self.state = NodeState.UP
        self.process()
        return True


@dataclass
class _Pending:
    seq: int
    value: int
    target: NodeId
    due_ms: int  # resend if not acknowledged by then
    op: OpFields | None = None  # a ledger client's operation


def record_id_of(client: str, seq: int) -> bytes:
    """The id from (client, seq), as a gateway derives it from (partner, Idempotency-Key)."""
    return hashlib.sha256(f"{client}|{seq}".encode()).digest()


def record_of(client: str, seq: int, value: int, op: OpFields | None = None) -> tuple[bytes, bytes]:
    """A record client's (record id, blob): 20-219 bytes of body, so shards are small but
    uneven. An operation's body also holds its events or request (its fingerprint changes
    with them). An operation with its own record id (a deposit) has a blob made of its body
    alone: sent again under another sequence number, it is the same record."""
    if op is not None and op.record_id is not None:
        return op.record_id, b"sim-deposit|" + op.body
    seed = hashlib.sha256(f"{client}|{seq}|{value}".encode()).digest()
    return record_id_of(client, seq), (seed * 7)[: 20 + value % 200] + (op.body if op else b"")


class ClientActor:
    """One client: a write at a time, retried with the same idempotency id until acked.

    A command client proposes commands (forwarded to the leader); a record client writes
    records through whichever node it asks, which coordinates the write.
    """

    def __init__(
        self,
        env: Env,
        client_id: str,
        *,
        think_ms_max: int,
        retry_ms: int,
        records: bool,
        ledger: Workload | None = None,
    ) -> None:
        self.env = env
        self.id = client_id
        self.think_ms_max = think_ms_max
        self.retry_ms = retry_ms
        self.records = records or ledger is not None
        self.ledger = ledger  # a ledger client: its records carry ledger operations
        self.sent: dict[int, _Pending] = {}  # a ledger client's acknowledged operations
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
                target = self.target or env.rng.choice(env.node_ids())
                if self.ledger is not None:
                    self.pending = self._next_operation(target)
                    self._send()
                    return env.rng.randint(1, self.think_ms_max)
                self.seq += 1
                self.pending = _Pending(self.seq, env.rng.randint(0, 10**6), target, 0)
                if self.records:
                    env.checker.on_record_submit(*record_of(self.id, self.seq, self.pending.value))
                else:
                    env.checker.on_submit((self.id, self.seq))
                self._send()
        elif env.now_ms >= self.pending.due_ms:
            self.pending.target = env.rng.choice(env.node_ids())
            self._send()
        return env.rng.randint(1, self.think_ms_max)

    def _next_operation(self, target: NodeId) -> _Pending:
        """A new ledger operation, or now and then one already acknowledged, sent again."""
        env, ledger = self.env, self.ledger
        assert ledger is not None
        if self.seq > 2 and env.rng.random() < RETRY_CHANCE:
            again = self.sent[env.rng.randint(1, self.seq)]
            env.count("ledger_ops_resent")
            return _Pending(again.seq, again.value, target, 0, again.op)
        self.seq += 1
        value = env.rng.randint(0, 10**6)
        op = ledger.operation(
            self.seq, record_id_of(self.id, self.seq), env.rng, env.checker.reference
        )
        pending = _Pending(self.seq, value, target, 0, op)
        self.sent[self.seq] = pending
        env.checker.on_record_submit(*record_of(self.id, self.seq, value, op))
        return pending

    def _send(self) -> None:
        assert self.pending is not None
        p = self.pending
        p.due_ms = self.env.now_ms + self.retry_ms
        self.sends += 1
        if self.records:
            record_id, blob = record_of(self.id, p.seq, p.value, p.op)
            self.env.send(RecordWrite(self.id, p.target, self.id, p.seq, record_id, blob, p.op))
        else:
            self.env.send(ClientRequest(self.id, p.target, self.id, p.seq, p.value))

    def receive(self, reply: ClientReply | RecordReply) -> None:
        env = self.env
        if reply.ok:
            # late duplicates are checked too
            if isinstance(reply, RecordReply):
                sent = self.sent.get(reply.seq)
                record_id = record_of(self.id, reply.seq, 0, sent.op if sent else None)[0]
                env.checker.on_record_ack(record_id, reply.index, reply.outcome)
                pending = self.pending
                if self.ledger is not None and pending is not None and pending.seq == reply.seq:
                    self.ledger.on_outcome(reply.seq, reply.outcome)
            else:
                env.checker.on_ack((self.id, reply.seq), reply.index)
            if self.pending is not None and self.pending.seq == reply.seq:
                self.pending = None
                self.acked += 1
                self.target = reply.sender
            return
        if self.pending is None or self.pending.seq != reply.seq:
            return
        hint = reply.leader_hint if isinstance(reply, ClientReply) else None
        self.target = hint if hint is not None and hint != reply.sender else None
        if self.target is not None:
            self.pending.target = self.target
            self._send()
        else:
            self.pending.due_ms = min(self.pending.due_ms, env.now_ms + 100)
