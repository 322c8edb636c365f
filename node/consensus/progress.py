"""What a leader knows about each follower's log, and how fast it may send to it.

A follower's progress is in one of three states (as in etcd-io/raft):

* ``PROBE``: we do not know where its log matches ours. Send one Append at a time and wait for
  its answer (or a heartbeat response) before the next; a rejection moves ``next`` back.
* ``REPLICATE``: its log matches up to ``match``. Send optimistically: ``next`` runs ahead of
  ``match`` and up to ``inflight_messages_max`` Appends are in flight at once (pipelining).
* ``SNAPSHOT``: the entries it needs are compacted away; one InstallSnapshot is in flight.
  Sending pauses until it answers, the adapter reports the outcome, or a timeout gives up.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    def __init__(self, next_index: int, inflight_messages_max: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed_ticks = 0
        self.recent_active = False  # heard from it since the last check-quorum round
        self.commit_sent = 0  # the highest commit index told to it (Append or Heartbeat)
        # Ticks since the leader last sent it an Append or a Heartbeat: it gets a heartbeat
        # only once this reaches heartbeat_ticks (an Append does a heartbeat's job).
        self.idle_ticks = 0
        # Last index of each Append in flight, oldest first; freed as acknowledgements arrive.
        self.inflights: deque[int] = deque()
        self.inflight_messages_max = inflight_messages_max

    def __repr__(self) -> str:
        return f"Progress({self.state.value}, match={self.match}, next={self.next})"

    @property
    def paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= self.inflight_messages_max
        return True

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed_ticks = 0
        self.inflights.clear()

    def become_probe(self) -> None:
        # Coming back from a snapshot, resume right after it (or after the match, if later).
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, last_index: int | None) -> None:
        """Record an Append just sent; ``last_index`` is None for one without entries."""
        if self.state is ProgressState.REPLICATE and last_index is not None:
            self.next = last_index + 1
            self.inflights.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``; True if it taught us something new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint_index: int) -> bool:
        """A rejection of the Append after ``rejected``; False if it is stale (ignore it)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1  # probe again from just after what we know matches
            return True
        if self.next - 1 != rejected:
            return False  # answers an older probe
        if rejected <= self.match:
            # The follower rejects entries it had acknowledged: its disk lost them (a correct
            # fsync never does). Probing again from the same place would flood it forever;
            # leave it stalled (it is no longer counted on beyond its match) for an operator
            # to replace, as a node with a corrupt log is.
            return False
        self.next = max(min(rejected, hint_index + 1), self.match + 1)
        self.probe_sent = False
        return True
