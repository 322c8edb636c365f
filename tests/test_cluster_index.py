"""Index-backed writes in real processes ([raft] index_writes = true): 5 nodes + gateway.

A write is acknowledged only once its record index entry is applied; retries are answered from
the index; the leader is killed with -9 under a steady write load.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from nodeapi import node_get, partner_client, running_cluster

from tools.client import PartnerClient
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("index")) as local:
        yield local


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[PartnerClient]:
    async with partner_client(cluster, "shop-a") as partner:
        yield partner


def leader_name(cluster: LocalCluster, names: list[str], not_this: str = "") -> str | None:
    peer_of = {n.name: n.peer_id for n in cluster.layout.nodes}
    views = [node_get(cluster, name, "/internal/v1/status") for name in names]
    leaders = {v["raft"]["leader"] for v in views if v is not None}
    if len(leaders) != 1:
        return None
    leader = leaders.pop()
    name = next((n for n, p in peer_of.items() if p == leader), None)
    return name if name != not_this else None


async def wait_leader(cluster: LocalCluster, names: list[str], not_this: str = "") -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        name = leader_name(cluster, names, not_this)
        if name is not None:
            return name
        await asyncio.sleep(0.05)
    raise AssertionError("no agreed leader")


async def test_acknowledged_means_indexed_and_retries_come_from_the_index(
    cluster: LocalCluster, client: PartnerClient
) -> None:
    await wait_leader(cluster, [n.name for n in cluster.layout.nodes])
    key = f"order-{uuid.uuid4()}"
    created = await client.put_record({"type": "payment", "amount_minor": 5}, idempotency_key=key)
    assert created.status == 201, created
    rid = created.body["record_id"]
    # Every node has the same index entry: same log position, content hash, shard map.
    await asyncio.sleep(0.5)
    entries = [node_get(cluster, n.name, f"/internal/v1/index/{rid}") for n in cluster.layout.nodes]
    assert entries[0] is not None and all(e == entries[0] for e in entries), entries
    assert entries[0]["content_hash"] == created.body["content_hash"]
    assert entries[0]["created_at_ms"] == created.body["created_at_ms"]  # the leader's stamp
    retry = await client.put_record({"type": "payment", "amount_minor": 5}, idempotency_key=key)
    assert retry.status == 200 and retry.body["replayed"] is True
    assert retry.body["content_hash"] == created.body["content_hash"]
    reused = await client.put_record({"type": "payment", "amount_minor": 6}, idempotency_key=key)
    assert reused.status == 409
    fetched = await client.get_record(rid)
    assert fetched.status == 200 and fetched.body["record"]["amount_minor"] == 5
    missing = await client.get_record("cd" * 32)
    assert missing.status == 404


async def test_batches_from_every_node_share_index_entries_and_every_record_is_indexed(
    cluster: LocalCluster, client: PartnerClient
) -> None:
    """Concurrent 200-record batches (the gateway spreads them over the nodes, so followers
    forward): their index puts are gathered at the leader into index.put_batch entries, and
    every acknowledged record is indexed identically on every node, has its Merkle leaf and
    reads back."""
    names = [n.name for n in cluster.layout.nodes]
    leader = await wait_leader(cluster, names)
    head = node_get(cluster, leader, "/internal/v1/log")
    assert head is not None
    size_before = head["size"]

    async def batch(b: int) -> list[str]:
        items = [
            {"idempotency_key": f"b{b}-{i}-{uuid.uuid4().hex[:6]}", "record": {"b": b, "i": i}}
            for i in range(200)
        ]
        response = await client.put_records(items)
        assert response.status == 200, response
        assert [r["status"] for r in response.body["results"]] == [201] * 200
        return [r["record_id"] for r in response.body["results"]]

    written = [rid for rids in await asyncio.gather(*(batch(b) for b in range(6))) for rid in rids]
    status = node_get(cluster, leader, "/internal/v1/status")
    assert status is not None
    gathered = status["index_gathering"]
    # Fewer proposals than records reached the log: the leader's calls are its entries.
    assert gathered["items"] >= 200 and gathered["calls"] * 10 <= gathered["items"], gathered
    await asyncio.sleep(1.0)
    for rid in written[::25]:
        views = [node_get(cluster, name, f"/internal/v1/index/{rid}") for name in names]
        assert views[0] is not None and all(v == views[0] for v in views), (rid, views)
    heads = [node_get(cluster, name, "/internal/v1/log") for name in names]
    assert all(h is not None and h["size"] - size_before == 1200 for h in heads), heads
    assert len({h["root"] for h in heads if h is not None}) == 1  # one tree on every node
    for rid in written[::40]:
        fetched = await client.get_record(rid)
        assert fetched.status == 200, fetched


async def test_leader_kill_under_load_loses_no_acknowledged_record(
    cluster: LocalCluster, client: PartnerClient
) -> None:
    names = [n.name for n in cluster.layout.nodes]
    leader = await wait_leader(cluster, names)
    acknowledged: dict[str, tuple[str, int]] = {}  # record id -> (key, seq)
    failures: list[int] = []
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"w{worker}-{seq}-{uuid.uuid4().hex[:8]}"
            record = {"type": "load", "worker": worker, "seq": seq}
            for _ in range(20):  # a client retries 503s with the same key, as documented
                response = await client.put_record(record, idempotency_key=key)
                if response.status in (200, 201):
                    acknowledged[response.body["record_id"]] = (key, seq)
                    break
                failures.append(response.status)
                assert response.status == 503, response
                await asyncio.sleep(0.2)

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    await asyncio.sleep(2.0)
    before = len(acknowledged)
    cluster.kill(leader)
    killed_at = time.monotonic()
    survivors = [n for n in names if n != leader]
    await wait_leader(cluster, survivors, not_this=leader)
    elected_after = time.monotonic() - killed_at
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*writers)
    assert elected_after <= 3.0, f"new leader after {elapsed_text(elected_after)}"
    assert len(acknowledged) > before  # writes went on under the new leader
    # Every acknowledged record is indexed at one position on every survivor and reads back.
    await asyncio.sleep(1.0)
    for rid in list(acknowledged)[:: max(1, len(acknowledged) // 40)]:
        views = [node_get(cluster, name, f"/internal/v1/index/{rid}") for name in survivors]
        assert views[0] is not None and all(v == views[0] for v in views), (rid, views)
    for rid, (_, seq) in acknowledged.items():
        fetched = await client.get_record(rid)
        assert fetched.status == 200, fetched
        assert fetched.body["record"]["seq"] == seq
    cluster.start_node(leader)  # back for the rest of the module


def elapsed_text(seconds: float) -> str:
    return f"{seconds:.2f} s"
