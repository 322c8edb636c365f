"""The record index's gatherer (node/replication/index_client.py) against a log that applies
with the real dispatcher: proposals of concurrent callers share index.put_batch entries within
their bounds, each caller gets its own records' outcomes, errors reach every caller, a
follower forwards many records per call, and writes are refused up front while proposals
back up (the index_unavailable failures of 500-record batches under load)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from node.config import ClusterConfig, ClusterMember, NodeLimits, NodeTimeouts
from node.consensus.ledger_ops import LedgerOps, Operation
from node.consensus.record_index import INDEX_PUT, INDEX_PUT_BATCH, IndexProposal, RecordIndex
from node.consensus.state_machine import (
    FEATURE_KEY,
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.coordinator import Coordinator, WriteRequest, WriteResult
from node.errors import NotLeader, OperationFailed, Overloaded
from node.merkle.log import MerkleLog, MerkleReader
from node.p2p.messages import PutShards, PutShardsReply
from node.replication.index_client import GatherLimits, RecordIndexClient
from node.replication.log import LogStatus
from node.storage.hints import HintStore

NODES = ("n1", "n2", "n3", "n4", "n5")


def _h(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"{tag}{i}".encode()).digest()


def prop(rid: int, *, fp: int = 1, events: bytes | None = None) -> Operation:
    return Operation(IndexProposal(
        record_id=_h("rid", rid),
        content_hash=_h("ch", rid),
        k=3,
        n=5,
        shard_nodes=NODES,
        membership_epoch=1,
        owner="shop-a",
        body_fingerprint=bytes([fp]) * 32,
        expiry_term=0,
        expiry_max_index=0,
        shard_hashes=tuple(_h(f"s{rid}/", i) for i in range(5)),
        plaintext_commitment=_h("pc", rid),
    ), events)  # fmt: skip


class FakeLog:
    """Applies proposed entries at once (after ``delay_s``) with the real state machines."""

    def __init__(self, *, feature: int = 4, leader: str | None = "me", delay_s: float = 0.0):
        self.data: dict[bytes, bytes] = {FEATURE_KEY: feature.to_bytes(4, "big")}
        self.leader = leader
        self.delay_s = delay_s
        self.fail: Exception | None = None
        self.proposed: list[list[AppEntry]] = []
        self.last = 10
        self.term_once = 2  # the term the next proposal commits in (then 2 again)
        self.release = asyncio.Event()
        self.release.set()

    def status(self) -> LogStatus:
        role = "leader" if self.leader == "me" else "follower"
        return LogStatus("me", role, 2, self.leader, self.last, self.last, self.last, 0, (), (), 0)

    def state_get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]:
        self.proposed.append(list(entries))
        await asyncio.sleep(self.delay_s)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        term, self.term_once = self.term_once, 2
        batch = [
            (LogPosition(self.last + i, term, 1_700_000_000_000), encode_app_entry(e))
            for i, e in enumerate(entries, start=1)
        ]
        dispatcher = Dispatcher(
            [RecordIndex(), LedgerOps()], feature_version_max=6, followers=[MerkleLog()]
        )
        applied, writes = dispatcher.apply_batch(batch, self)
        for key, value in writes:
            assert value is not None
            self.data[key] = value
        self.last += len(entries)
        return applied


def client(log: FakeLog, **limits: Any) -> RecordIndexClient:
    return RecordIndexClient(
        log,  # type: ignore[arg-type]
        [],
        api_token="t",
        proposal_expiry_entries=1000,
        request_timeout_s=2.0,
        gather=GatherLimits(**limits),
    )


async def test_concurrent_callers_share_batch_entries_and_get_their_own_outcomes() -> None:
    log = FakeLog(delay_s=0.01)
    index = client(log, batch_records_max=100, inflight_max=1)
    sizes = (250, 3, 1, 40)
    ranges, start = [], 0
    for size in sizes:
        ranges.append(range(start, start + size))
        start += size
    answers = await asyncio.gather(
        *(index.propose([prop(i) for i in r]) for r in ranges),
        index.propose([prop(0)]),  # a retry of the first caller's first record
    )
    for r, got in zip(ranges, answers, strict=False):
        assert [a["code"] for a in got] == ["created"] * len(r)
    assert answers[-1][0]["code"] == "existing"
    assert all(e.type == INDEX_PUT_BATCH for entries in log.proposed for e in entries)
    per_entry = [len(e.body["puts"]) for entries in log.proposed for e in entries]
    assert max(per_entry) <= 100 and sum(per_entry) == sum(sizes) + 1
    assert len(per_entry) <= 5  # 295 records: not one entry per caller, let alone per record
    assert MerkleReader(log).size == sum(sizes)  # one leaf per created record
    # The records of one caller keep their order in the log (leaf order follows the entry).
    assert [MerkleReader(log).leaf_of(_h("rid", i)).index for i in ranges[0]] == sorted(
        MerkleReader(log).leaf_of(_h("rid", i)).index for i in ranges[0]
    )
    await index.stop()


async def test_entries_respect_the_byte_bound() -> None:
    log = FakeLog()
    bound = 8 * prop(0).encoded_bytes_max()
    index = client(log, batch_bytes_max=bound, inflight_max=1)
    got = await index.propose([prop(i) for i in range(50)])
    assert [a["code"] for a in got] == ["created"] * 50
    for entries in log.proposed:
        (entry,) = entries
        assert len(entry.body["puts"]) <= 8
        assert len(encode_app_entry(entry)) <= bound + 1024
    await index.stop()


async def test_an_error_reaches_every_caller_of_the_batch() -> None:
    log = FakeLog()
    log.fail = OperationFailed("a new leader replaced this proposal", code="proposal_lost")
    index = client(log, window_s=0.05, commit_timeout_s=0.35)
    answers = await asyncio.gather(
        index.propose([prop(1)]), index.propose([prop(2), prop(3)]), return_exceptions=True
    )
    (entry,) = log.proposed[0]  # both callers' records were in one entry
    assert len(entry.body["puts"]) == 3
    assert 2 <= len(log.proposed) <= 4  # retried (every 0.1 s) until commit_timeout_s
    assert all(isinstance(a, OperationFailed) and a.code == "index_unavailable" for a in answers)
    log.fail = NotLeader("this node is not the leader")
    with pytest.raises(NotLeader):  # forwarded to us: the forwarder retries at the new leader
        await index.propose_local([prop(4)])
    await index.stop()


async def test_lost_and_expired_proposals_are_retried_until_applied() -> None:
    log = FakeLog()
    log.fail = OperationFailed("a new leader replaced this proposal", code="proposal_lost")
    index = client(log)
    task = asyncio.create_task(index.propose([prop(1), prop(2)]))
    await asyncio.sleep(0.05)
    log.fail = None
    log.term_once = 3  # the next entry commits in a later term than it was stamped in
    got = await task
    assert [a["code"] for a in got] == ["created", "created"]
    assert len(log.proposed) == 3 and index.retried_expired == 2
    await index.stop()


async def test_a_proposal_past_its_max_index_is_not_retried() -> None:
    log = FakeLog()
    index = client(log)
    stale = Operation(
        dataclasses.replace(prop(1).proposal, expiry_max_index=5)
    )  # the log is at 10 already
    (got,) = await index.propose([stale])
    assert got["code"] == "expired" and len(log.proposed) == 1 and index.retried_expired == 0
    await index.stop()


async def test_before_feature_4_every_record_is_its_own_index_put() -> None:
    log = FakeLog(feature=3)
    index = client(log)
    got = await index.propose([prop(1), prop(2), prop(1)])
    assert [a["code"] for a in got] == ["created", "created", "existing"]
    (entries,) = log.proposed
    assert [e.type for e in entries] == [INDEX_PUT] * 3
    await index.stop()


async def test_a_follower_forwards_many_records_per_call() -> None:
    log = FakeLog(leader="leader-1")
    index = client(log, batch_records_max=64, inflight_max=1, window_s=0.01)
    calls: list[int] = []
    leader = client(FakeLog())

    async def post(to: str, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        assert to == "leader-1" and path == "/internal/v1/index"
        calls.append(len(body["proposals"]))
        got = await leader.propose_local([Operation.from_body(p) for p in body["proposals"]])
        return {"results": got}

    index._route.post = post  # type: ignore[method-assign]
    answers = await asyncio.gather(
        *(index.propose([prop(10 * c + i) for i in range(7)]) for c in range(20))
    )
    assert all([a["code"] for a in got] == ["created"] * 7 for got in answers)
    assert sum(calls) == 140 and max(calls) <= 64 and len(calls) <= 4
    await index.stop()
    await leader.stop()


async def test_writes_are_refused_up_front_while_index_proposals_back_up() -> None:
    """The mechanism of the failed 500-record batches: an index queue that grows past what the
    leader commits in time. Admitted writes used to store their shards and then fail
    index_unavailable; now a node refuses new writes (503 + Retry-After) before any shard is
    stored, while the oldest proposal has waited longer than queue_wait_s_max."""
    log = FakeLog()
    log.release.clear()  # the leader does not get to commit for now
    # Wide margins: on a loaded box a 10 ms sleep once took 160 ms.
    index = client(log, queue_wait_s_max=0.6, inflight_max=1)
    index.admit(500)  # nothing waits: admitted
    first = asyncio.create_task(index.propose([prop(i) for i in range(500)]))
    await asyncio.sleep(0.01)
    index.admit(500)  # waiting, but not for long yet
    await asyncio.sleep(0.7)
    with pytest.raises(Overloaded) as refused:
        index.admit(500)
    assert refused.value.http_status == 503 and refused.value.retry_after_s >= 1
    log.release.set()  # the leader catches up: what was admitted is committed, not failed
    assert [a["code"] for a in await first] == ["created"] * 500
    index.admit(500)
    await index.stop()


async def test_the_pending_bound_refuses_up_front_too() -> None:
    log = FakeLog()
    log.release.clear()
    index = client(log, pending_max=600, inflight_max=1, batch_records_max=100)
    first = asyncio.create_task(index.propose([prop(i) for i in range(500)]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        index.admit(101)
    index.admit(100)
    log.release.set()
    await first
    await index.stop()


class StoringTransport:
    """Every peer stores every shard it is sent (counts the PutShards frames)."""

    def __init__(self) -> None:
        self.puts = 0

    async def request(self, peer_id: str, message: Any, *, timeout_s: float | None = None) -> Any:
        assert isinstance(message, PutShards)
        self.puts += 1
        return PutShardsReply(stored=len(message.shards))


def write(i: int) -> WriteRequest:
    return WriteRequest(_h("rid", i), b"blob %d" % i * 20, "shop-a", _h("fp", i))


async def test_a_coordinator_refuses_a_batch_before_storing_it_while_the_index_backs_up(
    tmp_path: Path,
) -> None:
    """Before: the second 500-record batch was taken, its shards stored, and every record of
    it failed index_unavailable once its proposal timed out behind the first one's."""
    members = tuple(
        ClusterMember(f"n{i}", f"peer-{i}", "/ip4/127.0.0.1/tcp/1", "x:1") for i in range(5)
    )
    log = FakeLog()
    log.release.clear()
    index = client(log, queue_wait_s_max=0.05)
    transport = StoringTransport()
    hints = HintStore(tmp_path / "hints", hints_max=100)
    coordinator = Coordinator(
        cluster=ClusterConfig("c", 3, 5, 4, members),
        limits=NodeLimits(),
        timeouts=NodeTimeouts(),
        transport=transport,
        hints=hints,
        index=index,
    )
    first = asyncio.create_task(coordinator.write_records([write(i) for i in range(500)]))
    while not log.proposed:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    stored = transport.puts
    with pytest.raises(Overloaded):  # before the fix: taken, then stuck behind the first
        async with asyncio.timeout(2.0):
            await coordinator.write_records([write(i) for i in range(500, 1000)])
    assert transport.puts == stored  # not one shard of the refused batch was sent
    log.release.set()
    assert all(isinstance(r, WriteResult) for r in await first)
    await coordinator.stop()
    await index.stop()
    hints.close()
