"""The durable Raft storage of a node: log, hard state, compaction point and applied state.

This is the on-disk twin of :class:`~node.consensus.storage.MemoryStorage`: :meth:`persist`
and :meth:`state` mean exactly what they mean there, so a core restarted from
:meth:`DurableRaftStorage.state` behaves as one restarted from the in-memory model. It is
plain synchronous I/O, called from the adapter's thread (one writer; not thread-safe, except
:meth:`flush_state`, which touches no Python state but a counter and may run on a worker).

Durability rules
----------------
* :meth:`persist` writes one Ready's snapshot, entries (overwriting the conflicting suffix) and
  hard state as ONE LevelDB ``WriteBatch(sync=True)``: a vote or an append is on disk before
  the adapter sends the messages of that Ready, and a crash leaves either all of it or none.
* The state machine's writes for a range of committed entries and the new applied index go in
  one batch (:meth:`commit_applied`), so after a crash the applied index always matches the
  state: an entry is never applied twice and never skipped. The adapter writes it unsynced
  (``sync=False``): a power loss that takes the batch takes state and index together, and the
  fsynced log applies the entries again.
* The ledger's account values may also be kept in memory (``ledger_account_cache_max``,
  :class:`~business.ledger.leveldb.AccountCache`): filled only by :meth:`state_get` reads and
  by batches :meth:`commit_applied` wrote, emptied when :meth:`restore_applied` replaces the
  state, empty at every start, so it never serves a value the state does not hold
  (``tests/test_durable_account_cache.py``).

Compaction does not copy the state
----------------------------------
The state machine's state lives in this database, with its applied index, so it already *is*
the snapshot of the log up to that index (as in etcd v3 over bbolt, or CockroachDB and TiKV
truncating the Raft log against their engine). :meth:`compact` therefore only records the
compaction point's meta (index, term, membership) as the snapshot in force, in one fsynced
batch, and deletes the dropped entries in bounded unsynced batches: its cost is the dropped
entries', whatever the size of the state (``tests/test_raft_durable.py`` counts it).

The one precondition: the state up to that index must be on disk before the entries that
could rebuild it go. The state is written unsynced, and LevelDB does not promise that a later
synced write carries earlier unsynced ones across a power loss (a memtable switch starts a new
log file without syncing the old one), so :meth:`flush_state` first writes the memtable out
to a synced table (LevelDB's ``CompactRange`` over an empty key range: the cost of the
writes since the last flush, not of the state); :meth:`compact` refuses an index it did not
cover. etcd does the same (a backend commit before compacting its raft log).

Snapshots that move between nodes
---------------------------------
A follower too far behind is sent the state as of the leader's applied index, read from a
pinned LevelDB view (:meth:`pin_state`) and streamed in format 2
(:mod:`node.replication.snapshot`) by the adapter: nothing is written on the sender. The
receiver stages the chunks it gets under a generation (:meth:`reserve_generation`,
:class:`SnapshotWriter`); the core gets a :class:`SnapshotRef` to them, :meth:`persist` makes
that snapshot the one in force (with its chunks) and :meth:`restore_applied` rebuilds the
state from them in bounded batches, its last batch moving the applied index and dropping the
chunk reference from ``m:snap`` together; the chunks are deleted after. So on restart
``applied_index < snapshot index`` exactly when a received snapshot is staged and not yet
(fully) restored: restore it first. A snapshot given as data (the pure-core tests) is chunked
and read back as data.

On-disk layout (format version 2; every value is a :mod:`node.storage.entry` record: version
byte, checksum bound to the key, payload)::

    b"m:format"             u32 big-endian format version (refuse unknown ones)
    b"m:hard"               msgpack HardState.to_wire()
    b"m:last"               msgpack int: last log index; entries are contiguous up to it
    b"m:applied"            msgpack int: the state machine's applied index
    b"m:snap"               msgpack {"meta": SnapshotMeta.to_wire()}: the compaction point;
                            with "gen", "bytes", "chunks", "sha256" and "ref"? while a
                            received snapshot's data is staged and not yet restored
                            ("ref": the core holds a SnapshotRef, load never reads it whole)
    b"c" + u64 gen + u32 n  chunk n (<= snapshot_chunk_bytes_max) of staged data of gen
    b"e" + u64 index        msgpack Entry.to_wire() (big-endian index: entries sort by index)
    b"x" + machine key      a state machine's value

Format 1 (every compaction wrote the whole state into chunks) is migrated when opened: its
snapshot's chunks are dropped once the state is flushed if the state already reflects them,
else kept as a staged snapshot to restore, which is what they mean in format 2 too.

Staged chunks are written first, under a new generation, each chunk its own fsynced batch;
the fsynced batch that writes ``m:snap`` adopts them, so a crash leaves either the old
snapshot or the new one, never a mix. Generations reserved and not yet adopted are spared by
garbage collection while this process runs; opening deletes them. Chunks of other
generations and entries at or below the snapshot index may linger after a crash; loading
ignores them and opening deletes them (unsynced: losing those deletes is harmless). Any entry
missing or failing its checksum between the snapshot and ``m:last`` is refused at load,
never skipped.

Damage
------
A damaged Raft database ends the node with :class:`~node.errors.StorageDamaged`, one line that
names the way back (move the data directory aside, ``baas-cluster rejoin-node``, start: a new
incarnation): a record of ours failing its checksum when the database opens or the log loads,
and LevelDB's own corruption errors (it opens with ``paranoid_checks``: a write-ahead-log record
failing its CRC fails the open instead of vanishing, and a compaction reading a damaged table
fails every later write). A state-machine value failing its checksum is a
:class:`~node.errors.CorruptEntry` where it is read: an API read answers 503 (another node
serves it), applying an entry over it ends the node the same way (``node/replication/log.py``;
``tests/test_raft_damage.py``).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import plyvel

from business.ledger.leveldb import AccountCache
from business.ledger.model import ACCOUNT_PREFIX
from node.consensus.raft import PersistedState, Ready
from node.consensus.types import Entry, HardState, Membership, Snapshot, SnapshotMeta
from node.errors import (
    BaasError,
    ConfigError,
    CorruptEntry,
    InvariantViolation,
    OperationFailed,
    PeerProtocolError,
    StorageDamaged,
    UnsupportedFormat,
)
from node.storage.entry import decode_entry, encode_entry
from node.storage.leveldb import open_leveldb

T = TypeVar("T")

__all__ = [
    "FORMAT_VERSION",
    "DurableRaftStorage",
    "PinnedState",
    "SnapshotRef",
    "SnapshotWriter",
    "StateWrite",
]

FORMAT_VERSION = 2
FORMATS_MIGRATED = (1,)  # opened and rewritten as FORMAT_VERSION (see the module docstring)
StateWrite = tuple[bytes, bytes | None]  # (state-machine key, value; None deletes the key)

KEY_FORMAT = b"m:format"
KEY_HARD = b"m:hard"
KEY_LAST = b"m:last"
KEY_APPLIED = b"m:applied"
KEY_SNAP = b"m:snap"
PREFIX_CHUNK = b"c"
PREFIX_ENTRY = b"e"
PREFIX_STATE = b"x"

SNAPSHOT_CHUNK_BYTES_MAX = 1024 * 1024
SNAPSHOT_BYTES_MAX = 4 * 1024 * 1024 * 1024
# What the core holds for a snapshot whose data stays in chunks on disk (SnapshotRef). 0xc1 is
# never the first byte of msgpack, nor of the state data format (node/replication/snapshot.py).
REF_MAGIC = b"\xc1baas-snapshot-ref\x00"
ENTRY_PAYLOAD_BYTES_MAX = 1024 * 1024  # RaftConfig.entry_payload_bytes_max's default
DELETE_BATCH_KEYS_MAX = 4096  # keys deleted per batch when compacting or clearing state
# flush_state's CompactRange covers [FLUSH_KEY, FLUSH_KEY]: below every key this database
# holds, so it overlaps no table and only writes the memtable out (see the module docstring).
FLUSH_KEY = b"\x00"
STATE_WRITES_PER_BATCH_MAX = 1 << 17
STATE_KEY_BYTES_MAX = 1024

_Op = tuple[bytes, bytes | None]  # (database key, encoded value or None to delete)
_MALFORMED = (PeerProtocolError, KeyError, TypeError, ValueError)


def entry_key(index: int) -> bytes:
    return PREFIX_ENTRY + struct.pack(">Q", index)


def chunk_prefix(generation: int) -> bytes:
    return PREFIX_CHUNK + struct.pack(">Q", generation)


def chunk_key(generation: int, number: int) -> bytes:
    return chunk_prefix(generation) + struct.pack(">I", number)


def _pack(key: bytes, raw: Any) -> bytes:
    return encode_entry(key, msgpack.packb(raw, use_bin_type=True))


def _unpack(key: bytes, value: bytes) -> Any:
    payload = decode_entry(key, value)
    try:
        return msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptEntry(f"raft record {key!r} is not msgpack") from exc


def encode_entry_value(entry: Entry) -> bytes:
    return _pack(entry_key(entry.index), entry.to_wire())


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """Where a received snapshot's data lies in this database: what the core holds instead.

    A snapshot can be as large as the whole state (10^6 index records: ~250 MB), so the
    adapter never loads it: the core's ``Snapshot.data`` is this small reference to the chunks
    staged on disk, which :meth:`DurableRaftStorage.restore_applied` rebuilds the state from
    (node/replication/log.py). A reference never leaves the node: received data is always
    real data, checked, then referenced.
    """

    generation: int
    size: int
    chunks: int
    sha256: bytes

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(self._record(), use_bin_type=True)
        return REF_MAGIC + packed

    def _record(self) -> dict[str, Any]:
        return {
            "gen": self.generation,
            "bytes": self.size,
            "chunks": self.chunks,
            "sha256": self.sha256,
        }

    @classmethod
    def decode(cls, data: bytes) -> SnapshotRef | None:
        """The reference ``data`` is, or None when it is snapshot data itself."""
        if not data.startswith(REF_MAGIC):
            return None
        try:
            return cls._of_record(msgpack.unpackb(data[len(REF_MAGIC) :], raw=False))
        except (CorruptEntry, ValueError, msgpack.UnpackException) as exc:
            raise InvariantViolation("a malformed snapshot reference") from exc

    @classmethod
    def _of_record(cls, raw: Any) -> SnapshotRef:
        try:
            ref = cls(int(raw["gen"]), int(raw["bytes"]), int(raw["chunks"]), bytes(raw["sha256"]))
        except _MALFORMED as exc:
            raise CorruptEntry("raft snapshot meta is malformed") from exc
        if not 0 <= ref.chunks <= ref.size or ref.generation < 0:
            raise CorruptEntry("raft snapshot meta has impossible sizes")
        return ref


class SnapshotWriter:
    """Streams one snapshot's data into the chunks of a reserved generation.

    Holds at most one chunk; each chunk is its own fsynced batch (see the module docstring
    for why not unsynced). Use it from one thread at a time; :meth:`finish` returns the
    reference to adopt.
    """

    def __init__(self, storage: DurableRaftStorage, generation: int) -> None:
        self._storage = storage
        self.generation = generation
        self._buffer = bytearray()
        self._chunks = 0
        self._size = 0
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._storage.snapshot_bytes_max:
            raise OperationFailed(
                f"snapshot exceeds snapshot_bytes_max ({self._storage.snapshot_bytes_max})",
                code="snapshot_too_large",
            )
        self._digest.update(data)
        self._buffer += data
        step = self._storage.snapshot_chunk_bytes_max
        while len(self._buffer) >= step:
            self._flush(bytes(self._buffer[:step]))
            del self._buffer[:step]

    def _flush(self, chunk: bytes) -> None:
        key = chunk_key(self.generation, self._chunks)
        self._storage._write([(key, encode_entry(key, chunk))])
        self._chunks += 1

    def finish(self) -> SnapshotRef:
        if self._buffer:
            self._flush(bytes(self._buffer))
            self._buffer.clear()
        return SnapshotRef(self.generation, self._size, self._chunks, self._digest.digest())


class PinnedState:
    """The applied state as of one moment, read from a pinned LevelDB view.

    What a snapshot sent to a follower is made of: applying goes on while it is read (on a
    worker thread, possibly twice: once to size it, once to send it), and the view keeps it
    at :attr:`applied_index`. Close it when done: the view holds old versions of the keys.
    :meth:`close` may come from the loop while a worker thread still reads (a cancelled
    transfer): the view is then released by the last reader, never under it.
    """

    def __init__(self, storage: DurableRaftStorage, view: Any, applied_index: int) -> None:
        self._storage = storage
        self._view = view
        self.applied_index = applied_index
        self._lock = threading.Lock()
        self._readers = 0
        self._closed = False
        raw = view.get(KEY_APPLIED)
        if (raw is None and applied_index) or (raw and _unpack(KEY_APPLIED, raw) != applied_index):
            view.close()
            raise InvariantViolation(f"pinned state is not at applied index {applied_index}")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every state key and value in key order, checksums verified."""
        with self._lock:
            if self._closed:
                raise OperationFailed("the pinned state was closed", code="snapshot_cancelled")
            self._readers += 1
        try:
            yield from self._storage.state_items(source=self._view)
        finally:
            with self._lock:
                self._readers -= 1
                release = self._closed and self._readers == 0
            if release:
                self._view.close()

    def close(self) -> None:
        with self._lock:
            release = not self._closed and self._readers == 0
            self._closed = True
        if release:
            self._view.close()


def decode_entry_value(key: bytes, value: bytes, payload_bytes_max: int) -> Entry:
    try:
        entry = Entry.from_wire(_unpack(key, value), payload_bytes_max=payload_bytes_max)
    except PeerProtocolError as exc:  # the wire decoder's error; on disk it means corruption
        raise CorruptEntry(f"raft entry {key!r} is malformed: {exc.detail}") from exc
    if entry_key(entry.index) != key:
        raise CorruptEntry(f"raft entry {entry.index} stored under {key!r}")
    return entry


class DurableRaftStorage:
    """Raft log, hard state, snapshot and state-machine state of one node, in one LevelDB."""

    def __init__(
        self,
        path: Path,
        *,
        snapshot_chunk_bytes_max: int = SNAPSHOT_CHUNK_BYTES_MAX,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX,
        entry_payload_bytes_max: int = ENTRY_PAYLOAD_BYTES_MAX,
        delete_batch_keys_max: int = DELETE_BATCH_KEYS_MAX,
        open_files_max: int = 64,
        write_buffer_bytes_max: int = 16 * 1024 * 1024,
        block_cache_bytes_max: int = 16 * 1024 * 1024,
        bloom_bits_per_key: int = 0,
        ledger_account_cache_max: int = 0,
    ) -> None:
        if bloom_bits_per_key < 0 or ledger_account_cache_max < 0:
            raise ConfigError("bloom bits and the ledger account cache are >= 0 (0: none)")
        bounds = (
            snapshot_chunk_bytes_max,
            snapshot_bytes_max,
            entry_payload_bytes_max,
            delete_batch_keys_max,
            open_files_max,
            write_buffer_bytes_max,
            block_cache_bytes_max,
        )
        if min(bounds) <= 0:
            raise ConfigError("durable raft storage bounds must be positive")
        self.path = path
        self.snapshot_chunk_bytes_max = snapshot_chunk_bytes_max
        self.snapshot_bytes_max = snapshot_bytes_max
        self.entry_payload_bytes_max = entry_payload_bytes_max
        self.delete_batch_keys_max = delete_batch_keys_max
        # Generations reserved for snapshots being received: garbage collection spares them
        # until they are adopted or discarded.
        self._staged: set[int] = set()
        # What this process wrote (batches' keys and bytes): how the tests measure the cost of
        # a compaction without timing it (updated from worker threads too: approximate there).
        self.keys_written = 0
        self.bytes_written = 0
        # The ledger's account values as the state holds them (business/ledger/leveldb.py):
        # filled by reads and by committed batches, dropped whole when a snapshot replaces the
        # state. A read on another thread must not put back a value a restore or a commit
        # replaced meanwhile: the epoch moves (under the lock) whenever the state changes,
        # and a read remembers its value only if the epoch did not move since it began.
        cache_max = ledger_account_cache_max
        self._accounts = AccountCache(cache_max) if cache_max else None
        self._accounts_lock = threading.Lock()
        self._accounts_epoch = 0
        # Bounded like the shard database: open tables and the block cache are what grow RSS.
        # A bloom filter spares a lookup of an absent key (every new ledger transfer id, every
        # new record id) a block read per level; tables written without one still read fine.
        bloom = {"bloom_filter_bits": bloom_bits_per_key} if bloom_bits_per_key else {}
        try:
            # Paranoid checks ON, unlike the shard and hint stores: without them LevelDB drops
            # a write-ahead-log record that fails its CRC when it replays the log at open, with
            # no error -- a vote or an appended entry this node already acted on, gone (seen
            # in tests/test_raft_damage.py: the hard state fell back a term). With them that
            # open fails, and a compaction reading a damaged table stops every later write:
            # both end this node (StorageDamaged) rather than let it vote on a log it cannot
            # trust. Our own entry checksums cannot see a record LevelDB silently dropped.
            self._db = open_leveldb(
                path,
                "raft",
                paranoid_checks=True,
                write_buffer_size=write_buffer_bytes_max,
                lru_cache_size=block_cache_bytes_max,
                max_open_files=open_files_max,
                **bloom,
            )
        except OperationFailed as exc:
            if isinstance(exc.__cause__, plyvel.CorruptionError):
                raise self.damaged(exc.detail) from exc
            raise
        try:
            version = self._check_format()
            self._load()
            if version != FORMAT_VERSION:
                self._migrate()
        except CorruptEntry as exc:  # a record we wrote fails its checksum or its meaning
            self._db.close()
            raise self.damaged(exc.detail) from exc
        except BaseException:
            self._db.close()
            raise

    def damaged(self, cause: str) -> StorageDamaged:
        """The one error (and line) for a Raft database this node must not run on."""
        return StorageDamaged(
            f"the raft database at {self.path} is damaged ({cause}); this node must not vote "
            f"or apply with it. Stop it, move its data directory ({self.path.parent}) aside, "
            "run `baas-cluster rejoin-node --name NAME` for it, then start it again: it joins "
            "as a new incarnation and repair refills its shards"
        )

    # -- opening

    def _check_format(self) -> int:
        raw = self._db.get(KEY_FORMAT)
        if raw is None:
            if next(self._db.iterator(include_value=False), None) is not None:
                raise CorruptEntry(f"raft database at {self.path} has data but no format key")
            self._write([_format_op()])
            return FORMAT_VERSION
        payload = decode_entry(KEY_FORMAT, raw)
        if len(payload) != 4:
            raise CorruptEntry("raft format key is malformed")
        version = int(struct.unpack(">I", payload)[0])
        if version != FORMAT_VERSION and version not in FORMATS_MIGRATED:
            raise UnsupportedFormat(
                f"raft database format {version} (this build reads {FORMAT_VERSION}, "
                f"and migrates {', '.join(map(str, FORMATS_MIGRATED))})"
            )
        return version

    def _load(self) -> None:
        """Read (and verify) everything but the entries, which :meth:`state` reads."""
        hard, snap = self._get(KEY_HARD), self._get(KEY_SNAP)
        self._has_state = hard is not None or snap is not None
        self._hard_state = HardState() if hard is None else self._hard_state_of(hard)
        # The generation holding the staged data of the snapshot in force (None: meta only).
        self._snap_meta = SnapshotMeta(0, 0, Membership())
        self._snap_gen: int | None = None
        self._snap_data = b""
        if snap is not None:
            self._snap_meta, self._snap_gen, self._snap_data = self._load_snapshot(snap)
        self._gen_last = self._snap_gen or 0
        self._last_index = self._int(KEY_LAST, self._snap_meta.index)
        self._applied_index = self._int(KEY_APPLIED, 0)
        # The applied index known to be on disk with its state (flush_state, restore_applied).
        self._durable_applied = min(self._applied_index, self._snap_meta.index)
        if self._last_index < self._snap_meta.index:
            raise CorruptEntry("raft log ends before its snapshot")
        if self._snap_gen is None and self._applied_index < self._snap_meta.index:
            raise CorruptEntry(
                f"raft state at applied index {self._applied_index} is behind the compaction "
                f"point {self._snap_meta.index}: the log that rebuilds it is gone"
            )
        # Entries a crash left below the snapshot, then every chunk but the snapshot's: nothing
        # is staged yet, so newer generations are from transfers a crash cut off.
        self._delete_range(PREFIX_ENTRY, entry_key(self._snap_meta.index + 1))
        self._delete_garbage()

    def _migrate(self) -> None:
        """Format 1 -> 2: a snapshot the state already reflects no longer needs its chunks.

        Its state must be on disk before they go (the same rule as for :meth:`compact`); one
        that is not yet restored stays staged, as format 2 stores one too.
        """
        ops = [_format_op()]
        if self._snap_gen is not None and self._applied_index >= self._snap_meta.index:
            self.flush_state()
            ops.append(self._meta_op(self._snap_meta))
            self._snap_gen, self._snap_data = None, b""
        self._write(ops)
        self._delete_garbage()

    def _hard_state_of(self, raw: Any) -> HardState:
        try:
            return HardState.from_wire(raw)
        except _MALFORMED as exc:
            raise CorruptEntry("raft hard state is malformed") from exc

    def _load_snapshot(self, raw: Any) -> tuple[SnapshotMeta, int | None, bytes]:
        """The snapshot in force: its meta, and its staged data (or reference) if any.

        Staged data is read and checked once here (streamed: a reference is never held whole).
        """
        try:
            meta = SnapshotMeta.from_wire(raw["meta"])
            by_ref = bool(raw.get("ref", False))
            staged = "gen" in raw
        except _MALFORMED as exc:
            raise CorruptEntry("raft snapshot meta is malformed") from exc
        if not staged:
            return meta, None, b""
        ref = SnapshotRef._of_record(raw)
        if ref.size > SNAPSHOT_BYTES_MAX:
            raise CorruptEntry("raft snapshot meta has impossible sizes")
        if by_ref:
            for _ in self._read_chunks(ref, self._db, loading=True):
                self._accounts_epoch += 1  # a read begun before it may hold an older value
            return meta, ref.generation, ref.encode()
        return meta, ref.generation, b"".join(self._read_chunks(ref, self._db, loading=True))

    def _read_chunks(
        self, ref: SnapshotRef, source: Any, *, loading: bool = False
    ) -> Iterator[bytes]:
        """The chunks of ``ref`` from ``source`` (the database or a pinned view), checked."""
        size, digest = 0, hashlib.sha256()
        try:
            for number in range(ref.chunks):
                key = chunk_key(ref.generation, number)
                value = source.get(key)
                if value is None and not loading and ref.generation != self._snap_gen:
                    raise OperationFailed("that snapshot was replaced", code="snapshot_replaced")
                if value is None:
                    raise CorruptEntry(f"raft snapshot chunk {number} is missing")
                chunk = decode_entry(key, value)
                size += len(chunk)
                digest.update(chunk)
                yield chunk
        except plyvel.Error as exc:
            raise OperationFailed(f"raft read failed: {exc}") from exc
        if size != ref.size or digest.digest() != ref.sha256:
            raise CorruptEntry("raft snapshot data fails its checksum")

    def _get(self, key: bytes) -> Any:
        try:
            value = self._db.get(key)
        except plyvel.Error as exc:
            raise OperationFailed(f"raft read failed: {exc}") from exc
        return None if value is None else _unpack(key, value)

    def _int(self, key: bytes, default: int) -> int:
        raw = self._get(key)
        if raw is None:
            return default
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
            raise CorruptEntry(f"raft record {key!r} is not an index")
        return raw

    # -- reading

    @property
    def has_state(self) -> bool:
        """True once a first Ready was persisted (restart from :meth:`state`, not bootstrap)."""
        return self._has_state

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def last_index(self) -> int:
        return self._last_index

    @property
    def applied_index(self) -> int:
        """The index the state-machine state under ``b"x"`` reflects (see the docstring)."""
        return self._applied_index

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot in force: the compaction point (data ``b""``: the state is in this
        database) or a received one still staged (data, or a :class:`SnapshotRef` to it)."""
        return Snapshot(self._snap_meta, self._snap_data)

    def snapshot_chunks(self, data: bytes) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of staged snapshot ``data``: itself, or the chunks a reference names.

        The chunks are read from a view pinned now, so they stay readable (and the same) while
        a newer snapshot replaces this one and its garbage collection deletes them. Each chunk
        and the whole are checked; close the iterator when abandoning it early.
        """
        ref = SnapshotRef.decode(data)
        if ref is None:
            step = self.snapshot_chunk_bytes_max
            return len(data), (data[i : i + step] for i in range(0, len(data), step))
        if ref.generation != self._snap_gen and ref.generation not in self._staged:
            raise OperationFailed("that snapshot was replaced", code="snapshot_replaced")
        view = self._db.snapshot()
        return ref.size, self._pinned_chunks(ref, view)

    def _pinned_chunks(self, ref: SnapshotRef, view: Any) -> Iterator[bytes]:
        try:
            yield from self._read_chunks(ref, view)
        finally:
            view.close()

    def entries(self) -> Iterator[Entry]:
        """The log after the snapshot, in order; a gap or a bad entry is CorruptEntry."""
        expected = self._snap_meta.index + 1
        stop = _prefix_end(PREFIX_ENTRY)
        try:
            for key, value in self._db.iterator(start=entry_key(expected), stop=stop):
                entry = decode_entry_value(key, value, self.entry_payload_bytes_max)
                if entry.index > self.last_index:
                    raise CorruptEntry(f"raft entry {entry.index} beyond the last index")
                if entry.index != expected:
                    raise CorruptEntry(f"raft entry {expected} is missing")
                expected += 1
                yield entry
            if expected != self.last_index + 1:
                raise CorruptEntry(f"raft entries {expected}..{self.last_index} are missing")
        except CorruptEntry as exc:  # the log a restarted core would vote with
            raise self.damaged(exc.detail) from exc
        except plyvel.Error as exc:
            raise self._plyvel_failed("read", exc) from exc

    def state(self) -> PersistedState:
        """What a core restarts from, with the state machine's applied index."""
        return PersistedState(
            self.hard_state, self.snapshot, tuple(self.entries()), self.applied_index
        )

    # -- the persist step of the Ready cycle

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready cycle, as MemoryStorage.persist, in one fsynced batch."""
        ops: list[_Op] = []
        last = self.last_index
        snap_index = self._snap_meta.index
        if ready.snapshot is not None:
            ops += self._delete_entries_ops(ready.snapshot.meta.index + 1, last)
            snap_index = last = ready.snapshot.meta.index  # a received snapshot replaces the log
        if ready.entries:
            first = ready.entries[0].index
            if first <= snap_index or first > last + 1:
                raise InvariantViolation(f"persisting entries from {first} leaves a gap")
            end = first + len(ready.entries) - 1
            ops += self._delete_entries_ops(end + 1, last)  # the rest is overwritten below
            ops += [(entry_key(e.index), encode_entry_value(e)) for e in ready.entries]
            last = end
        if last != self.last_index:
            ops.append((KEY_LAST, _pack(KEY_LAST, last)))
        if ready.hard_state is not None:
            ops.append((KEY_HARD, _pack(KEY_HARD, ready.hard_state.to_wire())))
        generation: int | None = None
        if ready.snapshot is None:
            pass
        elif ready.snapshot.meta.index <= self._applied_index:
            ops.append(self._meta_op(ready.snapshot.meta))  # the bootstrap one: nothing to stage
        else:  # last: its chunks are written once nothing can fail
            op, generation = self._stage_snapshot(ready.snapshot)
            ops.append(op)
        if not ops:
            return
        self._write(ops)
        self._has_state = True
        self._last_index = last
        if ready.hard_state is not None:
            self._hard_state = ready.hard_state
        if ready.snapshot is not None:
            self._adopt_received(ready.snapshot, generation)

    # -- compaction: the state is the snapshot (see the module docstring)

    def flush_state(self) -> int:
        """Write every write made so far to synced tables; return the applied index covered.

        LevelDB's ``CompactRange`` over a key range no table holds: it switches the memtable,
        writes it out as a synced table and records that in the synced manifest, so the
        writes before it survive a power loss whatever log file they were in. Its cost is
        the memtable's (the writes since the last flush), not the state's. It touches no
        Python state but the covered index, so the adapter runs it on a worker thread while
        applying goes on.
        """
        applied = self._applied_index  # read first: every write up to it is already in LevelDB
        try:
            self._db.compact_range(start=FLUSH_KEY, stop=FLUSH_KEY)
        except plyvel.Error as exc:
            raise self._plyvel_failed("flush", exc) from exc
        self._durable_applied = max(self._durable_applied, applied)
        return applied

    @property
    def durable_applied_index(self) -> int:
        """The applied index whose state is known to be on disk (the compaction limit)."""
        return self._durable_applied

    def compact(self, meta: SnapshotMeta) -> int:
        """Make ``meta`` the compaction point and drop the entries it covers; return how many.

        One fsynced batch writes the meta (the log now starts after ``meta.index``); the
        entries go in bounded unsynced batches, by key (no scan over the deleted range's
        tombstones): the cost is the dropped entries', not the state's. ``meta.index`` must be
        covered by :meth:`flush_state`: past it, a power loss could take state the dropped
        entries were the only way to rebuild.
        """
        first, index = self._snap_meta.index + 1, meta.index
        if index < first:
            return 0
        if index > self._durable_applied:
            raise InvariantViolation(
                f"compacting to {index} past the durable state ({self._durable_applied})"
            )
        if index > self.last_index or self._snap_gen is not None:
            raise InvariantViolation(f"compacting to {index} beyond the log or a staged snapshot")
        self._write([self._meta_op(meta)])
        self._snap_meta, self._snap_data = meta, b""
        step = self.delete_batch_keys_max
        for start in range(first, index + 1, step):
            self._write(self._delete_entries_ops(start, min(index, start + step - 1)), sync=False)
        return index - first + 1

    def _meta_op(self, meta: SnapshotMeta) -> _Op:
        return KEY_SNAP, _pack(KEY_SNAP, {"meta": meta.to_wire()})

    # -- snapshots received: staged in chunks, see SnapshotRef

    def reserve_generation(self) -> int:
        """A new generation to write a received snapshot's chunks under (SnapshotWriter)."""
        self._gen_last += 1
        self._staged.add(self._gen_last)
        return self._gen_last

    def discard_generation(self, generation: int) -> None:
        """Give up a reserved generation: delete what was written under it."""
        self._staged.discard(generation)
        if generation != self._snap_gen:
            self._delete_range(chunk_prefix(generation), chunk_prefix(generation + 1))

    def _stage_snapshot(self, snapshot: Snapshot) -> tuple[_Op, int]:
        """Write the data's chunks under a new generation, or take the staged chunks of a
        reference; return the op that adopts them and their generation."""
        ref = SnapshotRef.decode(snapshot.data)
        if ref is not None:
            if ref.generation not in self._staged:
                raise InvariantViolation(f"snapshot generation {ref.generation} is not staged")
        else:
            data = snapshot.data
            if len(data) > SNAPSHOT_BYTES_MAX:
                raise InvariantViolation(f"snapshot of {len(data)} bytes exceeds the bound")
            writer = SnapshotWriter(self, self.reserve_generation())
            step = self.snapshot_chunk_bytes_max
            for offset in range(0, len(data), step):
                writer.write(data[offset : offset + step])
            ref = writer.finish()
        record = {"meta": snapshot.meta.to_wire(), **ref._record()}
        if SnapshotRef.decode(snapshot.data) is not None:
            record["ref"] = True  # load gives the core the reference back, not the data
        return (KEY_SNAP, _pack(KEY_SNAP, record)), ref.generation

    def _adopt_received(self, snapshot: Snapshot, generation: int | None) -> None:
        before = self._snap_meta.index
        self._snap_meta, self._snap_gen = snapshot.meta, generation
        self._snap_data = b"" if generation is None else snapshot.data
        if generation is not None:
            self._staged.discard(generation)
        # The log below the old snapshot is gone already: no scan over its tombstones.
        self._delete_range(entry_key(before + 1), entry_key(snapshot.meta.index + 1))
        self._delete_garbage()

    def _delete_entries_ops(self, first: int, last: int) -> list[_Op]:
        return [(entry_key(i), None) for i in range(first, last + 1)]

    def _delete_garbage(self) -> None:
        """Delete every generation's chunks but the snapshot's and the staged ones.

        Unsynced, bounded batches: what a crash leaves behind is deleted again at opening.
        """
        start = PREFIX_CHUNK
        for kept in sorted({*self._staged, *([] if self._snap_gen is None else [self._snap_gen])}):
            self._delete_range(start, chunk_prefix(kept))
            start = chunk_prefix(kept + 1)
        self._delete_range(start, _prefix_end(PREFIX_CHUNK))

    def _delete_range(self, start: bytes, stop: bytes, *, sync: bool = False) -> None:
        while keys := self._keys(start, stop):
            self._write([(k, None) for k in keys], sync=sync)
            start = keys[-1] + b"\x00"  # on from there: not over the tombstones just written

    def _keys(self, start: bytes, stop: bytes) -> list[bytes]:
        """Up to ``delete_batch_keys_max`` keys in [start, stop)."""
        keys: list[bytes] = []
        try:
            for key in self._db.iterator(start=start, stop=stop, include_value=False):
                keys.append(key)
                if len(keys) >= self.delete_batch_keys_max:
                    break
        except plyvel.Error as exc:
            raise OperationFailed(f"raft read failed: {exc}") from exc
        return keys

    # -- the apply step: state-machine writes and the applied index, atomically

    def commit_applied(
        self, writes: Sequence[StateWrite], applied_index: int, *, sync: bool = True
    ) -> None:
        """Write a state machine's writes for entries up to ``applied_index``: one batch.

        ``sync=False`` is safe for state machines whose state is a function of the log: the
        writes and the applied index land or vanish together, and what a power loss takes is
        applied again from the (fsynced) log on restart, onto the state it left.
        """
        if len(writes) > STATE_WRITES_PER_BATCH_MAX:
            raise InvariantViolation(f"{len(writes)} state writes exceed one batch's bound")
        if applied_index <= self.applied_index:
            raise InvariantViolation(f"applying {applied_index} again (at {self.applied_index})")
        if applied_index > max(self.hard_state.commit, self._snap_meta.index):
            raise InvariantViolation(f"applying {applied_index} beyond the persisted commit")
        ops = [self._state_op(key, value) for key, value in writes]
        ops.append((KEY_APPLIED, _pack(KEY_APPLIED, applied_index)))
        self._write(ops, sync=sync)
        self._applied_index = applied_index
        if self._accounts is not None:  # only once the batch landed
            with self._accounts_lock:
                self._accounts_epoch += 1  # a read begun before it may hold an older value
                self._accounts.committed(writes)

    def restore_applied(self, writes: Iterable[StateWrite], applied_index: int) -> None:
        """Replace the whole state with ``writes`` (rebuilt from a snapshot at ``applied_index``).

        Bounded batches, each fsynced; the applied index moves only with the last one, so a
        crash midway leaves ``applied_index < snapshot index``: restore again on restart. The
        last batch also drops the staged data from ``m:snap`` (the state now is the snapshot),
        and the chunks are deleted after it.
        """
        if applied_index != self._snap_meta.index or applied_index < self.applied_index:
            raise InvariantViolation(f"restoring state at {applied_index} is not the snapshot")
        self._drop_cached_accounts()
        try:
            self._restore_state(writes, applied_index)
        finally:  # and again: what reads cached meanwhile may be what the restore replaced
            self._drop_cached_accounts()

    def _restore_state(self, writes: Iterable[StateWrite], applied_index: int) -> None:
        self._delete_range(PREFIX_STATE, _prefix_end(PREFIX_STATE), sync=True)
        ops: list[_Op] = []
        for key, value in writes:
            if value is not None:
                ops.append(self._state_op(key, value))
            if len(ops) >= self.delete_batch_keys_max:
                self._write(ops)
                ops = []
        ops.append((KEY_APPLIED, _pack(KEY_APPLIED, applied_index)))
        ops.append(self._meta_op(self._snap_meta))
        self._write(ops)
        self._applied_index = self._durable_applied = applied_index
        self._snap_gen, self._snap_data = None, b""
        self._delete_garbage()

    def _state_op(self, key: bytes, value: bytes | None) -> _Op:
        if not 0 < len(key) <= STATE_KEY_BYTES_MAX:
            raise InvariantViolation(f"state key of {len(key)} bytes")
        db_key = PREFIX_STATE + key
        return db_key, None if value is None else encode_entry(db_key, value)

    def _drop_cached_accounts(self) -> None:
        with self._accounts_lock:
            self._accounts_epoch += 1
            if self._accounts is not None:
                self._accounts.clear()

    @property
    def cached_accounts(self) -> int:
        """Account values in the ledger account cache now (0 without one)."""
        return 0 if self._accounts is None else len(self._accounts)

    def state_get(self, key: bytes) -> bytes | None:
        accounts = self._accounts
        if accounts is not None:
            cached = accounts.get(key)
            if cached is not None:
                return cached
        epoch = self._accounts_epoch
        db_key = PREFIX_STATE + key
        try:
            raw = self._db.get(db_key)
        except plyvel.Error as exc:
            raise OperationFailed(f"raft read failed: {exc}") from exc
        if raw is None:
            return None
        value = decode_entry(db_key, raw)
        if accounts is not None and key.startswith(ACCOUNT_PREFIX):
            with self._accounts_lock:
                if epoch == self._accounts_epoch:
                    accounts.remember(key, value)
        return value

    def state_items(
        self, prefix: bytes = b"", *, source: Any = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """The state machine's keys under ``prefix``, in key order, checksums verified."""
        try:
            for db_key, value in (self._db if source is None else source).iterator(
                prefix=PREFIX_STATE + prefix
            ):
                yield db_key[len(PREFIX_STATE) :], decode_entry(db_key, value)
        except plyvel.Error as exc:
            raise OperationFailed(f"raft read failed: {exc}") from exc

    def read_state_at(
        self, prefix: bytes, read: Callable[[Iterator[tuple[bytes, bytes]]], T]
    ) -> tuple[int, T]:
        """``read`` over the state keys under ``prefix`` as of one applied index (a pinned
        LevelDB view, so applying may go on meanwhile); the index and what ``read`` returned.
        May run on a worker thread."""
        view = self._db.snapshot()
        try:
            raw = view.get(KEY_APPLIED)
            applied = _unpack(KEY_APPLIED, raw) if raw is not None else 0
            return applied, read(self.state_items(prefix, source=view))
        finally:
            view.close()

    def read_state_range_at(
        self,
        start: bytes,
        stop: bytes,
        read: Callable[[Iterator[tuple[bytes, bytes]]], T],
        *,
        reverse: bool = False,
    ) -> tuple[int, T]:
        """``read`` over the state keys in ``[start, stop)`` (descending when ``reverse``) as
        of one applied index, like :meth:`read_state_at`: what a paged list seeks to (its
        cursor) instead of walking a whole prefix. May run on a worker thread."""
        view = self._db.snapshot()

        def items() -> Iterator[tuple[bytes, bytes]]:
            try:
                with view.iterator(
                    start=PREFIX_STATE + start, stop=PREFIX_STATE + stop, reverse=reverse
                ) as found:
                    for db_key, value in found:
                        yield db_key[len(PREFIX_STATE) :], decode_entry(db_key, value)
            except plyvel.Error as exc:
                raise OperationFailed(f"raft read failed: {exc}") from exc

        try:
            raw = view.get(KEY_APPLIED)
            applied = _unpack(KEY_APPLIED, raw) if raw is not None else 0
            return applied, read(items())
        finally:
            view.close()

    def pin_state(self) -> PinnedState:
        """The state as of now (:attr:`applied_index`), from a pinned view of the database."""
        return PinnedState(self, self._db.snapshot(), self._applied_index)

    # -- writing

    def _write(self, ops: Sequence[_Op], *, sync: bool = True) -> None:
        """One LevelDB batch; ``sync`` fsyncs it before returning (every acknowledged write)."""
        size = 0
        try:
            with self._db.write_batch(sync=sync) as batch:
                for key, value in ops:
                    size += len(key)
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                        size += len(value)
        except plyvel.Error as exc:
            raise self._plyvel_failed("write", exc) from exc
        self.keys_written += len(ops)
        self.bytes_written += size

    def _plyvel_failed(self, what: str, exc: plyvel.Error) -> BaasError:
        """LevelDB's own corruption (a block failing its checksum: paranoid compaction's
        sticky error, met by every write after it) ends the node; other errors may pass."""
        if isinstance(exc, plyvel.CorruptionError):
            return self.damaged(f"{what}: {exc}")
        return OperationFailed(f"raft {what} failed: {exc}")

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def __enter__(self) -> DurableRaftStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format_op() -> _Op:
    return KEY_FORMAT, encode_entry(KEY_FORMAT, struct.pack(">I", FORMAT_VERSION))


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes((prefix[-1] + 1,))
