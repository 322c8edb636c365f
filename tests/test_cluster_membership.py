"""Membership changes through the log, in real processes: 5 nodes + gateway, then a 6th node
joins and the leader leaves, all under a steady write and read load.

Nothing acknowledged is lost, no read fails, placement follows the committed membership (new
records land on the newcomer, none on the leaver once it is out), and Raft follows the storage
membership: the newcomer is a learner while 5 vote, and takes the leaver's vote; the leaving
leader hands leadership over first (no election gap: reads that need the leader never fail).
Shard moves follow: the join moves about 1/6 of the older shards to the newcomer, the leave
moves every shard off the leaver.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, partner_client, running_cluster

from tools.client import PartnerClient
from tools.cluster_init import add_node, load_layout
from tools.local_cluster import LocalCluster
from tools.members import announce, members, retire

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
GRACE = "\n[moves]\ngrace_entries = 300\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("members"), GRACE) as local:
        yield local


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[PartnerClient]:
    async with partner_client(cluster, "shop-a") as partner:
        yield partner


async def wait_for(what: str, check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def moves_to(cluster: LocalCluster, rids: list[str], peer: str, epoch: int) -> tuple[int, int]:
    """(records indexed before ``epoch``, how many of them had a shard moved to ``peer``)."""
    older = moved = 0
    for rid in rids:
        entry = node_get(cluster, "node-1", f"/internal/v1/index/{rid}")
        assert entry is not None, rid
        if entry["membership_epoch"] < epoch:
            older += 1
            moved += any(entry["shard_nodes"][m["shard"]] == peer for m in entry["moved"])
    return older, moved


def old_copies_deleted(cluster: LocalCluster) -> int:
    status = node_get(cluster, leader_of(cluster), "/internal/v1/status", timeout_s=1.0)
    return 0 if status is None else int(status["moves"]["old_copies_deleted"])


def old_copies_gone(cluster: LocalCluster, rids: list[str]) -> None:
    """A moved shard is on its new holder and no longer on its old one; the rest stay."""
    name_of = {n.peer_id: n.name for n in cluster.layout.nodes}
    checked = 0
    for rid in rids:
        entry = node_get(cluster, "node-1", f"/internal/v1/index/{rid}")
        assert entry is not None
        for move in entry["moved"]:
            old = node_get(cluster, name_of[move["from"]], f"/internal/v1/records/{rid}/local")
            new_holder = name_of[entry["shard_nodes"][move["shard"]]]
            new = node_get(cluster, new_holder, f"/internal/v1/records/{rid}/local")
            assert old is not None and new is not None
            assert move["shard"] not in [s["index"] for s in old["shards"]], (rid, move)
            assert move["shard"] in [s["index"] for s in new["shards"]], (rid, move)
            checked += 1
    assert checked > 10


def leader_of(cluster: LocalCluster) -> str:
    for node in cluster.layout.nodes:
        status = node_get(cluster, node.name, "/internal/v1/status", timeout_s=1.0)
        if status is not None and status["raft"]["role"] == "leader":
            return node.name
    raise AssertionError("no leader")


def moves_settled(cluster: LocalCluster, epoch: int) -> bool:
    """The leader's shard mover finished a pass at (or after) ``epoch`` with nothing left."""
    for node in cluster.layout.nodes:
        status = node_get(cluster, node.name, "/internal/v1/status", timeout_s=1.0)
        if status is not None and status["raft"]["role"] == "leader":
            return int(status["moves"]["settled_epoch"]) >= epoch
    return False


async def test_a_sixth_node_joins_and_a_founder_leaves_under_load(
    cluster: LocalCluster, client: PartnerClient
) -> None:
    founders = [n.name for n in cluster.layout.nodes]
    await wait_for(
        "a leader",
        lambda: all(
            (node_get(cluster, n, "/internal/v1/status") or {}).get("raft", {}).get("leader")
            for n in founders
        ),
    )
    acknowledged: dict[str, float] = {}  # record id -> when acknowledged
    read_failures: list[tuple[str, int, Any, float]] = []
    write_statuses: list[int] = []
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"m{worker}-{seq}-{uuid.uuid4().hex[:8]}"
            for _ in range(30):  # a client retries 503s with the same key, as documented
                response = await client.put_record({"w": worker, "seq": seq}, idempotency_key=key)
                if response.status in (200, 201):
                    acknowledged[response.body["record_id"]] = time.monotonic()
                    break
                write_statuses.append(response.status)
                assert response.status == 503, response
                await asyncio.sleep(0.2)

    async def reader() -> None:
        while not stop.is_set():
            if acknowledged:
                rid = list(acknowledged)[-1 - (len(acknowledged) * 7919 % len(acknowledged))]
                fetched = await client.get_record(rid)
                if fetched.status != 200:
                    read_failures.append((rid, fetched.status, fetched.body, time.monotonic()))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(writer(w)) for w in range(6)]
    tasks += [asyncio.create_task(reader()) for _ in range(2)]
    try:
        await wait_for("records to move", lambda: len(acknowledged) >= 400)

        # --- a 6th node joins: prepared, started (empty log), then added through the log
        newcomer = add_node(Path(cluster.layout.directory))
        Path(newcomer.config_path).write_text(Path(newcomer.config_path).read_text() + GRACE)
        cluster.layout = load_layout(Path(cluster.layout.directory))
        # It reports ready only once it is a member (it takes no traffic before).
        cluster.start_node(newcomer.name, wait=False)
        via = cluster.node("node-1")
        answer = announce(cluster.layout, newcomer, via)
        assert answer["code"] == "created" and answer["epoch"] >= 1, answer
        view = await wait_for(
            "the newcomer to be a caught-up learner",
            lambda: (lambda v: v if v and newcomer.peer_id in v["learners"] else None)(
                members(cluster.layout, via)
            ),
        )
        assert len(view["voters"]) == 5  # five vote; the sixth learns
        await wait_for(
            "the newcomer to report ready",
            lambda: node_get(cluster, newcomer.name, "/internal/v1/ready"),
        )
        joined_at = time.monotonic()
        newcomer_status = await wait_for(
            "the newcomer to apply the log",
            lambda: (lambda s: s if s and s["raft"]["applied_index"] > 0 else None)(
                node_get(cluster, newcomer.name, "/internal/v1/status")
            ),
        )
        assert newcomer_status["raft"]["role"] in ("follower", "learner")
        join_epoch = answer["epoch"]
        await wait_for("the moves after the join", lambda: moves_settled(cluster, join_epoch))
        # The join moved about 1/6 of the older records' shards: one shard of each record the
        # newcomer outranks (5 records in 6), to the newcomer.
        older, moved = await asyncio.to_thread(
            moves_to, cluster, list(acknowledged), newcomer.peer_id, join_epoch
        )
        share = moved / (5 * older)
        print(f"join moved {moved} of {5 * older} older shards ({share:.3f})")
        assert older > 100 and 0.13 <= share <= 0.20, (older, moved)
        # After the grace the old copies are deleted from their old holders, nothing else.
        await wait_for("old copies deleted", lambda: old_copies_deleted(cluster) >= moved)
        await asyncio.to_thread(old_copies_gone, cluster, list(acknowledged)[:300])

        # --- the leader leaves: out of placement first; it hands leadership over, the new
        # leader takes it out of Raft; then its process stops
        leaver = cluster.node(leader_of(cluster))
        via = next(n for n in cluster.layout.nodes if n.name not in (leaver.name, newcomer.name))
        retired_at = time.monotonic()
        answer = retire(cluster.layout, leaver, via)
        assert answer["code"] == "updated", answer
        left_view = await wait_for(
            "the leaver out of Raft and the newcomer voting",
            lambda: (
                lambda v: v
                if v
                and leaver.peer_id not in v["voters"] + v["learners"]
                and newcomer.peer_id in v["voters"]
                else None
            )(members(cluster.layout, via)),
        )
        assert len(left_view["voters"]) == 5
        left_at = time.monotonic()
        leave_epoch = answer["epoch"]
        # Every shard on the leaver moves (one index.move entry each), several times the join's
        # moves, and the writers go on meanwhile: the time is the mover's rate, not the claim.
        await wait_for(
            "the moves after the leave", lambda: moves_settled(cluster, leave_epoch), 150.0
        )
        print(f"leave: moves settled {time.monotonic() - left_at:.1f} s after the leaver left Raft")
        cluster.kill(leaver.name, signal.SIGTERM)
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert not read_failures, [
        (rid, status, body, round(at - retired_at, 3)) for rid, status, body, at in read_failures
    ][:10]
    assert len(acknowledged) > 100
    # Placement followed the committed membership, record by record.
    survivors = [n for n in founders if n != leaver.name] + [newcomer.name]
    on_newcomer = on_leaver_after = 0
    for rid, acked_at in acknowledged.items():
        views = [node_get(cluster, name, f"/internal/v1/index/{rid}") for name in survivors[:1]]
        entry = views[0]
        assert entry is not None, rid
        if acked_at > joined_at + 1.0:
            on_newcomer += newcomer.peer_id in entry["shard_nodes"]
        if acked_at > left_at + 1.0:
            on_leaver_after += leaver.peer_id in entry["shard_nodes"]
    assert on_newcomer > 0
    assert on_leaver_after == 0
    # The leave moved every shard off the leaver (rebuilt from the others: it is gone).
    for rid in acknowledged:
        entry = node_get(cluster, survivors[0], f"/internal/v1/index/{rid}")
        assert entry is not None and leaver.peer_id not in entry["shard_nodes"], (rid, entry)
    # Every acknowledged record is indexed identically on every survivor and reads back.
    await asyncio.sleep(1.0)
    sample = list(acknowledged)[:: max(1, len(acknowledged) // 30)]
    for rid in sample:
        views = [node_get(cluster, name, f"/internal/v1/index/{rid}") for name in survivors]
        assert views[0] is not None and all(v == views[0] for v in views), (rid, views)
    ids = list(acknowledged)
    for start in range(0, len(ids), 32):
        fetched = await asyncio.gather(*(client.get_record(r) for r in ids[start : start + 32]))
        assert all(f.status == 200 for f in fetched), [f for f in fetched if f.status != 200]
