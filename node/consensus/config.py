"""The settings of one Raft core: timing in ticks and a named bound on everything it buffers."""

from __future__ import annotations

from dataclasses import dataclass, fields

from node.consensus.types import NODE_ID_CHARS_MAX, NodeId
from node.errors import ConfigError

__all__ = ["RaftConfig"]


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Time is counted in ticks; the adapter decides how long a tick is.

    ``election_ticks`` (T): followers campaign after a random timeout in [T, 2T) ticks without a
    leader; a leader that has not heard from a quorum within T ticks steps down (check-quorum).
    ``heartbeat_ticks`` must be well below T so followers do not time out between heartbeats.
    A leader sends a peer a heartbeat only once it has sent it nothing for ``heartbeat_ticks``
    (an Append counts), so with 1 a heartbeat goes every tick, busy or not.
    """

    node_id: NodeId
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    entries_per_message_max: int = 512
    bytes_per_message_max: int = 1024 * 1024
    inflight_messages_max: int = 64
    proposal_entries_max: int = 4096  # payloads in one propose() call
    entry_payload_bytes_max: int = 1024 * 1024
    uncommitted_entries_max: int = 65536  # beyond this the leader refuses proposals
    apply_entries_per_ready_max: int = 4096
    apply_bytes_per_ready_max: int = 64 * 1024 * 1024
    pending_reads_max: int = 4096
    snapshot_timeout_ticks: int = 0  # 0: 4 * election_ticks before resending a snapshot
    # False (etcd's behaviour): a new commit index is broadcast at once, one Append per
    # follower. True: it rides on the next Append carrying entries, or on an empty Append at
    # the next tick if none left by then. Under load that halves the frames per commit (each
    # costs a libp2p round on both ends); followers learn commits up to one tick later, which
    # only delays their local reads (a ReadIndex round carries the commit index anyway).
    lazy_commit_notify: bool = False
    # How far a leader may stamp entries ahead of the quorum-th highest voter clock it knows
    # (node/consensus/log_time.py): the tolerance for honest skew plus a report's age (about
    # a heartbeat and a one-way delay). A leader with a faster clock stamps no further ahead.
    clock_offset_max_ms: int = 1000

    def __post_init__(self) -> None:
        if not 0 < len(self.node_id) <= NODE_ID_CHARS_MAX:
            raise ConfigError(f"raft node_id must be 1..{NODE_ID_CHARS_MAX} characters")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"raft.{field.name} must be an integer")
            if field.type == "int" and field.name != "snapshot_timeout_ticks" and value <= 0:
                raise ConfigError(f"raft.{field.name} must be positive")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ConfigError("raft.heartbeat_ticks must be below raft.election_ticks")
        if self.entry_payload_bytes_max > self.bytes_per_message_max:
            raise ConfigError("raft.entry_payload_bytes_max must fit in bytes_per_message_max")
        if self.snapshot_timeout_ticks < 0:
            raise ConfigError("raft.snapshot_timeout_ticks must not be negative")

    @property
    def snapshot_timeout(self) -> int:
        return self.snapshot_timeout_ticks or 4 * self.election_ticks
