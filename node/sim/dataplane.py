"""The simulated data plane of a node: coordinator, shard holder and mover, over the sim network.

Each is a thin driver around a pure core of :mod:`node.dataplane`, run by its
:class:`~node.sim.actors.NodeActor` (on its ticks, messages and applied entries):

* :class:`Coordinator` -- a client's record write: rendezvous placement over the node's
  committed membership, ``n`` erasure-coded shards sent to their holders (unanswered ones
  resent), the :class:`~node.dataplane.write_quorum.WriteTally` decides; at ``ACK`` the
  ``index.put`` goes through the leader (which stamps its expiry) and the client hears "done"
  only once the entry is applied here, at the position the index gives (a retry of an indexed
  record is answered with the first write's position).
* the holder (:meth:`Holder.receive`) -- puts go to the node's
  :class:`~node.sim.shards.SimShardStore` and are answered after the next group commit (tick);
  gets return only intact shards; deletes remove only shards placed before the vacating move.
* :class:`Mover` -- on the leader only: plans moves with
  :func:`~node.dataplane.move_plan.plan_record` over the committed membership and drives each
  :class:`~node.dataplane.shard_move.MoveState`: copy (rebuild from ``k`` shards checked
  against the content hash, re-encode, put on the target), verify (read it back), commit
  (``index.move``), grace, delete. It first enables feature version 2 in the log, as an upgraded
  cluster would. A new leader re-plans from the index; half-done moves of the old one are
  orphan copies, never referenced.

Messages are plain frozen dataclasses; replies are matched to their request by a per-node tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from business.ledger.outcome import OperationOutcome
from node.consensus.bridge_ops import BRIDGE_FEATURE_VERSION
from node.consensus.deposit_ops import DEPOSIT_FEATURE_VERSION
from node.consensus.ledger_ops import LEDGER_FEATURE_VERSION, LEDGER_OPS, Operation
from node.consensus.payments_ops import PAYMENTS_FEATURE_VERSION
from node.consensus.record_index import (
    BATCH_FEATURE_VERSION,
    INDEX_MOVE,
    INDEX_PUT,
    BatchOutcome,
    IndexEntry,
    IndexProposal,
    MoveProposal,
    RecordIndex,
)
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Applied,
    ApplyOutcome,
    Dispatcher,
    encode_app_entry,
)
from node.consensus.types import NodeId, Role
from node.dataplane.move_plan import plan_record
from node.dataplane.shard_move import (
    Committed,
    Copied,
    CopyFailed,
    Deleted,
    LogAt,
    MoveEvent,
    MovePhase,
    MoveRules,
    MoveState,
    ReadBack,
    read_order,
    step,
)
from node.dataplane.write_quorum import WriteQuorum, WriteTally, WriteVerdict
from node.errors import BaasError
from node.sim.bugs import Bug
from node.sim.ledger_load import OpFields
from node.sim.shards import ShardKey
from node.storage.erasure import decode_blob, encode_blob
from node.storage.placement import place_shards

if TYPE_CHECKING:
    from node.sim.actors import NodeActor

__all__ = [
    "Coordinator",
    "DataMessage",
    "DataParams",
    "Holder",
    "IndexForward",
    "Mover",
    "RecordReply",
    "RecordWrite",
    "ShardDelete",
    "ShardDeleteReply",
    "ShardGet",
    "ShardGetReply",
    "ShardPut",
    "ShardPutReply",
]

PUT_RETRY_MS = 400
PROPOSE_RETRY_MS = 1500
WRITE_DEADLINE_MS = 5000  # the coordinator forgets a write; the client retries it elsewhere
PROPOSAL_SPAN_ENTRIES = 64  # an index.put may land at most this far past the leader's log end
GATHER_RECORDS_MAX = 16  # records per index.put_batch entry (and per forward) in the simulation
FORWARD_HOPS_MAX = 2
PLAN_MS = 250
MOVES_INFLIGHT_MAX = 32
OP_TIMEOUT_MS = 1000
COMMIT_TIMEOUT_MS = 2000
SETUP_ENTRIES_PER_ROUND_MAX = 8  # the workload's identity entries the leader proposes a round
DELETE_TRIES_MAX = 3  # an old copy whose holder never answers is left behind (orphan, safe)


@dataclass(frozen=True, slots=True)
class DataParams:
    k: int
    n: int
    write_quorum: int
    grace_entries: int

    @property
    def quorum(self) -> WriteQuorum:
        return WriteQuorum(self.k, self.n, self.write_quorum)


# -- messages


@dataclass(frozen=True, slots=True)
class RecordWrite:
    sender: str
    to: NodeId
    client: str
    seq: int
    record_id: bytes
    blob: bytes
    op: OpFields | None = None  # a ledger operation's fields (events or a Bridge request)


@dataclass(frozen=True, slots=True)
class RecordReply:
    sender: NodeId
    to: str
    seq: int
    ok: bool
    index: int = 0  # ok: the record's position in the log (its first index.put)
    outcome: Mapping[str, Any] | None = None  # a ledger operation's (first) outcome summary


@dataclass(frozen=True, slots=True)
class ShardPut:
    sender: NodeId
    to: NodeId
    tag: int
    key: ShardKey
    content_hash: bytes
    blob_bytes: int
    data: bytes
    placed_at: int  # 0 for a record write; the mover's applied index for a move's copy


@dataclass(frozen=True, slots=True)
class ShardPutReply:
    sender: NodeId
    to: NodeId
    tag: int
    ok: bool


@dataclass(frozen=True, slots=True)
class ShardGet:
    sender: NodeId
    to: NodeId
    tag: int
    key: ShardKey


@dataclass(frozen=True, slots=True)
class ShardGetReply:
    sender: NodeId
    to: NodeId
    tag: int
    content_hash: bytes | None  # None: missing or corrupt
    blob_bytes: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ShardDelete:
    sender: NodeId
    to: NodeId
    tag: int
    key: ShardKey
    before: int  # delete only a copy placed before this log position (the move's)


@dataclass(frozen=True, slots=True)
class ShardDeleteReply:
    sender: NodeId
    to: NodeId
    tag: int


@dataclass(frozen=True, slots=True)
class IndexForward:
    sender: NodeId
    to: NodeId
    proposals: tuple[Operation, ...]  # expiry unset: the leader stamps it; many per hop
    hops: int = 0


DataMessage = (
    RecordWrite
    | ShardPut
    | ShardPutReply
    | ShardGet
    | ShardGetReply
    | ShardDelete
    | ShardDeleteReply
    | IndexForward
)
Reply = ShardPutReply | ShardGetReply | ShardDeleteReply


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def propose_app_entry(node: NodeActor, entry: AppEntry) -> bool:
    """Propose on this node if it leads; whether it was accepted."""
    if node.core.role is not Role.LEADER:
        return False
    try:
        node.core.propose([encode_app_entry(entry)], now_ms=node.clock_ms)
    except BaasError:
        return False
    return True


def stamp_and_propose(node: NodeActor, proposals: Sequence[Operation]) -> bool:
    """The leader sets the expiry (this term, at most a bounded span past its log's end) and
    proposes the records gathered here, as the real gatherer: ``ledger.ops`` entries of
    :data:`GATHER_RECORDS_MAX` operations once the log enables feature 6, ``index.put_batch``
    entries from feature 4 (operations with ledger events wait: their coordinator re-proposes
    them), else one ``index.put`` each."""
    core = node.core
    if core.role is not Role.LEADER:
        return False
    span = core.last_index + PROPOSAL_SPAN_ENTRIES
    stamped = [
        replace(op, proposal=replace(op.proposal, expiry_term=core.term, expiry_max_index=span))
        for op in proposals
    ]
    version = Dispatcher.feature_version(node.machine)
    chunks = range(0, len(stamped), GATHER_RECORDS_MAX)
    if version >= LEDGER_FEATURE_VERSION:
        return all(
            propose_app_entry(node, Operation.batch_entry(stamped[i : i + GATHER_RECORDS_MAX]))
            for i in chunks
        )
    plain = [
        op.proposal
        for op in stamped
        if op.events is None and op.bridge is None and op.payments is None and op.deposit is None
    ]
    if version < BATCH_FEATURE_VERSION:
        return all(propose_app_entry(node, p.to_entry()) for p in plain)
    return all(
        propose_app_entry(node, IndexProposal.batch_entry(plain[i : i + GATHER_RECORDS_MAX]))
        for i in range(0, len(plain), GATHER_RECORDS_MAX)
    )


# -- the holder


class Holder:
    """Answers shard puts (after the next group commit), gets and deletes."""

    def __init__(self, node: NodeActor) -> None:
        self.node = node
        self.unflushed_replies: list[ShardPutReply] = []

    def receive(self, m: ShardPut | ShardGet | ShardDelete) -> None:
        node, env = self.node, self.node.env
        store = node.shards
        match m:
            case ShardPut():
                held = store.get(m.key)
                if held is not None and held.content_hash != m.content_hash:
                    env.send(ShardPutReply(node.id, m.sender, m.tag, False))  # another version
                    return
                store.put(m.key, m.content_hash, m.blob_bytes, m.data, m.placed_at)
                reply = ShardPutReply(node.id, m.sender, m.tag, True)
                if env.bug is Bug.SKIP_FSYNC:
                    env.send(reply)  # acknowledged before the group commit made it durable
                else:
                    self.unflushed_replies.append(reply)
            case ShardGet():
                held = store.get(m.key)
                if held is None:
                    env.send(ShardGetReply(node.id, m.sender, m.tag, None))
                else:
                    env.send(
                        ShardGetReply(
                            node.id, m.sender, m.tag, held.content_hash, held.blob_bytes, held.data
                        )
                    )
            case ShardDelete():
                held = store.get(m.key)
                if held is not None and held.placed_at < m.before:
                    env.checker.on_shard_delete(node.id, m.key, held.content_hash)
                store.delete(m.key, m.before)
                env.send(ShardDeleteReply(node.id, m.sender, m.tag))

    def group_commit(self) -> None:
        """Flush the store, then answer the puts it made durable (the real committer's order)."""
        node = self.node
        for key in node.shards.flush():
            held = node.shards.durable.get(key)
            if held is not None:
                node.env.checker.on_shard_durable(node.id, key, held.content_hash)
        replies, self.unflushed_replies = self.unflushed_replies, []
        for reply in replies:
            node.env.send(reply)


# -- the coordinator


@dataclass
class _Write:
    client: str
    seq: int
    record_id: bytes
    blob: bytes
    tally: WriteTally
    shards: list[bytes]
    started_ms: int
    tags: dict[int, int] = field(default_factory=dict)  # tag -> shard index
    sent_ms: dict[int, int] = field(default_factory=dict)  # shard index -> last sent
    proposed_ms: int | None = None
    op: OpFields | None = None  # a ledger operation's fields


class Coordinator:
    def __init__(self, node: NodeActor) -> None:
        self.node = node
        self.writes: dict[bytes, _Write] = {}
        # Proposals gathered since the last tick (this node's and, on the leader, forwarded
        # ones): proposed as batch entries on the leader, else forwarded together.
        self.gathered: list[Operation] = []

    def _reply(
        self,
        client: str,
        seq: int,
        ok: bool,
        index: int = 0,
        outcome: Mapping[str, Any] | None = None,
    ) -> None:
        self.node.env.send(RecordReply(self.node.id, client, seq, ok, index, outcome))

    def on_request(self, m: RecordWrite) -> None:
        node, env = self.node, self.node.env
        params = env.data
        if m.record_id in self.writes:
            return  # already under way here; the client hears once it is applied
        members = node.core.membership.members
        if node.draining or node.id not in members or len(members) < params.n:
            self._reply(m.client, m.seq, False)
            return
        if m.op is not None:
            version = Dispatcher.feature_version(node.machine)
            if (
                version < LEDGER_FEATURE_VERSION
                or (m.op.bridge is not None and version < BRIDGE_FEATURE_VERSION)
                or (m.op.payments is not None and version < PAYMENTS_FEATURE_VERSION)
                or (m.op.deposit is not None and version < DEPOSIT_FEATURE_VERSION)
            ):
                # ledger_not_enabled / bridge_not_enabled / payments: refused before the log
                self._reply(m.client, m.seq, False)
                return
        placement = place_shards(m.record_id, members, params.n)
        write = _Write(
            m.client,
            m.seq,
            m.record_id,
            m.blob,
            WriteTally(params.quorum, placement),
            encode_blob(m.blob, params.k, params.n),
            env.now_ms,
            op=m.op,
        )
        self.writes[m.record_id] = write
        for shard in range(params.n):
            self._send_put(write, shard)

    def _send_put(self, w: _Write, shard: int) -> None:
        node = self.node
        tag = node.new_tag(self._on_put_reply)
        w.tags[tag] = shard
        w.sent_ms[shard] = node.env.now_ms
        key = (w.record_id, shard)
        to = w.tally.placement[shard]
        data = w.shards[shard]
        node.env.send(ShardPut(node.id, to, tag, key, sha256(w.blob), len(w.blob), data, 0))

    def _on_put_reply(self, reply: Reply) -> None:
        assert isinstance(reply, ShardPutReply)
        w = next((w for w in self.writes.values() if reply.tag in w.tags), None)
        if w is None:
            return
        shard = w.tags[reply.tag]
        w.tally = w.tally.on_stored(shard) if reply.ok else w.tally.on_refused(shard)
        self._decide(w)

    def _decide(self, w: _Write) -> None:
        verdict = w.tally.verdict
        if self.node.env.bug is Bug.ACK_BELOW_QUORUM and w.tally.stored:
            verdict = WriteVerdict.ACK  # the broken variant: one durable shard is enough
        if verdict is WriteVerdict.FAIL:
            self._forget(w)
            self._reply(w.client, w.seq, False)
        elif verdict is WriteVerdict.ACK and w.proposed_ms is None:
            self._propose(w)

    def _propose(self, w: _Write) -> None:
        node, params = self.node, self.node.env.data
        w.proposed_ms = node.env.now_ms
        proposal = IndexProposal(
            record_id=w.record_id,
            content_hash=sha256(w.blob),
            k=params.k,
            n=params.n,
            shard_nodes=w.tally.placement,
            membership_epoch=0,  # epochs are not numbered yet (the real coordinator: a constant)
            owner=w.client,
            body_fingerprint=sha256(w.blob),
            expiry_term=0,
            expiry_max_index=0,
        )
        op = w.op or OpFields()
        self.gathered.append(
            Operation(
                proposal,
                op.events,
                op.approvals,
                op.partner,
                op.mode,
                op.user_refs,
                bridge=op.bridge,
                payments=op.payments,
                deposit=op.deposit,
            )
        )

    def _flush(self) -> None:
        """Propose what gathered (on the leader) or forward it to the leader in few messages."""
        node, gathered = self.node, self.gathered
        self.gathered = []
        if not gathered or stamp_and_propose(node, gathered):
            return
        leader = node.core.leader_id
        if leader is not None and leader != node.id:
            for i in range(0, len(gathered), GATHER_RECORDS_MAX):
                chunk = tuple(gathered[i : i + GATHER_RECORDS_MAX])
                node.env.send(IndexForward(node.id, leader, chunk))

    def on_forward(self, m: IndexForward) -> None:
        node = self.node
        if node.core.role is Role.LEADER:
            self.gathered.extend(m.proposals)  # gathered with everyone's, proposed at tick
            return
        leader = node.core.leader_id
        if leader not in (None, node.id) and m.hops < FORWARD_HOPS_MAX:
            assert leader is not None
            node.env.send(replace(m, sender=node.id, to=leader, hops=m.hops + 1))

    def on_applied(self, record_id: bytes, applied: Applied) -> None:
        w = self.writes.get(record_id)
        if w is None:
            return
        outcome = applied.outcome
        first = outcome.detail.get("outcome")  # a ledger operation's (first) outcome
        summary = first.summary() if isinstance(first, OperationOutcome) else None
        if outcome.code == "created":
            self._forget(w)
            self._reply(w.client, w.seq, True, applied.position.index, summary)
        elif outcome.code == "existing" and outcome.detail["content_hash"] == sha256(w.blob):
            self._forget(w)
            self._reply(w.client, w.seq, True, int(outcome.detail["index"]), summary)
        elif outcome.code == "expired":
            w.proposed_ms = None  # proposed under a leader that lost its term: again at tick
        else:
            self._forget(w)
            self._reply(w.client, w.seq, False)

    def _forget(self, w: _Write) -> None:
        self.writes.pop(w.record_id, None)
        for tag in w.tags:
            self.node.forget_tag(tag)

    def tick(self) -> None:
        now = self.node.env.now_ms
        for w in list(self.writes.values()):
            if now - w.started_ms > WRITE_DEADLINE_MS:
                self._forget(w)
                continue
            for shard in w.tally.unanswered:
                if now - w.sent_ms[shard] >= PUT_RETRY_MS:
                    self._send_put(w, shard)
            if w.proposed_ms is None:
                self._decide(w)
            elif now - w.proposed_ms >= PROPOSE_RETRY_MS:
                self._propose(w)
        self._flush()


# -- the mover


@dataclass
class _Task:
    state: MoveState
    due_ms: int = 0  # when the step under way times out
    started: bool = False  # the current phase's request is out
    got: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # shard -> data, blob size
    tags: list[int] = field(default_factory=list)
    tries: int = 0  # delete attempts


TaskKey = tuple[bytes, int, str]  # (record id, shard, to): one old copy may outlive its move
# while a later move of the same shard is under way


class Mover:
    def __init__(self, node: NodeActor) -> None:
        self.node = node
        self.tasks: dict[TaskKey, _Task] = {}
        self.settled: set[bytes] = set()  # records in place for settled_members
        self.settled_members: tuple[NodeId, ...] = ()
        self.next_plan_ms = 0
        self.next_feature_ms = 0
        self.rules = MoveRules(node.env.data.grace_entries, attempts_max=4)

    def _active(self) -> list[TaskKey]:
        """Moves under way that have not committed yet (the bounded ones: a committed move
        waits for its grace, which needs the log to advance, without holding a slot)."""
        committed = (MovePhase.GRACE, MovePhase.DELETE)
        return [key for key, t in self.tasks.items() if t.state.phase not in committed]

    @property
    def busy(self) -> bool:
        return bool(self._active())

    def tick(self) -> None:
        node = self.node
        if node.core.role is not Role.LEADER or node.draining:
            self._drop_all()
            return
        now = node.env.now_ms
        target = node.env.feature_version
        if Dispatcher.feature_version(node.machine) < target:
            if now >= self.next_feature_ms:
                self.next_feature_ms = now + PLAN_MS
                propose_app_entry(node, AppEntry(FEATURE_ENTRY, {"version": target}))
            return
        if now >= self.next_feature_ms:
            self.next_feature_ms = now + PLAN_MS
            self._onboard()
        if now >= self.next_plan_ms and node.core.applied_index == node.core.commit_index:
            self.next_plan_ms = now + PLAN_MS
            self._plan()
        for key, task in list(self.tasks.items()):
            self._drive(key, task)

    def _onboard(self) -> None:
        """Propose the workload's identity entries (partners onboarded, users linked, codes
        issued) whose key the applied state lacks, as an operator, the partners' platforms and
        the users' apps would: in their order, at most :data:`SETUP_ENTRIES_PER_ROUND_MAX` a
        round. One leader's proposals commit in the order proposed, and every round proposes
        again whatever is still missing from the start, so an entry never lands before one it
        needs (a partner's index is its onboarding order; a link needs its partner: a link
        judged before it would keep that refusal for its nonce)."""
        node = self.node
        missing = [entry for key, entry in node.env.setup_entries if node.machine.get(key) is None]
        for entry in missing[:SETUP_ENTRIES_PER_ROUND_MAX]:
            if not propose_app_entry(node, entry):
                return

    def _drop_all(self) -> None:
        for task in self.tasks.values():
            for tag in task.tags:
                self.node.forget_tag(tag)
        self.tasks.clear()

    # planning

    def _plan(self) -> None:
        members = self.node.core.membership.members
        if members != self.settled_members:
            self.settled_members, self.settled = members, set()
        active = self._active()
        busy = {key[0] for key in active}
        for entry in self._unsettled(busy):
            moves = plan_record(entry, members)
            if not moves:
                self.settled.add(entry.record_id)
                continue
            for move in moves:
                if len(active) >= MOVES_INFLIGHT_MAX:
                    return
                key = (move.record_id, move.shard, move.to_node)
                self.tasks[key] = _Task(MoveState(move))
                active.append(key)

    def _unsettled(self, busy: set[bytes]) -> list[IndexEntry]:
        out = []
        for key, raw in self.node.machine.kv.items():
            record_id = key[len(RecordIndex.prefix) :]
            if key.startswith(RecordIndex.prefix) and record_id not in self.settled | busy:
                out.append(IndexEntry.decode(record_id, raw))
        return out

    def unplanned(self) -> int:
        """Records not at their placement over the committed membership (a full scan)."""
        members = self.node.core.membership.members
        entries = [
            IndexEntry.decode(key[len(RecordIndex.prefix) :], raw)
            for key, raw in self.node.machine.kv.items()
            if key.startswith(RecordIndex.prefix)
        ]
        return sum(1 for e in entries if plan_record(e, members))

    # driving one move

    def _event(self, key: TaskKey, task: _Task, event: MoveEvent) -> None:
        before = task.state.phase
        task.state = step(task.state, event, self.rules)
        if task.state.phase is not before:
            task.started = False
            task.got.clear()
            for tag in task.tags:
                self.node.forget_tag(tag)
            task.tags.clear()
        if task.state.finished:
            del self.tasks[key]
            self.settled.discard(key[0])
        elif task.state.phase is not before:
            self._drive(key, task)  # start the next step now, not at the next tick

    def _drive(self, key: TaskKey, task: _Task) -> None:
        node = self.node
        now = node.env.now_ms
        phase = task.state.phase
        if phase is MovePhase.GRACE:
            self._event(key, task, LogAt(node.machine.applied_index))
            return
        if task.started and now < task.due_ms:
            return
        if task.started:  # the step timed out
            timeouts: dict[MovePhase, MoveEvent] = {
                MovePhase.COPY: CopyFailed("timed out"),
                MovePhase.VERIFY: ReadBack(None),
                MovePhase.COMMIT: Committed("lost"),
            }
            if phase in timeouts:
                self._event(key, task, timeouts[phase])
                return
            task.tries += 1
            if task.tries >= DELETE_TRIES_MAX:
                del self.tasks[key]  # the old holder is gone: its copy is an orphan
                return
        task.started = True
        task.due_ms = now + (COMMIT_TIMEOUT_MS if phase is MovePhase.COMMIT else OP_TIMEOUT_MS)
        if phase is MovePhase.COPY:
            self._start_copy(key, task)
        elif phase is MovePhase.VERIFY:
            move = task.state.move
            shard_key = (move.record_id, move.shard)
            self._send(task, ShardGet, move.to_node, shard_key, self._on_verify(key, task))
        elif phase is MovePhase.COMMIT:
            move = task.state.move
            proposal = MoveProposal(
                move.record_id, move.content_hash, move.shard, move.from_node, move.to_node
            )
            propose_app_entry(node, proposal.to_entry())
        elif phase is MovePhase.DELETE:
            self._delete_old(key, task, task.state.moved_at)

    def _send(
        self,
        task: _Task,
        kind: type[ShardGet],
        to: NodeId,
        key: ShardKey,
        handler: Callable[[Reply], None],
    ) -> None:
        tag = self.node.new_tag(handler)
        task.tags.append(tag)
        self.node.env.send(kind(self.node.id, to, tag, key))

    def _delete_old(self, key: TaskKey, task: _Task, before: int) -> None:
        node = self.node
        tag = node.new_tag(lambda _reply: self._on_deleted(key, task))
        task.tags.append(tag)
        move = task.state.move
        shard_key = (move.record_id, move.shard)
        node.env.send(ShardDelete(node.id, move.from_node, tag, shard_key, before))

    def _on_deleted(self, key: TaskKey, task: _Task) -> None:
        if self.tasks.get(key) is task:
            self._event(key, task, Deleted())

    def _start_copy(self, key: TaskKey, task: _Task) -> None:
        node = self.node
        move = task.state.move
        entry = RecordIndex.lookup(node.machine, move.record_id)
        if entry is None or entry.shard_nodes[move.shard] != move.from_node:
            del self.tasks[key]  # the index changed under the plan: re-plan later
            self.settled.discard(key[0])
            return
        applied = node.machine.applied_index
        for shard in range(entry.n):
            for holder in read_order(entry, shard, applied, self.rules.grace_entries):
                handler = self._on_copy_part(key, task, entry, shard)
                self._send(task, ShardGet, holder, (move.record_id, shard), handler)

    def _on_copy_part(
        self, key: TaskKey, task: _Task, entry: IndexEntry, shard: int
    ) -> Callable[[Reply], None]:
        def handle(reply: Reply) -> None:
            if self.tasks.get(key) is not task or task.state.phase is not MovePhase.COPY:
                return
            assert isinstance(reply, ShardGetReply)
            if reply.content_hash != entry.content_hash or len(task.got) >= entry.k:
                return
            task.got[shard] = (reply.data, reply.blob_bytes)
            if len(task.got) == entry.k:
                self._rebuild_and_put(key, task, entry)

        return handle

    def _rebuild_and_put(self, key: TaskKey, task: _Task, entry: IndexEntry) -> None:
        node = self.node
        move = task.state.move
        blob_bytes = next(iter(task.got.values()))[1]
        try:
            shards = {i: data for i, (data, _) in task.got.items()}
            blob = decode_blob(shards, entry.k, entry.n, blob_bytes)
        except BaasError:
            blob = b""
        if sha256(blob) != entry.content_hash:
            self._event(key, task, CopyFailed("the rebuilt record does not match its hash"))
            return
        data = encode_blob(blob, entry.k, entry.n)[move.shard]
        placed_at = node.machine.applied_index

        def on_put(reply: Reply) -> None:
            if self.tasks.get(key) is not task or task.state.phase is not MovePhase.COPY:
                return
            assert isinstance(reply, ShardPutReply)
            if not reply.ok:
                self._event(key, task, CopyFailed("refused"))
                return
            self._event(key, task, Copied(sha256(data)))
            if node.env.bug is Bug.DELETE_BEFORE_COMMIT:
                self._delete_old(key, task, node.machine.applied_index + 1)

        tag = node.new_tag(on_put)
        task.tags.append(tag)
        shard_key = (move.record_id, move.shard)
        put = ShardPut(
            node.id, move.to_node, tag, shard_key, entry.content_hash, blob_bytes, data, placed_at
        )
        node.env.send(put)

    def _on_verify(self, key: TaskKey, task: _Task) -> Callable[[Reply], None]:
        def handle(reply: Reply) -> None:
            if self.tasks.get(key) is not task or task.state.phase is not MovePhase.VERIFY:
                return
            assert isinstance(reply, ShardGetReply)
            ok = reply.content_hash == task.state.move.content_hash
            self._event(key, task, ReadBack(sha256(reply.data) if ok else None))

        return handle

    def on_applied(self, record_id: bytes, body_shard: int, to_node: str, applied: Applied) -> None:
        """An ``index.move`` was applied here: the outcome of a move this mover may drive."""
        key = (record_id, body_shard, to_node)
        task = self.tasks.get(key)
        if task is None:
            return
        if task.state.phase is MovePhase.COMMIT:
            moved_at = int(applied.outcome.detail.get("moved_at", 0))
            self._event(key, task, Committed(applied.outcome.code, moved_at))


def batch_outcomes(body: object, applied: Applied) -> list[tuple[bytes, Applied]]:
    """Each record of an applied ``index.put_batch`` or ``ledger.ops`` (its body) with its own
    outcome, shaped as an ``index.put``'s: results are in the order of the entry's records."""
    puts = (
        body.get("ops" if applied.type == LEDGER_OPS else "puts")
        if isinstance(body, dict)
        else None
    )
    if applied.outcome.code != "applied" or not isinstance(puts, list):
        return []
    results: Sequence[BatchOutcome] = applied.outcome.detail.get("results", ())
    out = []
    for put, result in zip(puts, results, strict=True):
        fields = app_entry_fields(put, INDEX_PUT)
        if fields is not None:
            outcome = ApplyOutcome(result.code, result.detail)
            out.append((fields[0], Applied(applied.position, INDEX_PUT, outcome)))
    return out


def app_entry_fields(body: object, entry_type: str) -> tuple[bytes, int, str] | None:
    """(record id, shard, to) of an applied ``index.put``/``index.move`` body, if well formed."""
    if not isinstance(body, dict):
        return None
    record_id = body.get("rid")
    if not isinstance(record_id, bytes):
        return None
    if entry_type == INDEX_PUT:
        return record_id, 0, ""
    if entry_type == INDEX_MOVE:
        shard, to = body.get("shard"), body.get("to")
        if isinstance(shard, int) and isinstance(to, str):
            return record_id, shard, to
    return None
