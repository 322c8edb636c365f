"""The shard database of a node: LevelDB (plyvel), one database used only for shards.

Keys are ``b"s" || record id || content hash || shard index``, so every shard of a record is
one prefix scan away and the shards of a retried write (another content hash) never mix with
the first attempt's. Values use the checksummed entry format of :mod:`node.storage.entry`;
a corrupt entry is counted and never served. Writes go through :meth:`ShardStore.write_batch`,
one LevelDB ``WriteBatch`` fsynced once (group commit, see :mod:`node.storage.group_commit`).

The number of shards and their stored bytes are kept under one stats key (``b"m:stats"``)
written in the same batch as the shards they count, so they are exact after a crash and cost
no scan. Per record, ``b"v" || record id`` lists the content hashes of the versions held, so
"does this node hold another version of this record?" is one point lookup (a bloom-filtered
miss for a new record) instead of a prefix scan. A database from before these keys existed is
counted and indexed once when opened.

A put may be *exclusive* (``if_absent``): its shard is refused when the node already holds a
different version of the record. The check runs in the single committer, so two racing writes
of different versions never both land on one node (see :mod:`node.coordinator` for why this
replaces a separate probe round trip). The committed index is the authority, though: when the
node's own index (``indexed_version``, read only on such a conflict) names the put's version,
the versions held are unindexed orphans (a retry's leftovers under the same record id), and
the put *replaces* them in the same batch instead of being refused. Otherwise repair and moves,
which put the indexed version, would be refused until the orphan collector settled the record
(``proposal_expiry_entries`` later; baas-chaos found it, issue 17). A put of a version the
index does not name is refused as before, so an indexed shard is never replaced.

A put may carry, per record, the log index after which its index proposal has expired (the
coordinator's stamp): ``b"p" || record id`` then holds the highest such index (a *pending
marker*). Once the node has applied the log past it, the record is either indexed (leftover
versions go, the marker goes) or never will be (its shards are orphans and go): see
:mod:`node.storage.orphans`. Deletes remove exactly the named shards and keep the counts and
version lists exact.

The scrubber (:mod:`node.scrub`) reads every shard entry back in key order
(:meth:`ShardStore.scrub_page`; its cursor under ``b"m:scrub"``) and *quarantines* a bad one
through the committer: the entry leaves ``b"s"`` like a delete (counts and version lists
exact), so no read and no repair inventory sees it again, and its bytes are kept under
``b"q" || shard key`` (at most ``scrub_quarantine_kept_max`` of them) for an operator to look at.
Repair then finds the shard missing and puts it back under its old key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
import plyvel

from node.errors import CorruptEntry, OperationFailed, UnsupportedFormat
from node.records import HASH_BYTES, Shard, ShardKey, ShardMeta
from node.storage.entry import decode_entry, encode_entry
from node.storage.leveldb import open_leveldb

__all__ = ["ShardStore"]

PREFIX_SHARD = b"s"
PREFIX_VERSIONS = b"v"
PREFIX_PENDING = b"p"
PREFIX_QUARANTINE = b"q"
STATS_KEY = b"m:stats"
SCRUB_CURSOR_KEY = b"m:scrub"


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


def versions_db_key(record_id: bytes) -> bytes:
    return PREFIX_VERSIONS + record_id


def pending_db_key(record_id: bytes) -> bytes:
    return PREFIX_PENDING + record_id


@dataclass(frozen=True, slots=True)
class CollectItem:
    """Settle one record whose proposal expired at log index ``expiry`` (as seen)."""

    record_id: bytes
    expiry: int
    keep: bytes | None  # the indexed version; None: never indexed, every shard goes


@dataclass(frozen=True, slots=True)
class ScrubbedEntry:
    """One shard entry as the scrubber read it: decoded when it passed its checksum."""

    db_key: bytes
    key: ShardKey
    raw: bytes  # the stored value, as read (a quarantine removes it only if still this)
    shard: Shard | None  # None: corrupt (checksum, format or key mismatch)


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """Take a shard out of service: ``reason`` is ``checksum`` or ``shard_hash``."""

    key: ShardKey
    seen: bytes  # the value judged bad; a value written since (a repair) is left alone
    reason: str


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    entries: list[tuple[bytes, bytes]]
    shard_count: int  # the counts once this batch is committed
    shard_bytes: int
    refused: frozenset[bytes]  # record ids whose exclusive shards were not taken
    deletes: tuple[bytes, ...] = ()  # keys removed by the same batch


class ShardStore:
    """A node's shard database. Thread-safe for reads; writes come from one committer."""

    def __init__(
        self,
        path: Path,
        *,
        open_files_max: int = 64,
        write_buffer_bytes_max: int = 16 * 1024 * 1024,
        block_cache_bytes_max: int = 32 * 1024 * 1024,
    ) -> None:
        # Memory is bounded by these three: two write buffers, the block cache, and the open
        # tables (LevelDB keeps each open table's index and filter in memory: with its default
        # of 1,000 open files a node's RSS grew ~25 MB per 10^5 shards without levelling off;
        # with 64 it stays flat).
        # No paranoid checks: every entry is checksummed (node/storage/entry.py), and with them
        # one flipped byte in a table file stopped every later shard write (baas-chaos found it;
        # tests/test_chaos_storage.py).
        self._db = open_leveldb(
            path,
            "shard",
            paranoid_checks=False,
            write_buffer_size=write_buffer_bytes_max,
            lru_cache_size=block_cache_bytes_max,
            bloom_filter_bits=10,
            max_open_files=open_files_max,
        )
        self.path = path
        self.corrupt_entries_seen = 0
        self.shard_count, self.shard_bytes = self._load_stats()
        self.quarantined = sum(
            1 for _ in self._db.iterator(prefix=PREFIX_QUARANTINE, include_value=False)
        )

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
        return self._reindex()

    def _reindex(self) -> tuple[int, int]:
        """Count shards and rebuild the per-record version lists (an older or damaged DB)."""
        count = size = 0
        versions: dict[bytes, list[bytes]] = {}
        for db_key, value in self._db.iterator(prefix=PREFIX_SHARD):
            count += 1
            size += len(value)
            record_id, content_hash = db_key[1 : 1 + HASH_BYTES], db_key[1 + HASH_BYTES : -1]
            held = versions.setdefault(record_id, [])
            if content_hash not in held:
                held.append(content_hash)
        with self._db.write_batch(sync=True) as batch:
            for record_id, held in versions.items():
                key = versions_db_key(record_id)
                batch.put(key, encode_entry(key, b"".join(held)))
            batch.put(STATS_KEY, encode_entry(STATS_KEY, msgpack.packb([count, size])))
        return count, size

    def versions(self, record_id: bytes) -> list[bytes]:
        """Content hashes of the versions of a record this node holds (a point lookup)."""
        key = versions_db_key(record_id)
        raw = self._db.get(key)
        if raw is None:
            return []
        try:
            payload = decode_entry(key, raw)
        except (CorruptEntry, UnsupportedFormat):
            self.corrupt_entries_seen += 1
            return sorted({s.meta.content_hash for s in self._scan(record_id)[0]})
        return [payload[i : i + HASH_BYTES] for i in range(0, len(payload), HASH_BYTES)]

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def pending(self, record_id: bytes) -> int | None:
        """The pending marker of a record: the log index its proposal expires after."""
        key = pending_db_key(record_id)
        return self._decode_pending(key, self._db.get(key))

    def _decode_pending(self, key: bytes, raw: bytes | None) -> int | None:
        if raw is None:
            return None
        try:
            return int.from_bytes(decode_entry(key, raw), "big")
        except (CorruptEntry, UnsupportedFormat):
            self.corrupt_entries_seen += 1
            return None  # unreadable: never collected (an extra copy, never a lost one)

    def pending_items(self, after: bytes = b"", limit: int = 1024) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (record id, expiry index) markers with record ids above ``after``."""
        found: list[tuple[bytes, int]] = []
        start = pending_db_key(after) + b"\x00" if after else PREFIX_PENDING
        stop = PREFIX_PENDING[:-1] + bytes((PREFIX_PENDING[-1] + 1,))
        for db_key, raw in self._db.iterator(start=start, stop=stop):
            expiry = self._decode_pending(db_key, raw)
            if expiry is not None:
                found.append((db_key[len(PREFIX_PENDING) :], expiry))
            if len(found) >= limit:
                break
        return found

    def prepare(
        self,
        shards: Sequence[Shard],
        exclusive: Sequence[bool] | None = None,
        expiries: Sequence[int] | None = None,
        indexed_version: Callable[[bytes], bytes | None] | None = None,
    ) -> PreparedBatch:
        """Encode a batch and the stats it leads to (CPU work; no write yet).

        ``exclusive[i]`` makes shard ``i`` an if-absent put: it is left out (its record id is
        reported in ``refused``) when this node holds, on disk or earlier in this batch,
        another version of its record -- unless ``indexed_version`` (the committed index as
        this node applied it) names shard ``i``'s version: then the other versions are
        unindexed orphans and this batch removes them. The stats and the check assume no other
        batch commits between this call and :meth:`commit`: there is one committer
        (:mod:`node.storage.group_commit`), which commits before preparing more.
        """
        count, size = self.shard_count, self.shard_bytes
        entries: dict[bytes, bytes] = {}
        deletes: list[bytes] = []  # orphan versions' shards an indexed put replaces
        held: dict[bytes, list[bytes]] = {}  # record id -> versions, this batch included
        marked: dict[bytes, int] = {}  # record id -> pending marker, this batch included
        refused: set[bytes] = set()
        for position, shard in enumerate(shards):
            record_id, content_hash = shard.meta.record_id, shard.meta.content_hash
            versions = held.get(record_id)
            if versions is None:
                versions = held[record_id] = self.versions(record_id)
            # The marker rises even when the shard is refused: the record is being written
            # again, and a proposal naming the version held here may now commit up to this
            # expiry, so that version must not be collected before it.
            expiry = expiries[position] if expiries is not None else 0
            if expiry > 0:
                if record_id not in marked:
                    marked[record_id] = self.pending(record_id) or 0
                if expiry > marked[record_id]:
                    marked[record_id] = expiry
                    pkey = pending_db_key(record_id)
                    entries[pkey] = encode_entry(pkey, expiry.to_bytes(8, "big"))
            other_version = any(v != content_hash for v in versions)
            if exclusive is not None and exclusive[position] and other_version:
                if indexed_version is None or indexed_version(record_id) != content_hash:
                    refused.add(record_id)
                    continue
                for orphan in [v for v in versions if v != content_hash]:
                    count, size = self._drop_version(
                        record_id, orphan, entries, deletes, count, size
                    )
                    versions.remove(orphan)
                key = versions_db_key(record_id)
                entries[key] = encode_entry(key, b"".join(versions))
            version_was_held = content_hash in versions
            if not version_was_held:
                versions.append(content_hash)
                key = versions_db_key(record_id)
                entries[key] = encode_entry(key, b"".join(versions))
            db_key = shard_db_key(shard.meta.key)
            value = encode_shard_value(db_key, shard)
            if db_key in entries:
                size -= len(entries[db_key])
            elif not version_was_held:
                count += 1  # a version this node did not hold: the shard cannot be there yet
            else:
                old = self._db.get(db_key)
                if old is None:
                    count += 1
                else:
                    size -= len(old)
            entries[db_key] = value
            size += len(value)
        entries[STATS_KEY] = encode_entry(STATS_KEY, msgpack.packb([count, size]))
        return PreparedBatch(list(entries.items()), count, size, frozenset(refused), tuple(deletes))

    def _drop_version(
        self,
        record_id: bytes,
        content_hash: bytes,
        entries: dict[bytes, bytes],
        deletes: list[bytes],
        count: int,
        size: int,
    ) -> tuple[int, int]:
        """Take every shard of one version out of a batch being prepared: those on disk
        (corrupt entries too) into ``deletes``, those earlier in the batch out of ``entries``;
        returns the counts adjusted. The caller rewrites the record's version list."""
        prefix = PREFIX_SHARD + record_id + content_hash
        on_disk = {k: len(v) for k, v in self._db.iterator(prefix=prefix)}
        in_batch = [k for k in entries if k.startswith(prefix)]
        for db_key in dict.fromkeys([*on_disk, *in_batch]):
            count -= 1
            size -= len(entries.pop(db_key)) if db_key in entries else on_disk[db_key]
            if db_key in on_disk:
                deletes.append(db_key)
        return count, size

    def prepare_delete(self, keys: Sequence[ShardKey]) -> PreparedBatch:
        """Remove shards (those not held are skipped), their version from the record's
        version list once no shard of it is left, and the stats; no write yet."""
        return self._prepare_removal(keys, ())

    def prepare_collect(self, items: Sequence[CollectItem]) -> PreparedBatch:
        """Settle records whose index proposal expired (see :mod:`node.storage.orphans`):
        remove every shard of versions other than ``keep`` (all of them when the record was
        never indexed) and the pending marker. A record whose marker is now above the expiry
        seen (written again meanwhile) or gone is left alone."""
        keys: list[ShardKey] = []
        settled: list[bytes] = []
        for item in items:
            marker = self.pending(item.record_id)
            if marker is None or marker > item.expiry:
                continue
            settled.append(item.record_id)
            keys.extend(k for k in self._keys_of(item.record_id) if k.content_hash != item.keep)
        return self._prepare_removal(keys, settled)

    def _keys_of(self, record_id: bytes) -> list[ShardKey]:
        """Every shard key held for a record, corrupt entries included (they go too)."""
        return [
            ShardKey(record_id, db_key[1 + HASH_BYTES : -1], db_key[-1])
            for db_key in self._db.iterator(prefix=PREFIX_SHARD + record_id, include_value=False)
        ]

    def _prepare_removal(self, keys: Sequence[ShardKey], settled: Sequence[bytes]) -> PreparedBatch:
        count, size = self.shard_count, self.shard_bytes
        deletes: list[bytes] = [pending_db_key(rid) for rid in dict.fromkeys(settled)]
        entries: dict[bytes, bytes] = {}
        by_version: dict[tuple[bytes, bytes], set[bytes]] = {}
        for key in keys:
            db_key = shard_db_key(key)
            old = self._db.get(db_key)
            if old is None or db_key in deletes:
                continue
            deletes.append(db_key)
            count -= 1
            size -= len(old)
            by_version.setdefault((key.record_id, key.content_hash), set()).add(db_key)
        remaining: dict[bytes, list[bytes]] = {}  # record id -> versions still held
        for (record_id, content_hash), gone in by_version.items():
            prefix = PREFIX_SHARD + record_id + content_hash
            if any(k not in gone for k in self._db.iterator(prefix=prefix, include_value=False)):
                continue  # other shards of this version stay
            versions = remaining.setdefault(record_id, self.versions(record_id))
            if content_hash in versions:
                versions.remove(content_hash)
        for record_id, versions in remaining.items():
            vkey = versions_db_key(record_id)
            if versions:
                entries[vkey] = encode_entry(vkey, b"".join(versions))
            else:
                deletes.append(vkey)
        entries[STATS_KEY] = encode_entry(STATS_KEY, msgpack.packb([count, size]))
        return PreparedBatch(list(entries.items()), count, size, frozenset(), tuple(deletes))

    def scrub_page(
        self, after: bytes, shards_max: int, bytes_max: int
    ) -> tuple[list[ScrubbedEntry], bool]:
        """Up to ``shards_max`` shard entries (at least one, then up to ``bytes_max`` stored
        bytes) with keys above ``after`` in key order, each decoded or found corrupt; and
        whether the store has none left after them (the end of a pass)."""
        start = after + b"\x00" if after else PREFIX_SHARD
        stop = bytes((PREFIX_SHARD[0] + 1,))
        found: list[ScrubbedEntry] = []
        size = 0
        # fill_cache=False: a pass over every shard must not evict the blocks reads keep hot.
        try:
            for db_key, value in self._db.iterator(start=start, stop=stop, fill_cache=False):
                if len(found) >= shards_max or (found and size + len(value) > bytes_max):
                    return found, False
                size += len(value)
                found.append(self._scrubbed(db_key, value))
        except plyvel.Error as exc:  # a table LevelDB itself cannot read past
            raise OperationFailed(f"shard database unreadable after {after.hex()}: {exc}") from exc
        return found, True

    def _scrubbed(self, db_key: bytes, value: bytes) -> ScrubbedEntry:
        key = ShardKey(db_key[1 : 1 + HASH_BYTES], db_key[1 + HASH_BYTES : -1], db_key[-1])
        try:
            shard: Shard | None = decode_shard_value(db_key, value)
        except (CorruptEntry, UnsupportedFormat):
            shard = None
        return ScrubbedEntry(db_key, key, value, shard)

    def scrub_cursor(self) -> bytes:
        """Where the scrubber was when it last saved (b"": at the start of a pass)."""
        raw = self._db.get(SCRUB_CURSOR_KEY)
        if raw is None:
            return b""
        try:
            return decode_entry(SCRUB_CURSOR_KEY, raw)
        except (CorruptEntry, UnsupportedFormat):
            self.corrupt_entries_seen += 1
            return b""  # a damaged cursor costs a pass from the start, nothing else

    def save_scrub_cursor(self, cursor: bytes) -> None:
        """Not fsynced, and outside the committer's batches: the cursor is a hint (a lost
        one repeats part of a pass) and counts nothing the committer keeps exact."""
        try:
            self._db.put(SCRUB_CURSOR_KEY, encode_entry(SCRUB_CURSOR_KEY, cursor))
        except plyvel.Error as exc:
            raise OperationFailed(f"scrub cursor write failed: {exc}") from exc

    def prepare_quarantine(
        self, items: Sequence[QuarantineItem], kept_max: int
    ) -> tuple[PreparedBatch, int]:
        """Take bad shards out of service (and the counts and version lists with them, as a
        delete would), and keep their bytes under ``q`` for an operator while fewer than
        ``kept_max`` are kept. A shard whose value changed since it was judged (rebuilt
        meanwhile) stays. Returns the batch and how many shards it quarantines."""
        taken = [i for i in items if self._db.get(shard_db_key(i.key)) == i.seen]
        prepared = self._prepare_removal([i.key for i in taken], ())
        kept: list[tuple[bytes, bytes]] = []
        for item in taken[: max(0, kept_max - self.quarantined)]:
            qkey = PREFIX_QUARANTINE + shard_db_key(item.key)
            if self._db.get(qkey) is not None:
                continue  # the first bad copy of this shard is kept; counted once
            payload = msgpack.packb({"why": item.reason, "value": item.seen}, use_bin_type=True)
            kept.append((qkey, encode_entry(qkey, payload)))
        batch = PreparedBatch(
            prepared.entries + kept,
            prepared.shard_count,
            prepared.shard_bytes,
            frozenset(),
            prepared.deletes,
        )
        return batch, len(taken)

    def commit(self, prepared: PreparedBatch) -> None:
        """Write a prepared batch durably: one LevelDB batch, one fsync. Safe off-thread."""
        try:
            with self._db.write_batch(sync=True) as batch:
                for key in prepared.deletes:
                    batch.delete(key)
                for key, value in prepared.entries:
                    batch.put(key, value)
        except plyvel.Error as exc:
            raise OperationFailed(f"shard write failed: {exc}") from exc
        self.shard_count, self.shard_bytes = prepared.shard_count, prepared.shard_bytes
        self.quarantined += sum(1 for k, _ in prepared.entries if k[:1] == PREFIX_QUARANTINE)

    def write_batch(self, shards: Sequence[Shard]) -> None:
        """Store shards durably: one batch, one fsync."""
        self.commit(self.prepare(shards))

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
