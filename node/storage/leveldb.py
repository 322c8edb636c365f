"""Opening a node's LevelDB databases (shards, hints, the Raft log) the one way.

Every database is created on first use, opened with ``paranoid_checks`` (a damaged table is
refused at open instead of read), and a plyvel error becomes :class:`OperationFailed` naming
the database. Size options (write buffer, block cache, open tables) are the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plyvel

from node.errors import OperationFailed

__all__ = ["open_leveldb"]


def open_leveldb(path: Path, what: str, **options: Any) -> plyvel.DB:
    path.mkdir(parents=True, exist_ok=True)
    try:
        return plyvel.DB(str(path), create_if_missing=True, paranoid_checks=True, **options)
    except plyvel.Error as exc:
        raise OperationFailed(f"cannot open {what} database at {path}: {exc}") from exc
