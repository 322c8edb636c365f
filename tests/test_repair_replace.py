"""Repair's put of the indexed version replaces an unindexed orphan version (issue 17).

A ledger operation retried under one record id can leave a holder with a shard of the version
the index did not commit. Repair's rebuild (and a move's copy) is an exclusive ``PutShards``;
the holder must take the indexed shard in place of the orphan, atomically, while a put of a
version the index does not name is still refused. Real LevelDB, the real ShardService and
group committer; the index is this node's lookup (a dict here: record id -> content hash).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import plyvel
import trio

from node.config import NodeLimits
from node.errors import OperationFailed
from node.p2p.messages import Message, PutShards, PutShardsReply
from node.records import Shard, ShardMeta
from node.storage.group_commit import GroupCommitter
from node.storage.shard_service import ShardService
from node.storage.shard_store import CollectItem, ShardStore

OLD, INDEXED, OTHER = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def shard(rid: bytes, index: int, version: bytes, data: bytes = b"x" * 10) -> Shard:
    meta = ShardMeta(rid, version, index, 3, 5, 3 * len(data), "p1", b"\x22" * 32, 1)
    return Shard(meta, data)


def serve(service: ShardService, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.serve)
            await body()
            nursery.cancel_scope.cancel()

    trio.run(main)


def recounted(path: Path) -> tuple[int, int]:
    """The counts a store rebuilds from its shards when its stats key is gone."""
    db = plyvel.DB(str(path))
    db.delete(b"m:stats")
    db.close()
    store = ShardStore(path)
    try:
        return store.count(), store.shard_bytes
    finally:
        store.close()


def test_repair_put_of_the_indexed_version_replaces_the_orphan(tmp_path: Path) -> None:
    rid, neighbour = os.urandom(32), os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    service = ShardService(store, NodeLimits())
    index: dict[bytes, bytes] = {}
    service.committer.indexed_version = index.get
    replies: list[Message] = []

    async def put(*shards: Shard, expiries: tuple[int, ...] = ()) -> None:
        replies.append(
            await service.handle(PutShards(shards, exclusive=True, expiries=expiries), "peer")
        )

    async def body() -> None:
        # The losing attempt's shard 2 lands here first (with its pending marker), and an
        # unrelated record's shard that must not be touched.
        await put(shard(rid, 2, OLD, b"o" * 40), shard(neighbour, 0, OTHER), expiries=(500, 0))
        # The index commits the other attempt. Before it is applied here, repair's put is
        # refused (the node cannot tell the orphan from the indexed version yet).
        await put(shard(rid, 2, INDEXED))
        index[rid] = INDEXED
        await put(shard(rid, 2, INDEXED))  # repair's rebuild, as ShardRepairer sends it
        await put(shard(rid, 2, INDEXED))  # the same shard again: idempotent
        await put(shard(rid, 2, OTHER))  # a put of content the index does not name
        await put(shard(rid, 3, OLD))  # nor the orphan's, once it is gone

    serve(service, body)
    early, replaced, again, other, old_again = replies[1:]
    assert isinstance(early, PutShardsReply) and early.refused == (rid,)
    assert [m.content_hash for m in early.existing] == [OLD]
    assert replaced == PutShardsReply(1) and again == PutShardsReply(1)
    for refused in (other, old_again):
        assert isinstance(refused, PutShardsReply) and refused.refused == (rid,)
        assert [m.key for m in refused.existing] == [shard(rid, 2, INDEXED).meta.key]
    held, corrupt = store.get(rid)
    assert [(s.meta.content_hash, s.meta.index, s.data) for s in held] == [(INDEXED, 2, b"x" * 10)]
    assert corrupt == 0 and store.versions(rid) == [INDEXED]
    assert [s.meta.content_hash for s in store.get(neighbour)[0]] == [OTHER]
    counts = (store.count(), store.shard_bytes)
    assert counts[0] == 2
    # The marker stays; the orphan collector settles the record later with nothing to remove.
    assert store.pending(rid) == 500
    store.commit(store.prepare_collect([CollectItem(rid, 500, INDEXED)]))
    assert store.pending(rid) is None and store.get(rid)[0] == held
    counts = (store.count(), store.shard_bytes)
    store.close()
    assert recounted(tmp_path / "shards") == counts


def test_replacement_within_one_batch_and_every_orphan_version(tmp_path: Path) -> None:
    """Orphans on disk and earlier in the same batch all go; the counts stay exact."""
    rid = os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    store.write_batch([shard(rid, 0, OLD), shard(rid, 1, OLD, b"y" * 30)])
    prepared = store.prepare(
        [shard(rid, 4, OTHER), shard(rid, 1, OLD, b"z" * 7), shard(rid, 2, INDEXED)],
        [False, False, True],
        indexed_version={rid: INDEXED}.get,
    )
    assert prepared.refused == frozenset()
    store.commit(prepared)
    assert [(s.meta.content_hash, s.meta.index) for s in store.get(rid)[0]] == [(INDEXED, 2)]
    assert store.versions(rid) == [INDEXED]
    counts = (store.count(), store.shard_bytes)
    assert counts[0] == 1
    store.close()
    assert recounted(tmp_path / "shards") == counts


def test_an_unreadable_index_refuses_the_put_and_keeps_the_batch(tmp_path: Path) -> None:
    rid, fresh = os.urandom(32), os.urandom(32)
    store = ShardStore(tmp_path / "shards")
    committer = GroupCommitter(store, queue_shards_max=100, batch_shards_max=100)
    store.write_batch([shard(rid, 0, OLD)])

    def broken(_record_id: bytes) -> bytes | None:
        raise OperationFailed("raft read failed")

    committer.indexed_version = broken
    refused: list[frozenset[bytes]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.serve)
            refused.append(
                await committer.submit(
                    [shard(rid, 0, INDEXED), shard(fresh, 0, INDEXED)], exclusive=True
                )
            )
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert refused == [frozenset({rid})]
    assert [s.meta.content_hash for s in store.get(rid)[0]] == [OLD]
    assert [s.meta.content_hash for s in store.get(fresh)[0]] == [INDEXED]
    store.close()
