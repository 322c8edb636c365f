"""The scrubber on a real shard store (real LevelDB files, the real group committer): bytes
flipped in a table file on disk are found, quarantined, counted, never served, and the shard
comes back when repair puts it again; a checksummed shard that is not the record's bytes is
caught by the cross-check; the cursor survives a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from unittest.mock import Mock

import msgpack
import plyvel
import pytest
import trio

from node.api.node_metrics import node_stat_families
from node.config import ScrubSettings
from node.errors import ConfigError, InvalidRequest
from node.merkle.leaf import LeafData
from node.metrics import Metrics
from node.records import Shard, ShardMeta
from node.repair_suspects import decode_suspects
from node.scrub import RecordView, Scrubber, ScrubStats
from node.storage.entry import decode_entry
from node.storage.group_commit import GroupCommitter
from node.storage.shard_store import PREFIX_QUARANTINE, QuarantineItem, ShardStore, shard_db_key

pytestmark = pytest.mark.timeout(60)
VERSION = b"\x11" * 32
SHARD_BYTES = 4000
RECORDS = 40


def shard(record_id: bytes, index: int, data: bytes) -> Shard:
    meta = ShardMeta(
        record_id=record_id,
        content_hash=VERSION,
        index=index,
        k=2,
        n=3,
        blob_bytes=len(data) * 2,
        partner_id="p1",
        body_fingerprint=b"\x22" * 32,
        created_at_ms=1,
    )
    return Shard(meta, data)


class Records:
    """The log's view of the records: each one indexed at VERSION, its leaf hashing shard 1
    as written (this store holds shard 1 of every record)."""

    def __init__(self, written: dict[bytes, bytes]) -> None:
        self.written = written

    def view(self) -> RecordView:
        return RecordView(indexed_version=self.indexed, leaf=self.leaf)

    def indexed(self, record_id: bytes) -> bytes | None:
        return VERSION if record_id in self.written else None

    def leaf(self, record_id: bytes) -> LeafData | None:
        data = self.written.get(record_id)
        if data is None:
            return None
        hashes = (b"\x00" * 32, hashlib.sha256(data).digest(), b"\x00" * 32)
        return LeafData(record_id, "p1", 1, VERSION, 2, 3, hashes, b"\x33" * 32)


def run_in_committer(store: ShardStore, work: str, *args: object, **kw: object) -> object:
    """Run one committer call on its own trio loop (the node runs it on the libp2p thread)."""
    committer = GroupCommitter(
        store, queue_shards_max=10_000, batch_shards_max=1024, quarantine_kept_max=2
    )
    result: list[object] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.serve)
            result.append(await getattr(committer, work)(*args, **kw))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0]


def scrubber(
    store: ShardStore, records: Records, reported: list[bytes] | None = None, **settings: object
) -> Scrubber:
    async def quarantine(items: Sequence[QuarantineItem]) -> int:
        taken = await asyncio.to_thread(run_in_committer, store, "quarantine", items)
        assert isinstance(taken, int)
        return taken

    async def report(record_ids: Sequence[bytes]) -> None:
        if reported is not None:
            reported.extend(record_ids)

    config = replace(ScrubSettings(), **settings)  # type: ignore[arg-type]
    return Scrubber(
        store=store,
        settings=config,
        records=records.view(),
        quarantine=quarantine,
        report=report,
    )


def fill(path: Path) -> dict[bytes, bytes]:
    """RECORDS shards (index 1) in a store at ``path``, flushed into a table file."""
    store = ShardStore(path)
    written = {os.urandom(32): os.urandom(SHARD_BYTES) for _ in range(RECORDS)}
    store.write_batch([shard(rid, 1, data) for rid, data in written.items()])
    store.close()
    db = plyvel.DB(str(path))
    db.compact_range()  # out of the write-ahead log, into .ldb tables
    db.close()
    return written


def flip_in_table_file(path: Path, needle: bytes) -> None:
    """Flip one byte of ``needle`` where it lies in the database's table files on disk."""
    for table in sorted(path.glob("*.ldb")):
        raw = bytearray(table.read_bytes())
        at = raw.find(needle)
        if at >= 0:
            raw[at + len(needle) // 2] ^= 0x01
            table.write_bytes(bytes(raw))
            return
    raise AssertionError("the bytes are not in any table file")


async def scrub_pass(scrub: Scrubber) -> int:
    """Pages until a pass ends (unpaced); returns the shards quarantined."""
    passes, quarantined = scrub.stats.passes, 0
    while scrub.stats.passes == passes:
        quarantined += await scrub.page_once()
    return quarantined


async def test_a_byte_flipped_on_disk_is_quarantined_counted_and_repaired_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shards"
    written = fill(path)
    victim = sorted(written)[7]
    flip_in_table_file(path, written[victim][1000:1064])
    store = ShardStore(path)
    try:
        records = Records(written)
        # Before the scrub, a read already refuses the entry (checksum): corrupt, not served.
        assert store.get(victim) == ([], 1)
        reported: list[bytes] = []
        scrub = scrubber(store, records, reported, page_shards_max=16)
        assert await scrub_pass(scrub) == 1
        assert reported == [victim]  # to the leader's repairer, ahead of its walk
        stats = scrub.stats
        assert stats.shards_checked == RECORDS and stats.passes == 1
        assert stats.corrupt == {"checksum": 1, "shard_hash": 0} and stats.quarantined == 1
        # Quarantined: out of the shard key space, the counts exact, the bytes kept aside.
        assert store.get(victim) == ([], 0) and store.metas(victim) == []
        assert store.versions(victim) == [] and store.count() == RECORDS - 1
        key = shard_db_key(shard(victim, 1, b"").meta.key)
        kept = store._db.get(PREFIX_QUARANTINE + key)
        assert kept is not None
        assert msgpack.unpackb(decode_entry(PREFIX_QUARANTINE + key, kept))["why"] == "checksum"
        # Repair puts the shard back (an exclusive put, as the repairer sends it).
        repaired = shard(victim, 1, written[victim])
        assert run_in_committer(store, "submit", [repaired], exclusive=True) == frozenset()
        assert store.get(victim) == ([repaired], 0) and store.count() == RECORDS
        # The next pass finds nothing new; every other shard was served intact throughout.
        assert await scrub_pass(scrub) == 0
        assert reported == [victim]
        assert scrub.stats.corrupt["checksum"] == 1 and scrub.stats.shards_checked == 2 * RECORDS
        for rid, data in written.items():
            assert [s.data for s in store.get(rid)[0]] == [data]
    finally:
        store.close()


async def test_a_checksummed_shard_that_is_not_the_records_bytes_fails_the_cross_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shards"
    written = fill(path)
    store = ShardStore(path)
    try:
        wrong = sorted(written)[3]
        store.write_batch([shard(wrong, 1, os.urandom(SHARD_BYTES))])  # a valid entry, wrong bytes
        unindexed = os.urandom(32)  # a shard of a record the log does not know: not comparable
        store.write_batch([shard(unindexed, 1, b"x" * 100)])
        # Enough credit to cross-check every shard of the page.
        scrub = scrubber(store, Records(written), cross_check_records_per_s_max=1e6)
        assert await scrub_pass(scrub) == 1
        assert scrub.stats.corrupt == {"checksum": 0, "shard_hash": 1}
        assert scrub.stats.cross_checked == RECORDS + 1 and scrub.stats.cross_not_comparable == 1
        assert store.get(wrong) == ([], 0) and len(store.get(unindexed)[0]) == 1
    finally:
        store.close()


async def test_a_shard_rebuilt_after_it_was_judged_is_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "shards"
    written = fill(path)
    store = ShardStore(path)
    try:
        rid = sorted(written)[0]
        seen = store._db.get(shard_db_key(shard(rid, 1, b"").meta.key))
        assert seen is not None
        item = QuarantineItem(shard(rid, 1, b"").meta.key, seen[:-1] + b"\x00", "checksum")
        assert run_in_committer(store, "quarantine", [item]) == 0  # the value is not the one seen
        assert len(store.get(rid)[0]) == 1 and store.quarantined == 0
        # Past quarantine_kept_max (2 here) bad shards still go; their bytes are not kept.
        items = [
            QuarantineItem(
                shard(r, 1, b"").meta.key,
                store._db.get(shard_db_key(shard(r, 1, b"").meta.key)),  # type: ignore[arg-type]
                "checksum",
            )
            for r in sorted(written)[:3]
        ]
        assert run_in_committer(store, "quarantine", items) == 3
        assert store.quarantined == 2 and store.count() == RECORDS - 3
    finally:
        store.close()
    reopened = ShardStore(path)
    assert reopened.quarantined == 2 and reopened.count() == RECORDS - 3
    reopened.close()


async def test_a_restarted_node_resumes_its_pass_at_the_saved_cursor(tmp_path: Path) -> None:
    path = tmp_path / "shards"
    written = fill(path)
    store = ShardStore(path)
    scrub = scrubber(store, Records(written), page_shards_max=10)
    await scrub.page_once()
    await scrub.page_once()
    cursor = store.scrub_cursor()
    assert cursor == shard_db_key(shard(sorted(written)[19], 1, b"").meta.key)
    store.close()
    store = ShardStore(path)
    try:
        resumed = scrubber(store, Records(written), page_shards_max=10)
        assert resumed.stats.resumed_at_cursor
        await scrub_pass(resumed)  # the rest of the pass: 20 shards, not 40
        assert resumed.stats.last_pass_shards_checked == RECORDS - 20
        assert store.scrub_cursor() == b""  # the next pass starts from the first shard
    finally:
        store.close()


def test_scrub_pages_are_bounded_by_shards_and_bytes_and_in_key_order(tmp_path: Path) -> None:
    path = tmp_path / "shards"
    written = fill(path)
    store = ShardStore(path)
    try:
        order = [shard_db_key(shard(r, 1, b"").meta.key) for r in sorted(written)]
        page, done = store.scrub_page(b"", 8, 10**9)
        assert [e.db_key for e in page] == order[:8] and not done
        page, done = store.scrub_page(order[7], 100, 3 * SHARD_BYTES)  # ~2 shards of bytes
        assert [e.db_key for e in page] == order[8:10] and not done
        page, done = store.scrub_page(order[9], 100, 1)  # always at least one shard
        assert [e.db_key for e in page] == order[10:11]
        page, done = store.scrub_page(order[30], 100, 10**9)
        assert [e.db_key for e in page] == order[31:] and done
        assert all(e.shard is not None for e in page)
    finally:
        store.close()


def test_a_suspect_report_carries_record_ids_only() -> None:
    rid = os.urandom(32)
    assert decode_suspects({"rids": [rid]}, 10) == [rid]
    for body in ({}, {"rids": []}, {"rids": [rid] * 11}, {"rids": [b"short"]}, {"rids": ["x"]}, []):
        with pytest.raises(InvalidRequest):
            decode_suspects(body, 10)


def test_scrub_counts_are_exposed_as_prometheus_families() -> None:
    stats = ScrubStats(passes=2, shards_checked=90, quarantined=1, last_pass_s=4.5)
    stats.corrupt["checksum"] = 1
    state = Mock(scrub_stats=lambda: dataclasses.asdict(stats))  # only scrub_* are read
    metrics = Metrics("baas_node")
    families = node_stat_families(state)  # type: ignore[arg-type]
    metrics.add_stats([f for f in families if f.name.startswith("scrub_")])
    text = metrics.exposition().decode()
    assert "baas_node_scrub_shards_checked_total 90.0" in text
    assert 'baas_node_scrub_corrupt_total{reason="checksum"} 1.0' in text
    assert 'baas_node_scrub_corrupt_total{reason="shard_hash"} 0.0' in text
    assert "baas_node_scrub_quarantined_total 1.0" in text
    assert "baas_node_scrub_passes_total 2.0" in text
    assert "baas_node_scrub_pass_seconds 4.5" in text
    assert "baas_node_scrub_last_pass_finished_ms 0.0" in text


def test_scrub_settings_are_validated() -> None:
    ScrubSettings().validate()
    for bad in ({"shards_per_s_max": 0.0}, {"page_shards_max": 1.5}, {"bytes_per_s_max": -1.0}):
        with pytest.raises(ConfigError):
            replace(ScrubSettings(), **bad).validate()  # type: ignore[arg-type]
