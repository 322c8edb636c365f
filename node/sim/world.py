"""The simulated world: one seed, one clock, one network, a fault schedule, and the actors.

Theory of operation
-------------------
:func:`simulate` builds a :class:`World` from ``(seed, rng, bug)`` and runs it. Every choice is
drawn from the one generator, in a fixed order: the cluster (3-5 voters, or 8-9 nodes with 5
voters and learners and membership changes), the erasure code (k, n; ``write_quorum = k + 1``)
and the move grace, the network's fault rates and latency, each node's tick length (clock
skew; each node's clock offset, up to an hour for one node in half the seeds, is hashed
from the seed instead), the workload (command clients and record clients; the ledger
client's operations from :mod:`.ledger_load` or, with ``workload="bridge"``, from
:mod:`.bridge_load` (users' keys drawn here, the clocks started just before a day boundary)
or, with ``workload="payments"``, from :mod:`.payments_load` (keys and one-time codes drawn
here), all at the newest log feature a node understands) and the fault schedule; the Raft
cores draw their election jitter from it too. Events sit in one heap ordered by (time,
sequence number), so the same seed replays the same run; a digest of the events proves it.

A run has two phases:

1. **safety** (``safety_ms`` of simulated time): clients write, messages are lost, duplicated,
   delayed and reordered, the network splits (symmetric and one-way), nodes crash (losing
   unflushed log and shard writes, sometimes in the middle of a persist step) and restart,
   stored entries are corrupted (the node is quarantined at restart and replaced) or stored
   shards are (found by checksum when read), and on large clusters an operator adds, promotes
   and removes members. A removed member drains: the leader's mover moves its shards away and
   the operator retires it once no committed record location names it.
2. **liveness**: faults stop, the network heals, crashed nodes restart and clients only finish
   what they started. Within ``liveness_ms`` the cluster must converge: one leader, every
   member running with the same committed and applied log, every client acknowledged, no move
   under way and every record's shards at their placement over the final membership.

The checkers (:mod:`node.sim.checkers`) watch every Ready, acknowledgement and shard delete,
then check the converged cluster and that every acknowledged record still rebuilds. A broken
invariant or an exception ends the run as a failure.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from business.bridge.model import DAY_MS
from business.payments.outbox import EventType
from node.consensus.config import RaftConfig
from node.consensus.record_index import IndexEntry, RecordIndex
from node.consensus.state_machine import AppEntry
from node.consensus.types import ConfChangeKind, NodeId, Role, default_membership
from node.errors import CallerError, OperationFailed
from node.sim.actors import (
    ClientActor,
    ClientReply,
    NodeActor,
    NodeState,
    SimMessage,
)
from node.sim.bridge_load import BridgeWorkload
from node.sim.bugs import Bug
from node.sim.checkers import Checker, LiveNode, SimFailure, outbox_events
from node.sim.dataplane import DataParams, RecordReply
from node.sim.ledger_load import LedgerWorkload, Workload
from node.sim.machine import FEATURE_VERSION_SIM
from node.sim.network import Network, NetworkFaults
from node.sim.payments_load import PaymentsWorkload
from node.sim.rng import SimRng
from node.sim.shards import SimShardStore

__all__ = ["WORKLOADS", "SimParams", "SimResult", "World", "draw_params", "simulate"]

# The ledger client's workloads, and the log feature version the world enables for each: the
# newest a node understands, for all of them.
WORKLOADS = {
    "ledger": FEATURE_VERSION_SIM,
    "bridge": FEATURE_VERSION_SIM,
    "payments": FEATURE_VERSION_SIM,
}

SAFETY_MS = 90_000  # the faulty phase of a run, then at most LIVENESS_MS to converge
LIVENESS_MS = 30_000
TICK_MS = 100  # election after 10-20 ticks: 1-2 s, as the durable adapter will use
# Clocks: every node's clock is off real (simulated) time by up to HONEST_SKEW_MS_MAX; in half
# the seeds one node's clock is an hour fast or an hour slow. The cores stamp within
# CLOCK_OFFSET_MAX_MS of a quorum's clocks (the unbounded-stamps bug lifts that).
CLOCK_EPOCH_MS = 1_700_000_000_000  # simulated time 0 on the nodes' clocks
# The Bridge workload's clocks start this long before a UTC day boundary (a log day is a UTC
# day), so the log clock crosses it mid-run and points issued before it expire.
BRIDGE_DAY_CROSS_MS = 60_000
BRIDGE_CLOCK_EPOCH_MS = (CLOCK_EPOCH_MS // DAY_MS + 1) * DAY_MS - BRIDGE_DAY_CROSS_MS
HONEST_SKEW_MS_MAX = 300
BAD_CLOCK_MS = 3_600_000
CLOCK_OFFSET_MAX_MS = 1_000
CONVERGE_CHECK_MS = 250
OPERATOR_MS = 400
LOG_CHECK_MS = 2000
# Runaway guards: a run that floods its network (a message storm) or never ends is a failure.
EVENTS_MAX = 600_000
EVENTS_PENDING_MAX = 10_000


@dataclass(frozen=True, slots=True)
class SimParams:
    node_count: int
    voter_count: int
    membership_changes: bool
    faults: NetworkFaults
    fault_interval_ms: int
    corruption: bool
    clients: int
    record_clients: int
    ledger_clients: int  # record clients whose records carry ledger operations
    data: DataParams
    think_ms_max: int
    retry_ms: int
    compact_entries: int
    entries_per_message_max: int
    inflight_messages_max: int
    writeback_ms: int  # skip-fsync only: how often the OS flushes behind the adapter's back
    safety_ms: int
    liveness_ms: int
    workload: str = "ledger"  # what the ledger client sends (WORKLOADS)

    @property
    def feature_version(self) -> int:
        return WORKLOADS[self.workload]


def draw_params(
    rng: SimRng,
    *,
    safety_ms: int = SAFETY_MS,
    liveness_ms: int = LIVENESS_MS,
    workload: str = "ledger",
) -> SimParams:
    large = rng.random() < 0.2
    node_count = rng.randint(8, 9) if large else rng.randint(3, 5)
    latency_max = rng.randint(2, 20)
    # n fits the smallest membership the run keeps (a replaced node leaves one out for a
    # while); write_quorum = k + 1 > n - k, as the real default, so one lost holder is survived.
    k, n = {3: (2, 3), 4: (2, 4), 5: (3, 5)}.get(node_count) or rng.choice([(3, 5), (3, 6)])
    return SimParams(
        node_count=node_count,
        voter_count=min(5, node_count),
        membership_changes=large,
        faults=NetworkFaults(
            loss=rng.random() * 0.08,
            duplication=rng.random() * 0.05,
            latency_ms_min=1,
            latency_ms_max=latency_max,
            tail=rng.random() * 0.1,
            tail_ms_max=rng.randint(latency_max + 1, 600),
        ),
        fault_interval_ms=rng.randint(300, 1500),
        corruption=rng.random() < 0.5,
        clients=rng.randint(1, 2),
        record_clients=rng.randint(1, 3),
        data=DataParams(k, n, k + 1, grace_entries=rng.randint(0, 20)),
        think_ms_max=rng.randint(20, 200),
        retry_ms=rng.randint(800, 2000),
        compact_entries=rng.randint(10, 80),
        entries_per_message_max=rng.choice([2, 8, 64]),
        inflight_messages_max=rng.choice([1, 4, 16]),
        writeback_ms=rng.randint(200, 1000),
        safety_ms=safety_ms,
        liveness_ms=liveness_ms,
        ledger_clients=1,  # one ledger client: the whole workload, for ~15% more events
        workload=workload,
    )


@dataclass
class SimResult:
    seed: int
    bug: Bug
    failure: str | None
    digest: str
    sim_ms: int
    events: int
    stats: dict[str, int] = field(default_factory=dict)
    workload: str = "ledger"
    safety_ms: int = SAFETY_MS

    @property
    def ok(self) -> bool:
        return self.failure is None


def _node_name(number: int) -> NodeId:
    return f"n{number}"


def _hash_int(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _bad_clock(seed: int, node_count: int) -> tuple[NodeId, int] | None:
    """The node whose clock is an hour off in this seed, and by how much (None: none is).

    Derived from the seed by hashing rather than drawn from the generator, so adding clocks
    left every other draw of a seed (and so its faults and workload) as it was.
    """
    h = _hash_int("bad-clock", seed)
    kind = h % 4  # none, none, fast, slow
    if kind < 2:
        return None
    return _node_name((h >> 8) % node_count), BAD_CLOCK_MS if kind == 2 else -BAD_CLOCK_MS


def _clock_offset_ms(seed: int, node_id: NodeId, bad: tuple[NodeId, int] | None) -> int:
    honest = _hash_int("clock", seed, node_id) % (2 * HONEST_SKEW_MS_MAX + 1) - HONEST_SKEW_MS_MAX
    return honest + (bad[1] if bad is not None and bad[0] == node_id else 0)


class World:
    def __init__(
        self,
        seed: int,
        rng: SimRng,
        bug: Bug = Bug.NONE,
        params: SimParams | None = None,
        *,
        workload: str = "ledger",
    ) -> None:
        self.seed = seed
        self._rng = rng
        self._bug = bug
        self.params = params or draw_params(rng, workload=workload)
        kind = self.params.workload
        self._epoch_ms = BRIDGE_CLOCK_EPOCH_MS if kind == "bridge" else CLOCK_EPOCH_MS
        self.bridge = BridgeWorkload.draw(rng, self._epoch_ms) if kind == "bridge" else None
        self.payments = PaymentsWorkload.draw(rng, self._epoch_ms) if kind == "payments" else None
        market = self.bridge or self.payments
        self._setup = market.setup_entries() if market is not None else []
        self._bad_clock = _bad_clock(seed, self.params.node_count)
        self._checker = Checker(
            self.params.data.write_quorum,
            self.params.data.grace_entries,
            clock_ms=self.clock_ms,
            clock_offset_max_ms=CLOCK_OFFSET_MAX_MS,
        )
        self._now_ms = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.event_count = 0
        self._digest = hashlib.blake2b(digest_size=16)
        self.trace: list[str] | None = None
        self.network = Network(rng, self.params.faults)
        self.nodes: dict[NodeId, NodeActor] = {}
        self.clients: dict[str, ClientActor] = {}
        self.phase = "safety"
        self.stats: dict[str, int] = {}
        self._names = self.params.node_count
        self._tick_ms: dict[NodeId, int] = {}
        self._operator_commit = 0  # the highest commit index the operator acted on
        self._lost: set[NodeId] = set()  # retired with their shards lost (a bad disk)
        self._build()

    # -- Env, as the actors see it

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def bad_clock(self) -> tuple[NodeId, int] | None:
        """The node whose clock is an hour off in this seed, and its offset (None: none)."""
        return self._bad_clock

    def clock_ms(self, node_id: NodeId) -> int:
        return self._epoch_ms + self._now_ms + _clock_offset_ms(self.seed, node_id, self._bad_clock)

    @property
    def rng(self) -> SimRng:
        return self._rng

    @property
    def bug(self) -> Bug:
        return self._bug

    @property
    def checker(self) -> Checker:
        return self._checker

    @property
    def accepting_writes(self) -> bool:
        return self.phase == "safety"

    @property
    def data(self) -> DataParams:
        return self.params.data

    @property
    def feature_version(self) -> int:
        return self.params.feature_version

    @property
    def setup_entries(self) -> list[tuple[bytes, AppEntry]]:
        return self._setup

    def send(self, message: SimMessage) -> None:
        for delay in self.network.delays(message.sender, message.to):
            self._at(delay, partial(self._deliver, message))

    def node_ids(self) -> list[NodeId]:
        """The nodes a client may send to (not retired, not draining)."""
        return [
            n
            for n, node in self.nodes.items()
            if node.state is not NodeState.RETIRED and not node.draining
        ]

    def on_crashed(self, node_id: NodeId) -> None:
        self._count("crashes")
        node = self.nodes[node_id]
        incarnation = node.incarnation
        self._at(self._rng.randint(200, 4000), lambda: self._restart(node_id, incarnation))

    # -- set-up

    def _build(self) -> None:
        p = self.params
        ids = [_node_name(i) for i in range(p.node_count)]
        membership = default_membership(ids)
        for node_id in ids:
            node = NodeActor.bootstrap(
                self, self._config(node_id), membership, compact_entries=p.compact_entries
            )
            self._add_node(node)
        for i in range(p.clients + p.record_clients + p.ledger_clients):
            records = i >= p.clients
            ledger = i >= p.clients + p.record_clients
            workload: Workload | None = None
            if ledger:
                workload = self.bridge or self.payments or LedgerWorkload.for_client(i)
            client = ClientActor(
                self,
                f"c{i}",
                think_ms_max=p.think_ms_max,
                retry_ms=p.retry_ms,
                records=records,
                ledger=workload,
            )
            self.clients[client.id] = client
            self._at(self._rng.randint(0, 500), partial(self._client_act, client))
        self._at(p.fault_interval_ms, self._fault)
        self._at(OPERATOR_MS, self._operate)
        self._at(LOG_CHECK_MS, self._check_logs)
        self._at(p.safety_ms, self._start_liveness)

    def _config(self, node_id: NodeId) -> RaftConfig:
        p = self.params
        return RaftConfig(
            node_id,
            election_ticks=10,
            heartbeat_ticks=2,
            entries_per_message_max=p.entries_per_message_max,
            inflight_messages_max=p.inflight_messages_max,
            snapshot_timeout_ticks=30,
            clock_offset_max_ms=(
                100 * BAD_CLOCK_MS if self._bug is Bug.UNBOUNDED_STAMPS else CLOCK_OFFSET_MAX_MS
            ),
        )

    def _add_node(self, node: NodeActor) -> None:
        self.nodes[node.id] = node
        skew = self._rng.randint(-10, 10)  # per cent: clocks of nodes run at different rates
        self._tick_ms[node.id] = TICK_MS + skew
        self._at(self._rng.randint(1, TICK_MS), lambda: self._tick(node.id))
        if self._bug is Bug.SKIP_FSYNC:
            self._at(self.params.writeback_ms, lambda: self._writeback(node.id))
        node.process()

    # -- the event loop

    def _at(self, delay_ms: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self._now_ms + delay_ms, self._seq, action))
        self._seq += 1

    def _note(self, *parts: object) -> None:
        line = " ".join(str(p) for p in (self._now_ms, *parts))
        self._digest.update(line.encode())
        if self.trace is not None:
            self.trace.append(line)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def count(self, what: str) -> None:
        self._count(what)

    def run(self) -> SimResult:
        failure = None
        try:
            self._loop()
        except SimFailure as exc:
            failure = str(exc)
        except Exception as exc:  # an exception from a core or an actor is a failure too
            failure = f"[exception] {type(exc).__name__}: {exc}"
        self._note("end", failure)
        self.stats["committed"] = len(self._checker.committed)
        self.stats["acked"] = len(self._checker.acked)
        self.stats["records_acked"] = len(self._checker.records_acked)
        self.stats["ledger_ops_acked"] = len(self._checker.outcomes_acked)
        self.stats["shard_deletes"] = self._checker.deletes
        self.stats["log_time_ahead_ms_max"] = self._checker.log_time_ahead_ms_max
        if self.bridge is not None:
            for code, count in sorted(self.bridge.results.items()):
                self.stats[f"bridge_{code}"] = count
            self.stats["bridge_ops_resent"] = self.stats.get("ledger_ops_resent", 0)
            self.stats["bridge_points_expired"] = self.bridge.points_expired(
                self._checker.reference
            )
        if self.payments is not None:
            for code, count in sorted(self.payments.results.items()):
                self.stats[f"payments_{code}"] = count
            self.stats["payments_ops_resent"] = self.stats.get("ledger_ops_resent", 0)
            for _, kind, _, _ in outbox_events(self._checker.reference.kv):
                name = f"payments_event_{EventType(kind).api_name}"
                self.stats[name] = self.stats.get(name, 0) + 1
        self.stats["dropped"] = self.network.dropped
        self.stats["duplicated"] = self.network.duplicated
        return SimResult(
            self.seed,
            self._bug,
            failure,
            self._digest.hexdigest(),
            self._now_ms,
            self.event_count,
            self.stats,
            self.params.workload,
            self.params.safety_ms,
        )

    def _loop(self) -> None:
        deadline = self.params.safety_ms + self.params.liveness_ms
        while self._events:
            time_ms, _, action = heapq.heappop(self._events)
            if time_ms > deadline:
                raise SimFailure(
                    "liveness",
                    f"no convergence {self.params.liveness_ms} ms after the faults stopped: "
                    f"{self._describe()}",
                )
            self._now_ms = time_ms
            self.event_count += 1
            if self.event_count > EVENTS_MAX or len(self._events) > EVENTS_PENDING_MAX:
                raise SimFailure(
                    "runaway",
                    f"{self.event_count} events, {len(self._events)} pending: {self._describe()}",
                )
            action()
            if self.phase == "done":
                return

    # -- events

    def _deliver(self, message: SimMessage) -> None:
        self._note(
            "msg", type(message).__name__, message.sender, message.to, getattr(message, "term", "")
        )
        if isinstance(message, ClientReply | RecordReply):
            client = self.clients.get(message.to)
            if client is not None:
                client.receive(message)
            return
        node = self.nodes.get(message.to)
        if node is not None and node.up:
            node.receive(message)

    def _tick(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if node.state is NodeState.RETIRED:
            return
        if node.up:
            node.tick()
        self._at(self._tick_ms[node_id], lambda: self._tick(node_id))

    def _writeback(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if node.up:
            node.disk.flush()
            node.holder.group_commit()
        if node.state is not NodeState.RETIRED:
            self._at(self.params.writeback_ms, lambda: self._writeback(node_id))

    def _client_act(self, client: ClientActor) -> None:
        self._at(client.act(), lambda: self._client_act(client))

    def _restart(self, node_id: NodeId, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.state is not NodeState.DOWN or node.incarnation != incarnation:
            return
        self._note("restart", node_id)
        if not node.restart():
            self._note("quarantined", node_id, node.corrupt_found)
            self._count("quarantined")

    def _check_logs(self) -> None:
        self._at(LOG_CHECK_MS, self._check_logs)
        for node in self._running():
            self._checker.check_committed_log(LiveNode(node.id, node.core, node.disk, node.machine))

    # -- faults (safety phase only)

    def _fault(self) -> None:
        if self.phase != "safety":
            return
        self._at(self._rng.randint(1, 2 * self.params.fault_interval_ms), self._fault)
        faults: list[tuple[int, Callable[[], None]]] = [
            (4, self._crash),
            (2, self._crash_at_persist),
            (3, self._split),
            (2, self._one_way),
            (3, self._heal),
        ]
        if self.params.corruption:
            faults.append((1, self._corrupt))
        roll = self._rng.randrange(0, sum(w for w, _ in faults))
        for weight, fault in faults:
            roll -= weight
            if roll < 0:
                fault()
                return

    def _running(self) -> list[NodeActor]:
        return [n for n in self.nodes.values() if n.up]

    def _crash(self) -> None:
        running = self._running()
        if running:
            node = self._rng.choice(running)
            self._note("crash", node.id)
            node.crash(keep=self._rng.randint(0, node.disk.buffered))

    def _crash_at_persist(self) -> None:
        running = self._running()
        if running:
            node = self._rng.choice(running)
            self._note("crash-at-persist", node.id)
            node.crash_at_persist = True

    def _split(self) -> None:
        ids = sorted(self.nodes)
        side = [n for n in ids if self._rng.random() < 0.5]
        generation = self.network.split([side, [n for n in ids if n not in side]], ids)
        self._note("split", side)
        self._at(self._rng.randint(500, 5000), lambda: self.network.heal(generation))

    def _one_way(self) -> None:
        ids = sorted(self.nodes)
        victim = self._rng.choice(ids)
        outbound = self._rng.random() < 0.5
        pairs = [(victim, n) if outbound else (n, victim) for n in ids if n != victim]
        generation = self.network.block_one_way(pairs)
        self._note("one-way", victim, outbound)
        self._at(self._rng.randint(500, 5000), lambda: self.network.heal(generation))

    def _heal(self) -> None:
        self._note("heal")
        self.network.heal()

    def _corrupt(self) -> None:
        """Flip a byte on one node's disk: a stored log entry (power the node off first; it is
        quarantined at restart) or a stored shard (found by its checksum when read)."""
        # A corrupt disk is a lost member: allow one at a time, and only at full strength, so a
        # quorum of healthy voters always remains (losing a quorum's disks loses data for good),
        # and only once the shards of the last lost one were rebuilt elsewhere (as a record
        # survives one lost holder beyond its write quorum, not two).
        if any(
            (n.disk.corrupted or n.shards.corrupted) and n.state is not NodeState.RETIRED
            for n in self.nodes.values()
        ):
            return
        leader = self._leader()
        if leader is None or len(leader.core.membership.voters) < self.params.voter_count:
            return
        if self._named_nodes(leader) & self._lost:
            return
        candidates = [n for n in self._running() if n.disk.entries and not n.draining]
        if not candidates:
            return
        node = self._rng.choice(candidates)
        if node.shards.durable and self._rng.random() < 0.5:
            key = node.shards.corrupt(self._rng.randrange(0, 1 << 30))
            self._note("corrupt-shard", node.id, key[1] if key else None)
            self._count("shard_corruptions")
            return
        node.crash(keep=self._rng.randint(0, node.disk.buffered))
        index = node.disk.corrupt(self._rng.randrange(0, 1 << 30))
        self._note("corrupt", node.id, index)
        self._count("corruptions")

    def _named_nodes(self, leader: NodeActor) -> set[NodeId]:
        """The nodes the leader's record index names as a current shard location."""
        return {
            node
            for key, raw in leader.machine.kv.items()
            if key.startswith(RecordIndex.prefix)
            for node in IndexEntry.decode(key[len(RecordIndex.prefix) :], raw).shard_nodes
        }

    # -- the operator: replaces quarantined nodes, and changes membership on large clusters

    def _leader(self) -> NodeActor | None:
        leaders = [n for n in self._running() if n.core.role is Role.LEADER and not n.draining]
        return max(leaders, key=lambda n: n.core.term) if leaders else None

    def _operate(self) -> None:
        if self.phase == "done":
            return
        self._at(OPERATOR_MS, self._operate)
        leader = self._leader()
        if leader is None or leader.core.commit_index < self._operator_commit:
            return  # none, or a stale leader whose committed membership may be older
        self._operator_commit = leader.core.commit_index
        membership = leader.core.membership
        draining = False
        for node in self.nodes.values():
            if membership.is_member(node.id):
                node.admitted = True
            elif node.admitted and node.state is not NodeState.RETIRED:
                if node.state is NodeState.QUARANTINED:
                    self._lost.add(node.id)  # its disk is bad: its shards are gone for good
                    self._retire(node)
                elif not node.draining:
                    self._note("drain", node.id)
                    node.draining = True
                draining = True
        if draining:
            self._retire_drained(leader)
        change = self._next_change(leader)
        if change is None:
            return
        kind, node_id = change
        try:
            leader.core.propose_change(kind, node_id, now_ms=leader.clock_ms)
        except (OperationFailed, CallerError):
            return
        self._note("propose-change", kind.name, node_id)
        self._count("membership_changes")
        leader.process()

    def _retire(self, node: NodeActor) -> None:
        self._note("retire", node.id)
        node.state = NodeState.RETIRED

    def _retire_drained(self, leader: NodeActor) -> None:
        """Stop the draining nodes that no committed record location names any more."""
        named = self._named_nodes(leader)
        for node in self.nodes.values():
            if node.draining and node.state is not NodeState.RETIRED and node.id not in named:
                self._retire(node)

    def _next_change(self, leader: NodeActor) -> tuple[ConfChangeKind, NodeId] | None:
        m = leader.core.membership
        for node_id in m.members:
            if self.nodes[node_id].state is NodeState.QUARANTINED:
                return ConfChangeKind.REMOVE_NODE, node_id
        joining = [n for n in self.nodes.values() if not n.admitted and n.up]
        if joining:
            return ConfChangeKind.ADD_LEARNER, joining[0].id
        if len(m.members) < self.params.node_count:
            return ConfChangeKind.ADD_LEARNER, self._spawn().id
        if len(m.voters) < self.params.voter_count:
            for learner in m.learners:
                node = self.nodes[learner]
                if node.up and node.core.applied_index + 5 >= leader.core.commit_index:
                    return ConfChangeKind.PROMOTE_LEARNER, learner
            return None
        if not (self.params.membership_changes and self.phase == "safety"):
            return None
        if self._rng.random() >= 0.15:
            return None
        if m.learners and self._rng.random() < 0.5:
            return ConfChangeKind.REMOVE_NODE, self._rng.choice(m.learners)
        return ConfChangeKind.REMOVE_NODE, self._rng.choice(m.voters)

    def _spawn(self) -> NodeActor:
        node_id = _node_name(self._names)
        self._names += 1
        self._note("join", node_id)
        node = NodeActor.join(
            self, self._config(node_id), compact_entries=self.params.compact_entries
        )
        self._add_node(node)
        return node

    # -- liveness

    def _start_liveness(self) -> None:
        self._note("liveness")
        self.phase = "liveness"
        self.network.faults = NetworkFaults(latency_ms_min=1, latency_ms_max=5)
        self.network.heal()
        for node in self.nodes.values():
            node.crash_at_persist = False
            if node.state is NodeState.DOWN:
                self._restart(node.id, node.incarnation)
        self._at(CONVERGE_CHECK_MS, self._check_converged)

    def _members_converged(self) -> list[NodeActor] | None:
        leader = self._leader()
        if leader is None or not all(c.idle for c in self.clients.values()):
            return None
        core = leader.core
        if core.term_at(core.commit_index) != core.term:
            return None
        members = [self.nodes[n] for n in core.membership.members]
        if any(not n.admitted and n.up for n in self.nodes.values()):
            return None
        if len(core.membership.voters) < self.params.voter_count:
            return None
        for node in members:
            if not node.up or node.core.applied_index != core.commit_index:
                return None
            if node.core.commit_index != core.commit_index:
                return None
        if leader.mover.busy or leader.mover.unplanned():
            return None  # shards still to move to their placement over the membership
        return members

    def _check_converged(self) -> None:
        members = self._members_converged()
        if members is None:
            self._at(CONVERGE_CHECK_MS, self._check_converged)
            return
        self._note("converged")
        live = [LiveNode(n.id, n.core, n.disk, n.machine) for n in members]
        if self.bridge is not None:
            partners = [p.id for p in self.bridge.partners]
            for node in live:
                self._checker.check_bridge(
                    node.node_id, node.machine.kv, partners, self.bridge.swaps
                )
        if self.payments is not None:
            for node in live:
                self._checker.check_payments(
                    node.node_id,
                    node.machine.kv,
                    self.payments.listings,
                    self.payments.expected_deposits(),
                )
        self._checker.check_converged(live)
        self._checker.check_records_decodable(self._reachable_store)
        self.phase = "done"

    def _reachable_store(self, node_id: NodeId) -> SimShardStore | None:
        node = self.nodes.get(node_id)
        return node.shards if node is not None and node.up else None

    def _describe(self) -> str:
        leader = self._leader()
        parts = [f"leader {leader.id if leader else None}"]
        for node in self.nodes.values():
            if node.state is NodeState.RETIRED:
                continue
            core = node.core
            parts.append(
                f"{node.id}:{node.state.value} {core.role.value} t{core.term} "
                f"c{core.commit_index} a{core.applied_index}"
            )
        busy = [c.id for c in self.clients.values() if not c.idle]
        parts.append(f"clients waiting {busy}")
        if leader is not None:
            parts.append(f"moves {len(leader.mover.tasks)} unplanned {leader.mover.unplanned()}")
        return "; ".join(parts)


def simulate(
    seed: int,
    rng: SimRng,
    bug: Bug = Bug.NONE,
    *,
    trace: bool = False,
    workload: str = "ledger",
    safety_ms: int = SAFETY_MS,
) -> tuple[SimResult, list[str] | None]:
    """Run one seed; ``rng`` must be ``random.Random(seed)`` (the caller makes it). A shorter
    ``safety_ms`` (the faulty phase) makes a short horizon for seed sweeps."""
    params = draw_params(rng, safety_ms=safety_ms, workload=workload)
    world = World(seed, rng, bug, params, workload=workload)
    if trace:
        world.trace = []
    return world.run(), world.trace
