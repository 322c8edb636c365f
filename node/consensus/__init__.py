"""The replicated, ordered record log: Raft as a sans-IO core (model: etcd-io/raft's RawNode).

* :mod:`.raft` -- :class:`RawNode`, the core, and :class:`Ready`, its output batch.
* :mod:`.types` -- entries, hard state, membership and snapshots; :mod:`.messages` -- what cores
  send each other and its msgpack-friendly codec; :mod:`.config` -- ticks and bounds.
* :mod:`.log`, :mod:`.progress` -- the log and the leader's per-follower replication state.
* :mod:`.storage`, :mod:`.cluster` -- an in-memory disk and a deterministic in-memory cluster,
  for tests and simulations.
* :mod:`.state_machine` -- versioned application entries and the dispatcher that applies them;
  :mod:`.record_index` -- the first state machine.

None of these modules does I/O, reads a clock or uses global randomness. The I/O side (the
LevelDB storage and the asyncio adapter that drives a core) is :mod:`node.replication`.
"""

from node.consensus.config import RaftConfig
from node.consensus.messages import Message, WireLimits, message_from_wire, message_to_wire
from node.consensus.raft import PersistedState, Proposal, RawNode, Ready
from node.consensus.types import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    default_membership,
)

__all__ = [
    "ConfChange",
    "ConfChangeKind",
    "Entry",
    "EntryKind",
    "HardState",
    "Membership",
    "Message",
    "NodeId",
    "PersistedState",
    "Proposal",
    "RaftConfig",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "WireLimits",
    "default_membership",
    "message_from_wire",
    "message_to_wire",
]
