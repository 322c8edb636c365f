"""The replicated log end to end in one process: real libp2p hosts, real LevelDB, the record
index as state machine. (The real-process leader-kill tests come with the node wiring.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgpack
import pytest
from test_p2p_node import TIMEOUTS, Member, MemoryHandler, make_members

from node.config import NodeLimits
from node.consensus.config import RaftConfig
from node.consensus.messages import InstallSnapshot, split_snapshot
from node.consensus.progress import ProgressState
from node.consensus.record_index import IndexEntry, IndexProposal, RecordIndex, index_key
from node.consensus.state_machine import Dispatcher
from node.consensus.types import Role, SnapshotMeta, default_membership
from node.errors import NotLeader, OperationFailed
from node.p2p.service import P2PNode
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog, SnapshotPolicy
from node.replication.snapshot import encode_state

pytestmark = pytest.mark.timeout(120)
NODES = ("n1", "n2", "n3", "n4", "n5")


@dataclass
class Replica:
    member: Member
    members: list[Member]
    directory: Path
    p2p: P2PNode | None = None
    log: ReplicatedLog | None = None
    storage: DurableRaftStorage | None = None
    snapshots: SnapshotPolicy | None = None
    limits: NodeLimits = field(default_factory=NodeLimits)

    async def start(self) -> None:
        policy = self.snapshots or SnapshotPolicy()
        self.storage = DurableRaftStorage(
            self.directory, snapshot_chunk_bytes_max=policy.chunk_bytes_max
        )
        log_ref: list[ReplicatedLog] = []
        self.p2p = P2PNode(
            identity_seed=self.member.seed,
            listen_addr=self.member.addr,
            members=[m.entry() for m in self.members],
            limits=self.limits,
            timeouts=TIMEOUTS,
            handler=MemoryHandler(),
            raft_inbox=lambda peer, payload: log_ref[0].deliver(peer, payload),
        )
        self.log = ReplicatedLog(
            raft=RaftConfig(node_id=self.member.peer_id, election_ticks=20, heartbeat_ticks=2),
            storage=self.storage,
            dispatcher=Dispatcher([RecordIndex()], feature_version_max=1),
            send=self.p2p.send_raft,
            initial_membership=default_membership(m.peer_id for m in self.members),
            tick_s=0.05,  # election timeout 1-2 s
            inbox_frames_max=4096,
            proposals_pending_max=4096,
            snapshots=self.snapshots,
            send_backlog=self.p2p.raft_backlog,
        )
        log_ref.append(self.log)
        await self.log.start()
        await self.p2p.start()

    async def stop(self) -> None:
        if self.log is not None:
            await self.log.stop()
        if self.p2p is not None:
            await self.p2p.stop()
        if self.storage is not None:
            self.storage.close()
        self.log = self.p2p = self.storage = None


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    members = make_members(3)
    group = [Replica(m, members, tmp_path / m.name) for m in members]
    for replica in group:
        await replica.start()
    try:
        yield group
    finally:
        for replica in group:
            await replica.stop()


async def leader_of(group: list[Replica], timeout_s: float = 6.0) -> Replica:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for replica in group:
            if replica.log is not None and replica.log.status().role == "leader":
                return replica
        await asyncio.sleep(0.05)
    raise AssertionError("no leader elected")


def proposal(i: int, term: int) -> IndexProposal:
    return IndexProposal(
        record_id=i.to_bytes(32, "big"),
        content_hash=bytes([i % 256]) * 32,
        k=3,
        n=5,
        shard_nodes=NODES,
        membership_epoch=1,
        owner="shop-a",
        body_fingerprint=b"\x01" * 32,
        expiry_term=term,
        expiry_max_index=10**9,
    )


async def propose_records(leader: Replica, ids: range, timeout_s: float = 10.0) -> list[str]:
    assert leader.log is not None
    term = leader.log.status().term
    entries = [proposal(i, term).to_entry() for i in ids]
    applied = await leader.log.propose(entries, timeout_s=timeout_s)
    return [a.outcome.code for a in applied]


async def wait_applied(group: list[Replica], index: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(r.log is None or r.log.status().applied_index >= index for r in group):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every replica applied index {index}")


def indexed(replica: Replica, i: int) -> IndexEntry | None:
    assert replica.log is not None
    raw = replica.log.state_get(index_key(i.to_bytes(32, "big")))
    return None if raw is None else IndexEntry.decode(i.to_bytes(32, "big"), raw)


async def test_index_entries_replicate_and_survive_a_leader_change(
    replicas: list[Replica],
) -> None:
    leader = await leader_of(replicas)
    assert await propose_records(leader, range(1, 51)) == ["created"] * 50
    # A retry of committed records appends nothing new to the index: first result stands.
    assert await propose_records(leader, range(1, 3)) == ["existing", "existing"]
    follower = next(r for r in replicas if r is not leader)
    assert follower.log is not None
    with pytest.raises(NotLeader) as refused:
        await follower.log.propose([proposal(99, 1).to_entry()], timeout_s=1)
    assert refused.value.leader_hint == leader.member.peer_id
    assert leader.log is not None
    await wait_applied(replicas, leader.log.status().applied_index)
    first = [indexed(r, 7) for r in replicas]
    assert first[0] is not None and all(f == first[0] for f in first)  # same position everywhere

    # The leader goes away: a new one is elected from the other two and takes writes.
    stopped_at = time.monotonic()
    await leader.stop()
    survivors = [r for r in replicas if r is not leader]
    new_leader = await leader_of(survivors)
    assert time.monotonic() - stopped_at < 4.0
    assert await propose_records(new_leader, range(51, 61)) == ["created"] * 10
    # The old leader restarts from its own disk and catches up.
    await leader.start()
    assert new_leader.log is not None
    await wait_applied(replicas, new_leader.log.status().applied_index)
    for i in (1, 25, 50, 51, 60):
        entries = {indexed(r, i) for r in replicas}
        assert len(entries) == 1 and None not in entries, i


async def test_a_proposal_is_only_applied_once_it_is_committed(replicas: list[Replica]) -> None:
    leader = await leader_of(replicas)
    others = [r for r in replicas if r is not leader]
    for replica in others:
        await replica.stop()  # no quorum: nothing can commit
    assert leader.log is not None
    with pytest.raises((TimeoutError, OperationFailed, NotLeader)):
        await propose_records(leader, range(200, 201), timeout_s=3.0)
    assert indexed(leader, 200) is None


def state_of(replica: Replica) -> list[tuple[bytes, bytes]]:
    assert replica.storage is not None
    return list(replica.storage.state_items())


def entry_indexes_on_disk(replica: Replica) -> list[int]:
    assert replica.storage is not None
    db = replica.storage._db
    return [int.from_bytes(k[1:], "big") for k in db.iterator(prefix=b"e", include_value=False)]


async def test_the_log_compacts_and_a_follower_far_behind_catches_up_by_snapshot(
    tmp_path: Path,
) -> None:
    """Small snapshots, small chunks: a follower stopped while the leader compacts past it
    rejoins, receives the snapshot in many chunks and ends with exactly the leader's state."""
    policy = SnapshotPolicy(entries=300, trailing_entries=100, chunk_bytes_max=4096)
    # Appends to the stopped follower wait in the link's queue while it is away and arrive
    # when it returns; a short queue keeps that to the oldest few, short of the snapshot.
    limits = NodeLimits(raft_queue_frames_max=8)
    members = make_members(3)
    group = [
        Replica(m, members, tmp_path / m.name, snapshots=policy, limits=limits) for m in members
    ]
    for replica in group:
        await replica.start()
    try:
        leader = await leader_of(group)
        lagging = next(r for r in group if r is not leader)
        await lagging.stop()
        assert leader.log is not None and leader.storage is not None
        began = time.monotonic()
        for start in range(1, 3001, 100):
            assert await propose_records(leader, range(start, start + 100)) == ["created"] * 100
        await wait_snapshot(leader, 2000)
        print(f"3000 records written and compacted in {time.monotonic() - began:.2f} s")
        stats = leader.log.snapshot_stats()
        assert stats["compactions"] >= 2 and stats["compacted_entries"] >= 2000
        status = leader.log.status()
        on_disk = entry_indexes_on_disk(leader)  # exactly those after the snapshot: none below
        assert on_disk == list(range(status.snapshot_index + 1, status.last_index + 1))
        # The compaction point trails the applied index: slightly lagging followers get entries.
        assert status.applied_index - status.snapshot_index >= policy.trailing_entries
        assert leader.storage.durable_applied_index >= status.snapshot_index

        restarted_at = time.monotonic()
        await lagging.start()
        applied = leader.log.status().applied_index
        await wait_applied(group, applied, timeout_s=20)
        print(f"caught up by snapshot in {time.monotonic() - restarted_at:.2f} s")
        assert lagging.log is not None
        caught_up = lagging.log.snapshot_stats()
        assert caught_up["snapshots_received"] >= 1, caught_up
        assert caught_up["snapshots_installed"] >= 1
        sent = leader.log.snapshot_stats()
        assert sent["snapshots_sent"] >= 1 and sent["snapshot_sent_bytes"] > 20 * 4096, sent
        reference = state_of(leader)
        assert len(reference) >= 3000
        assert all(state_of(r) == reference for r in group)
        assert indexed(lagging, 1) is not None and indexed(lagging, 3000) is not None

        # A restart recovers exactly the state (snapshot + the entries after it).
        await leader.stop()
        await leader.start()
        assert leader.log is not None
        assert leader.log.status().applied_index >= applied
        assert state_of(leader) == reference
    finally:
        for replica in group:
            await replica.stop()


async def wait_snapshot(replica: Replica, index: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert replica.log is not None
        if replica.log.status().snapshot_index >= index:
            return
        await asyncio.sleep(0.05)
    assert replica.log is not None
    status, stats = replica.log.status(), replica.log.snapshot_stats()
    raise AssertionError(f"no snapshot at or past {index}: {status} {stats}")


async def test_a_corrupt_or_oversized_snapshot_is_refused_and_a_good_one_installed(
    tmp_path: Path,
) -> None:
    """Chunks delivered by hand to a follower (no transport): its state changes only when the
    whole transfer checks out."""
    me, leader = "node-me", "node-leader"
    membership = default_membership([me, leader])
    storage = DurableRaftStorage(tmp_path / "raft", snapshot_chunk_bytes_max=1024)
    log = ReplicatedLog(
        raft=RaftConfig(node_id=me, election_ticks=200, heartbeat_ticks=2),  # never campaigns
        storage=storage,
        dispatcher=Dispatcher([RecordIndex()], feature_version_max=1),
        send=lambda _peer, _payload: True,
        initial_membership=membership,
        tick_s=0.05,
        inbox_frames_max=4096,
        proposals_pending_max=4096,
        snapshots=SnapshotPolicy(chunk_bytes_max=1024, bytes_max=64 * 1024),
    )
    await log.start()
    try:
        items = [(b"ri/%06d" % i, b"value %d" % i) for i in range(2000)]
        pieces: list[bytes] = []
        encode_state(items, pieces.append)
        data = b"".join(pieces)
        meta = SnapshotMeta(5000, 3, membership)

        def deliver(blob: bytes, index: int = 5000) -> None:
            whole = InstallSnapshot(
                leader, me, 3, replace(meta, index=index), 0, len(blob), blob, True
            )
            for chunk in split_snapshot(whole, 1000):
                log.deliver(leader, msgpack.packb(chunk.to_wire(), use_bin_type=True))

        async def counted(name: str, value: int) -> None:
            for _ in range(100):
                if log.snapshot_stats()[name] >= value:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{name} did not reach {value}")

        assert len(data) > 16 * 1024  # many chunks
        corrupt = bytearray(data)
        corrupt[len(data) // 2] ^= 0x01
        deliver(bytes(corrupt))
        await counted("snapshots_rejected", 1)
        assert log.status().snapshot_index == 0 and log.status().applied_index == 0
        deliver(b"\x00" * (64 * 1024 + 1))  # over bytes_max: refused at the first chunk
        await counted("snapshots_rejected", 2)

        deliver(data)
        await counted("snapshots_installed", 1)
        stats = log.snapshot_stats()
        assert stats["snapshots_received"] == 1 and stats["snapshots_installed"] == 1
        assert log.status().snapshot_index == 5000 and log.status().applied_index == 5000
        assert list(storage.state_items()) == items
        # No chunks remain: the refused transfers' are deleted, and the installed one's once
        # the state was rebuilt from them (the state is the snapshot now).
        assert list(storage._db.iterator(prefix=b"c", include_value=False)) == []
    finally:
        await log.stop()
        storage.close()
    with DurableRaftStorage(tmp_path / "raft") as reopened:  # the restart sees the same
        assert reopened.applied_index == 5000
        assert list(reopened.state_items()) == items


async def test_compaction_keeps_the_entries_after_a_snapshot_being_sent(tmp_path: Path) -> None:
    """While a follower is sent (or installs) a snapshot at A, the leader's compaction stops
    at A: the follower then continues by entries instead of needing another snapshot."""

    @dataclass
    class Progress:
        state: ProgressState

    @dataclass
    class Leader:
        progresses: dict[str, Progress]
        role: Role = Role.LEADER
        last_index: int = 1000

        def progress(self, peer: str) -> Progress | None:
            return self.progresses.get(peer)

    with DurableRaftStorage(tmp_path / "raft") as storage:
        log = ReplicatedLog(
            raft=RaftConfig(node_id="a"),
            storage=storage,
            dispatcher=Dispatcher([RecordIndex()], feature_version_max=1),
            send=lambda _peer, _payload: True,
            initial_membership=default_membership(["a", "b", "c"]),
            tick_s=0.05,
            inbox_frames_max=16,
            proposals_pending_max=16,
        )
        node = Leader({"b": Progress(ProgressState.SNAPSHOT), "c": Progress(ProgressState.PROBE)})
        log._sent_at = {"b": 400, "c": 700}
        assert log._floor(node) == 400  # type: ignore[arg-type]
        assert log._sent_at == {"b": 400}  # c gave up or answered: no longer holds it back
        node.progresses["b"].state = ProgressState.REPLICATE  # b installed it and answered
        assert log._floor(node) == 1000  # type: ignore[arg-type]
        log._sent_at = {"b": 400}
        node.role = Role.FOLLOWER  # no longer leader: nothing to keep
        assert log._floor(node) == 1000  # type: ignore[arg-type]
