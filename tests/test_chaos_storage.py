"""What ``baas-chaos`` found in the shard store: one flipped byte in a LevelDB table file made the
node refuse every later shard write (seed 1, the corrupt fault on node-4).

LevelDB opened with ``paranoid_checks`` verifies block checksums during compaction; the first
compaction that reads the damaged table records a background error, and from then on every
write answers ``Corruption: block checksum mismatch`` -- after a restart too, since the same
compaction runs again. The node stayed a member but stored nothing: repair could not put a
shard back on it and every write missed one holder. The shard store's entries carry their own
checksum (node/storage/entry.py): a damaged shard is found at read, never served, and goes to
repair; so the shard database is opened without paranoid checks and keeps taking writes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from test_scrub import flip_in_table_file
from test_shard_store import _shard

from node.storage.shard_store import ShardStore
from tools.chaos_faults import corrupt_one_shard

SHARDS = 400
SHARD_BYTES = 512


def test_a_flipped_byte_in_a_table_file_does_not_stop_shard_writes(tmp_path: Path) -> None:
    path = tmp_path / "shards"
    store = ShardStore(path, write_buffer_bytes_max=64 * 1024)
    victim = os.urandom(32)
    victim_data = os.urandom(SHARD_BYTES)
    store.write_batch([_shard(os.urandom(32), 0, os.urandom(SHARD_BYTES)) for _ in range(SHARDS)])
    store.write_batch([_shard(victim, 0, victim_data)])
    store._db.compact_range()  # every shard into table files, where disks rot
    store.close()
    flip_in_table_file(path, victim_data[-32:])

    store = ShardStore(path, write_buffer_bytes_max=64 * 1024)
    # Shards whose keys interleave with the damaged table's: merging them reads its blocks.
    for _ in range(4):
        store.write_batch(
            [_shard(os.urandom(32), 0, os.urandom(SHARD_BYTES)) for _ in range(SHARDS)]
        )
    store._db.compact_range()
    store.write_batch([_shard(os.urandom(32), 0, os.urandom(SHARD_BYTES))])  # still taken

    shards, corrupt = store.get(victim)
    assert shards == [] and corrupt == 1  # found, never served
    assert store.count() == 5 * SHARDS + 2
    store.close()


def test_the_corrupt_fault_lands_on_shards_whose_bytes_compress(tmp_path: Path) -> None:
    # A CI run's corrupt fault found the chosen shard's last bytes in no table file: small
    # shards ending in the erasure code's zero padding compress to back-references. The fault
    # flips a byte of the entry's stored checksum instead, which is stored as it is.
    path = tmp_path / "shards"
    store = ShardStore(path, write_buffer_bytes_max=64 * 1024)
    padded = [_shard(os.urandom(32), 2, os.urandom(40) + bytes(40)) for _ in range(SHARDS)]
    store.write_batch(padded)
    store.close()
    victims: set[bytes] = set()
    for seed in range(3):
        record_id = bytes.fromhex(corrupt_one_shard(path, random.Random(seed)))
        victims.add(record_id)
        store = ShardStore(path, write_buffer_bytes_max=64 * 1024)
        shards, corrupt = store.get(record_id)
        assert shards == [] and corrupt == 1  # the flipped entry fails its check
        intact = [store.get(s.meta.record_id) for s in padded if s.meta.record_id not in victims]
        assert [len(found) for found, _ in intact] == [1] * (SHARDS - len(victims))
        store.close()
