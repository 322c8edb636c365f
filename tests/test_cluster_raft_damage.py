"""A node whose Raft database is damaged stops with one line naming the runbook, and the runbook
brings it back (real processes: 3 nodes, k=2, n=3, no chain; issue 17).

node-3 is stopped, one byte of a log entry in its Raft database flipped (the entry's checksum
fails: LevelDB-level damage in table files is ``tests/test_raft_damage.py``'s), and started:
it must exit 2 without ever becoming ready, its log ending in one ``storage_damaged`` line
that says what to do. Doing it -- the data directory moved aside, ``baas-cluster rejoin-node``,
start -- brings node-3 back as a new incarnation and a voter again.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import msgpack
import plyvel
import pytest
from nodeapi import data_dir, incarnations, raft_status_of, wait_for

from node.errors import OperationFailed
from node.replication.durable import KEY_LAST, PREFIX_ENTRY
from node.storage.entry import decode_entry
from tools.chaos import wipe_and_rejoin
from tools.cluster_init import init_cluster
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
VICTIM = "node-3"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("raftdamage")
    layout = init_cluster(directory, nodes=3, k=2, n=3, partners=("shop-a",), chain="none")
    with LocalCluster(layout) as local:
        local.start()
        yield local


def flip_last_entry(raft_db: Path) -> int:
    """Flip one byte of the last log entry's value; return its index."""
    db = plyvel.DB(str(raft_db))
    try:
        last = int(msgpack.unpackb(decode_entry(KEY_LAST, db.get(KEY_LAST))))
        key = PREFIX_ENTRY + last.to_bytes(8, "big")
        value = bytearray(db.get(key))
        value[-1] ^= 0x01
        db.put(key, bytes(value), sync=True)
        return last
    finally:
        db.close()


def test_a_damaged_raft_log_stops_the_node_with_the_runbook_which_brings_it_back(
    cluster: LocalCluster,
) -> None:
    before = asyncio.run(wait_for("incarnations recorded", lambda: incarnations(cluster)))
    peer = cluster.node(VICTIM).peer_id
    cluster.kill(VICTIM, signal.SIGTERM)  # waits for the exit
    flip_last_entry(data_dir(cluster, VICTIM) / "raft")

    with pytest.raises(OperationFailed, match="exited with 2"):
        cluster.start_node(VICTIM, ready_timeout_s=60)
    log = (Path(cluster.layout.directory) / "logs" / f"{VICTIM}.log").read_text()
    damaged = [line for line in log.splitlines() if "storage_damaged" in line]
    assert len(damaged) == 1, damaged
    assert "is damaged (entry checksum mismatch)" in damaged[0]
    assert "baas-cluster rejoin-node" in damaged[0] and "new incarnation" in damaged[0]

    asyncio.run(wipe_and_rejoin(cluster, VICTIM, random.Random(1), {}))

    def a_new_voter() -> bool:
        status = raft_status_of(cluster, VICTIM) or {}
        now = incarnations(cluster) or {}
        return peer in status.get("voters", []) and now.get(peer) not in (None, before[peer])

    asyncio.run(wait_for("node-3 a voter again, a new incarnation", a_new_voter, timeout_s=120))
