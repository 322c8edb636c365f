"""Repair back to n shards, in real processes (gateway, no chain, k=3 n=5).

A wiped node: 5 nodes, a few thousand records, then one node killed with -9, its data
directory deleted and the node brought back with ``baas-cluster rejoin-node`` (a new
incarnation at the same placement position, with an empty shard store). The leader's repairer
must put every shard back on it: its shard count returns to one per record, a repair pass then
finds no record below n (backlog 0), and every record reads back identical with two OTHER
nodes killed -- with only 3 of 5 holders left, each read needs the rebuilt node's shard.
Before the loss, passes over the healthy cluster rebuild nothing (no repair while the copy
exists), and shards damaged on another node's disk are rebuilt in place: a few with a byte
flipped in the LevelDB table file (their checksum fails: never served; the node's scrubber or
the repairer's walk gets there first, either way each is rebuilt once), and a few rewritten
as valid entries holding the wrong bytes (the checksum passes, so only the scrubber's
cross-check against the record's leaf hashes can tell: they are quarantined, counted,
reported to the leader and rebuilt). Every record reads back right meanwhile.

A node gone too long: 6 nodes, one stopped past ``node_down_repair_after_s``: each of its
shards is rebuilt on the one other node (``index.move``), a pass finds every record at n
while it is still away, and every record reads back. Then the leader that committed those
moves is killed before it could delete the old copies; the node comes back holding them, the
mover puts its shards back at its placement position, and in the end every record has
exactly n shards in the whole cluster (old copies accounted for, not leaked).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plyvel
import pytest
from nodeapi import (
    data_dir,
    incarnations,
    node_get,
    partner_client,
    raft_status_of,
    running_cluster,
    wait_for,
)

from node.records import Shard
from node.storage.placement import place_shards
from node.storage.shard_store import (
    SCRUB_CURSOR_KEY,
    decode_shard_value,
    encode_shard_value,
)
from tools import cluster_cli
from tools.client import PartnerClient
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
RELOCATE_RECORDS = 600
# A one-position grace: the old copies may go as soon as the log has moved on.
RELOCATE_TOML = (
    "\n[repair]\npass_interval_s = 1.0\nfresh_record_s = 1.0\nnode_down_repair_after_s = 8.0\n"
    "[moves]\ngrace_entries = 1\n"
)
RECORDS = 2500
CORRUPT_SHARDS = 5
WRONG_SHARDS = 3  # checksummed entries with the wrong bytes: only a cross-check finds them
BATCH_RECORDS = 250
# Passes back to back and records planned a second after their write, so the test is short.
# Scrub passes back to back, every shard cross-checked (the default samples 10 per second).
NODE_TOML = (
    "\n[repair]\npass_interval_s = 1.0\nfresh_record_s = 1.0\n"
    "[scrub]\npass_interval_s = 1.0\ncross_check_records_per_s_max = 100000.0\n"
)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("repair"), NODE_TOML, chain="none") as local:
        yield local


@pytest.fixture
def cluster6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("relocate")
    with running_cluster(directory, RELOCATE_TOML, chain="none", nodes=6) as local:
        yield local


def repair_of(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=1.0)
    return None if status is None else dict(status["repair"])


def shards_on(cluster: LocalCluster, name: str) -> int:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=1.0)
    return -1 if status is None else int(status["shards"])


def leader_of(cluster: LocalCluster, names: list[str]) -> str | None:
    return next(
        (n for n in names if (raft_status_of(cluster, n) or {}).get("role") == "leader"), None
    )


def clean_pass_after(cluster: LocalCluster, names: list[str], after_ms: int) -> dict[str, Any]:
    """The leader's repair stats once a pass that ended after ``after_ms`` found every record
    at n (empty when not yet)."""
    leader = leader_of(cluster, names)
    stats = repair_of(cluster, leader) if leader else None
    if (
        stats
        and stats["last_pass_finished_ms"] > after_ms
        and stats["below_n_by_healthy"] == {}
        and stats["backlog_records"] == 0
    ):
        return stats
    return {}


def damage_shards(shard_db: Path, flipped: int, wrong: int) -> None:
    """On a stopped node: flip a byte on disk, in the table file, of ``flipped`` shard entries
    (their checksums fail), then rewrite ``wrong`` others as valid entries holding other bytes
    (their checksums pass); the scrub cursor goes, so the node's next scrub starts at them.

    An entry is flipped only if its bytes stand verbatim, once, in one table file (a block
    LevelDB compressed, or a tail seen twice, is passed over for the next entry)."""
    db = plyvel.DB(str(shard_db))
    try:
        db.compact_range()  # everything into table files
        tables = {table: table.read_bytes() for table in sorted(shard_db.glob("*.ldb"))}
        to_flip: list[bytes] = []  # the tails to find and flip once the database is closed
        to_rewrite: list[tuple[bytes, bytes]] = []
        for key, value in db.iterator(prefix=b"s"):
            needle = value[-24:]  # the tail of the shard's (encrypted, incompressible) bytes
            unique = sum(raw.count(needle) for raw in tables.values()) == 1
            if len(to_flip) < flipped and unique:
                to_flip.append(needle)
            elif len(to_rewrite) < wrong:
                to_rewrite.append((key, value))
            if len(to_flip) == flipped and len(to_rewrite) == wrong:
                break
        assert len(to_flip) == flipped, "too few shard entries stand verbatim in a table file"
        for key, value in to_rewrite:
            shard = decode_shard_value(key, value)
            other = bytes(b ^ 0x5A for b in shard.data)
            db.put(key, encode_shard_value(key, Shard(shard.meta, other)), sync=True)
        db.delete(SCRUB_CURSOR_KEY, sync=True)
    finally:
        db.close()
    for needle in to_flip:
        for table in sorted(shard_db.glob("*.ldb")):
            raw = bytearray(table.read_bytes())
            at = raw.find(needle)
            if at >= 0:
                raw[at + 12] ^= 0x01
                table.write_bytes(bytes(raw))
                break
        else:
            raise AssertionError("a shard's bytes left the table files when the database closed")


def scrub_of(cluster: LocalCluster, name: str) -> dict[str, Any]:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=1.0)
    return {} if status is None else dict(status["scrub"])


async def write(client: PartnerClient, count: int) -> dict[str, dict[str, Any]]:
    written: dict[str, dict[str, Any]] = {}

    async def batch(start: int) -> None:
        items = [
            {"idempotency_key": f"r-{seq}-{uuid.uuid4().hex[:8]}", "record": {"seq": seq}}
            for seq in range(start, min(start + BATCH_RECORDS, count))
        ]
        for _ in range(50):  # 503s are retried with the same keys, as documented
            response = await client.put_records(items)
            if response.status == 200:
                results = response.body["results"]
                if all(r["status"] in (200, 201) for r in results):
                    for item, result in zip(items, results, strict=True):
                        written[result["record_id"]] = item["record"]
                    return
            await asyncio.sleep(0.3)
        raise AssertionError(f"batch at {start} was never acknowledged: {response}")

    for first in range(0, count, 4 * BATCH_RECORDS):
        last = min(first + 4 * BATCH_RECORDS, count)
        await asyncio.gather(*(batch(s) for s in range(first, last, BATCH_RECORDS)))
    return written


async def read_all(client: PartnerClient, acknowledged: dict[str, dict[str, Any]]) -> None:
    pending = list(acknowledged.items())

    async def worker() -> None:
        while pending:
            record_id, record = pending.pop()
            fetched = await client.get_record(record_id)
            assert fetched.status == 200, (record_id, fetched)
            assert fetched.body["record"] == record, record_id

    await asyncio.gather(*(worker() for _ in range(16)))


async def test_a_wiped_node_gets_every_shard_back(cluster: LocalCluster) -> None:
    names = [n.name for n in cluster.layout.nodes]
    await wait_for("every incarnation recorded", lambda: incarnations(cluster))
    async with partner_client(cluster, "shop-a") as client:
        acknowledged = await write(client, RECORDS)
        assert len(acknowledged) == RECORDS
        written_ms = time.time_ns() // 1_000_000

        # --- healthy: a full pass finds every record at n and rebuilds nothing
        await wait_for(
            "a clean pass over the healthy cluster",
            lambda: clean_pass_after(cluster, names, written_ms + 1_000),
            timeout_s=60.0,
        )
        before = [repair_of(cluster, n) or {} for n in names]
        assert sum(s.get("shards_rebuilt", 0) for s in before) == 0

        # --- damaged shards: never served, quarantined or found missing; rebuilt in place
        leader = leader_of(cluster, names)
        assert leader is not None
        victim, corrupted = [n for n in names if n != leader][:2]
        cluster.kill(corrupted)
        damage_shards(data_dir(cluster, corrupted) / "shards", CORRUPT_SHARDS, WRONG_SHARDS)
        cluster.start_node(corrupted, wait=True)
        reading = asyncio.create_task(read_all(client, acknowledged))  # right throughout
        scrub = await wait_for(
            "the wrong shards found by the scrubber's cross-check",
            lambda: (s := scrub_of(cluster, corrupted))["corrupt"]["shard_hash"] >= WRONG_SHARDS
            and s,
            timeout_s=60.0,
        )
        found_ms = time.time_ns() // 1_000_000  # every damaged shard is known by now
        await wait_for(
            "the damaged shards rebuilt",
            lambda: sum((repair_of(cluster, n) or {}).get("shards_rebuilt", 0) for n in names)
            >= CORRUPT_SHARDS + WRONG_SHARDS,
            timeout_s=90.0,
        )
        await wait_for(
            "a clean pass after the rebuilds",
            lambda: clean_pass_after(cluster, names, found_ms),
            timeout_s=90.0,
        )
        await reading
        fixed = sum((repair_of(cluster, n) or {}).get("shards_rebuilt", 0) for n in names)
        assert fixed == CORRUPT_SHARDS + WRONG_SHARDS  # each rebuilt once, whoever found it
        scrub = scrub_of(cluster, corrupted)
        assert scrub["corrupt"]["shard_hash"] == WRONG_SHARDS
        # Flipped bytes: the scrubber quarantines those the repairer has not rebuilt first.
        assert scrub["corrupt"]["checksum"] <= CORRUPT_SHARDS
        assert scrub["quarantined"] == WRONG_SHARDS + scrub["corrupt"]["checksum"]
        reported = sum((repair_of(cluster, n) or {}).get("suspects_reported", 0) for n in names)
        assert reported >= WRONG_SHARDS
        print(f"\nscrub on {corrupted} after the damage: {scrub}")

        # --- one node loses its disk and comes back as a new member at the same position
        cluster.kill(victim)
        shutil.rmtree(data_dir(cluster, victim))
        command = ["rejoin-node", "--dir", cluster.layout.directory, "--name", victim]
        assert await asyncio.to_thread(cluster_cli.main, command) == 0
        cluster.start_node(victim, wait=True)
        restarted = time.monotonic()
        restarted_ms = time.time_ns() // 1_000_000

        # --- repair puts one shard per record back on it (n = 5 nodes: every record)
        await wait_for(
            "every shard back on the wiped node",
            lambda: shards_on(cluster, victim) >= RECORDS,
            timeout_s=150.0,
        )
        repaired_s = time.monotonic() - restarted
        stats = await wait_for(
            "a clean pass after the repair",
            lambda: clean_pass_after(cluster, names, restarted_ms),
            timeout_s=60.0,
        )
        after = [repair_of(cluster, n) or {} for n in names]
        rebuilt = sum(s.get("shards_rebuilt", 0) for s in after)
        assert rebuilt == RECORDS + CORRUPT_SHARDS + WRONG_SHARDS, after
        assert stats["lost_records"] == 0
        assert shards_on(cluster, victim) == RECORDS
        print(
            f"\nrepair: {RECORDS} shards ({sum(s.get('shard_bytes_rebuilt', 0) for s in after)} "
            f"bytes) back on the wiped node {repaired_s:.1f} s after its restart "
            f"({RECORDS / repaired_s:.0f} shards/s = records/s); leader's last pass: {stats}"
        )

        # --- every record needs the rebuilt node now: two other holders go
        leader = leader_of(cluster, names)
        others = [n for n in names if n not in (victim, leader)][:2]
        for name in others:
            cluster.kill(name)
        await read_all(client, acknowledged)


async def test_a_node_gone_too_long_has_its_shards_rebuilt_elsewhere(
    cluster6: LocalCluster,
) -> None:
    cluster = cluster6
    names = [n.name for n in cluster.layout.nodes]
    peers = [n.peer_id for n in cluster.layout.nodes]
    await wait_for("every incarnation recorded", lambda: incarnations(cluster))
    async with partner_client(cluster, "shop-a") as client:
        acknowledged = await write(client, RELOCATE_RECORDS)
        leader = leader_of(cluster, names)
        assert leader is not None
        gone = next(n for n in names if n != leader)
        gone_peer = cluster.node(gone).peer_id
        on_gone = sum(
            1 for rid in acknowledged if gone_peer in place_shards(bytes.fromhex(rid), peers, 5)
        )
        assert 0 < on_gone < RELOCATE_RECORDS  # n=5 of 6 nodes: most records, not all
        cluster.kill(gone)
        stopped_ms = time.time_ns() // 1_000_000
        stats = await wait_for(
            "a clean pass with the node still away",
            lambda: clean_pass_after(cluster, names, stopped_ms + 8_000),
            timeout_s=150.0,
        )
        relocated = sum((repair_of(cluster, n) or {}).get("shards_relocated", 0) for n in names)
        assert relocated == on_gone, stats
        print(f"\nrelocation: {on_gone} shards moved off {gone}; leader: {stats}")
        await read_all(client, acknowledged)

        # --- the leader that committed the moves goes before it could delete the old copies
        # (their holder was away). The node comes back holding them; the next leader's mover
        # puts its shards back at its placement position and deletes the relocated copies,
        # whatever leader runs it: in the end every record has exactly n shards, none leaked
        old_leader = leader_of(cluster, names)
        assert old_leader is not None and old_leader != gone
        cluster.kill(old_leader)
        cluster.start_node(old_leader, wait=True)  # back at once: its shards stay put
        cluster.start_node(gone, wait=True)
        everything = acknowledged | await write(client, 50)
        deadline = time.monotonic() + 180.0
        while True:
            # an old copy goes once the log has moved grace_entries past its move: keep
            # writing a little so that the last moves' grace ends too
            everything |= await write(client, 5)
            on_gone_now = sum(
                1 for rid in everything if gone_peer in place_shards(bytes.fromhex(rid), peers, 5)
            )
            counts = await asyncio.to_thread(lambda: [shards_on(cluster, n) for n in names])
            if counts[names.index(gone)] == on_gone_now and sum(counts) == 5 * len(everything):
                break
            assert time.monotonic() < deadline, (counts, on_gone_now, len(everything))
            await asyncio.sleep(2.0)
        await read_all(client, everything)
