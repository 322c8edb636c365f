"""An in-memory model of what a node's disk holds: the persist step of each Ready, exactly.

It defines what "persist" means for the durable adapter (which does the same on LevelDB) and
is what simulations restart a crashed core from: :meth:`MemoryStorage.state` returns only
what was persisted, so anything the core held in memory alone is lost in a crash.
"""

from __future__ import annotations

from node.consensus.raft import PersistedState, Ready
from node.consensus.types import Entry, HardState, Membership, Snapshot, SnapshotMeta
from node.errors import InvariantViolation

__all__ = ["MemoryStorage"]


class MemoryStorage:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = Snapshot(SnapshotMeta(0, 0, Membership()), b"")
        self.entries: list[Entry] = []  # contiguous, from snapshot.meta.index + 1

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready cycle: snapshot, then entries, then hard state."""
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
            self.entries = []  # a received snapshot replaces the whole log
        if ready.entries:
            first = ready.entries[0].index
            offset = self.snapshot.meta.index + 1
            if first < offset or first > offset + len(self.entries):
                raise InvariantViolation(f"persisting entries from {first} leaves a gap")
            del self.entries[first - offset :]  # overwrite the conflicting suffix
            self.entries.extend(ready.entries)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """The application took a snapshot: keep it and drop the entries it covers."""
        index = snapshot.meta.index
        if index <= self.snapshot.meta.index:
            return
        self.entries = [e for e in self.entries if e.index > index]
        self.snapshot = snapshot

    def state(self, applied: int | None = None) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries), applied)
