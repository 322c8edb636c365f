"""One shard move as a pure state machine, and where readers look for a shard meanwhile.

Theory of operation
-------------------
A move (:class:`~node.dataplane.move_plan.ShardMove`: record, shard ``i``, ``from``, ``to``)
goes through these phases; the driver does what the phase names and feeds back what happened::

    COPY --Copied(h)--> VERIFY --ReadBack(h)--> COMMIT --Committed--> GRACE --LogAt--> DELETE
      ^  CopyFailed        | ReadBack(other)      | Committed(stale, conflict, ...)     | Deleted
      +--------------------+                      v                                     v
                     (attempts run out) -->  ABANDONED                                DONE

* **COPY** -- the driver rebuilds the record from ``k`` shards whose blob hashes to the index's
  content hash, re-encodes shard ``i`` and stores it on ``to``; ``Copied`` carries the SHA-256
  of the shard it sent (a rebuild checked against the content hash, so a corrupt source shard
  never travels).
* **VERIFY** -- the driver reads shard ``i`` back from ``to``; it must hash to that value.
* **COMMIT** -- the driver proposes ``index.move`` (a compare-and-set on the index, see
  :mod:`node.consensus.record_index`) and reports its applied outcome; ``created`` or
  ``existing`` commit the new location at log index ``moved_at``; ``lost`` (no outcome in
  time, e.g. the leader changed) proposes again; anything else abandons the move.
* **GRACE** -- readers that have not applied the move yet still look on ``from``; the old copy
  stays until the applied log has passed ``moved_at + grace_entries`` (log positions, so every
  node agrees on when the grace ends; no local clock).
* **DELETE** -- the driver deletes the old copy on ``from``; **DONE** once it answers.

The one safety rule: the old copy is deleted only after the new location committed and the
grace passed; before that, every failure leaves the index naming the old copy, which was never
touched. An event that does not fit the phase (a duplicate, a late answer) changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from node.consensus.record_index import IndexEntry
from node.dataplane.move_plan import ShardMove
from node.errors import InvalidRequest

__all__ = [
    "Committed",
    "Copied",
    "CopyFailed",
    "Deleted",
    "LogAt",
    "MoveEvent",
    "MovePhase",
    "MoveRules",
    "MoveState",
    "ReadBack",
    "delete_due",
    "read_order",
    "step",
]

COMMITTED_CODES = frozenset({"created", "existing"})


class MovePhase(enum.Enum):
    COPY = "copy"
    VERIFY = "verify"
    COMMIT = "commit"
    GRACE = "grace"
    DELETE = "delete"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class MoveRules:
    grace_entries: int  # log positions the old copy outlives the committed move
    attempts_max: int  # copies or proposals tried before the move is abandoned (re-planned later)

    def __post_init__(self) -> None:
        if self.grace_entries < 0 or self.attempts_max < 1:
            raise InvalidRequest("move rules: grace_entries >= 0 and attempts_max >= 1")


@dataclass(frozen=True, slots=True)
class Copied:
    shard_hash: bytes  # SHA-256 of the shard stored on the target


@dataclass(frozen=True, slots=True)
class CopyFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class ReadBack:
    shard_hash: bytes | None  # what the target holds (None: missing, corrupt, no answer)


@dataclass(frozen=True, slots=True)
class Committed:
    code: str  # the index.move outcome
    moved_at: int = 0  # its log index when the code is created or existing


@dataclass(frozen=True, slots=True)
class LogAt:
    applied_index: int


@dataclass(frozen=True, slots=True)
class Deleted:
    pass


MoveEvent = Copied | CopyFailed | ReadBack | Committed | LogAt | Deleted


@dataclass(frozen=True, slots=True)
class MoveState:
    move: ShardMove
    phase: MovePhase = MovePhase.COPY
    shard_hash: bytes | None = None  # set by Copied
    moved_at: int = 0  # set by Committed
    attempts: int = 0  # failed copies, verifications and lost proposals so far

    @property
    def finished(self) -> bool:
        return self.phase in (MovePhase.DONE, MovePhase.ABANDONED)


def step(state: MoveState, event: MoveEvent, rules: MoveRules) -> MoveState:
    """The state after ``event``; unchanged when the event does not fit the phase."""
    match state.phase, event:
        case MovePhase.COPY, Copied(shard_hash=h):
            return replace(state, phase=MovePhase.VERIFY, shard_hash=h)
        case MovePhase.COPY, CopyFailed():
            return _retry(state, MovePhase.COPY, rules)
        case MovePhase.VERIFY, ReadBack(shard_hash=h):
            if h is not None and h == state.shard_hash:
                return replace(state, phase=MovePhase.COMMIT)
            return _retry(state, MovePhase.COPY, rules)
        case MovePhase.VERIFY, CopyFailed():
            return _retry(state, MovePhase.COPY, rules)
        case MovePhase.COMMIT, Committed(code=code, moved_at=moved_at):
            if code in COMMITTED_CODES and moved_at > 0:
                return replace(state, phase=MovePhase.GRACE, moved_at=moved_at)
            if code == "lost":  # no outcome in time (a leader change): propose again
                return _retry(state, MovePhase.COMMIT, rules)
            # stale or conflict: the index changed under the move; the old copy stays named
            return replace(state, phase=MovePhase.ABANDONED)
        case MovePhase.GRACE, LogAt(applied_index=applied):
            if delete_due(state.moved_at, applied, rules.grace_entries):
                return replace(state, phase=MovePhase.DELETE)
            return state
        case MovePhase.DELETE, Deleted():
            return replace(state, phase=MovePhase.DONE)
    return state


def _retry(state: MoveState, phase: MovePhase, rules: MoveRules) -> MoveState:
    attempts = state.attempts + 1
    if attempts >= rules.attempts_max:
        return replace(state, phase=MovePhase.ABANDONED, attempts=attempts)
    return replace(state, phase=phase, attempts=attempts)


def delete_due(moved_at: int, applied_index: int, grace_entries: int) -> bool:
    """Whether the grace of a move committed at ``moved_at`` is over at ``applied_index``."""
    return applied_index >= moved_at + grace_entries


def read_order(
    entry: IndexEntry, shard: int, applied_index: int, grace_entries: int
) -> tuple[str, ...]:
    """Where to look for shard ``shard``: its committed node, then (while the move's grace
    lasts at this reader's ``applied_index``) the node it moved from."""
    nodes = [entry.shard_nodes[shard]]
    for p in entry.previous:
        if p.shard == shard and not delete_due(p.moved_at, applied_index, grace_entries):
            nodes.append(p.node)
    return tuple(nodes)
