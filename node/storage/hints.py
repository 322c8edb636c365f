"""Hinted handoff: shards that could not reach their node yet, kept by the writing node.

When a write is acknowledged at ``write_quorum`` but some placement nodes were down or slow,
the coordinator keeps the missing shards here (in their own LevelDB database) and replays them
when the node answers again. The store is bounded by ``hints_max``; past it, new hints are
refused (counted) and the shard waits for repair instead of growing memory or disk without end.

Damage: a hint is a copy of a shard whose write already reached its quorum, and each entry
carries its own checksum (the shard store's format), so a damaged hint is lost, not served: it
is dropped when met, counted (``corrupt``), and repair rebuilds the shard on its node. The
database opens without LevelDB's ``paranoid_checks``, like the shard store: with them one
flipped byte in a table stopped every later hint write and delete of the node at the first
compaction that read it (``tests/test_raft_damage.py`` has both). A LevelDB error is an
:class:`OperationFailed`: the coordinator logs it and the shards wait for repair.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import plyvel

from node.errors import CorruptEntry, OperationFailed, Overloaded, UnsupportedFormat
from node.records import Shard
from node.storage.leveldb import open_leveldb
from node.storage.shard_store import decode_shard_value, encode_shard_value, shard_db_key

__all__ = ["HintStore"]

PREFIX_HINT = b"h"
PREFIX_HINT_END = b"i"


def _peer_prefix(peer_id: str) -> bytes:
    raw = peer_id.encode()
    return PREFIX_HINT + len(raw).to_bytes(1, "big") + raw


class HintStore:
    def __init__(self, path: Path, *, hints_max: int) -> None:
        # No paranoid checks: see the module docstring (entries checksummed, a hint expendable).
        self._db = open_leveldb(path, "hint", paranoid_checks=False)
        self._hints_max = hints_max
        with _mapped("count"):
            keys = self._db.iterator(prefix=PREFIX_HINT, include_value=False)
            self._count = sum(1 for _ in keys)
        self.refused = 0
        self.corrupt = 0  # hints dropped because their entry failed its checksum

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    @property
    def count(self) -> int:
        return self._count

    def add(self, peer_id: str, shards: Sequence[Shard]) -> None:
        if self._count + len(shards) > self._hints_max:
            self.refused += len(shards)
            raise Overloaded("hint store is full; the shards wait for repair")
        prefix = _peer_prefix(peer_id)
        with _mapped("write"), self._db.write_batch(sync=True) as batch:
            for shard in shards:
                inner = shard_db_key(shard.meta.key)
                batch.put(prefix + inner, encode_shard_value(inner, shard))
        self._count += len(shards)

    def peers(self) -> list[str]:
        """Peers that have hints waiting, in sorted order."""
        found: list[str] = []
        seek = PREFIX_HINT
        while True:
            # plyvel refuses start= together with prefix=, so bound the range by hand
            with _mapped("read"):
                it = self._db.iterator(start=seek, stop=PREFIX_HINT_END, include_value=False)
                key = next(it, None)
                it.close()
            if key is None:
                return found
            size = key[1]
            peer = key[2 : 2 + size].decode()
            found.append(peer)
            seek = _peer_prefix(peer) + b"\xff" * 80  # past every key of that peer

    def pending(self, peer_id: str, limit: int) -> list[Shard]:
        prefix = _peer_prefix(peer_id)
        shards: list[Shard] = []
        damaged: list[bytes] = []
        with _mapped("read"):
            for key, value in self._db.iterator(prefix=prefix):
                inner = key[len(prefix) :]
                try:
                    shards.append(decode_shard_value(inner, value))
                except (CorruptEntry, UnsupportedFormat):
                    damaged.append(key)
                if len(shards) >= limit:
                    break
        if damaged:  # a corrupt hint is useless; repair rebuilds the shard on its node
            with _mapped("write"), self._db.write_batch() as batch:
                for key in damaged:
                    batch.delete(key)
            self._count -= len(damaged)
            self.corrupt += len(damaged)
        return shards

    def remove(self, peer_id: str, shards: Sequence[Shard]) -> None:
        prefix = _peer_prefix(peer_id)
        with _mapped("write"), self._db.write_batch(sync=True) as batch:
            for shard in shards:
                batch.delete(prefix + shard_db_key(shard.meta.key))
        self._count -= len(shards)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """A LevelDB error becomes an OperationFailed: the caller logs it, repair covers the rest."""
    try:
        yield
    except plyvel.Error as exc:
        raise OperationFailed(f"hint {what} failed: {exc}", code="hints_unavailable") from exc
