"""Orphan collection on real LevelDB: pending markers, settle verdicts, the collector pass."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from node.records import Shard, ShardMeta
from node.storage.group_commit import GroupCommitter
from node.storage.orphans import OrphanCollector, settle
from node.storage.shard_store import CollectItem, ShardStore

FIRST, SECOND = b"\x01" * 32, b"\x02" * 32


def shard(rid: bytes, index: int, version: bytes = FIRST) -> Shard:
    meta = ShardMeta(rid, version, index, 3, 5, 30, "p1", b"\x22" * 32, 1)
    return Shard(meta, b"x" * 10)


def test_settle_waits_for_the_expiry_then_keeps_only_the_indexed_version() -> None:
    rid = os.urandom(32)
    looked_up: list[bytes] = []

    def lookup(found: bytes | None) -> Callable[[bytes], bytes | None]:
        return lambda record_id: looked_up.append(record_id) or found

    assert settle(rid, 100, 99, lookup(FIRST)) is None  # the proposal may still commit
    assert looked_up == []  # and its index entry is not read for nothing
    assert settle(rid, 100, 100, lookup(None)) == CollectItem(rid, 100, None)
    assert settle(rid, 100, 500, lookup(FIRST)) == CollectItem(rid, 100, FIRST)
    assert looked_up == [rid, rid]


def test_puts_keep_the_highest_expiry_as_the_pending_marker(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s")
    rid, plain = os.urandom(32), os.urandom(32)
    store.commit(store.prepare([shard(rid, 0), shard(rid, 1)], None, [50, 50]))
    store.commit(store.prepare([shard(rid, 2, SECOND)], None, [40]))  # a lower one: kept 50
    store.write_batch([shard(plain, 0)])  # no expiry (a move's copy, a hint): no marker
    assert store.pending(rid) == 50 and store.pending(plain) is None
    store.commit(store.prepare([shard(rid, 3)], None, [70]))
    assert store.pending_items() == [(rid, 70)]
    store.close()


def test_collect_removes_orphans_and_leftovers_and_spares_records_written_again(
    tmp_path: Path,
) -> None:
    store = ShardStore(tmp_path / "s")
    orphan, indexed, rewritten = os.urandom(32), os.urandom(32), os.urandom(32)
    store.commit(
        store.prepare(
            [
                shard(orphan, 0),
                shard(orphan, 1, SECOND),
                shard(indexed, 0),
                shard(indexed, 1, SECOND),  # a retry's leftover version
                shard(rewritten, 0),
            ],
            None,
            [10, 10, 10, 10, 10],
        )
    )
    # The record written again after the collector looked carries a higher marker now.
    store.commit(store.prepare([shard(rewritten, 1)], None, [90]))
    before = store.count()
    prepared = store.prepare_collect(
        [
            CollectItem(orphan, 10, None),
            CollectItem(indexed, 10, FIRST),
            CollectItem(rewritten, 10, None),
        ]
    )
    store.commit(prepared)
    assert store.get(orphan) == ([], 0) and store.versions(orphan) == []
    assert [(s.meta.index, s.meta.content_hash) for s in store.get(indexed)[0]] == [(0, FIRST)]
    assert store.versions(indexed) == [FIRST]
    assert len(store.get(rewritten)[0]) == 2 and store.pending(rewritten) == 90
    assert store.pending(orphan) is None and store.pending(indexed) is None
    assert store.count() == before - 3
    counted = (store.count(), store.shard_bytes)
    store.close()
    reopened = ShardStore(tmp_path / "s")
    assert (reopened.count(), reopened.shard_bytes) == counted
    reopened.close()


@pytest.mark.parametrize("per_pass", [1, 2, 1024])
def test_the_collector_settles_every_marker_past_the_applied_index(
    tmp_path: Path, per_pass: int
) -> None:
    store = ShardStore(tmp_path / "s")
    committer = GroupCommitter(store, queue_shards_max=10_000, batch_shards_max=1024)
    orphans = [os.urandom(32) for _ in range(3)]
    indexed = os.urandom(32)
    late = os.urandom(32)  # its proposal may still commit: untouched
    index = {indexed: FIRST}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.serve)
            for rid in [*orphans, indexed]:
                await committer.submit([shard(rid, 0), shard(rid, 1)], expiries=[20, 20])
            await committer.submit([shard(late, 0)], expiries=[500])

            async def run_collect(items: Sequence[CollectItem]) -> int:
                return await committer.collect(items)

            collector = OrphanCollector(
                store=store,
                applied_index=lambda: 100,
                indexed_version=index.get,
                run_collect=run_collect,
                interval_s=1.0,
                records_per_pass_max=per_pass,
            )
            for _ in range(8):  # a bounded pass resumes where the last one stopped
                await collector.pass_once()
            assert collector.stats.orphan_records == 3
            assert collector.stats.shards_removed == 6
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert all(store.get(rid) == ([], 0) for rid in orphans)
    assert len(store.get(indexed)[0]) == 2 and store.pending(indexed) is None
    assert len(store.get(late)[0]) == 1 and store.pending(late) == 500
    store.close()


def test_a_corrupt_marker_is_never_collected(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s")
    rid = os.urandom(32)
    store.commit(store.prepare([shard(rid, 0)], None, [5]))
    store.close()
    import plyvel

    db = plyvel.DB(str(tmp_path / "s"))
    db.put(b"p" + rid, b"\x00garbage")
    db.close()
    store = ShardStore(tmp_path / "s")
    assert store.pending(rid) is None
    store.commit(store.prepare_collect([CollectItem(rid, 5, None)]))
    assert len(store.get(rid)[0]) == 1
    store.close()


def test_shard_meta_replace_keeps_version() -> None:
    assert replace(shard(b"\x03" * 32, 0), data=b"y").meta.content_hash == FIRST


def test_a_refused_put_still_raises_the_marker(tmp_path: Path) -> None:
    """A retry of a record refused here (another version held) may get that version indexed:
    the held version must outlive the retry's proposal, so the marker rises anyway."""
    store = ShardStore(tmp_path / "s")
    rid = os.urandom(32)
    store.commit(store.prepare([shard(rid, 0)], None, [10]))
    prepared = store.prepare([shard(rid, 1, SECOND)], [True], [80])
    assert prepared.refused == {rid}
    store.commit(prepared)
    assert store.pending(rid) == 80
    store.commit(store.prepare_collect([CollectItem(rid, 10, None)]))
    assert len(store.get(rid)[0]) == 1  # spared: the marker moved past what was seen
    store.close()
