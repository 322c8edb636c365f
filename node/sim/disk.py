"""A node's simulated disk: buffered writes that only an explicit flush makes durable.

Every write (the persist step of a Ready, the state machine's applied records and record-index
writes, a snapshot) goes into a buffer. ``flush()`` makes the whole buffer durable, in order;
``crash()`` loses it, or with a torn flush keeps only a prefix of it (a disk writes in order,
so what survives is always a prefix of what was written). A correct adapter flushes in the
persist step, before it sends anything, so a crash never loses what a message acknowledged.

Every stored log entry carries a CRC-32 of its fields, taken when it is written. ``corrupt()``
flips a byte of one stored entry and keeps the old checksum; ``load()`` checks every entry and
reports the first corrupt one (:class:`LoadedState.corrupt_index`), never handing it to a core.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from node.consensus.raft import PersistedState, Ready
from node.consensus.state_machine import Write
from node.consensus.types import Entry, HardState, Membership, Snapshot, SnapshotMeta
from node.errors import InvariantViolation
from node.sim.machine import MachineState, StreamRecord, apply_writes, decode_state

__all__ = ["LoadedState", "SimDisk", "StoredEntry", "entry_checksum"]


def entry_checksum(entry: Entry) -> int:
    head = b"%d:%d:%d:%d:" % (entry.index, entry.term, int(entry.kind), entry.leader_time_ms)
    return zlib.crc32(entry.payload, zlib.crc32(head))


@dataclass(frozen=True, slots=True)
class StoredEntry:
    entry: Entry
    checksum: int


@dataclass(frozen=True, slots=True)
class LoadedState:
    """What a restart reads back: the core's state and the state machine's, both durable."""

    persisted: PersistedState
    state: MachineState
    corrupt_index: int | None  # the first stored entry whose checksum failed, if any


class SimDisk:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = Snapshot(SnapshotMeta(0, 0, Membership()), b"")
        self.entries: list[StoredEntry] = []  # contiguous, from snapshot.meta.index + 1
        self.stream: list[StreamRecord] = []  # the state machine's applied records
        self.kv: dict[bytes, bytes] = {}  # the record index's keys
        self.applied = 0  # stored in the same write as the records it covers
        self._buffer: list[Callable[[], None]] = []
        self.flushes = 0
        self.writes_lost = 0
        self.corrupted = False  # a fault flipped a byte of a stored entry

    # -- writes (buffered)

    def write_ready(self, ready: Ready) -> None:
        snapshot, hard_state = ready.snapshot, ready.hard_state
        stored = [StoredEntry(e, entry_checksum(e)) for e in ready.entries]
        if snapshot is not None:
            self._buffer.append(lambda: self._install(snapshot))
        if stored:
            self._buffer.append(lambda: self._append(stored))
        if hard_state is not None:
            self._buffer.append(lambda: setattr(self, "hard_state", hard_state))

    def write_applied(self, index: int, record: StreamRecord | None, writes: list[Write]) -> None:
        self._buffer.append(lambda: self._apply(index, record, writes))

    def write_compaction(self, snapshot: Snapshot) -> None:
        self._buffer.append(lambda: self._compact(snapshot))

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> None:
        for write in self._buffer:
            write()
        self._buffer.clear()
        self.flushes += 1

    def crash(self, keep: int = 0) -> None:
        """Power loss: only the first ``keep`` buffered writes reached the platter."""
        for write in self._buffer[:keep]:
            write()
        self.writes_lost += max(0, len(self._buffer) - keep)
        self._buffer.clear()

    # -- what a write does once durable

    def _install(self, snapshot: Snapshot) -> None:
        """A snapshot from the leader replaces the log and the state machine, in one write."""
        self.snapshot = snapshot
        self.entries = []
        self.stream, self.kv = decode_state(snapshot.data)
        self.applied = snapshot.meta.index

    def _append(self, stored: list[StoredEntry]) -> None:
        first = stored[0].entry.index
        offset = self.snapshot.meta.index + 1
        if first < offset or first > offset + len(self.entries):
            raise InvariantViolation(f"persisting entries from {first} leaves a gap")
        del self.entries[first - offset :]
        self.entries.extend(stored)

    def _apply(self, index: int, record: StreamRecord | None, writes: list[Write]) -> None:
        if record is not None:
            self.stream.append(record)
        apply_writes(self.kv, writes)
        self.applied = index

    def _compact(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        if index <= self.snapshot.meta.index:
            return
        self.entries = [s for s in self.entries if s.entry.index > index]
        self.snapshot = snapshot

    # -- faults and restart

    def corrupt(self, position: int) -> int | None:
        """Flip one byte of the stored entry at ``position`` (modulo the log); its index."""
        if not self.entries:
            return None
        position %= len(self.entries)
        stored = self.entries[position]
        entry = stored.entry
        if entry.payload:
            payload = bytes([entry.payload[0] ^ 0x01]) + entry.payload[1:]
            bad = replace(entry, payload=payload)
        else:
            bad = replace(entry, term=entry.term ^ 0x01)
        self.entries[position] = StoredEntry(bad, stored.checksum)
        self.corrupted = True
        return entry.index

    def load(self, *, verify: bool = True) -> LoadedState:
        corrupt_index = None
        entries: list[Entry] = []
        for stored in self.entries:
            if verify and entry_checksum(stored.entry) != stored.checksum:
                corrupt_index = stored.entry.index
                break
            entries.append(stored.entry)
        if self.snapshot.meta.index > self.applied:
            raise InvariantViolation("the stored snapshot is ahead of the stored state machine")
        persisted = PersistedState(self.hard_state, self.snapshot, tuple(entries), self.applied)
        return LoadedState(persisted, (list(self.stream), dict(self.kv)), corrupt_index)
