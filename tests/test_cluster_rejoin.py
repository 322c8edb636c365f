"""A node that lost its disk, in real processes: 5 nodes + gateway (no chain), a few hundred
records, one voter killed with -9 and its data directory deleted.

Started again as it was, it refuses to start (exit 2, one log line naming the command to run)
without ever voting: its Raft database holds no hard state and the survivors' terms did not
move. ``baas-cluster rejoin-node`` takes its old life out of Raft and
adds it back while it stays in placement; restarted, it joins as a learner, is promoted, and
records its new incarnation. Every acknowledged record reads back and writes go on.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import (
    data_dir,
    incarnations,
    partner_client,
    raft_status_of,
    running_cluster,
    wait_for,
)

from node.incarnation import read_incarnation
from node.replication.durable import DurableRaftStorage
from tools import cluster_cli
from tools.client import PartnerClient
from tools.local_cluster import LocalCluster
from tools.members import members

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
RECORDS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("rejoin"), chain="none") as local:
        yield local


status_of = raft_status_of


async def write(client: PartnerClient, count: int, tag: str) -> dict[str, dict[str, Any]]:
    written: dict[str, dict[str, Any]] = {}

    async def worker(w: int) -> None:
        for seq in range(w, count, 8):
            record = {"tag": tag, "seq": seq}
            key = f"{tag}-{seq}-{uuid.uuid4().hex[:8]}"
            for _ in range(50):  # 503s are retried with the same key, as documented
                response = await client.put_record(record, idempotency_key=key)
                if response.status in (200, 201):
                    written[response.body["record_id"]] = record
                    break
                assert response.status == 503, response
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"record {seq} was never acknowledged")

    await asyncio.gather(*(worker(w) for w in range(8)))
    return written


async def test_a_wiped_voter_refuses_to_vote_then_rejoins_as_a_new_member(
    cluster: LocalCluster,
) -> None:
    names = [n.name for n in cluster.layout.nodes]
    # Feature 5 enabled and every founder's incarnation recorded, as on its disk.
    recorded = await wait_for("every incarnation recorded", lambda: incarnations(cluster))
    for node in cluster.layout.nodes:
        assert recorded[node.peer_id] == read_incarnation(data_dir(cluster, node.name))

    async with partner_client(cluster, "shop-a") as client:
        acknowledged = await write(client, RECORDS, "before")
        leader = next(n for n in names if (status_of(cluster, n) or {}).get("role") == "leader")
        victim = cluster.node(next(n for n in names if n != leader))
        survivors = [n for n in names if n != victim.name]
        via = cluster.node(survivors[0])
        assert victim.peer_id in members(cluster.layout, via)["voters"]

        cluster.kill(victim.name)
        shutil.rmtree(data_dir(cluster, victim.name))
        terms = {n: (status_of(cluster, n) or {}).get("term") for n in survivors}

        # --- started again as it was: it refuses, with one line, and never voted
        cluster.start_node(victim.name, wait=False)
        await wait_for("the wiped node to exit", lambda: not cluster.running(victim.name))
        assert cluster.exit_code(victim.name) == 2
        lines = (Path(cluster.layout.directory) / "logs" / f"{victim.name}.log").read_text()
        refusals = [line for line in lines.splitlines() if "former_member" in line]
        assert len(refusals) == 1 and "rejoin-node" in refusals[0], refusals
        assert recorded[victim.peer_id] in refusals[0]
        with DurableRaftStorage(data_dir(cluster, victim.name) / "raft") as raft_db:
            assert not raft_db.has_state and raft_db.last_index == 0
        assert {n: (status_of(cluster, n) or {}).get("term") for n in survivors} == terms

        # --- the operator's command: out of Raft, back in as a new member
        directory = cluster.layout.directory
        command = ["rejoin-node", "--dir", directory, "--name", victim.name]
        assert await asyncio.to_thread(cluster_cli.main, command) == 0
        answer = members(cluster.layout, via)
        assert victim.peer_id not in answer["voters"], answer  # its old life is out of Raft
        assert "join_existing = true" in Path(victim.config_path).read_text()
        cluster.start_node(victim.name, wait=True)  # ready: an active member, in Raft
        new_life = read_incarnation(data_dir(cluster, victim.name))
        assert new_life is not None and new_life != recorded[victim.peer_id]
        await wait_for(
            "the new member to be promoted with its new incarnation",
            lambda: (
                (view := members(cluster.layout, via))
                and victim.peer_id in view["voters"]
                and any(
                    m["peer_id"] == victim.peer_id and m["incarnation"] == new_life
                    for m in view["members"]
                )
            ),
            timeout_s=90.0,
        )
        # caught up with the log that holds every record written before (records share
        # entries since index batching, so the index is no count of records)
        survivor_applied = int((status_of(cluster, via.name) or {})["applied_index"])
        await wait_for(
            "the new member to apply the log it missed",
            lambda: (
                int((status_of(cluster, victim.name) or {}).get("applied_index", 0))
                >= survivor_applied
            ),
            timeout_s=30.0,
        )

        # --- nothing acknowledged is lost; writes go on
        acknowledged |= await write(client, 50, "after")
        for record_id, record in acknowledged.items():
            fetched = await client.get_record(record_id)
            assert fetched.status == 200 and fetched.body["record"] == record, record_id
