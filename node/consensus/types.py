"""The values the Raft core consumes and produces: entries, hard state, membership, snapshots.

Everything here is a frozen dataclass with a msgpack-friendly ``to_wire()`` (plain dict, list,
bytes, int, str) and a ``from_wire()`` that refuses malformed input with
:class:`~node.errors.PeerProtocolError`. The same encodings serve the wire (messages carry
entries and snapshot metas) and, later, the durable adapter's on-disk records.

Membership changes are single-server: a config-change entry carries the change *and* the whole
membership that results from it, so a node that joins with an empty log learns the full
membership from the first config entry it receives, without the history before it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from node.errors import InvalidRequest, PeerProtocolError

__all__ = [
    "NODE_ID_CHARS_MAX",
    "VOTERS_DEFAULT_MAX",
    "ConfChange",
    "ConfChangeKind",
    "Entry",
    "EntryKind",
    "HardState",
    "Membership",
    "NodeId",
    "ReadState",
    "Rng",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "default_membership",
]

NodeId = str
NODE_ID_CHARS_MAX = 128
VOTERS_DEFAULT_MAX = 5
_INT_MAX = 2**63 - 1


class Rng(Protocol):
    """The only randomness the core uses (election jitter); pass a seeded ``random.Random``.

    A protocol rather than ``random.Random`` itself keeps the core free of the ``random``
    module, so no code path can reach the global generator.
    """

    def randrange(self, start: int, stop: int, /) -> int: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    NORMAL = 0  # payload is a state-machine command (encoded by the state machine's codec)
    CONFIG = 1  # payload is an encoded ConfChange (see ConfChange.encode)
    NOOP = 2  # appended by every new leader so it can commit entries of earlier terms


# -- decoding helpers: every field read goes through one of these, so bounds live in one place


def wire_int(raw: Any, what: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= _INT_MAX:
        raise PeerProtocolError(f"{what} must be a non-negative 64-bit integer")
    return raw


def wire_bytes(raw: Any, what: str, bytes_max: int) -> bytes:
    if not isinstance(raw, bytes):
        raise PeerProtocolError(f"{what} must be bytes")
    if len(raw) > bytes_max:
        raise PeerProtocolError(f"{what} exceeds {bytes_max} bytes")
    return raw


def wire_node_id(raw: Any, what: str) -> NodeId:
    if not isinstance(raw, str) or not 0 < len(raw) <= NODE_ID_CHARS_MAX:
        raise PeerProtocolError(f"{what} must be a node id of 1..{NODE_ID_CHARS_MAX} characters")
    return raw


def wire_map(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PeerProtocolError(f"{what} is not a map")
    return raw


def wire_field(raw: dict[str, Any], key: str, what: str) -> Any:
    if key not in raw:
        raise PeerProtocolError(f"{what} lacks field {key!r}")
    return raw[key]


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``leader_time_ms`` is stamped by the leader from its input, never a clock.

    Leaders keep the stamps non-decreasing along the log (a new leader never stamps below the
    last entry it holds), so state machines can treat them as a deterministic logical time.
    """

    index: int
    term: int
    kind: EntryKind
    payload: bytes
    leader_time_ms: int

    @property
    def size_bytes(self) -> int:
        return len(self.payload) + 32  # fixed overhead keeps empty entries from being free

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, int(self.kind), self.payload, self.leader_time_ms]

    @classmethod
    def from_wire(cls, raw: Any, *, payload_bytes_max: int) -> Entry:
        if not isinstance(raw, list) or len(raw) != 5:
            raise PeerProtocolError("entry is not a list of 5 fields")
        kind = wire_int(raw[2], "entry kind")
        if kind not in EntryKind._value2member_map_:
            raise PeerProtocolError(f"unknown entry kind {kind}")
        return cls(
            index=wire_int(raw[0], "entry index"),
            term=wire_int(raw[1], "entry term"),
            kind=EntryKind(kind),
            payload=wire_bytes(raw[3], "entry payload", payload_bytes_max),
            leader_time_ms=wire_int(raw[4], "entry leader_time_ms"),
        )


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_wire(cls, raw: Any) -> HardState:
        raw = wire_map(raw, "hard state")
        vote = wire_field(raw, "vote", "hard state")
        return cls(
            term=wire_int(wire_field(raw, "term", "hard state"), "term"),
            vote=None if vote is None else wire_node_id(vote, "vote"),
            commit=wire_int(wire_field(raw, "commit", "hard state"), "commit"),
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters decide elections and commits; learners only receive the log. Sorted, disjoint."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.voters))) != self.voters:
            raise InvalidRequest("membership voters must be sorted and unique")
        if tuple(sorted(set(self.learners))) != self.learners:
            raise InvalidRequest("membership learners must be sorted and unique")
        if set(self.voters) & set(self.learners):
            raise InvalidRequest("a node cannot be both voter and learner")

    @classmethod
    def of(cls, voters: Iterable[NodeId], learners: Iterable[NodeId] = ()) -> Membership:
        return cls(tuple(sorted(set(voters))), tuple(sorted(set(learners))))

    @property
    def members(self) -> tuple[NodeId, ...]:
        return tuple(sorted(self.voters + self.learners))

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_voter(self, node_id: NodeId) -> bool:
        return node_id in self.voters

    def is_member(self, node_id: NodeId) -> bool:
        return node_id in self.voters or node_id in self.learners

    def apply(self, change: ConfChange) -> Membership:
        """The membership after one single-server change; refuses no-ops and illegal moves."""
        voters, learners = set(self.voters), set(self.learners)
        node = change.node_id
        match change.kind:
            case ConfChangeKind.ADD_VOTER:
                if node in voters:
                    raise InvalidRequest(f"{node} is already a voter")
                learners.discard(node)
                voters.add(node)
            case ConfChangeKind.PROMOTE_LEARNER:
                if node not in learners:
                    raise InvalidRequest(f"{node} is not a learner")
                learners.discard(node)
                voters.add(node)
            case ConfChangeKind.ADD_LEARNER:
                if node in voters or node in learners:
                    raise InvalidRequest(f"{node} is already a member")
                learners.add(node)
            case ConfChangeKind.REMOVE_NODE:
                if node not in voters and node not in learners:
                    raise InvalidRequest(f"{node} is not a member")
                voters.discard(node)
                learners.discard(node)
        if not voters:
            raise InvalidRequest("a membership change cannot remove the last voter")
        return Membership.of(voters, learners)

    def to_wire(self) -> dict[str, Any]:
        return {"voters": list(self.voters), "learners": list(self.learners)}

    @classmethod
    def from_wire(cls, raw: Any) -> Membership:
        raw = wire_map(raw, "membership")
        voters, learners = wire_field(raw, "voters", "m"), wire_field(raw, "learners", "m")
        if not isinstance(voters, list) or not isinstance(learners, list):
            raise PeerProtocolError("membership voters/learners must be lists")
        if len(voters) + len(learners) > 4096:
            raise PeerProtocolError("membership too large")
        try:
            return cls(
                tuple(wire_node_id(v, "voter") for v in voters),
                tuple(wire_node_id(v, "learner") for v in learners),
            )
        except InvalidRequest as exc:
            raise PeerProtocolError(f"malformed membership: {exc.detail}") from exc


def default_membership(node_ids: Iterable[NodeId]) -> Membership:
    """Up to 5 nodes: all voters. More: the first 5 in sorted order vote, the rest learn.

    Five voters tolerate two failures; more voters only slow every commit down.
    """
    ordered = sorted(set(node_ids))
    return Membership.of(ordered[:VOTERS_DEFAULT_MAX], ordered[VOTERS_DEFAULT_MAX:])


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2
    PROMOTE_LEARNER = 3


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change and the membership it produces."""

    kind: ConfChangeKind
    node_id: NodeId
    result: Membership = Membership()

    def encode(self) -> bytes:
        raw = {"v": 1, "k": int(self.kind), "n": self.node_id, "m": self.result.to_wire()}
        return msgpack.packb(raw, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, payload: bytes) -> ConfChange:
        try:
            raw = wire_map(msgpack.unpackb(payload, raw=False), "conf change")
        except (ValueError, msgpack.UnpackException) as exc:
            raise PeerProtocolError(f"malformed conf change: {exc}") from exc
        if raw.get("v") != 1:
            raise PeerProtocolError(f"unknown conf change version {raw.get('v')!r}")
        kind = wire_int(wire_field(raw, "k", "conf change"), "conf change kind")
        if kind not in ConfChangeKind._value2member_map_:
            raise PeerProtocolError(f"unknown conf change kind {kind}")
        return cls(
            ConfChangeKind(kind),
            wire_node_id(wire_field(raw, "n", "conf change"), "conf change node"),
            Membership.from_wire(wire_field(raw, "m", "conf change")),
        )


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and the membership in force at that point.

    ``time_ms`` is the leader stamp of the entry at ``index``: a log compacted to its end
    still knows the last stamp, so the next leader never stamps below it. Optional in stored
    and sent metas (older ones lack it: 0).
    """

    index: int
    term: int
    membership: Membership
    time_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        raw = {"index": self.index, "term": self.term, "m": self.membership.to_wire()}
        if self.time_ms:
            raw["time"] = self.time_ms
        return raw

    @classmethod
    def from_wire(cls, raw: Any) -> SnapshotMeta:
        raw = wire_map(raw, "snapshot meta")
        return cls(
            index=wire_int(wire_field(raw, "index", "snapshot meta"), "snapshot index"),
            term=wire_int(wire_field(raw, "term", "snapshot meta"), "snapshot term"),
            membership=Membership.from_wire(wire_field(raw, "m", "snapshot meta")),
            time_ms=wire_int(raw.get("time", 0), "snapshot time"),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine's state up to ``meta.index``; ``data`` is opaque to the core."""

    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes
