"""The replicated log end to end in one process: real libp2p hosts, real LevelDB, the record
index as state machine. (The real-process leader-kill tests come with the node wiring.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_p2p_node import TIMEOUTS, Member, MemoryHandler, make_members

from node.config import NodeLimits
from node.consensus.config import RaftConfig
from node.consensus.record_index import IndexEntry, IndexProposal, RecordIndex, index_key
from node.consensus.state_machine import Dispatcher
from node.consensus.types import default_membership
from node.errors import NotLeader, OperationFailed
from node.p2p.service import P2PNode
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog

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

    async def start(self) -> None:
        self.storage = DurableRaftStorage(self.directory)
        log_ref: list[ReplicatedLog] = []
        self.p2p = P2PNode(
            identity_seed=self.member.seed,
            listen_addr=self.member.addr,
            members=[m.entry() for m in self.members],
            limits=NodeLimits(),
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
