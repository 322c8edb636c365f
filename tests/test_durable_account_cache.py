"""The ledger account cache of the node's Raft storage: it never serves a value the state does
not hold (node/replication/durable.py, ``[raft] ledger_account_cache_max``), over a real LevelDB.

It is filled by reads and by committed write batches only, and dropped whenever the state is
replaced (a snapshot installed from the leader) or the process restarts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from business.ledger.model import account_key
from node.consensus.types import HardState, Snapshot, SnapshotMeta
from node.errors import ConfigError
from node.replication.durable import DurableRaftStorage
from tests.test_raft_durable import ABC, make_ready

A1, A2, A3 = account_key(1), account_key(2), account_key(3)


def storage(path: Path, cache: int = 100, bloom: int = 10) -> DurableRaftStorage:
    durable = DurableRaftStorage(path, bloom_bits_per_key=bloom, ledger_account_cache_max=cache)
    durable.persist(make_ready(hard_state=HardState(1, None, 50)))
    return durable


def test_committed_batches_and_reads_fill_it_and_it_follows_every_write(tmp_path: Path) -> None:
    with storage(tmp_path / "raft") as durable:
        durable.commit_applied([(A1, b"one"), (A2, b"two"), (b"ri/x", b"not an account")], 1)
        assert durable.cached_accounts == 2  # accounts only
        durable.commit_applied([(A1, b"one'"), (A2, None)], 2)
        assert durable.cached_accounts == 1
        assert (durable.state_get(A1), durable.state_get(A2)) == (b"one'", None)
        assert durable.state_get(b"ri/x") == b"not an account"
    with storage(tmp_path / "raft") as durable:  # a restart starts empty, reads fill it
        assert durable.cached_accounts == 0
        assert durable.state_get(A1) == b"one'"
        assert durable.state_get(A2) is None  # an absent account is not cached
        assert durable.cached_accounts == 1


def test_it_is_bounded_and_serves_only_what_the_database_holds(tmp_path: Path) -> None:
    with storage(tmp_path / "raft", cache=3) as durable:
        for index in range(1, 21):
            durable.commit_applied([(account_key(i), b"v%d" % index) for i in range(1, 6)], index)
        assert durable.cached_accounts == 3
        for i in range(1, 6):
            assert durable.state_get(account_key(i)) == b"v20"


def test_a_snapshot_install_replaces_what_it_serves(tmp_path: Path) -> None:
    with storage(tmp_path / "raft") as durable:
        durable.commit_applied([(A1, b"old-1"), (A2, b"old-2")], 3)
        assert durable.state_get(A1) == b"old-1"  # cached (written and read)
        assert durable.cached_accounts == 2
        # The leader's snapshot at 9 holds other values, and no account 2 at all.
        durable.persist(
            make_ready(
                hard_state=HardState(2, None, 9), snapshot=Snapshot(SnapshotMeta(9, 2, ABC), b"")
            )
        )
        durable.restore_applied([(A1, b"new-1"), (A3, b"new-3")], 9)
        assert durable.cached_accounts == 0
        assert durable.state_get(A1) == b"new-1"
        assert durable.state_get(A2) is None
        assert durable.state_get(A3) == b"new-3"
        durable.persist(make_ready(hard_state=HardState(2, None, 12)))
        durable.commit_applied([(A1, b"after")], 10)
        assert durable.state_get(A1) == b"after"


def test_a_cache_of_zero_is_none_and_bloom_settings_may_change_across_restarts(
    tmp_path: Path,
) -> None:
    with storage(tmp_path / "raft", cache=0, bloom=0) as durable:
        durable.commit_applied([(A1, b"one")], 1)
        assert durable.state_get(A1) == b"one"
        assert durable.cached_accounts == 0
    with storage(tmp_path / "raft", cache=0, bloom=10) as durable:
        durable._db.compact_range()  # rewrite the tables with filters
        assert durable.state_get(A1) == b"one"
        assert durable.state_get(A2) is None
    with pytest.raises(ConfigError, match=">= 0"):
        DurableRaftStorage(tmp_path / "bad", ledger_account_cache_max=-1)


class _RacedRead:
    """The database, but the state changes while a read (on another thread) is in flight:
    a snapshot restore drops the cache, or a batch commits a newer value."""

    def __init__(self, db: Any, durable: DurableRaftStorage, meanwhile: str) -> None:
        self._db, self._durable, self._meanwhile = db, durable, meanwhile

    def get(self, key: bytes) -> Any:
        value = self._db.get(key)
        if self._meanwhile == "restore":
            self._durable._drop_cached_accounts()  # what restore_applied does
        else:
            self._durable._db = self._db  # the commit itself goes to the real database
            self._durable.commit_applied([(A1, b"newer")], self._durable.applied_index + 1)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.mark.parametrize(("meanwhile", "then"), [("restore", b"old-1"), ("commit", b"newer")])
def test_a_read_that_raced_a_change_does_not_cache_the_older_value(
    tmp_path: Path, meanwhile: str, then: bytes
) -> None:
    with storage(tmp_path / "raft") as durable:
        durable.commit_applied([(A1, b"old-1")], 3)
        durable._drop_cached_accounts()
        real = durable._db
        durable._db = _RacedRead(real, durable, meanwhile)
        try:
            assert durable.state_get(A1) == b"old-1"  # what the database held when read
        finally:
            durable._db = real
        assert durable.cached_accounts == (meanwhile == "commit")  # only the commit's value
        assert durable.state_get(A1) == then
