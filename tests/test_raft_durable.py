"""The durable Raft storage on real LevelDB files: same semantics as MemoryStorage, crash-safe.

* unit cases: suffix overwrite, snapshots, compaction (and what it costs), corruption, format
  versions, the v2 fixture and the v1 migration;
* a seeded cluster run with a DurableRaftStorage per node against the same run on MemoryStorage;
* real processes killed with SIGKILL at random moments, reopened and compared with a model.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import plyvel
import pytest

from node.consensus.cluster import AppliedEntry, Cluster, RecordingMachine, _Member
from node.consensus.config import RaftConfig
from node.consensus.raft import PersistedState, RawNode, Ready
from node.consensus.storage import MemoryStorage
from node.consensus.types import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    Role,
    Snapshot,
    SnapshotMeta,
)
from node.errors import (
    CorruptEntry,
    InvariantViolation,
    OperationFailed,
    PeerProtocolError,
    StorageDamaged,
    UnsupportedFormat,
)
from node.replication.durable import (
    KEY_APPLIED,
    KEY_FORMAT,
    KEY_HARD,
    KEY_SNAP,
    PREFIX_CHUNK,
    PREFIX_ENTRY,
    DurableRaftStorage,
    SnapshotRef,
    SnapshotWriter,
    StateWrite,
    chunk_key,
    entry_key,
)
from node.replication.snapshot import decode_state, encode_pieces, encode_state, encoded_size
from node.storage.entry import decode_entry, encode_entry

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_V1 = ROOT / "tests" / "fixtures" / "raft_durable_v1.hex"
FIXTURE_V2 = ROOT / "tests" / "fixtures" / "raft_durable_v2.hex"
ABC = Membership.of(["a", "b", "c"])


def make_ready(
    entries: Sequence[Entry] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
) -> Ready:
    return Ready(
        seq=1,
        hard_state=hard_state,
        entries=tuple(entries),
        snapshot=snapshot,
        messages=(),
        committed_entries=(),
        read_states=(),
        role=Role.FOLLOWER,
        leader_id=None,
        term=hard_state.term if hard_state else 0,
        membership=ABC,
    )


def entries(first: int, last: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [
        Entry(i, term, EntryKind.NORMAL, b"p%d" % i + tag, 1000 + i) for i in range(first, last + 1)
    ]


def snapshot_at(index: int, term: int, data: bytes = b"") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ABC), data)


def same_state(durable: DurableRaftStorage, memory: MemoryStorage) -> None:
    assert durable.state() == memory.state(durable.applied_index)


def compact_both(memory: MemoryStorage, durable: DurableRaftStorage, meta: SnapshotMeta) -> int:
    """Compact both to ``meta``: the memory model keeps no data either (the state is on disk)."""
    memory.save_snapshot(Snapshot(meta, b""))
    durable.flush_state()
    return durable.compact(meta)


def restored(memory: MemoryStorage, durable: DurableRaftStorage, writes: list[StateWrite]) -> None:
    """The state rebuilt from the received snapshot: its data is no longer kept, in either."""
    durable.restore_applied(writes, durable.snapshot.meta.index)
    memory.snapshot = Snapshot(memory.snapshot.meta, b"")


def raw_keys(path: Path, prefix: bytes) -> list[bytes]:
    db = plyvel.DB(str(path))
    try:
        return list(db.iterator(prefix=prefix, include_value=False))
    finally:
        db.close()


# -- the semantics of MemoryStorage, on disk


def test_persist_overwrites_the_conflicting_suffix_like_memory(tmp_path: Path) -> None:
    memory, durable = MemoryStorage(), DurableRaftStorage(tmp_path / "raft")
    steps = [
        make_ready(snapshot=snapshot_at(0, 0)),
        make_ready(entries(1, 6, 1), HardState(1, "a", 2)),
        make_ready(entries(4, 5, 2, b"new"), HardState(2, "b", 3)),  # drops 6, rewrites 4..5
        make_ready(entries(6, 8, 2)),
        make_ready(hard_state=HardState(3, None, 5)),
    ]
    for ready in steps:
        memory.persist(ready)
        durable.persist(ready)
        same_state(durable, memory)
    with pytest.raises(InvariantViolation, match="gap"):
        durable.persist(make_ready(entries(10, 10, 3)))
    durable.close()
    with DurableRaftStorage(tmp_path / "raft") as reopened:
        same_state(reopened, memory)
        assert [e.term for e in reopened.state().entries] == [1, 1, 1, 2, 2, 2, 2, 2]
        assert reopened.has_state


def test_received_snapshot_replaces_the_log_and_compaction_deletes_covered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raft"
    memory, durable = MemoryStorage(), DurableRaftStorage(path, snapshot_chunk_bytes_max=10)
    steps = [
        make_ready(snapshot=snapshot_at(0, 0)),
        make_ready(entries(1, 20, 1), HardState(1, "a", 3)),
        make_ready(hard_state=HardState(2, None, 12), snapshot=snapshot_at(12, 2, b"x" * 95)),
        make_ready(entries(13, 15, 2)),
    ]
    for ready in steps:
        memory.persist(ready)
        durable.persist(ready)
        same_state(durable, memory)
    assert {k[1:9] for k in raw_keys_open(durable, PREFIX_CHUNK)} == {chunk_key(1, 0)[1:9]}
    restored(memory, durable, [(b"k", b"v")])
    assert raw_keys_open(durable, PREFIX_CHUNK) == []  # the state is the snapshot now
    moved = make_ready(hard_state=HardState(2, None, 15))
    memory.persist(moved)
    durable.persist(moved)
    durable.commit_applied([(b"k", b"w")], 14)
    with pytest.raises(InvariantViolation, match="durable"):  # not flushed yet
        durable.compact(SnapshotMeta(14, 2, ABC))
    assert compact_both(memory, durable, SnapshotMeta(14, 2, ABC)) == 2  # 13 and 14
    assert compact_both(memory, durable, SnapshotMeta(13, 2, ABC)) == 0  # older: ignored
    same_state(durable, memory)
    durable.close()
    assert raw_keys(path, PREFIX_ENTRY) == [entry_key(15)]
    assert raw_keys(path, PREFIX_CHUNK) == []
    with DurableRaftStorage(path) as reopened:
        same_state(reopened, memory)
        assert reopened.snapshot == snapshot_at(14, 2)
        assert reopened.applied_index == 14 and dict(reopened.state_items()) == {b"k": b"w"}


def test_covered_entries_left_by_a_crash_are_ignored_and_deleted(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    with DurableRaftStorage(path) as durable:
        durable.persist(make_ready(entries(1, 5, 1), HardState(1, None, 5)))
        durable.commit_applied([], 5)
        durable.flush_state()
        durable.compact(SnapshotMeta(3, 1, ABC))
    db = plyvel.DB(str(path))  # as if the crash hit before the unsynced deletes
    stale = entries(2, 3, 9)
    for entry in stale:
        db.put(entry_key(entry.index), encode_entry(entry_key(entry.index), b"junk"))
    db.close()
    with DurableRaftStorage(path) as reopened:
        assert [e.index for e in reopened.state().entries] == [4, 5]
    assert raw_keys(path, PREFIX_ENTRY) == [entry_key(4), entry_key(5)]


def test_a_crash_before_the_snapshot_meta_keeps_the_old_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    with DurableRaftStorage(path, snapshot_chunk_bytes_max=4) as durable:
        durable.persist(make_ready(snapshot=snapshot_at(2, 1, b"old snapshot")))
        durable.persist(make_ready(entries(3, 5, 1), HardState(1, None, 5)))
        durable._stage_snapshot(snapshot_at(4, 1, b"new snapshot, never adopted"))
    with DurableRaftStorage(path) as reopened:  # as if killed before the meta batch
        assert reopened.snapshot == snapshot_at(2, 1, b"old snapshot")
        assert [e.index for e in reopened.state().entries] == [3, 4, 5]
    assert raw_keys(path, PREFIX_CHUNK) == [chunk_key(1, n) for n in range(3)]


# -- corruption and format versions


def flip_byte(path: Path, key: bytes, offset: int = -1) -> None:
    db = plyvel.DB(str(path))
    value = bytearray(db.get(key))
    value[offset] ^= 0x01
    db.put(key, bytes(value))
    db.close()


def delete_key(path: Path, key: bytes) -> None:
    db = plyvel.DB(str(path))
    db.delete(key)
    db.close()


def log_of_ten(path: Path) -> None:
    """A received snapshot at 2, staged in chunks (not yet restored), and entries 3..10."""
    with DurableRaftStorage(path, snapshot_chunk_bytes_max=8) as durable:
        durable.persist(make_ready(snapshot=snapshot_at(2, 1, b"snapshot data over chunks")))
        durable.persist(make_ready(entries(3, 10, 1), HardState(1, "a", 4)))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: flip_byte(p, entry_key(5)), "checksum"),
        (lambda p: flip_byte(p, entry_key(5), offset=0), "unknown entry format"),
        (lambda p: delete_key(p, entry_key(5)), "entry 5 is missing"),
        (lambda p: delete_key(p, entry_key(10)), "entries 10..10 are missing"),
    ],
)
def test_a_damaged_entry_in_the_log_is_refused_at_load(
    tmp_path: Path, damage: Any, match: str
) -> None:
    path = tmp_path / "raft"
    log_of_ten(path)
    damage(path)
    with (
        DurableRaftStorage(path) as durable,
        pytest.raises((StorageDamaged, UnsupportedFormat)) as e,
    ):
        durable.state()
    assert match in str(e.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: flip_byte(p, chunk_key(1, 1)),  # a snapshot chunk
        lambda p: delete_key(p, chunk_key(1, 2)),
        lambda p: flip_byte(p, KEY_HARD),
    ],
)
def test_a_damaged_snapshot_or_hard_state_is_refused_at_open(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "raft"
    log_of_ten(path)
    damage(path)
    with pytest.raises(StorageDamaged):  # the node stops, naming the rejoin runbook
        DurableRaftStorage(path)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log_of_ten(path)
    db = plyvel.DB(str(path))
    db.put(KEY_FORMAT, encode_entry(KEY_FORMAT, (3).to_bytes(4, "big")))
    db.close()
    with pytest.raises(UnsupportedFormat, match="format 3"):
        DurableRaftStorage(path)
    delete_key(path, KEY_FORMAT)  # data without any format key: not ours, or damaged
    with pytest.raises(StorageDamaged, match="no format key"):
        DurableRaftStorage(path)


def test_a_database_held_by_another_process_is_an_operation_failure(tmp_path: Path) -> None:
    with DurableRaftStorage(tmp_path / "raft"), pytest.raises(OperationFailed, match="cannot open"):
        DurableRaftStorage(tmp_path / "raft")


# -- the v2 on-disk format, pinned by a fixture; the v1 format, migrated


def write_fixture_scenario(path: Path) -> PersistedState:
    """The state stored in tests/fixtures/raft_durable_v2.hex (every kind of record).

    A received snapshot at 2, restored; three entries; two applied; compacted to 3.
    """
    log = [
        Entry(3, 2, EntryKind.NOOP, b"", 1700),
        Entry(4, 2, EntryKind.NORMAL, b"rec-4", 1750),
        Entry(5, 2, EntryKind.NORMAL, b"\x00\xff", 1800),
    ]
    hard = HardState(2, "b", 4)
    with DurableRaftStorage(path, snapshot_chunk_bytes_max=32) as durable:
        durable.persist(make_ready(snapshot=snapshot_at(2, 1, b"snapshot-data-" * 5)))
        durable.restore_applied([(b"ri/count", b"\x02"), (b"ri/tmp", b"t")], 2)
        durable.persist(make_ready(log, hard))
        durable.commit_applied([(b"ri/count", b"\x04"), (b"ri/tmp", None)], 4)
        durable.flush_state()
        durable.compact(SnapshotMeta(3, 2, ABC))
    return PersistedState(hard, snapshot_at(3, 2), tuple(log[1:]), 4)


def dump(path: Path) -> list[tuple[bytes, bytes]]:
    db = plyvel.DB(str(path))
    try:
        return list(db.iterator())
    finally:
        db.close()


def load_fixture(fixture: Path, path: Path) -> list[tuple[bytes, bytes]]:
    pairs = [
        (bytes.fromhex(k), bytes.fromhex(v))
        for k, v in (line.split() for line in fixture.read_text().splitlines() if line)
    ]
    db = plyvel.DB(str(path), create_if_missing=True)
    for key, value in pairs:
        db.put(key, value)
    db.close()
    return pairs


def test_v2_fixture_decodes_and_encoding_is_unchanged(tmp_path: Path) -> None:
    pairs = load_fixture(FIXTURE_V2, tmp_path / "fixture")
    expected = write_fixture_scenario(tmp_path / "fresh")
    with DurableRaftStorage(tmp_path / "fixture") as durable:
        assert durable.state() == expected
        assert dict(durable.state_items()) == {b"ri/count": b"\x04"}
    assert dump(tmp_path / "fresh") == pairs, "the v2 on-disk encoding changed"


def test_a_v1_database_is_migrated_its_snapshot_chunks_dropped_once_applied(
    tmp_path: Path,
) -> None:
    """Format 1 wrote the whole state into every snapshot: a v1 node's data dir loads, and its
    chunks go once the state reflects them (the fixture's snapshot at 2, applied 4)."""
    load_fixture(FIXTURE_V1, tmp_path / "v1")
    log = (
        Entry(3, 2, EntryKind.NOOP, b"", 1700),
        Entry(4, 2, EntryKind.NORMAL, b"rec-4", 1750),
        Entry(5, 2, EntryKind.NORMAL, b"\x00\xff", 1800),
    )
    expected = PersistedState(HardState(2, "b", 4), snapshot_at(2, 1), log, 4)
    for _ in range(2):  # migrated, then opened as v2
        with DurableRaftStorage(tmp_path / "v1") as durable:
            assert durable.state() == expected
            assert dict(durable.state_items()) == {b"ri/count": b"\x04"}
            assert raw_keys_open(durable, PREFIX_CHUNK) == []
            assert decode_entry(KEY_FORMAT, durable._db.get(KEY_FORMAT)) == b"\x00\x00\x00\x02"
    # A v1 snapshot the state does not reflect yet (received, not restored) stays staged.
    load_fixture(FIXTURE_V1, tmp_path / "staged")
    db = plyvel.DB(str(tmp_path / "staged"))
    db.put(KEY_APPLIED, encode_entry(KEY_APPLIED, msgpack.packb(1)))
    db.close()
    with DurableRaftStorage(tmp_path / "staged") as durable:
        assert durable.snapshot == snapshot_at(2, 1, b"snapshot-data-" * 5)
        assert durable.applied_index == 1


# -- the apply step


def test_commit_applied_writes_state_and_index_together_and_refuses_misuse(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raft"
    with DurableRaftStorage(path) as durable:
        durable.persist(make_ready(entries(1, 6, 1), HardState(1, None, 4)))
        durable.commit_applied([(b"k/1", b"one"), (b"k/2", b"two")], 2)
        durable.commit_applied([(b"k/1", None), (b"k/3", b"three")], 3)
        with pytest.raises(InvariantViolation, match="again"):
            durable.commit_applied([(b"k/9", b"x")], 3)
        with pytest.raises(InvariantViolation, match="beyond the persisted commit"):
            durable.commit_applied([(b"k/9", b"x")], 5)
        with pytest.raises(InvariantViolation, match="state key"):
            durable.commit_applied([(b"", b"x")], 4)
    with DurableRaftStorage(path) as durable:
        assert durable.applied_index == 3
        assert list(durable.state_items(b"k/")) == [(b"k/2", b"two"), (b"k/3", b"three")]
        assert durable.state_get(b"k/1") is None
        # A received snapshot: the restored state replaces everything, applied jumps to it.
        durable.persist(make_ready(hard_state=HardState(2, None, 9), snapshot=snapshot_at(9, 2)))
        assert durable.applied_index == 3  # not restored yet: restore again after a crash
        with pytest.raises(InvariantViolation, match="not the snapshot"):
            durable.restore_applied([], 8)
        durable.restore_applied(((b"k/%d" % i, b"v") for i in range(5)), 9)
    with DurableRaftStorage(path, delete_batch_keys_max=2) as durable:
        assert durable.applied_index == 9
        assert [k for k, _ in durable.state_items()] == [b"k/%d" % i for i in range(5)]
    flip_byte(path, b"xk/3")
    with DurableRaftStorage(path) as durable, pytest.raises(CorruptEntry):
        durable.state_get(b"k/3")


class SyncRecorder:
    """Stands in for the plyvel DB and records the ``sync`` flag of every write batch."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.syncs: list[bool] = []

    def write_batch(self, *, sync: bool = False) -> Any:
        self.syncs.append(sync)
        return self.db.write_batch(sync=sync)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_every_acknowledging_write_is_fsynced(tmp_path: Path) -> None:
    """Each persist/commit_applied is one synced batch. (The SIGKILL test cannot see a missing
    fsync: the page cache outlives the process. This one does.)"""
    durable = DurableRaftStorage(tmp_path / "raft")
    recorder = SyncRecorder(durable._db)
    durable._db = recorder
    durable.persist(make_ready(entries(1, 3, 1)))
    durable.persist(make_ready(hard_state=HardState(1, "a", 2)))
    durable.persist(make_ready(entries(2, 4, 2), HardState(2, "b", 2)))
    durable.commit_applied([(b"k", b"v")], 2)
    assert recorder.syncs == [True, True, True, True]
    # The adapter applies unsynced (state is a function of the fsynced log); the log and
    # hard state are still fsynced, and one batch still carries state and applied index.
    durable.persist(make_ready(hard_state=HardState(2, "b", 3)))
    durable.commit_applied([(b"k", b"w")], 3, sync=False)
    assert recorder.syncs[-2:] == [True, False]
    durable.close()
    with DurableRaftStorage(tmp_path / "raft") as reopened:
        assert (reopened.applied_index, reopened.state_get(b"k")) == (3, b"w")


# -- a seeded cluster on LevelDB against the same run on MemoryStorage


def log_key(index: int) -> bytes:
    return b"log/%016d" % index


def recorded(entry: Entry) -> AppliedEntry:
    return (entry.index, entry.term, int(entry.kind), entry.payload)


class DurableCluster(Cluster):
    """The test cluster on DurableRaftStorage, with the recording machine's state in it too.

    Its Ready cycle uses the state-machine interface: each applied range is written with
    ``commit_applied`` (one key per applied entry), a received snapshot with
    ``restore_applied``; compaction stores no data (the state is on disk); a restart reopens
    the database and resumes from what is stored. The core is still handed the state as
    snapshot data (its records up to the compaction point): that is what this cluster sends
    a lagging peer, where the adapter streams the same state from a pinned view.
    """

    def __init__(self, root: Path, node_ids: list[NodeId], **options: Any) -> None:
        self.root = root
        super().__init__(node_ids, **options)

    def _open(self, node_id: NodeId) -> DurableRaftStorage:
        return DurableRaftStorage(self.root / node_id, snapshot_chunk_bytes_max=64)

    def _create(self, node_id: NodeId, core: RawNode) -> None:
        storage = self._open(node_id)
        self.members[node_id] = _Member(core, storage, RecordingMachine())  # type: ignore[arg-type]
        self.process(node_id)

    def durable(self, node_id: NodeId) -> DurableRaftStorage:
        storage = self.members[node_id].storage
        assert isinstance(storage, DurableRaftStorage)
        return storage

    def process(self, node_id: NodeId) -> None:
        member, storage = self.members[node_id], self.durable(node_id)
        while member.up and member.core.has_ready():
            ready = member.core.ready()
            storage.persist(ready)  # 1. persist
            self.queue.extend(ready.messages)  # 2. send
            if ready.snapshot is not None:  # 3. apply
                member.machine.restore(ready.snapshot)
                writes = [(log_key(a[0]), msgpack.packb(a)) for a in member.machine.applied]
                storage.restore_applied(writes, ready.snapshot.meta.index)
            if ready.committed_entries:
                records = [recorded(e) for e in ready.committed_entries]
                member.machine.applied += records
                member.machine.applied_index = records[-1][0]
                writes = [(log_key(a[0]), msgpack.packb(a)) for a in records]
                storage.commit_applied(writes, records[-1][0])
            member.machine.read_states.extend(ready.read_states)
            member.core.advance(ready)  # 4. advance

    def compact(self, node_id: NodeId) -> Snapshot:
        member, storage = self.members[node_id], self.durable(node_id)
        meta = member.core.snapshot_meta(member.machine.applied_index)
        storage.flush_state()
        storage.compact(meta)
        snapshot = Snapshot(meta, member.machine.data())
        member.core.compact(snapshot)
        return snapshot

    def restart(self, node_id: NodeId) -> None:
        self.durable(node_id).close()
        storage = self._open(node_id)
        snapshot = storage.snapshot
        if storage.applied_index < snapshot.meta.index:  # crashed before restoring it
            writes = [(log_key(a[0]), msgpack.packb(a)) for a in msgpack.unpackb(snapshot.data)]
            storage.restore_applied(writes, snapshot.meta.index)
        machine = RecordingMachine()
        machine.applied = [
            (int(i), int(t), int(k), bytes(p))
            for _, value in storage.state_items(b"log/")
            for i, t, k, p in [msgpack.unpackb(value)]
        ]
        machine.applied_index = storage.applied_index
        state, meta = storage.state(), storage.snapshot.meta
        at_compaction = [list(a) for a in machine.applied if a[0] <= meta.index]
        data = msgpack.packb(at_compaction, use_bin_type=True)
        core = RawNode(
            self._config(node_id), self.rng, replace(state, snapshot=Snapshot(meta, data))
        )
        self.members[node_id] = _Member(core, storage, machine)  # type: ignore[arg-type]
        self.process(node_id)

    def close(self) -> None:
        for node_id in self.members:
            self.durable(node_id).close()


def config(node_id: NodeId) -> RaftConfig:
    return RaftConfig(node_id, entries_per_message_max=4, inflight_messages_max=4)


def step(cluster: Cluster, rng: random.Random, n: int) -> None:
    leader, roll = cluster.leader(), rng.random()
    ids = sorted(cluster.members)
    if leader is not None and roll < 0.15:
        payloads = [b"%d-%d" % (n, i) for i in range(rng.randint(1, 5))]
        cluster.propose(leader, *payloads, now_ms=n)
    elif roll < 0.55 and cluster.queue:
        cluster.deliver_one(rng.randrange(len(cluster.queue)))
    elif roll < 0.62 and cluster.queue:
        cluster.queue.pop(rng.randrange(len(cluster.queue)))
    elif roll < 0.85:
        cluster.tick([rng.choice(ids)])
    elif roll < 0.88:
        cluster.crash(rng.choice(ids))
    elif roll < 0.93:
        down = [i for i in ids if not cluster.members[i].up]
        if down:
            cluster.restart(rng.choice(down))
    elif roll < 0.96:
        up = [i for i in cluster.up_ids if cluster.machine(i).applied_index]
        node = rng.choice(up) if up else None
        if node and cluster.machine(node).applied_index > cluster.core(node).snapshot_index:
            cluster.compact(node)
    elif roll < 0.98:
        shuffled = rng.sample(ids, len(ids))
        cluster.partition(shuffled[:1], shuffled[1:])
    else:
        cluster.heal()


def converge(cluster: Cluster) -> None:
    cluster.heal()
    for node_id in sorted(cluster.members):
        if not cluster.members[node_id].up:
            cluster.restart(node_id)
    for _ in range(200):
        cluster.settle()
        leader = cluster.leader()
        if leader is not None and all(
            cluster.machine(n).applied_index == cluster.core(leader).commit_index
            for n in cluster.members
        ):
            return
    raise AssertionError("the cluster did not converge")


def same_persisted(durable: DurableCluster, plain: Cluster) -> None:
    """The same log, hard state, snapshot point and applied state (the data of a snapshot is
    the applied state, which the durable storage keeps as state, not as snapshot data)."""
    for node_id in sorted(plain.members):
        machine = plain.machine(node_id)
        stored = durable.durable(node_id).state()
        model = plain.storage(node_id).state(machine.applied_index)
        assert stored.snapshot.meta == model.snapshot.meta
        assert replace(stored, snapshot=model.snapshot) == model
        assert durable.machine(node_id).applied == machine.applied


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_cluster_on_leveldb_persists_exactly_what_memory_does(
    tmp_path: Path, seed: int
) -> None:
    ids = ["a", "b", "c"]
    plain = Cluster(ids, rng=random.Random(seed), config=config)
    durable = DurableCluster(tmp_path, ids, rng=random.Random(seed), config=config)
    plain_rng, durable_rng = random.Random(seed + 100), random.Random(seed + 100)
    for n in range(500):
        step(plain, plain_rng, n)
        step(durable, durable_rng, n)
        if n % 100 == 99:
            same_persisted(durable, plain)
    converge(plain)
    converge(durable)
    committed = plain.core(ids[0]).commit_index
    assert committed > 10
    same_persisted(durable, plain)
    # Every node restarts from its database alone and the cluster carries on.
    log_before = {n: list(durable.machine(n).applied) for n in ids}
    for node_id in ids:
        durable.crash(node_id)
    for node_id in ids:
        durable.restart(node_id)
    converge(durable)
    leader = durable.leader()
    assert leader is not None
    durable.propose(leader, b"after-restart", now_ms=10_000)
    converge(durable)
    for node_id in ids:
        applied = durable.machine(node_id).applied
        assert applied[-1][3] == b"after-restart"
        assert applied[: len(log_before[node_id])] == log_before[node_id]
    durable.close()


# -- crash safety with real processes killed by SIGKILL

# ("persist", Ready) | ("apply" or "restore", writes, index) | ("compact", SnapshotMeta)
Op = tuple[Any, ...]


@dataclass
class Model:
    """What the storage must hold after a sequence of ops: MemoryStorage plus applied state."""

    storage: MemoryStorage = field(default_factory=MemoryStorage)
    state: dict[bytes, bytes] = field(default_factory=dict)
    applied: int = 0

    def do(self, op: Op) -> None:
        kind = op[0]
        if kind == "persist":
            self.storage.persist(op[1])
        elif kind == "compact":
            self.storage.save_snapshot(Snapshot(op[1], b""))  # the state is on disk
        else:
            if kind == "restore":
                self.state.clear()
                self.storage.snapshot = Snapshot(self.storage.snapshot.meta, b"")
            for key, value in op[1]:
                if value is None:
                    self.state.pop(key, None)
                else:
                    self.state[key] = value
            self.applied = op[2]


def do_durable(storage: DurableRaftStorage, op: Op) -> None:
    kind = op[0]
    if kind == "persist":
        storage.persist(op[1])
    elif kind == "compact":
        storage.flush_state()
        storage.compact(op[1])
    elif kind == "restore":
        storage.restore_applied(op[1], op[2])
    else:
        storage.commit_applied(op[1], op[2])


def crash_ops(seed: int) -> Iterator[Op]:
    """An endless, seeded stream of storage ops a Raft node could issue (deterministic)."""
    rng, model, term, n = random.Random(seed), Model(), 1, 0
    op: Op = ("persist", make_ready(snapshot=snapshot_at(0, 0)))
    while True:
        model.do(op)
        yield op
        n += 1
        st = model.storage
        snap, commit = st.snapshot.meta.index, st.hard_state.commit
        last = snap + len(st.entries)
        roll = rng.random()
        if model.applied < snap:  # a received snapshot: rebuild the state from it
            op = ("restore", tuple(msgpack.unpackb(st.snapshot.data)), snap)
        elif roll < 0.3 and model.applied < commit:
            end = min(commit, model.applied + rng.randint(1, 20))
            writes: list[StateWrite] = [
                (b"sm/%08d" % e.index, hashlib.sha256(e.payload).digest()[:8])
                for e in st.entries[model.applied - snap : end - snap]
            ]
            writes += [(b"sm/%08d" % (end - 10), None), (b"sm/count", b"%d" % end)]
            op = ("apply", tuple(writes), end)
        elif roll < 0.36 and model.applied > snap:
            index = rng.randint(snap + 1, model.applied)
            op = ("compact", SnapshotMeta(index, st.entries[index - snap - 1].term, ABC))
        elif roll < 0.45 and last > commit:  # a new leader overwrites the uncommitted suffix
            term += 1
            first = rng.randint(commit + 1, last)
            new = entries(first, first + rng.randint(0, 9), term, b"t%d" % term)
            op = ("persist", make_ready(new, HardState(term, "b", commit)))
        elif roll < 0.47:  # a snapshot from the leader replaces the whole log
            index = max(commit, snap) + rng.randint(1, 8)
            data = msgpack.packb([(b"sm/count", b"%d" % index)], use_bin_type=True)
            hard = HardState(term, "b", index)
            op = ("persist", make_ready(hard_state=hard, snapshot=snapshot_at(index, term, data)))
        elif roll < 0.52:  # a vote in a new term, nothing else
            term += 1
            op = ("persist", make_ready(hard_state=HardState(term, "c", commit)))
        else:
            new = entries(last + 1, last + rng.randint(1, 30), term, b"n%d" % n)
            hard = HardState(term, "b", rng.randint(commit, new[-1].index))
            op = ("persist", make_ready(new, hard))


def child_main(path: str, seed: int, start: int) -> None:
    """Run in a child process: do ops from ``start`` on, printing each one's number once durable."""
    storage = DurableRaftStorage(Path(path), snapshot_chunk_bytes_max=512)
    print("open", flush=True)
    for number, op in enumerate(crash_ops(seed)):
        if number >= start:
            do_durable(storage, op)
            print(number, flush=True)


def matches(storage: DurableRaftStorage, model: Model) -> bool:
    """Equal to the model; below a received snapshot the state is only due for a restore."""
    restoring = model.applied < model.storage.snapshot.meta.index
    return storage.state() == model.storage.state(model.applied) and (
        restoring or dict(storage.state_items()) == model.state
    )


def test_sigkill_at_random_moments_loses_nothing_acknowledged_and_tears_nothing(
    tmp_path: Path,
) -> None:
    path, seed, rng = tmp_path / "raft", 11, random.Random(11)
    ops, model, done = crash_ops(seed), Model(), 0  # model = state after ops[:done]
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}];"
        "from test_raft_durable import child_main;"
        "child_main(sys.argv[1], *map(int, sys.argv[2:]))"
    )
    mid_run_kills = 0
    for _ in range(10):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(seed), str(done)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "open\n"
        time.sleep(rng.uniform(0.005, 0.12))
        child.kill()
        child.wait()
        printed = [int(line) for line in child.stdout.read().split()]
        acknowledged = printed[-1] + 1 if printed else done
        mid_run_kills += bool(printed)
        while done < acknowledged:  # the model after every op the child reported durable
            model.do(next(ops))
            done += 1
        with DurableRaftStorage(path) as storage:
            if not matches(storage, model):  # the op after the last print may be durable too
                model.do(next(ops))
                done += 1
                assert matches(storage, model), f"torn or lost state after op {done - 1}"
            assert storage.last_index >= storage.hard_state.commit >= storage.applied_index
    assert done > 50 and mid_run_kills >= 8


# -- snapshots streamed through chunks (compaction and transfers in the adapter)


def test_state_data_round_trips_in_any_pieces_and_a_flipped_bit_fails_its_digest() -> None:
    items = [(b"k/%05d" % i, bytes(i % 251 for _ in range(i % 300))) for i in range(3000)]
    pieces: list[bytes] = []
    encode_state(items, pieces.append)
    data = b"".join(pieces)
    rng = random.Random(7)
    for _ in range(5):  # cut anywhere, header and digest included
        cuts = sorted(rng.sample(range(1, len(data)), 40))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert list(decode_state(parts, len(data))) == items
    assert list(decode_state([], 0)) == []  # the empty state (bootstrap snapshot)
    for position in (2, len(data) // 2, len(data) - 1):  # header, a pair, the digest
        corrupt = bytearray(data)
        corrupt[position] ^= 0x10
        with pytest.raises((PeerProtocolError, UnsupportedFormat)):
            list(decode_state([bytes(corrupt)], len(data)))
    with pytest.raises(PeerProtocolError):
        list(decode_state([data[:-1]], len(data)))
    with pytest.raises(UnsupportedFormat):
        list(decode_state([b"BSNP\x03" + data[5:]], len(data)))


def write_staged(storage: DurableRaftStorage, data: bytes) -> SnapshotRef:
    writer = SnapshotWriter(storage, storage.reserve_generation())
    for offset in range(0, len(data), 5):  # written in pieces unlike the chunks
        writer.write(data[offset : offset + 5])
    return writer.finish()


def test_a_staged_snapshot_is_adopted_by_reference_and_never_loaded_whole(tmp_path: Path) -> None:
    """A received transfer: staged chunks, adopted by reference, restored, then dropped."""
    path = tmp_path / "raft"
    data = b"state data over several chunks of 16 bytes"
    with DurableRaftStorage(path, snapshot_chunk_bytes_max=16) as durable:
        durable.persist(make_ready(entries(1, 9, 1), HardState(1, None, 9)))
        ref = write_staged(durable, data)
        assert ref.chunks == 3 and ref.size == len(data)
        other = write_staged(durable, b"a transfer still coming in")
        snapshot = Snapshot(SnapshotMeta(12, 2, ABC), ref.encode())
        durable.persist(make_ready(hard_state=HardState(2, None, 12), snapshot=snapshot))
        assert durable.snapshot.data == ref.encode()  # the core holds the reference
        assert durable.entries() is not None and raw_keys_open(durable, PREFIX_ENTRY) == []
        size, chunks = durable.snapshot_chunks(durable.snapshot.data)
        assert size == len(data) and b"".join(chunks) == data
        gens = {k[1:9] for k in raw_keys_open(durable, PREFIX_CHUNK)}
        assert gens == {chunk_key(g, 0)[1:9] for g in (ref.generation, other.generation)}
    with DurableRaftStorage(path, snapshot_chunk_bytes_max=16) as reopened:
        assert reopened.snapshot == snapshot and reopened.applied_index == 0  # to restore
        # The transfer that was never adopted is gone: only the snapshot's chunks remain.
        assert {k[1:9] for k in raw_keys_open(reopened, PREFIX_CHUNK)} == {
            chunk_key(ref.generation, 0)[1:9]
        }
        reopened.restore_applied([(b"k", b"v")], 12)
        assert reopened.snapshot == Snapshot(snapshot.meta, b"")
        assert raw_keys_open(reopened, PREFIX_CHUNK) == []
    with DurableRaftStorage(path) as again:
        assert again.snapshot == Snapshot(snapshot.meta, b"") and again.applied_index == 12
    record = {"meta": snapshot.meta.to_wire(), **ref._record(), "ref": True}
    db = plyvel.DB(str(path))  # as if staged again, its chunks then damaged
    db.put(KEY_SNAP, encode_entry(KEY_SNAP, msgpack.packb(record)))
    db.put(KEY_APPLIED, encode_entry(KEY_APPLIED, msgpack.packb(0)))
    for n in range(ref.chunks):  # well-formed chunks with the wrong data
        key = chunk_key(ref.generation, n)
        db.put(key, encode_entry(key, b"x" * 16))
    db.close()
    with pytest.raises(StorageDamaged):
        DurableRaftStorage(path)


def test_a_snapshot_over_its_bound_is_refused_while_written(tmp_path: Path) -> None:
    with DurableRaftStorage(tmp_path / "raft", snapshot_bytes_max=10) as durable:
        writer = SnapshotWriter(durable, durable.reserve_generation())
        writer.write(b"0123456789")
        with pytest.raises(OperationFailed, match="snapshot_bytes_max"):
            writer.write(b"!")


def raw_keys_open(durable: DurableRaftStorage, prefix: bytes) -> list[bytes]:
    return list(durable._db.iterator(prefix=prefix, include_value=False))


# -- compaction that does not copy the state


def store_with_state(path: Path, state_keys: int, log_entries: int) -> DurableRaftStorage:
    """A storage with ``state_keys`` applied state keys and ``log_entries`` applied entries."""
    durable = DurableRaftStorage(path)
    durable.persist(make_ready(snapshot=snapshot_at(0, 0)))
    durable.persist(make_ready(entries(1, log_entries, 1), HardState(1, "a", log_entries)))
    value = b"v" * 200  # about a record index entry
    for batch, start in enumerate(range(0, state_keys, 4096)):
        writes = [(b"ri/%09d" % i, value) for i in range(start, min(state_keys, start + 4096))]
        durable.commit_applied(writes, 1 + batch, sync=False)
    durable.commit_applied([(b"ri/count", b"%d" % state_keys)], log_entries, sync=False)
    return durable


def test_compaction_writes_what_the_dropped_entries_cost_whatever_the_state_size(
    tmp_path: Path,
) -> None:
    """The cost of a compaction, counted in keys and bytes written (not timed): the same for
    a state of 100 keys and one of 100,000, and proportional to the entries dropped."""
    costs = []
    for keys in (100, 100_000):
        with store_with_state(tmp_path / f"s{keys}", keys, 3000) as durable:
            durable.flush_state()
            before = (durable.keys_written, durable.bytes_written)
            assert durable.compact(SnapshotMeta(2000, 1, ABC)) == 2000
            costs.append((durable.keys_written - before[0], durable.bytes_written - before[1]))
            assert [e.index for e in durable.entries()] == list(range(2001, 3001))
            assert len(list(durable.state_items())) == keys + 1  # the state is untouched
    assert costs[0] == costs[1]
    assert costs[0][0] == 2000 + 1  # one delete per dropped entry, and the meta
    with DurableRaftStorage(tmp_path / "s100") as reopened:  # restarts from the point
        assert reopened.snapshot == snapshot_at(2000, 1)
        assert reopened.applied_index == 3000
        assert reopened.state().entries == tuple(entries(2001, 3000, 1))


def test_a_state_behind_the_compaction_point_is_refused_at_open(tmp_path: Path) -> None:
    """What flush_state prevents (a power loss taking state the dropped log rebuilt) is
    detected, never served: the node is told to catch up from an empty directory."""
    path = tmp_path / "raft"
    with store_with_state(path, 10, 20) as durable:
        durable.flush_state()
        durable.compact(SnapshotMeta(15, 1, ABC))
    db = plyvel.DB(str(path))
    db.put(KEY_APPLIED, encode_entry(KEY_APPLIED, msgpack.packb(12)))
    db.close()
    with pytest.raises(StorageDamaged, match="behind the compaction point"):
        DurableRaftStorage(path)


def test_a_pinned_state_stays_at_its_index_and_sizes_its_snapshot_exactly(
    tmp_path: Path,
) -> None:
    with store_with_state(tmp_path / "raft", 1000, 50) as durable:
        durable.persist(make_ready(entries(51, 52, 1), HardState(1, "a", 52)))
        durable.commit_applied([(b"ri/big", b"b" * 70_000), (b"ri/mid", b"m" * 300)], 51)
        pinned = durable.pin_state()
        before = list(pinned.items())
        durable.commit_applied([(b"ri/000000001", None), (b"ri/new", b"n")], 52)
        try:
            assert pinned.applied_index == 51
            assert list(pinned.items()) == before  # read twice: still as of index 51
            data = b"".join(encode_pieces(pinned.items()))
            assert encoded_size(pinned.items()) == len(data)
            assert list(decode_state([data], len(data))) == before
            reading = pinned.items()
            first = next(reading)
            pinned.close()  # a cancelled transfer, while a worker thread still reads
            assert [first, *reading] == before  # the view outlives the close until read
            with pytest.raises(OperationFailed, match="closed"):
                next(pinned.items())
        finally:
            pinned.close()
        assert (b"ri/new", b"n") in list(durable.state_items())
