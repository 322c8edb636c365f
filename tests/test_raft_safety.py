"""Seeded randomized safety test of the Raft core: many seeds, faults on, invariants checked.

Each seed draws a 3-5 node cluster and a few thousand actions: ticks, message delivery in a
random order, loss, duplication, partitions, crash-restart from persisted state only,
proposals, compactions, ReadIndex requests, leadership transfers and membership changes.
After every Ready it checks:

* election safety: at most one leader per term;
* state machine safety: every node applies the same entry at each index (snapshots included);
* leader completeness: a new leader holds every entry any node has applied (so nothing
  committed is lost, across restarts too);
* ReadIndex: a read index is never below what any node had applied when it was asked.

Then faults stop, every node restarts and the cluster must converge. A failure names the seed.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from functools import partial

import msgpack
import pytest

from node.consensus.cluster import AppliedEntry, Cluster
from node.consensus.config import RaftConfig
from node.consensus.raft import Ready
from node.consensus.types import ConfChangeKind, Role
from node.errors import CallerError, OperationFailed

SEEDS = range(100)
STEPS = 6000


@dataclass
class Checker:
    cluster: Cluster | None = None
    leaders: dict[int, str] = field(default_factory=dict)
    applied: dict[int, AppliedEntry] = field(default_factory=dict)
    reads_floor: dict[bytes, int] = field(default_factory=dict)

    def on_ready(self, node_id: str, ready: Ready) -> None:
        if ready.role is Role.LEADER:
            known = self.leaders.setdefault(ready.term, node_id)
            assert known == node_id, f"two leaders in term {ready.term}: {known}, {node_id}"
            self._check_leader_complete(node_id)
        if ready.snapshot is not None and ready.snapshot.data:
            for record in msgpack.unpackb(ready.snapshot.data):
                self._record(tuple(record))
        for entry in ready.committed_entries:
            self._record((entry.index, entry.term, int(entry.kind), entry.payload))
        for read in ready.read_states:
            floor = self.reads_floor.get(read.context, 0)
            assert read.index >= floor, f"read index {read.index} below applied {floor}"

    def _record(self, record: AppliedEntry) -> None:
        index = record[0]
        known = self.applied.setdefault(index, record)
        assert known == record, f"index {index} applied as {known} and as {record}"

    def _check_leader_complete(self, node_id: str) -> None:
        assert self.cluster is not None
        core = self.cluster.core(node_id)
        for index, (_, term, _, _) in self.applied.items():
            if index > core.snapshot_index:
                assert core.term_at(index) == term, f"leader {node_id} lacks committed {index}"


def _config(node_id: str, *, lazy_commit_notify: bool = False) -> RaftConfig:
    # Small windows and messages so that batching, pipelining and backtracking all happen.
    return RaftConfig(
        node_id,
        election_ticks=10,
        heartbeat_ticks=2,
        entries_per_message_max=3,
        inflight_messages_max=3,
        snapshot_timeout_ticks=30,
        lazy_commit_notify=lazy_commit_notify,
    )


def _change_membership(cluster: Cluster, rng: random.Random, leader: str, now: int) -> None:
    core = cluster.core(leader)
    voters, learners = core.membership.voters, core.membership.learners
    outside = [n for n in cluster.members if not core.membership.is_member(n)]
    options: list[tuple[ConfChangeKind, str]] = []
    if len(voters) > 3:
        options += [(ConfChangeKind.REMOVE_NODE, v) for v in voters]
    options += [(ConfChangeKind.PROMOTE_LEARNER, n) for n in learners]
    options += [(ConfChangeKind.ADD_LEARNER, n) for n in outside]
    options += [(ConfChangeKind.REMOVE_NODE, n) for n in learners]
    if options:
        kind, node_id = rng.choice(options)
        core.propose_change(kind, node_id, now_ms=now)
        cluster.process(leader)


def _deliver(cluster: Cluster, rng: random.Random) -> None:
    if cluster.queue:
        cluster.deliver_one(rng.randrange(len(cluster.queue)))  # any order: reordering


def _tick(cluster: Cluster, rng: random.Random) -> None:
    if cluster.up_ids:
        cluster.tick([rng.choice(cluster.up_ids)])


def _lose(cluster: Cluster, rng: random.Random) -> None:
    if cluster.queue:
        cluster.queue.pop(rng.randrange(len(cluster.queue)))


def _duplicate(cluster: Cluster, rng: random.Random) -> None:
    if cluster.queue:
        cluster.duplicate(rng.randrange(len(cluster.queue)))


def _crash(cluster: Cluster, rng: random.Random) -> None:
    if cluster.up_ids:
        cluster.crash(rng.choice(cluster.up_ids))


def _restart(cluster: Cluster, rng: random.Random) -> None:
    down = [n for n in sorted(cluster.members) if not cluster.members[n].up]
    if down:
        cluster.restart(rng.choice(down))


def _partition(cluster: Cluster, rng: random.Random) -> None:
    ids = sorted(cluster.members)
    rng.shuffle(ids)
    cut = rng.randint(1, len(ids) - 1)
    cluster.partition(ids[:cut], ids[cut:])


def _compact(cluster: Cluster, rng: random.Random) -> None:
    if cluster.up_ids:
        node_id = rng.choice(cluster.up_ids)
        if cluster.machine(node_id).applied_index > cluster.core(node_id).snapshot_index:
            cluster.compact(node_id)


# (weight, action): the fault mix of one step.
ACTIONS = [
    (45, _deliver),
    (25, _tick),
    (6, _lose),
    (2, _duplicate),
    (2, _crash),
    (3, _restart),
    (2, _partition),
    (3, lambda cluster, rng: cluster.heal()),
    (2, _compact),
]


def _step(cluster: Cluster, rng: random.Random, step: int, checker: Checker) -> None:
    leader = cluster.leader()
    roll = rng.random()
    if leader is not None and roll < 0.12:
        if roll < 0.10:
            payloads = [f"{step}-{i}".encode() for i in range(rng.randint(1, 4))]
            cluster.propose(leader, *payloads, now_ms=step)
        elif roll < 0.11:
            context = f"read-{step}".encode()
            checker.reads_floor[context] = max(checker.applied, default=0)
            cluster.core(leader).read_index(context)
            cluster.process(leader)
        elif roll < 0.115:
            core = cluster.core(leader)
            others = sorted(v for v in core.membership.voters if v != leader)
            if others:
                core.transfer_leadership(rng.choice(others))
                cluster.process(leader)
        else:
            _change_membership(cluster, rng, leader, step)
        return
    weights = [w for w, _ in ACTIONS]
    action = rng.choices([a for _, a in ACTIONS], weights)[0]
    action(cluster, rng)


def _converge(cluster: Cluster, seed: int) -> None:
    cluster.heal()
    for node_id in sorted(cluster.members):
        if not cluster.members[node_id].up:
            cluster.restart(node_id)
    for _ in range(300):
        cluster.settle()
        leader = cluster.leader()
        if leader is None:
            continue
        commit = cluster.core(leader).commit_index
        members = cluster.core(leader).membership.members
        if all(cluster.machine(n).applied_index == commit for n in members):
            break
    leader = cluster.leader()
    assert leader is not None, f"no leader after healing; reproduce with seed {seed}"
    logs = [cluster.machine(n).applied for n in cluster.core(leader).membership.members]
    longest = max(logs, key=len)
    for log in logs:
        assert log == longest[: len(log)], f"applied logs diverge; reproduce with seed {seed}"
    assert all(len(log) == len(longest) for log in logs), f"no convergence; seed {seed}"


def run_seed(seed: int, steps: int = STEPS) -> Checker:
    rng = random.Random(seed)
    checker = Checker()
    ids = [f"n{i}" for i in range(rng.randint(3, 5))]
    # Odd seeds run the lazy commit notification the node adapter uses.
    config = partial(_config, lazy_commit_notify=seed % 2 == 1)
    cluster = Cluster(ids, rng=random.Random(seed + 1), config=config, on_ready=checker.on_ready)
    checker.cluster = cluster
    for step in range(steps):
        # Not leader, a change still pending, overloaded: a real caller would retry.
        with contextlib.suppress(OperationFailed, CallerError):
            _step(cluster, rng, step, checker)
    _converge(cluster, seed)
    return checker


def test_random_seeds_keep_raft_safe() -> None:
    committed = 0
    for seed in SEEDS:
        try:
            checker = run_seed(seed)
        except AssertionError as exc:
            pytest.fail(f"seed {seed}: {exc}; reproduce with run_seed({seed})")
        committed += len(checker.applied)
    assert committed > len(SEEDS) * 50  # the faults still let real work commit
