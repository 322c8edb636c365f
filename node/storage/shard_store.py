"""The shard database of a node: LevelDB (plyvel), one database used only for shards.

Keys are ``b"s" || record id || content hash || shard index``, so every shard of a record is
one prefix scan away and the shards of a retried write (another content hash) never mix with
the first attempt's. Values use the checksummed entry format of :mod:`node.storage.entry`;
a corrupt entry is counted and never served. Writes go through :meth:`ShardStore.write_batch`,
one LevelDB ``WriteBatch`` fsynced once (group commit, see :mod:`node.storage.group_commit`).

The number of shards and their stored bytes are kept under one stats key (``b"m:stats"``)
written in the same batch as the shards they count, so they are exact after a crash and cost
no scan (a database from before the stats key is counted once when opened).

The consensus log and the state machines get their own databases later, in their own dirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgpack
import plyvel

from node.errors import CorruptEntry, OperationFailed, UnsupportedFormat
from node.records import Shard, ShardKey, ShardMeta
from node.storage.entry import decode_entry, encode_entry

__all__ = ["ShardStore"]

PREFIX_SHARD = b"s"
STATS_KEY = b"m:stats"


def shard_db_key(key: ShardKey) -> bytes:
    return PREFIX_SHARD + key.record_id + key.content_hash + bytes((key.index,))


def encode_shard_value(db_key: bytes, shard: Shard) -> bytes:
    payload: bytes = msgpack.packb(shard.to_wire(), use_bin_type=True)
    return encode_entry(db_key, payload)


def decode_shard_value(db_key: bytes, value: bytes) -> Shard:
    payload = decode_entry(db_key, value)
    try:
        shard = Shard.from_wire(msgpack.unpackb(payload, raw=False))
    except (msgpack.UnpackException, ValueError, UnsupportedFormat) as exc:
        raise CorruptEntry("shard entry payload is malformed") from exc
    if shard_db_key(shard.meta.key) != db_key:
        raise CorruptEntry("shard entry stored under the wrong key")
    return shard


class ShardStore:
    """A node's shard database. Thread-safe for reads; writes come from one committer."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = plyvel.DB(
                str(path),
                create_if_missing=True,
                paranoid_checks=True,
                write_buffer_size=16 * 1024 * 1024,
                lru_cache_size=32 * 1024 * 1024,
                bloom_filter_bits=10,
            )
        except plyvel.Error as exc:
            raise OperationFailed(f"cannot open shard database at {path}: {exc}") from exc
        self.path = path
        self.corrupt_entries_seen = 0
        self.shard_count, self.shard_bytes = self._load_stats()

    def _load_stats(self) -> tuple[int, int]:
        raw = self._db.get(STATS_KEY)
        if raw is not None:
            try:
                count, size = msgpack.unpackb(decode_entry(STATS_KEY, raw))
                return int(count), int(size)
            except (
                CorruptEntry,
                UnsupportedFormat,
                ValueError,
                TypeError,
                msgpack.UnpackException,
            ):
                pass  # recount below
        count = size = 0
        for _, value in self._db.iterator(prefix=PREFIX_SHARD):
            count += 1
            size += len(value)
        return count, size

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def write_batch(self, shards: Sequence[Shard]) -> None:
        """Store shards durably: one batch, one fsync."""
        count, size = self.shard_count, self.shard_bytes
        try:
            with self._db.write_batch(sync=True) as batch:
                written: dict[bytes, int] = {}
                for shard in shards:
                    db_key = shard_db_key(shard.meta.key)
                    value = encode_shard_value(db_key, shard)
                    batch.put(db_key, value)
                    if db_key in written:
                        size -= written[db_key]
                    else:
                        old = self._db.get(db_key)
                        if old is None:
                            count += 1
                        else:
                            size -= len(old)
                    written[db_key] = len(value)
                    size += len(value)
                stats = msgpack.packb([count, size])
                batch.put(STATS_KEY, encode_entry(STATS_KEY, stats))
        except plyvel.Error as exc:
            raise OperationFailed(f"shard write failed: {exc}") from exc
        self.shard_count, self.shard_bytes = count, size

    def _scan(self, record_id: bytes) -> tuple[list[Shard], int]:
        shards: list[Shard] = []
        corrupt = 0
        for db_key, value in self._db.iterator(prefix=PREFIX_SHARD + record_id):
            try:
                shards.append(decode_shard_value(db_key, value))
            except (CorruptEntry, UnsupportedFormat):
                corrupt += 1
        self.corrupt_entries_seen += corrupt
        return shards, corrupt

    def get(self, record_id: bytes, indexes: Sequence[int] = ()) -> tuple[list[Shard], int]:
        """Intact shards held for a record (optionally only some indexes), and a corrupt count."""
        shards, corrupt = self._scan(record_id)
        if indexes:
            wanted = set(indexes)
            shards = [s for s in shards if s.meta.index in wanted]
        return shards, corrupt

    def metas(self, record_id: bytes) -> list[ShardMeta]:
        shards, _ = self._scan(record_id)
        return [s.meta for s in shards]

    def count(self) -> int:
        return self.shard_count
