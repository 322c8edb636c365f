"""Orphan shards are collected in real processes once their index proposal has expired.

The cluster runs with ``proposal_expiry_entries = 2``: under concurrent writers many index
proposals land beyond their maximum log index and are refused at apply, so their writes fail
(503) and their shards are orphans. Some writers give up at once (pure orphans), others retry
with the same Idempotency-Key until acknowledged (the failed attempts leave shards of another
version behind). Once the log has moved past every expiry, the collector on each node must
have removed exactly the shards of records that were never indexed and the leftover versions,
and kept every shard of every acknowledged record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from nodeapi import node_get, partner_client, running_cluster

from node.records import record_id_for
from tools.client import PartnerClient
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
SETTINGS = "\n[raft]\nproposal_expiry_entries = 2\n\n[gc]\ninterval_s = 0.3\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Every gateway call in flight unfilled, as before the write lane gathered behind one:
    # concurrent calls are what make proposals land past their expiry here.
    limits = {"node_write_calls_unfilled_max": 2}
    with running_cluster(tmp_path_factory.mktemp("gc"), SETTINGS, gateway_limits=limits) as local:
        yield local


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[PartnerClient]:
    async with partner_client(cluster, "shop-a") as partner:
        yield partner


def local_shards(cluster: LocalCluster, rid: str) -> list[dict[str, Any]]:
    """Every node's local view of a record: its shards and pending marker."""
    views = [
        node_get(cluster, n.name, f"/internal/v1/records/{rid}/local") for n in cluster.layout.nodes
    ]
    assert all(v is not None for v in views)
    return [v for v in views if v is not None]


async def test_expired_proposals_leave_orphans_that_are_collected(
    cluster: LocalCluster, client: PartnerClient
) -> None:
    await asyncio.sleep(2.0)  # a leader
    acknowledged: dict[str, str] = {}  # record id -> content hash
    abandoned: set[str] = set()  # failed once, never retried: nothing of them may stay

    async def writer(worker: int, retry: bool) -> None:
        for seq in range(40):
            key = f"g{worker}-{seq}-{uuid.uuid4().hex[:6]}"
            for _ in range(30):
                response = await client.put_record({"w": worker, "s": seq}, idempotency_key=key)
                if response.status in (200, 201):
                    acknowledged[response.body["record_id"]] = response.body["content_hash"]
                    break
                assert response.status == 503, response
                if not retry:
                    abandoned.add(record_id_for("shop-a", key).hex())
                    break
                await asyncio.sleep(0.05)

    await asyncio.gather(*(writer(w, retry=w % 2 == 0) for w in range(8)))
    assert abandoned, "no proposal expired: the test did not exercise anything"
    assert acknowledged
    # Move the log well past every expiry, then give the collectors a few passes.
    for i in range(10):
        await client.put_record({"tick": i}, idempotency_key=f"tick-{uuid.uuid4().hex}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        views = [local_shards(cluster, rid) for rid in list(abandoned)[:20]]
        if all(not v["shards"] and v["pending_expiry"] is None for vs in views for v in vs):
            break
        await asyncio.sleep(0.5)
    for rid in abandoned:
        if rid in acknowledged:  # a "failed" write whose entry committed after all
            continue
        for view in local_shards(cluster, rid):
            assert view["shards"] == [] and view["pending_expiry"] is None, (rid, view)
    for rid, content_hash in acknowledged.items():
        views = local_shards(cluster, rid)
        held = [s for v in views for s in v["shards"]]
        # The indexed version on at least write_quorum holders, and no other version left.
        assert len(held) >= 4 and {s["content_hash"] for s in held} == {content_hash}, rid
        assert all(v["pending_expiry"] is None for v in views), rid
        fetched = await client.get_record(rid)
        assert fetched.status == 200
    stats = [node_get(cluster, n.name, "/internal/v1/status")["gc"] for n in cluster.layout.nodes]
    print("gc:", stats, "abandoned", len(abandoned), "acknowledged", len(acknowledged))
    assert sum(s["orphan_records"] for s in stats) > 0
