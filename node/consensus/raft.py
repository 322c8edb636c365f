"""The Raft core: one node's consensus state machine, with no I/O, clock or global randomness.

Theory of operation
-------------------
A :class:`RawNode` is driven by its adapter with four kinds of input:

* ``tick(now_ms)``: one unit of logical time passed (elections and heartbeats count ticks);
  ``observe_time(now_ms)``: the local clock read ``now_ms`` (no tick passed);
* ``step(message)``: a message from a peer arrived;
* ``propose(payloads, now_ms)``, ``propose_change(kind, node_id, now_ms)``,
  ``read_index(context)``: requests of the local application (leader only, or forwarded);
* ``compact(snapshot)``, ``report_snapshot(peer, ok)``, ``report_unreachable(peer)``,
  ``transfer_leadership(voter)`` (hand over before this leader is removed or stopped).

Every output is collected into one :class:`Ready` value, which the adapter handles in this
order, and only this order::

    ready = node.ready()
    1. persist  ready.snapshot (replaces the whole stored log), ready.entries (overwrite every
                stored entry from ready.entries[0].index on), ready.hard_state -- fsynced.
    2. send     ready.messages (a vote or an acknowledgement may only leave once durable).
    3. apply    ready.snapshot, then ready.committed_entries, to the state machine; serve
                ready.read_states once the applied index reaches their index.
    4. node.advance(ready)

``ready()`` while a Ready is outstanding, or ``advance()`` of anything but the outstanding
Ready, raises :class:`~node.errors.ReadyOutOfOrder`. Inputs may arrive between ``ready()`` and
``advance()``; their effects go into the next Ready.

Protocol choices (as in etcd-io/raft): pre-vote (a node only raises its term once a quorum
says it could win, so a partitioned node cannot disrupt a healthy leader when it rejoins);
check-quorum (a leader that has not heard from a quorum within ``election_ticks`` steps down,
and followers that heard from a live leader within that time ignore vote requests: leader
stickiness); optimistic pipelined replication with fast backtracking; commit by counting only
entries of the current term (§5.4.2), helped by a no-op entry at the start of every term;
single-server membership changes that take effect when committed, one at a time; ReadIndex
confirmed by a heartbeat round; heartbeat suppression (a peer sent an Append within
``heartbeat_ticks`` gets no heartbeat: the Append does its job); leadership transfer (thesis
§3.10: the leader stops taking proposals, brings the target up to date and sends
``TimeoutNow``; the target campaigns at once with a ``TransferVote``, which voters grant
despite stickiness).

Log time: entries are stamped with the leader's clock input, bounded by the clocks a quorum
of voters report in their responses and never below the last stamp; an idle leader's adapter
appends tick entries (:mod:`node.consensus.log_time` has the rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from node.consensus.config import RaftConfig
from node.consensus.log import RaftLog
from node.consensus.log_time import UNKNOWN_CLOCK, next_stamp, quorum_clock, tick_due
from node.consensus.messages import (
    CONTEXT_BYTES_MAX,
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    PreVote,
    PreVoteResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    TransferVote,
    Vote,
    VoteResponse,
)
from node.consensus.progress import Progress, ProgressState
from node.consensus.types import (
    NODE_ID_CHARS_MAX,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    ReadState,
    Rng,
    Role,
    Snapshot,
    SnapshotMeta,
)
from node.errors import (
    InvalidRequest,
    InvariantViolation,
    NotLeader,
    OperationFailed,
    Overloaded,
    PayloadTooLarge,
    PeerProtocolError,
    ReadyOutOfOrder,
)

__all__ = ["PersistedState", "Proposal", "RawNode", "Ready"]


@dataclass(frozen=True, slots=True)
class PersistedState:
    """Everything a node reloads on restart: exactly what its Readys told it to persist.

    ``applied`` is the state machine's applied index (stored atomically with its state);
    None means the state machine holds only the snapshot.
    """

    hard_state: HardState
    snapshot: Snapshot
    entries: tuple[Entry, ...] = ()
    applied: int | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of outputs; see the module docstring for the order to handle it in."""

    seq: int
    hard_state: HardState | None  # None: unchanged since the last Ready
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    # Soft state, for the adapter's information (never persisted):
    role: Role
    leader_id: NodeId | None
    term: int
    membership: Membership

    @property
    def must_sync(self) -> bool:
        """True if step 1 has anything to write (and so fsync) before step 2."""
        return bool(self.hard_state or self.entries or self.snapshot)


@dataclass(frozen=True, slots=True)
class Proposal:
    """Where proposed entries landed; they may still be overwritten until committed."""

    term: int
    first_index: int
    last_index: int


@dataclass(slots=True)
class _PendingRead:
    context: bytes
    index: int
    requester: NodeId
    acks: set[NodeId] = field(default_factory=set)


class RawNode:
    """One Raft node. Construct with :meth:`bootstrap`, :meth:`join` or from a PersistedState."""

    def __init__(self, config: RaftConfig, rng: Rng, state: PersistedState) -> None:
        self.id = config.node_id
        self._cfg = config
        self._rng = rng
        meta = state.snapshot.meta
        self._log = RaftLog(meta.index, meta.term, state.entries, meta.time_ms)
        self._snapshot = state.snapshot  # the latest one, sent to followers that lag behind
        self._pending_snapshot: Snapshot | None = None  # received, not yet persisted/applied
        hs = state.hard_state
        self.term, self.vote = hs.term, hs.vote
        self._prev_hard_state = hs
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self.membership = meta.membership
        self._history: list[tuple[int, Membership]] = [(meta.index, meta.membership)]
        self._prs: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._outbox: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_reads: list[_PendingRead] = []
        self._reads_before_commit: list[tuple[bytes, NodeId]] = []
        self._pending_conf_index = 0
        self._transferee: NodeId | None = None  # leadership being handed to this voter
        self._transfer_elapsed = 0
        self._now_ms = 0
        # Leader only, for its term: each peer's latest clock report (UNKNOWN_CLOCK: it sends
        # none) and the offset measured on arrival (report minus our clock), for operators.
        self._clock_reports: dict[NodeId, int] = {}
        self._clock_offsets: dict[NodeId, int] = {}
        self._last_append_ms = 0  # our clock when this leader last appended an entry
        self._election_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._reset_timeout()
        self._ready_seq = 0
        self._outstanding: Ready | None = None
        applied = max(meta.index, state.applied or 0)
        if applied > self._log.last_index:
            raise InvariantViolation("persisted applied index is beyond the stored log")
        # Entries the state machine applied were committed, even if the hard state lags.
        self._commit_to(min(max(hs.commit, applied), self._log.last_index))
        self._log.applied = applied

    @classmethod
    def bootstrap(cls, config: RaftConfig, rng: Rng, membership: Membership) -> RawNode:
        """A founding member of a new cluster: the first Ready persists the initial snapshot."""
        snapshot = Snapshot(SnapshotMeta(0, 0, membership), b"")
        node = cls(config, rng, PersistedState(HardState(), snapshot))
        node._pending_snapshot = snapshot
        return node

    @classmethod
    def join(cls, config: RaftConfig, rng: Rng) -> RawNode:
        """A node joining an existing cluster: no membership until the leader's log arrives."""
        return cls.bootstrap(config, rng, Membership())

    # -- read-only views

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def snapshot_index(self) -> int:
        return self._log.snapshot_index

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self._log.committed)

    def term_at(self, index: int) -> int | None:
        return self._log.term(index)

    def time_at(self, index: int) -> int | None:
        """The leader stamp of the entry at ``index`` (None if compacted away or absent)."""
        return self._log.time(index)

    @property
    def now_ms(self) -> int:
        """The latest clock input (0: none yet)."""
        return self._now_ms

    @property
    def last_time_ms(self) -> int:
        """The stamp of the last entry in the log (log time as far as this log reaches)."""
        return self._log.last_time_ms

    @property
    def last_append_ms(self) -> int:
        """Our clock when this node, as leader, last appended an entry (its no-op counts)."""
        return self._last_append_ms

    def clock_offsets(self) -> dict[NodeId, int]:
        """Leader only: each peer's clock minus ours, as measured when its last report came
        (the report's age makes a correct peer look slightly behind). Empty elsewhere."""
        return dict(sorted(self._clock_offsets.items())) if self.role is Role.LEADER else {}

    def tick_entry_due(self, interval_ms: int, *, busy: bool = False) -> bool:
        """Whether this leader should append a tick entry now: it appended nothing for
        ``interval_ms`` of its clock and nothing is on its way to commit (``busy``: the
        adapter's own proposals waiting or a tick in flight)."""
        if self.role is not Role.LEADER or self._transferee is not None:
            return False
        busy = busy or self._log.last_index > self._log.committed
        return tick_due(
            own_ms=self._now_ms,
            last_append_ms=self._last_append_ms,
            interval_ms=interval_ms,
            busy=busy,
        )

    def quorum_clock_ms(self) -> int | None:
        """Leader only: the quorum-th highest voter clock it knows now, which its stamps stay
        within ``clock_offset_max_ms`` of (None: fewer than a quorum known yet, or not
        leader)."""
        if self.role is not Role.LEADER:
            return None
        reports = [
            self._clock_reports[v]
            for v in self.membership.voters
            if v != self.id and v in self._clock_reports
        ]
        # A leader is a voter (one removed from the voters steps down as the change commits).
        return quorum_clock(self._now_ms, reports, self.membership.quorum)

    def progress(self, peer: NodeId) -> Progress | None:
        """The leader's view of a follower (None when not leader or unknown peer)."""
        return self._prs.get(peer)

    def membership_at(self, index: int) -> Membership:
        """The membership in force after applying the entry at ``index`` (>= snapshot)."""
        if index < self._log.snapshot_index:
            raise InvariantViolation(f"membership at {index} is compacted away")
        current = self._history[0][1]
        for at, membership in self._history:
            if at > index:
                break
            current = membership
        return current

    # -- inputs from the application

    def tick(self, now_ms: int | None = None) -> None:
        if now_ms is not None:
            self.observe_time(now_ms)
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def observe_time(self, now_ms: int) -> None:
        """The local clock read ``now_ms``: stamps and clock reports use it (never backwards)."""
        self._now_ms = max(self._now_ms, now_ms)

    def propose(self, payloads: Sequence[bytes], *, now_ms: int) -> Proposal:
        """Append a batch of normal entries (leader only), stamped ``now_ms`` or later."""
        if not payloads:
            raise InvalidRequest("empty proposal")
        if len(payloads) > self._cfg.proposal_entries_max:
            raise PayloadTooLarge(f"more than {self._cfg.proposal_entries_max} entries")
        for payload in payloads:
            if len(payload) > self._cfg.entry_payload_bytes_max:
                raise PayloadTooLarge(f"entry over {self._cfg.entry_payload_bytes_max} bytes")
        return self._append_proposal([(EntryKind.NORMAL, bytes(p)) for p in payloads], now_ms)

    def propose_change(self, kind: ConfChangeKind, node_id: NodeId, *, now_ms: int) -> Proposal:
        """Propose one single-server membership change (leader only, one at a time)."""
        self._require_leader()
        if not 0 < len(node_id) <= NODE_ID_CHARS_MAX:
            raise InvalidRequest("invalid node id")
        if self._pending_conf_index > self._log.committed:
            raise OperationFailed(
                "a membership change is still uncommitted", code="config_change_pending"
            )
        result = self.membership.apply(ConfChange(kind, node_id))
        payload = ConfChange(kind, node_id, result).encode()
        proposal = self._append_proposal([(EntryKind.CONFIG, payload)], now_ms)
        self._pending_conf_index = proposal.last_index
        return proposal

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to voter ``target`` (Raft thesis §3.10): stop taking proposals,
        bring ``target`` up to date, then tell it to campaign at once (``TimeoutNow``). Given
        up after ``election_ticks`` (proposals are taken again). Leader only."""
        self._require_leader()
        if target == self.id or not self.membership.is_voter(target):
            raise InvalidRequest(f"cannot hand leadership to {target}: not another voter")
        self._transferee, self._transfer_elapsed = target, 0
        self._maybe_send_timeout_now()

    @property
    def transferring_to(self) -> NodeId | None:
        return self._transferee

    def _maybe_send_timeout_now(self) -> None:
        target = self._transferee
        pr = self._prs.get(target) if target is not None else None
        if target is None or pr is None:
            return
        if pr.match == self._log.last_index:
            self._send(TimeoutNow(self.id, target, self.term))
        else:
            self._send_append(target)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer arrives as a ReadState in a Ready.

        ``context`` identifies the request (make it unique). On a follower the request is
        forwarded to the leader; requests lost on the way simply never answer (retry).
        """
        if not 0 < len(context) <= CONTEXT_BYTES_MAX:
            raise InvalidRequest(f"read context must be 1..{CONTEXT_BYTES_MAX} bytes")
        if self.role is Role.LEADER:
            self._leader_read(context, self.id)
        elif self.leader_id is not None:
            self._send(ReadIndexRequest(self.id, self.leader_id, self.term, context))
        else:
            raise NotLeader("no leader known for a read index", leader_hint=None)

    def compact(self, snapshot: Snapshot) -> None:
        """The application took ``snapshot`` (at or below applied); drop the log before it.

        The caller persists the snapshot itself; the core keeps it to send to lagging peers.
        """
        meta = snapshot.meta
        if meta.index <= self._log.snapshot_index:
            return
        if meta.index > self._log.applied:
            raise InvariantViolation(f"snapshot at {meta.index} beyond applied")
        if meta != self.snapshot_meta(meta.index):
            raise InvariantViolation(f"snapshot meta {meta} does not match the log")
        self._log.compact(meta.index)
        self._snapshot = snapshot
        keep = [h for h in self._history if h[0] > meta.index]
        self._history = [(meta.index, meta.membership), *keep]

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The meta a snapshot of the state after applying ``index`` must carry."""
        term, time_ms = self._log.term(index), self._log.time(index)
        if term is None or time_ms is None:
            raise InvariantViolation(f"no term known at {index}")
        return SnapshotMeta(index, term, self.membership_at(index), time_ms)

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured), as if the timeout fired."""
        if self.role is not Role.LEADER and self._promotable():
            self._election_elapsed = 0
            self._campaign(pre=self._cfg.pre_vote)

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining, probe instead."""
        pr = self._prs.get(peer)
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: NodeId, *, ok: bool) -> None:
        """The transport finished (or gave up) streaming a snapshot to ``peer``."""
        pr = self._prs.get(peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat response before probing

    # -- the Ready cycle

    def has_ready(self) -> bool:
        log = self._log
        return bool(
            self._outbox
            or self._read_states
            or self._pending_snapshot is not None
            or log.unstable_from <= log.last_index
            or self.hard_state != self._prev_hard_state
            or log.committed > max(log.applied, log.snapshot_index)
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise ReadyOutOfOrder(f"Ready {self._outstanding.seq} has not been advanced")
        hs = self.hard_state
        self._ready_seq += 1
        ready = Ready(
            seq=self._ready_seq,
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=self._log.unstable_entries(),
            snapshot=self._pending_snapshot,
            messages=tuple(self._outbox),
            committed_entries=self._log.committed_to_apply(
                self._cfg.apply_entries_per_ready_max, self._cfg.apply_bytes_per_ready_max
            ),
            read_states=tuple(self._read_states),
            role=self.role,
            leader_id=self.leader_id,
            term=self.term,
            membership=self.membership,
        )
        self._outbox.clear()
        self._read_states.clear()
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Everything in ``ready`` was persisted, sent and applied, in that order."""
        if self._outstanding is None:
            raise ReadyOutOfOrder("advance() without an outstanding Ready")
        if ready is not self._outstanding:
            raise ReadyOutOfOrder(
                f"advance() of Ready {ready.seq}, outstanding is {self._outstanding.seq}"
            )
        self._outstanding = None
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.snapshot is not None:
            if self._pending_snapshot is ready.snapshot:
                self._pending_snapshot = None
            self._log.applied = max(self._log.applied, ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            self._log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self._log.applied_to(ready.committed_entries[-1].index)

    # -- step: one message from a peer

    def step(self, m: Message) -> None:
        if m.to != self.id:
            raise PeerProtocolError(f"message for {m.to} delivered to {self.id}")
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self.term:
            self._answer_stale(m)
            return
        match m:
            case PreVote() | Vote() | TransferVote():
                self._handle_vote_request(m)
            case TimeoutNow():
                if self.role is Role.FOLLOWER and self._promotable():
                    self._campaign(pre=False, transfer=True)
            case PreVoteResponse() | VoteResponse():
                self._handle_vote_response(m)
            case Append() | Heartbeat() | InstallSnapshot():
                self._handle_from_leader(m)
            case AppendResponse():
                self._handle_append_response(m)
            case HeartbeatResponse():
                self._handle_heartbeat_response(m)
            case ReadIndexRequest():
                if self.role is Role.LEADER:
                    self._leader_read(m.context, m.sender)
            case ReadIndexResponse():
                self._read_states.append(ReadState(m.index, m.context))

    def _accept_higher_term(self, m: Message) -> bool:
        """A message from a later term; False if it is to be ignored."""
        if isinstance(m, PreVote | Vote) and self._in_lease():
            return False  # leader stickiness: we heard from a live leader recently
        if isinstance(m, PreVote):
            return True  # a pre-vote never changes our term
        if isinstance(m, PreVoteResponse) and not m.reject:
            return True  # we raise our term when the pre-vote wins, not before
        leader = m.sender if isinstance(m, Append | Heartbeat | InstallSnapshot) else None
        self._become_follower(m.term, leader)
        return True

    def _in_lease(self) -> bool:
        return (
            self._cfg.check_quorum
            and self.leader_id is not None
            and self._election_elapsed < self._cfg.election_ticks
        )

    def _answer_stale(self, m: Message) -> None:
        if isinstance(m, Append | Heartbeat):
            # A leader cut off by a partition (and so behind on terms) learns our term and
            # steps down; with pre-vote it might otherwise never hear of the newer term.
            self._send(self._append_response(m.sender, 0))
        elif isinstance(m, PreVote):
            self._send(PreVoteResponse(self.id, m.sender, self.term, True))

    # -- elections

    def _reset_timeout(self) -> None:
        t = self._cfg.election_ticks
        self._randomized_timeout = self._rng.randrange(t, 2 * t)

    def _promotable(self) -> bool:
        return self.membership.is_voter(self.id) and self._pending_snapshot is None

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._reset_timeout()
            if self._promotable():
                self._campaign(pre=self._cfg.pre_vote)

    def _campaign(self, *, pre: bool, transfer: bool = False) -> None:
        if pre:
            self.role, self.leader_id = Role.PRE_CANDIDATE, None
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role, self.vote = Role.CANDIDATE, self.id
            term = self.term
        self._votes = {self.id: True}
        if self._tally_won():
            return
        request = PreVote if pre else TransferVote if transfer else Vote
        for voter in self.membership.voters:
            if voter != self.id:
                self._send(request(self.id, voter, term, self._log.last_index, self._log.last_term))

    def _tally_won(self) -> bool:
        """Count votes; act on a win or a loss. True if the election was decided."""
        voters = self.membership.voters
        granted = sum(1 for v in voters if self._votes.get(v) is True)
        rejected = sum(1 for v in voters if self._votes.get(v) is False)
        if granted >= self.membership.quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
            return True
        if rejected > len(voters) - self.membership.quorum:
            self._become_follower(self.term, None)
            return True
        return False

    def _handle_vote_request(self, m: PreVote | Vote | TransferVote) -> None:
        pre = isinstance(m, PreVote)
        can_vote = (
            self.vote == m.sender
            or (self.vote is None and self.leader_id is None)
            or (pre and m.term > self.term)
        )
        reply = PreVoteResponse if pre else VoteResponse
        if can_vote and self._log.is_up_to_date(m.last_log_index, m.last_log_term):
            self._send(reply(self.id, m.sender, m.term, False))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(reply(self.id, m.sender, self.term, True))

    def _handle_vote_response(self, m: PreVoteResponse | VoteResponse) -> None:
        if isinstance(m, PreVoteResponse):
            if self.role is not Role.PRE_CANDIDATE or (not m.reject and m.term != self.term + 1):
                return
        elif self.role is not Role.CANDIDATE:
            return
        if m.sender in self.membership.voters:
            self._votes.setdefault(m.sender, not m.reject)
            self._tally_won()

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.leader_id = None
        self._election_elapsed = 0
        self._reset_timeout()
        self._votes = {}
        self._prs = {}
        self._clock_reports = {}
        self._clock_offsets = {}
        self._transferee = None
        self._pending_reads = []
        self._reads_before_commit = []

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role, self.leader_id = Role.FOLLOWER, leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role, self.leader_id = Role.LEADER, self.id
        for member in self.membership.members:
            self._add_progress(member)
        self._prs[self.id].recent_active = True
        noop = (EntryKind.NOOP, b"")
        self._append_entries([noop], self._now_ms)
        # No membership change before an entry of this term commits (the fix for the
        # single-server-change bug in Ongaro's thesis errata).
        self._pending_conf_index = self._log.last_index

    def _add_progress(self, member: NodeId) -> None:
        pr = Progress(self._log.last_index + 1, self._cfg.inflight_messages_max)
        if member == self.id:
            pr.maybe_update(self._log.last_index)
            pr.become_replicate()
        self._prs[member] = pr

    # -- leader: proposals, replication, commit

    def _require_leader(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(f"{self.id} is not the leader", leader_hint=self.leader_id)

    def _append_proposal(self, items: list[tuple[EntryKind, bytes]], now_ms: int) -> Proposal:
        self._require_leader()
        if self._transferee is not None:
            # New entries would only delay the hand-over; the caller retries at the new leader.
            raise NotLeader("leadership is being handed over", leader_hint=self._transferee)
        uncommitted = self._log.last_index - self._log.committed
        if uncommitted + len(items) > self._cfg.uncommitted_entries_max:
            raise Overloaded(f"{uncommitted} entries await commit")
        first = self._log.last_index + 1
        self._append_entries(items, now_ms)
        return Proposal(self.term, first, self._log.last_index)

    def _append_entries(self, items: list[tuple[EntryKind, bytes]], now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        # Our clock, within what a quorum's clocks allow; never backwards along the log.
        stamp = next_stamp(
            self._log.last_time_ms,
            self._now_ms,
            self.quorum_clock_ms(),
            self._cfg.clock_offset_max_ms,
        )
        self._last_append_ms = self._now_ms
        first = self._log.last_index + 1
        self._log.append(
            [
                Entry(first + i, self.term, kind, payload, stamp)
                for i, (kind, payload) in enumerate(items)
            ]
        )
        self._prs[self.id].maybe_update(self._log.last_index)
        self._maybe_commit()
        self._broadcast_append()

    def _broadcast_append(self) -> None:
        for peer in sorted(self._prs):
            if peer != self.id:
                self._send_append(peer)

    def _send_append(self, peer: NodeId, *, if_empty: bool = True, notice: bool = False) -> bool:
        """Send ``peer`` the entries it lacks (or an empty Append); False if none went.
        ``notice``: only to tell it a commit; if it has nothing to send to a matched
        follower, that goes unanswered (``Append.ack_wanted``)."""
        pr = self._prs[peer]
        if pr.paused:
            return False
        prev = pr.next - 1
        prev_term = self._log.term(prev)
        if prev_term is None:
            return self._send_snapshot(peer, pr)
        entries: tuple[Entry, ...] = ()
        if pr.next <= self._log.last_index:
            cfg = self._cfg
            entries = self._log.slice(
                pr.next,
                self._log.last_index,
                cfg.entries_per_message_max,
                cfg.bytes_per_message_max,
            )
        if not entries and not if_empty:
            return False
        # A notice still does a heartbeat's job: it resets the follower's election timer, and
        # the follower answers it if it lacks anything; its liveness and clock came with its
        # answers to the entries (a notice follows a commit at its match, so a recent answer).
        answered = bool(entries) or not notice or pr.state is not ProgressState.REPLICATE
        msg = Append(
            self.id, peer, self.term, prev, prev_term, entries, self._log.committed, answered
        )
        self._send(msg)
        pr.sent_entries(entries[-1].index if entries else None)
        pr.commit_sent = self._log.committed
        pr.idle_ticks = 0
        return True

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not push a snapshot at a node that may be down
        snap = self._snapshot
        data = snap.data
        self._send(InstallSnapshot(self.id, peer, self.term, snap.meta, 0, len(data), data, True))
        pr.become_snapshot(snap.meta.index)
        return True

    def _maybe_commit(self) -> bool:
        voters = self.membership.voters
        matches = sorted((self._prs[v].match for v in voters if v in self._prs), reverse=True)
        if len(matches) < self.membership.quorum:
            return False
        index = matches[self.membership.quorum - 1]
        # Raft §5.4.2: only an entry of the current term is committed by counting replicas.
        if index <= self._log.committed or self._log.term(index) != self.term:
            return False
        self._commit_to(index)
        return True

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self._prs.get(m.sender)
        if self.role is not Role.LEADER or pr is None:
            return
        pr.recent_active = True
        self._note_clock(m.sender, m.clock_ms)
        if m.reject:
            probe = m.hint_index
            if m.hint_term > 0:
                probe = self._log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decrease(m.index, probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.sender)
            return
        was_paused = pr.paused
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self._log.first_index:
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            if not self._cfg.lazy_commit_notify:
                self._broadcast_append()  # tell everyone the new commit index
        elif was_paused:
            self._send_append(m.sender)
        if m.sender in self._prs:  # a commit above may have removed it
            while self._send_append(m.sender, if_empty=False):
                pass  # pipelining: fill the window
        if m.sender == self._transferee and pr.match == self._log.last_index:
            self._send(TimeoutNow(self.id, m.sender, self.term))

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self._prs.get(m.sender)
        if self.role is not Role.LEADER or pr is None:
            return
        pr.recent_active = True
        self._note_clock(m.sender, m.clock_ms)
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.paused:
            pr.inflights.popleft()  # a lost Append must not stall the window forever
        if pr.match < self._log.last_index:
            self._send_append(m.sender)
        if m.context:
            self._ack_read(m.context, m.sender)

    def _note_clock(self, peer: NodeId, clock_ms: int | None) -> None:
        """A peer's clock report arrived (leader): keep the latest, measure its offset."""
        if clock_ms is None:
            self._clock_reports[peer] = UNKNOWN_CLOCK
            self._clock_offsets.pop(peer, None)
            return
        # The latest, not the highest: a peer whose fast clock was corrected must stop
        # counting as fast. A reordered older report only lowers the bound for a while.
        self._clock_reports[peer] = clock_ms
        self._clock_offsets[peer] = clock_ms - self._now_ms

    def _tick_leader(self) -> None:
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._cfg.election_ticks:
                self._transferee = None  # the target did not take over: lead on
        for peer in sorted(self._prs):
            pr = self._prs[peer]
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed_ticks += 1
                if pr.snapshot_elapsed_ticks >= self._cfg.snapshot_timeout:
                    self.report_snapshot(peer, ok=False)
        if self._election_elapsed >= self._cfg.election_ticks:
            self._election_elapsed = 0
            if self._cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        self._tick_peers()

    def _tick_peers(self) -> None:
        """Heartbeat suppression (as TiKV's and etcd's busy leaders): a peer gets a heartbeat
        only when it was sent nothing for ``heartbeat_ticks``. An Append already carries the
        term and a commit index, resets the follower's election timer and is always answered,
        and its answer feeds the same bookkeeping as a heartbeat's (``recent_active`` for
        check-quorum, the clock report for log time); so a follower still hears from its
        leader at least every ``heartbeat_ticks``, and a busy leader sends no heartbeats at
        all. A peer whose Appends are paused (a full window, an unanswered probe, a snapshot
        in flight) is sent nothing else, so it gets its heartbeat, whose answer unsticks it.
        With lazy commit notification, a peer not due a heartbeat is told a commit no Append
        has carried yet in an empty Append, unanswered when the peer is matched (a notice)."""
        committed = self._log.committed
        for peer in sorted(self._prs):
            pr = self._prs[peer]
            if peer == self.id:
                continue
            pr.idle_ticks += 1
            if pr.idle_ticks >= self._cfg.heartbeat_ticks:
                self._send_heartbeat(peer, pr, b"")
            elif self._cfg.lazy_commit_notify and pr.commit_sent < min(committed, pr.match):
                self._send_append(peer, notice=True)

    def _quorum_active(self) -> bool:
        active = 0
        for peer, pr in self._prs.items():
            if peer in self.membership.voters and (pr.recent_active or peer == self.id):
                active += 1
            if peer != self.id:
                pr.recent_active = False
        return active >= self.membership.quorum

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for peer in sorted(self._prs):
            if peer != self.id:
                self._send_heartbeat(peer, self._prs[peer], context)

    def _send_heartbeat(self, peer: NodeId, pr: Progress, context: bytes) -> None:
        commit = min(pr.match, self._log.committed)
        self._send(Heartbeat(self.id, peer, self.term, commit, context))
        pr.commit_sent = max(pr.commit_sent, commit)
        pr.idle_ticks = 0

    # -- follower: what the leader sends

    def _handle_from_leader(self, m: Append | Heartbeat | InstallSnapshot) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(m.term, m.sender)
        self.leader_id = m.sender
        self._election_elapsed = 0
        match m:
            case Append():
                self._handle_append(m)
            case Heartbeat():
                self._commit_to(min(m.commit, self._log.last_index))
                clock = self._clock_report()
                self._send(HeartbeatResponse(self.id, m.sender, self.term, m.context, clock))
            case InstallSnapshot():
                self._handle_snapshot(m)

    def _handle_append(self, m: Append) -> None:
        log = self._log
        if m.prev_index < log.committed:
            self._send(self._append_response(m.sender, log.committed))
            return
        last_new = log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if last_new is not None:
            self._commit_to(min(m.commit, last_new))
            if m.entries or m.ack_wanted:  # an accepted commit notice needs no answer
                self._send(self._append_response(m.sender, last_new))
            return
        hint = log.find_conflict_by_term(min(m.prev_index, log.last_index), m.prev_term)
        self._send(self._append_response(m.sender, m.prev_index, hint, log.term(hint) or 0))

    def _append_response(
        self, to: NodeId, index: int, hint_index: int | None = None, hint_term: int = 0
    ) -> AppendResponse:
        """An acceptance of ``index``, or (with a hint) a rejection; with our clock report."""
        reject = hint_index is not None
        return AppendResponse(
            self.id, to, self.term, index, reject, hint_index or 0, hint_term, self._clock_report()
        )

    def _clock_report(self) -> int | None:
        """What we tell the leader our clock says (None: we were never given the time)."""
        return self._now_ms or None

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        if m.offset != 0 or not m.last or len(m.chunk) != m.total_bytes:
            raise InvariantViolation("step() got a snapshot chunk; join_snapshot() first")
        meta, log = m.meta, self._log
        if meta.index <= log.committed:
            self._send(self._append_response(m.sender, log.committed))
            return
        if log.match_term(meta.index, meta.term):
            # We already hold the entries: just learn that they are committed.
            self._commit_to(meta.index)
            self._send(self._append_response(m.sender, log.last_index))
            return
        snapshot = Snapshot(meta, m.chunk)
        log.restore(snapshot)
        self._snapshot = self._pending_snapshot = snapshot
        self.membership = meta.membership
        self._history = [(meta.index, meta.membership)]
        self._send(self._append_response(m.sender, log.last_index))

    # -- commit and membership

    def _commit_to(self, index: int) -> None:
        before = self._log.committed
        if not self._log.commit_to(index):
            return
        for i in range(max(before, self._log.snapshot_index) + 1, index + 1):
            entry = self._log.entry(i)
            if entry.kind is EntryKind.CONFIG:
                self._activate(i, ConfChange.decode(entry.payload).result)
        if self.role is Role.LEADER and self._log.term(index) == self.term:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)

    def _activate(self, index: int, membership: Membership) -> None:
        """A committed config entry takes effect (single-server changes take effect on commit)."""
        self.membership = membership
        self._history.append((index, membership))
        if self.role is not Role.LEADER:
            return
        for peer in [p for p in self._prs if not membership.is_member(p) and p != self.id]:
            del self._prs[peer]
        for member in membership.members:
            if member not in self._prs:
                self._add_progress(member)
                self._prs[member].recent_active = True
        if not membership.is_voter(self.id):
            self._broadcast_append()  # let the others learn the commit before we go
            self._become_follower(self.term, None)
            return
        self._maybe_commit()  # a smaller quorum may commit more at once

    # -- ReadIndex

    def _leader_read(self, context: bytes, requester: NodeId) -> None:
        if len(self._pending_reads) + len(self._reads_before_commit) >= self._cfg.pending_reads_max:
            if requester == self.id:
                raise Overloaded("too many pending reads")
            return  # a forwarded read: the follower times out and retries
        if self._log.term(self._log.committed) != self.term:
            # Our commit index may lag the true one until an entry of our term commits.
            self._reads_before_commit.append((context, requester))
            return
        read = _PendingRead(context, self._log.committed, requester, {self.id})
        if self.membership.quorum <= 1:
            self._answer_read(read)
            return
        self._pending_reads.append(read)
        self._broadcast_heartbeat(context)

    def _ack_read(self, context: bytes, peer: NodeId) -> None:
        for position, read in enumerate(self._pending_reads):
            if read.context != context:
                continue
            if self.membership.is_voter(peer):
                read.acks.add(peer)
            voters = set(self.membership.voters)
            if len(read.acks & voters) >= self.membership.quorum:
                # A quorum confirmed us after every earlier request was made: answer them too.
                done, self._pending_reads = (
                    self._pending_reads[: position + 1],
                    self._pending_reads[position + 1 :],
                )
                for each in done:
                    self._answer_read(each)
            return

    def _answer_read(self, read: _PendingRead) -> None:
        if read.requester == self.id:
            self._read_states.append(ReadState(read.index, read.context))
        else:
            msg = ReadIndexResponse(self.id, read.requester, self.term, read.index, read.context)
            self._send(msg)

    # -- output

    def _send(self, message: Message) -> None:
        self._outbox.append(message)
