"""Opening a node's LevelDB databases (shards, hints, the Raft log) the one way.

Every database is created on first use, opened with ``paranoid_checks`` unless the caller says
otherwise, and a plyvel error becomes :class:`OperationFailed` naming the database. Size
options (write buffer, block cache, open tables) are the caller's.

``paranoid_checks`` makes compactions verify block checksums: the first compaction that reads a
damaged table stops every later write of the database with ``Corruption`` (a sticky background
error, met again after a restart); and replaying the write-ahead log at open fails on a record
that fails its CRC, where without it LevelDB drops the record silently. Each database decides,
with its reason where it opens:

* shards (``shard_store.py``): off. Every entry has its own checksum; a damaged shard is found
  when read, never served, and repaired from the others, and the node keeps taking writes.
* hints (``hints.py``): off, for the same reason; a damaged hint is dropped and counted.
* the Raft log and state (``node/replication/durable.py``): on. A WAL record dropped silently
  would be a vote or an entry forgotten, which no entry checksum can notice; a damaged Raft
  database ends the node with ``StorageDamaged`` and the rejoin runbook instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plyvel

from node.errors import OperationFailed

__all__ = ["open_leveldb"]


def open_leveldb(path: Path, what: str, **options: Any) -> plyvel.DB:
    """``options`` go to ``plyvel.DB``; ``paranoid_checks`` is True unless given."""
    path.mkdir(parents=True, exist_ok=True)
    options.setdefault("paranoid_checks", True)
    try:
        return plyvel.DB(str(path), create_if_missing=True, **options)
    except plyvel.Error as exc:
        raise OperationFailed(f"cannot open {what} database at {path}: {exc}") from exc
