"""What one flipped byte on disk does to a node's two other LevelDB databases (issue 17).

The shard database has its own test (``test_chaos_storage.py``); here the rest:

* **The Raft database** keeps LevelDB's ``paranoid_checks`` and ends the node with
  :class:`StorageDamaged`, whose one line names the runbook (rejoin as a new incarnation):
  a flipped byte in a log entry in a table file is refused when the log loads; one in a
  state value lets the node open, and the first compaction that reads it stops every later
  write (typed, not a plain OperationFailed a caller might retry); one in the write-ahead log
  fails the open. Without paranoid checks LevelDB drops that WAL record silently: the hard
  state falls back a term, a vote forgotten (shown below on plain plyvel) -- the reason the
  Raft database keeps them.
* **The hint database** opens without them (its entries are checksummed like shards): after a
  flipped byte it keeps taking hints through compactions, and the damaged hint is dropped
  when met and counted, never replayed. With paranoid checks (shown on plain plyvel) the
  compaction stops every later hint write.

Every flip is of bytes found verbatim once in a real table or log file, as in
``test_cluster_repair.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest
from test_raft_durable import make_ready
from test_shard_store import _shard

from node.consensus.types import Entry, EntryKind, HardState
from node.errors import CorruptEntry, StorageDamaged
from node.replication.durable import DurableRaftStorage
from node.storage.hints import HintStore

SMALL_BUFFER = 64 * 1024  # small memtables: the data reaches table files (where disks rot) soon
PAYLOAD_BYTES = 400


def flip_once_in(files: list[Path], needle: bytes) -> Path:
    """Flip one byte in the middle of ``needle``, which must stand once in one of ``files``."""
    found = [(f, f.read_bytes()) for f in files]
    assert sum(raw.count(needle) for _, raw in found) == 1, "the bytes are not verbatim once"
    for path, raw in found:
        at = raw.find(needle)
        if at >= 0:
            damaged = bytearray(raw)
            damaged[at + len(needle) // 2] ^= 0x01
            path.write_bytes(bytes(damaged))
            return path
    raise AssertionError("unreachable")


def compact_all(db: plyvel.DB) -> None:
    """Compact every level. Bounds given: plyvel's ``compact_range()`` without them compacted
    the memtable and level 0 only here, never reaching a damaged table at level 2."""
    db.compact_range(start=b"\x00", stop=b"\xff")


def log_entries(first: int, last: int, term: int) -> list[Entry]:
    # random payloads: incompressible, so stored verbatim in the tables
    return [
        Entry(i, term, EntryKind.NORMAL, os.urandom(PAYLOAD_BYTES), 1000 + i)
        for i in range(first, last + 1)
    ]


def raft_with_log(path: Path, last: int) -> tuple[DurableRaftStorage, list[Entry]]:
    storage = DurableRaftStorage(path, write_buffer_bytes_max=SMALL_BUFFER)
    written = log_entries(1, last, 1)
    for first in range(0, last, 50):
        storage.persist(make_ready(written[first : first + 50], HardState(1, "a", first)))
    return storage, written


def assert_runbook(error: StorageDamaged, path: Path) -> None:
    line = error.detail
    assert "\n" not in line and str(path) in line
    assert "baas-cluster rejoin-node" in line and "new incarnation" in line


def test_a_flipped_byte_in_a_raft_log_table_stops_the_node_at_load(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    storage, written = raft_with_log(path, 400)
    compact_all(storage._db)  # the log into table files
    storage.close()
    flip_once_in(sorted(path.glob("*.ldb")), written[200].payload[-32:])

    with DurableRaftStorage(path) as storage, pytest.raises(StorageDamaged) as caught:
        storage.state()  # what a restarting core votes with
    assert "checksum" in caught.value.detail
    assert_runbook(caught.value, path)


def test_a_flipped_state_value_in_a_table_stops_writes_at_compaction_typed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raft"
    storage, _ = raft_with_log(path, 100)
    storage.persist(make_ready((), HardState(1, "a", 100)))  # all committed: may be applied
    values = {b"v%04d" % i: os.urandom(PAYLOAD_BYTES) for i in range(300)}
    storage.commit_applied(list(values.items()), 50)
    compact_all(storage._db)
    storage.close()
    flip_once_in(sorted(path.glob("*.ldb")), values[b"v0150"][-32:])

    storage = DurableRaftStorage(path, write_buffer_bytes_max=SMALL_BUFFER)
    try:
        storage.state()  # the log itself is intact: the node starts
        # (No read of the value first: a block read into the cache unchecked is what the
        # compaction would then use, without verifying it.)
        with pytest.raises(StorageDamaged) as caught:
            # overwrite the state (interleaving the damaged table's keys) until a compaction
            # reads its blocks: paranoid checks make that error every later write's
            for index in range(51, 101):
                more = [(b"v%04d" % i, os.urandom(PAYLOAD_BYTES)) for i in range(0, 300, 7)]
                storage.commit_applied(more, index)
            compact_all(storage._db)
            storage.persist(make_ready(log_entries(101, 101, 2), HardState(2, "b", 100)))
        assert "Corruption" in caught.value.detail
        assert_runbook(caught.value, path)
        with pytest.raises(CorruptEntry):
            storage.state_get(b"v0150")  # a read refuses the value (never served)
    finally:
        storage.close()


def wal_with_last_vote(path: Path) -> None:
    """A log whose last fsynced batch (term 2, vote for b) is still only in the write-ahead
    log when the database is closed, then one byte of that record flipped."""
    storage, _ = raft_with_log(path, 100)
    storage.persist(make_ready(log_entries(101, 110, 2), HardState(2, "b", 100)))
    storage.close()
    (wal,) = sorted(path.glob("*.log"))
    raw = bytearray(wal.read_bytes())
    raw[-30] ^= 0x01  # inside the last record: the term-2 batch
    wal.write_bytes(bytes(raw))


def test_a_flipped_byte_in_the_raft_write_ahead_log_stops_the_node_at_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raft"
    wal_with_last_vote(path)
    with pytest.raises(StorageDamaged) as caught:
        DurableRaftStorage(path)
    assert_runbook(caught.value, path)


def test_without_paranoid_checks_leveldb_drops_that_record_silently(tmp_path: Path) -> None:
    """Why the Raft database keeps paranoid checks: the same damage, opened without them,
    opens fine and the term-2 vote and entries 101..110 are simply gone."""
    path = tmp_path / "raft"
    wal_with_last_vote(path)
    plyvel.DB(str(path), paranoid_checks=False).close()  # replays the WAL, dropping the record
    with DurableRaftStorage(path) as storage:
        assert storage.hard_state == HardState(1, "a", 50)  # the vote for b is forgotten
        assert storage.last_index == 100


HINTS = 400


def hints_with_victim(path: Path) -> tuple[HintStore, bytes, bytes]:
    store = HintStore(path, hints_max=100_000)
    store.add("peer-a", [_shard(os.urandom(32), 0, os.urandom(512)) for _ in range(HINTS)])
    victim, data = os.urandom(32), os.urandom(512)
    store.add("peer-a", [_shard(victim, 0, data)])
    return store, victim, data


def flip_a_hint(db: plyvel.DB, path: Path, data: bytes) -> None:
    """Flip a byte of the hint holding ``data`` on disk, under the open database, before any
    block of it is read: a block already in the cache is what compactions use, unchecked."""
    compact_all(db)  # every hint into table files
    flip_once_in(sorted(path.glob("*.ldb")), data[-32:])


def more_hints_then_compaction(put: Callable[[], None]) -> None:
    """Keys interleaving the damaged table's, then a full compaction: merging reads it."""
    for _ in range(4 * HINTS):
        put()


def test_a_flipped_byte_in_a_hint_table_is_dropped_counted_and_writes_go_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hints"
    store, victim, data = hints_with_victim(path)
    try:
        flip_a_hint(store._db, path, data)
        more_hints_then_compaction(
            lambda: store.add("peer-a", [_shard(os.urandom(32), 0, os.urandom(512))])
        )
        compact_all(store._db)
        store.add("peer-a", [_shard(os.urandom(32), 0, b"still taken")])
        pending = store.pending("peer-a", limit=100_000)
        assert victim not in {s.meta.record_id for s in pending}  # never replayed
        assert store.corrupt == 1 and store.count == 5 * HINTS + 1 == len(pending)
        assert store.pending("peer-a", limit=100_000) == pending and store.corrupt == 1
    finally:
        store.close()


def test_with_paranoid_checks_that_flip_stops_every_later_hint_write(tmp_path: Path) -> None:
    """Why the hint database opens without them (the same damage, plain plyvel, paranoid)."""
    path = tmp_path / "hints"
    store, _, data = hints_with_victim(path)
    store.close()
    db = plyvel.DB(str(path), paranoid_checks=True, write_buffer_size=SMALL_BUFFER)
    try:
        flip_a_hint(db, path, data)
        with pytest.raises(plyvel.CorruptionError):  # may come from a background compaction
            more_hints_then_compaction(lambda: db.put(b"h" + os.urandom(40), os.urandom(512)))
            compact_all(db)
            db.put(b"h-after", b"x", sync=True)
    finally:
        db.close()
