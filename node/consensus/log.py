"""The Raft log as the core sees it: a snapshot boundary, the entries after it, and cursors.

Indexes: ``snapshot_index`` (everything at or below is compacted into the snapshot) <
``applied`` <= ``committed`` <= ``last_index``. ``unstable_from`` is the first index not yet
handed to the adapter for persistence: entries from there on appear in the next Ready.

The whole log after the last snapshot is held in memory; the application bounds it by taking
snapshots (:meth:`RaftLog.compact`). The durable adapter keeps its own copy on disk and gives
it back on restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.consensus.types import Entry, Snapshot
from node.errors import InvariantViolation

__all__ = ["RaftLog"]


class RaftLog:
    def __init__(
        self,
        snapshot_index: int,
        snapshot_term: int,
        entries: Sequence[Entry],
        snapshot_time_ms: int = 0,
    ) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.snapshot_time_ms = snapshot_time_ms  # the stamp of the entry at snapshot_index
        self._entries: list[Entry] = []
        self.committed = snapshot_index
        self.applied = snapshot_index
        self.unstable_from = snapshot_index + 1
        for entry in entries:
            if entry.index <= snapshot_index:
                continue  # already inside the snapshot (compaction raced a crash)
            if entry.index != self.last_index + 1:
                raise InvariantViolation(f"stored log has a gap before index {entry.index}")
            self._entries.append(entry)
        self.unstable_from = self.last_index + 1  # everything given here is already durable

    # -- reading

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    @property
    def last_time_ms(self) -> int:
        return self._entries[-1].leader_time_ms if self._entries else self.snapshot_time_ms

    def time(self, index: int) -> int | None:
        """The stamp at ``index``; None if compacted away or not yet appended."""
        if index == self.snapshot_index:
            return self.snapshot_time_ms
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self._entries[index - self.snapshot_index - 1].leader_time_ms

    def term(self, index: int) -> int | None:
        """The term at ``index``; None if compacted away or not yet appended."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self._entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        if not self.first_index <= index <= self.last_index:
            raise InvariantViolation(f"entry {index} is not in the log")
        return self._entries[index - self.snapshot_index - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def slice(self, lo: int, hi: int, entries_max: int, bytes_max: int) -> tuple[Entry, ...]:
        """Entries ``lo..hi`` (inclusive), bounded; always at least one if any exist."""
        if lo < self.first_index:
            raise InvariantViolation(f"entries from {lo} are compacted")
        out: list[Entry] = []
        size = 0
        for index in range(lo, min(hi, self.last_index) + 1):
            entry = self.entry(index)
            size += entry.size_bytes
            if out and (len(out) >= entries_max or size > bytes_max):
                break
            out.append(entry)
        return tuple(out)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (etcd's fast backtracking).

        The leader probes from there, skipping every entry of a term the peer cannot have.
        """
        index = min(index, self.last_index)
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    # -- writing

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader-side append at the end of the log."""
        for entry in entries:
            if entry.index != self.last_index + 1:
                raise InvariantViolation(f"append at {entry.index}, last is {self.last_index}")
            self._entries.append(entry)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """Follower-side append; None if (prev_index, prev_term) does not match our log.

        Entries that already match are kept (a duplicate or reordered Append must not truncate
        anything); the first conflicting entry and everything after it are replaced.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for entry in entries:
            if entry.index <= self.snapshot_index:
                continue
            existing = self.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                self._truncate_from(entry.index)
            self.append([e for e in entries if e.index >= entry.index])
            break
        return last_new

    def _truncate_from(self, index: int) -> None:
        if index <= self.committed:
            raise InvariantViolation(f"refusing to truncate committed entry {index}")
        del self._entries[index - self.snapshot_index - 1 :]
        self.unstable_from = min(self.unstable_from, index)

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        if index > self.last_index:
            raise InvariantViolation(f"commit {index} beyond last index {self.last_index}")
        self.committed = index
        return True

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self._entries = []
        self.snapshot_index = snapshot.meta.index
        self.snapshot_term = snapshot.meta.term
        self.snapshot_time_ms = snapshot.meta.time_ms
        self.committed = snapshot.meta.index
        self.unstable_from = snapshot.meta.index + 1

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (taken into a snapshot by the application)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied:
            raise InvariantViolation(f"compact to {index} beyond applied {self.applied}")
        term, time_ms = self.term(index), self.time(index)
        assert term is not None and time_ms is not None
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term, self.snapshot_time_ms = index, term, time_ms

    # -- the cursors the Ready cycle moves

    def unstable_entries(self) -> tuple[Entry, ...]:
        start = max(self.unstable_from, self.first_index)
        return tuple(self._entries[start - self.snapshot_index - 1 :])

    def stable_to(self, index: int, term: int) -> None:
        # Only if the entry is still the one persisted: a truncation since then re-lowered
        # unstable_from, and those rewritten entries must still be persisted.
        if self.match_term(index, term) and index >= self.unstable_from:
            self.unstable_from = index + 1

    def committed_to_apply(self, entries_max: int, bytes_max: int) -> tuple[Entry, ...]:
        start = max(self.applied, self.snapshot_index) + 1
        if start > self.committed:
            return ()
        return self.slice(start, self.committed, entries_max, bytes_max)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise InvariantViolation(f"applied {index} beyond committed {self.committed}")
        self.applied = max(self.applied, index)
