"""A node's simulated shard store: checksummed shards, group-committed, lost unless flushed.

Puts and deletes apply to what the node reads at once but become durable only at ``flush()``
(the holder's group commit, once per tick); a holder answers a put only after that flush, so a
crash (``crash(keep)``: a prefix of the unflushed writes survives) loses only unanswered puts.
Each shard is stored with a CRC-32 over its key and bytes; ``corrupt()`` flips a byte and keeps
the old checksum, and ``get()`` never returns a shard whose checksum fails.

``placed_at`` is the log position the writer had applied when it put the shard (0 for a record
write); a delete removes a shard only if it was placed before the move that vacated it, so a
late delete can never remove a newer copy that a later move put on the same node.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

__all__ = ["ShardKey", "SimShardStore", "StoredShard"]

ShardKey = tuple[bytes, int]  # (record id, shard index)


def _checksum(key: ShardKey, content_hash: bytes, blob_bytes: int, data: bytes) -> int:
    head = key[0] + content_hash + key[1].to_bytes(2, "big") + blob_bytes.to_bytes(4, "big")
    return zlib.crc32(data, zlib.crc32(head))


@dataclass(frozen=True, slots=True)
class StoredShard:
    content_hash: bytes
    blob_bytes: int  # the record's size, needed to strip the padding at decode (as in the meta)
    data: bytes
    placed_at: int
    checksum: int

    def intact(self, key: ShardKey) -> bool:
        return _checksum(key, self.content_hash, self.blob_bytes, self.data) == self.checksum


_Write = tuple[ShardKey, StoredShard | None, int]  # key, shard (None: delete), delete bound


class SimShardStore:
    def __init__(self) -> None:
        self.durable: dict[ShardKey, StoredShard] = {}
        self.live: dict[ShardKey, StoredShard] = {}  # durable + unflushed, what reads see
        self._buffer: list[_Write] = []
        self.corrupted = False
        self.corrupt_reads = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def put(
        self, key: ShardKey, content_hash: bytes, blob_bytes: int, data: bytes, placed_at: int
    ) -> None:
        checksum = _checksum(key, content_hash, blob_bytes, data)
        shard = StoredShard(content_hash, blob_bytes, data, placed_at, checksum)
        self._buffer.append((key, shard, 0))
        _write(self.live, (key, shard, 0))

    def delete(self, key: ShardKey, before: int) -> bool:
        """Delete the shard if it was placed before log position ``before``; whether it was."""
        held = self.live.get(key)
        if held is None or held.placed_at >= before:
            return False
        self._buffer.append((key, None, before))
        _write(self.live, (key, None, before))
        return True

    def get(self, key: ShardKey) -> StoredShard | None:
        held = self.live.get(key)
        if held is not None and not held.intact(key):
            self.corrupt_reads += 1  # detected, never served
            return None
        return held

    def flush(self) -> list[ShardKey]:
        """Make every buffered write durable; the keys it stored."""
        stored = [key for key, shard, _ in self._buffer if shard is not None]
        for write in self._buffer:
            _write(self.durable, write)
        self._buffer.clear()
        return stored

    def crash(self, keep: int) -> None:
        for write in self._buffer[:keep]:
            _write(self.durable, write)
        self._buffer.clear()
        self.live = dict(self.durable)

    def corrupt(self, position: int) -> ShardKey | None:
        """Flip a byte of one durable shard (``position`` modulo the sorted keys)."""
        if not self.durable:
            return None
        key = sorted(self.durable)[position % len(self.durable)]
        held = self.durable[key]
        bad = replace(held, data=bytes([held.data[0] ^ 0x01]) + held.data[1:])
        self.durable[key] = bad
        if key in self.live and self.live[key] == held:
            self.live[key] = bad
        self.corrupted = True
        return key


def _write(table: dict[ShardKey, StoredShard], write: _Write) -> None:
    key, shard, before = write
    if shard is not None:
        table[key] = shard
        return
    held = table.get(key)
    if held is not None and held.placed_at < before:
        del table[key]
