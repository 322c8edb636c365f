"""The LevelDB shard store (real files): versioned, checksummed entries and group commit."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import plyvel
import pytest
import trio

from node.errors import Overloaded
from node.records import Shard, ShardKey, ShardMeta
from node.storage.entry import decode_entry, encode_entry
from node.storage.group_commit import GroupCommitter
from node.storage.shard_store import ShardStore, shard_db_key


def _shard(record_id: bytes, index: int, data: bytes = b"payload") -> Shard:
    meta = ShardMeta(
        record_id=record_id,
        content_hash=b"\x11" * 32,
        index=index,
        k=3,
        n=5,
        blob_bytes=len(data) * 3,
        partner_id="p1",
        body_fingerprint=b"\x22" * 32,
        created_at_ms=1,
    )
    return Shard(meta, data)


def test_write_read_survives_reopen(tmp_path: Path) -> None:
    rid = os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    store.write_batch([_shard(rid, 0), _shard(rid, 3)])
    store.close()
    store = ShardStore(tmp_path / "shards")
    shards, corrupt = store.get(rid)
    assert sorted(s.meta.index for s in shards) == [0, 3] and corrupt == 0
    assert [s.meta.index for s in store.get(rid, [3])[0]] == [3]
    assert store.get(os.urandom(32)) == ([], 0)
    assert store.count() == 2
    store.close()


def test_shard_count_and_bytes_are_exact_across_rewrites_and_reopen(tmp_path: Path) -> None:
    rid, other = os.urandom(32), os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    store.write_batch([_shard(rid, 0, b"a" * 100), _shard(rid, 1, b"b" * 100)])
    first_bytes = store.shard_bytes
    assert store.count() == 2 and first_bytes > 200
    # A replayed hint or retry rewrites the same keys: nothing is counted twice.
    store.write_batch([_shard(rid, 0, b"a" * 100), _shard(rid, 0, b"a" * 100)])
    assert (store.count(), store.shard_bytes) == (2, first_bytes)
    store.write_batch([_shard(other, 2, b"c" * 50)])
    expected = (store.count(), store.shard_bytes)
    assert expected[0] == 3
    store.close()
    reopened = ShardStore(tmp_path / "shards")
    assert (reopened.count(), reopened.shard_bytes) == expected
    reopened.close()
    # A database written before the stats key existed is counted once when opened.
    db = plyvel.DB(str(tmp_path / "shards"))
    db.delete(b"m:stats")
    db.close()
    recounted = ShardStore(tmp_path / "shards")
    assert (recounted.count(), recounted.shard_bytes) == expected
    recounted.close()


def _version(rid: bytes, index: int, content_hash: bytes) -> Shard:
    shard = _shard(rid, index)
    return Shard(replace(shard.meta, content_hash=content_hash), shard.data)


def test_exclusive_puts_refuse_another_version_of_a_record(tmp_path: Path) -> None:
    rid, other = os.urandom(32), os.urandom(32)
    first, second = b"\x01" * 32, b"\x02" * 32
    store = ShardStore(tmp_path / "shards")
    store.write_batch([_version(rid, 0, first)])
    assert store.versions(rid) == [first] and store.versions(other) == []
    # Same version again (a retry of the same shard) is taken; another version is refused.
    prepared = store.prepare(
        [_version(rid, 1, first), _version(rid, 2, second), _version(other, 0, second)],
        [True, True, True],
    )
    assert prepared.refused == {rid}
    store.commit(prepared)
    assert sorted(s.meta.index for s in store.get(rid)[0]) == [0, 1]
    # Within one batch the first version to arrive wins, as across batches.
    racing = os.urandom(32)
    prepared = store.prepare(
        [_version(racing, 0, first), _version(racing, 1, second)], [True, True]
    )
    assert prepared.refused == {racing}
    # A non-exclusive put stores beside the version held (an earlier write that failed).
    store.write_batch([_version(rid, 3, second)])
    assert store.versions(rid) == [first, second]
    store.close()
    # Version lists of a database from before they existed are rebuilt when it is opened.
    db = plyvel.DB(str(tmp_path / "shards"))
    for key in [b"m:stats", b"v" + rid, b"v" + other]:
        db.delete(key)
    db.close()
    reopened = ShardStore(tmp_path / "shards")
    assert sorted(reopened.versions(rid)) == sorted([first, second])
    assert reopened.versions(other) == [second]
    assert reopened.prepare([_version(other, 1, first)], [True]).refused == {other}
    reopened.close()


def test_corrupt_entry_is_detected_and_never_served(tmp_path: Path) -> None:
    rid = os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    store.write_batch([_shard(rid, 0, b"good"), _shard(rid, 1, b"also")])
    store.close()
    db = plyvel.DB(str(tmp_path / "shards"))
    key = shard_db_key(_shard(rid, 1).meta.key)
    value = bytearray(db.get(key))
    value[-1] ^= 0x40  # bit rot in the payload
    db.put(key, bytes(value))
    db.close()
    store = ShardStore(tmp_path / "shards")
    shards, corrupt = store.get(rid)
    assert [s.data for s in shards] == [b"good"] and corrupt == 1
    assert store.corrupt_entries_seen == 1
    store.close()


def test_entry_bound_to_its_key_and_version() -> None:
    value = encode_entry(b"key-a", b"payload")
    assert decode_entry(b"key-a", value) == b"payload"
    from node.errors import CorruptEntry, UnsupportedFormat

    with pytest.raises(CorruptEntry):
        decode_entry(b"key-b", value)
    with pytest.raises(UnsupportedFormat):
        decode_entry(b"key-a", b"\x07" + value[1:])
    with pytest.raises(CorruptEntry):
        decode_entry(b"key-a", b"\x01")


V1_SHARD_ENTRY_HEX = (
    "01429256a64350eee19e17d93c9e6518ec82a16d8aa17601a3726964c420000102030405060708090a0b0c0d0e"
    "0f101112131415161718191a1b1c1d1e1fa26368c420111111111111111111111111111111111111111111111111"
    "1111111111111111a16902a16b03a16e05a36c656e15a3706964a27031a26670c420222222222222222222222222"
    "2222222222222222222222222222222222222222a2747301a164c40766697874757265"
)


def test_v1_entry_fixture_still_decodes() -> None:
    """Guards the on-disk format: this value was written by entry format 1, shard meta v1."""
    from node.storage.shard_store import decode_shard_value

    expected = _shard(bytes(range(32)), 2, b"fixture")
    fixture = bytes.fromhex(V1_SHARD_ENTRY_HEX)
    assert decode_shard_value(shard_db_key(expected.meta.key), fixture) == expected


def test_group_commit_coalesces_concurrent_puts(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shards")
    committer = GroupCommitter(store, queue_shards_max=10_000, batch_shards_max=1024)
    record_ids = [os.urandom(32) for _ in range(200)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.serve)
            async with trio.open_nursery() as writers:
                for rid in record_ids:
                    writers.start_soon(committer.submit, [_shard(rid, 0)])
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert committer.shards_committed == 200
    assert committer.batches_committed < 20  # 200 concurrent puts, a handful of fsyncs
    assert all(store.get(rid)[0] for rid in record_ids)
    store.close()


def test_group_commit_queue_is_bounded(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shards")
    committer = GroupCommitter(store, queue_shards_max=3, batch_shards_max=1024)

    async def main() -> None:
        with pytest.raises(Overloaded):
            await committer.submit([_shard(os.urandom(32), i) for i in range(4)])

    trio.run(main)
    store.close()


def test_hint_store_lists_peers_and_replays(tmp_path: Path) -> None:
    from node.storage.hints import HintStore

    hints = HintStore(tmp_path / "hints", hints_max=3)
    rid = os.urandom(32)
    hints.add("peer-b", [_shard(rid, 1)])
    hints.add("peer-a", [_shard(rid, 0), _shard(rid, 2)])
    assert hints.peers() == ["peer-a", "peer-b"] and hints.count == 3
    with pytest.raises(Overloaded):
        hints.add("peer-c", [_shard(rid, 3)])
    pending = hints.pending("peer-a", 10)
    assert sorted(s.meta.index for s in pending) == [0, 2]
    hints.remove("peer-a", pending)
    hints.close()
    reopened = HintStore(tmp_path / "hints", hints_max=3)
    assert reopened.peers() == ["peer-b"] and reopened.count == 1
    reopened.close()


def test_delete_removes_exactly_the_named_shards_and_keeps_counts_and_versions(
    tmp_path: Path,
) -> None:
    rid, other = os.urandom(32), os.urandom(32)
    first, second = b"\x01" * 32, b"\x02" * 32
    store = ShardStore(tmp_path / "shards")
    store.write_batch([_version(rid, 0, first), _version(rid, 1, first), _version(rid, 2, second)])
    store.write_batch([_version(other, 0, first)])
    before = (store.count(), store.shard_bytes)
    one = len(store.get(rid, [1])[0][0].data)
    # Deleting shard 1 of the first version leaves shard 0 of it: the version stays listed.
    store.commit(store.prepare_delete([ShardKey(rid, first, 1), ShardKey(rid, first, 4)]))
    assert sorted(s.meta.index for s in store.get(rid)[0]) == [0, 2]
    assert store.versions(rid) == [first, second]
    assert store.count() == before[0] - 1 and store.shard_bytes < before[1] - one
    # Deleting the last shard of a version drops it from the record's versions: an exclusive
    # put of another version is then taken.
    store.commit(store.prepare_delete([ShardKey(rid, second, 2), ShardKey(rid, first, 0)]))
    assert store.get(rid) == ([], 0) and store.versions(rid) == []
    assert store.prepare([_version(rid, 0, second)], [True]).refused == frozenset()
    assert store.get(other)[0] and store.count() == 1
    expected = (store.count(), store.shard_bytes)
    store.close()
    reopened = ShardStore(tmp_path / "shards")
    assert (reopened.count(), reopened.shard_bytes) == expected
    reopened.close()


def test_deletes_go_through_the_committer_between_put_batches(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shards")
    committer = GroupCommitter(store, queue_shards_max=10_000, batch_shards_max=1024)
    rid = os.urandom(32)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.serve)
            await committer.submit([_shard(rid, 0), _shard(rid, 1)])
            async with trio.open_nursery() as writers:
                writers.start_soon(committer.delete, [ShardKey(rid, b"\x11" * 32, 0)])
                for _ in range(20):
                    writers.start_soon(committer.submit, [_shard(os.urandom(32), 0)])
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [s.meta.index for s in store.get(rid)[0]] == [1]
    assert committer.shards_deleted == 1 and store.count() == 21
    store.close()
