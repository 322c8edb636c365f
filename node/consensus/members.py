"""The storage members of the cluster, as a replicated state machine.

Raft's own membership (voters and learners, changed by conf-change entries) says who votes
and who receives the log. This machine says which nodes *placement* puts new shards on, where
each member listens, and the **membership epoch**: a counter that moves with every change and
is recorded in every record index entry (the placement a record was written under). Both kinds
of change go through the log, so every node switches placement at the same log position.

Entry type ``member.put`` (feature version 2: applied only once the log enables it, see
:mod:`node.consensus.state_machine`), body::

    {"peer": peer id, "name": str, "p2p": multiaddr, "http": "host:port",
     "state": "active" | "removed" | "rejoining", "incarnation": 32 hex digits (optional)}

Apply rules, identical on every node:

* an unchanged entry (same name, addresses, state and incarnation) is ``existing`` and moves
  nothing;
* otherwise the member is written with the log index of the change and the epoch goes up by
  one (``created`` for a new member, ``updated`` for a known one);
* a removed member may come back (``active`` again): it is a new placement either way;
* a body that does not decode is ``malformed``; nothing is written.

**Incarnations** (log feature version 5). A node's *incarnation* names one life of its data
directory (:mod:`node.incarnation`): a node that lost its disk comes back with a new one. From
feature 5 on, ``member.put`` records the body's ``incarnation``; a body without one keeps the
incarnation already recorded (an operator changing addresses must not erase it). The state
``rejoining`` (also from feature 5) is how a member whose disk was lost comes back under the
same peer id: it stays in placement (so ``too_few_members`` does not block it, and its shards
are still expected on it), but the leader takes it out of Raft (its old vote promises are gone
with its disk), then records it ``active`` again, so it is added back as a learner, caught up
by snapshot, and promoted -- the etcd rule (remove the member, add it again), in that order,
without ever leaving placement short. Before feature 5 both are treated as the code before it
did (the incarnation ignored, ``rejoining`` malformed), so old and new nodes keep identical
state while the log is mixed.

Before the first ``member.put`` the state is empty and every node places over the founding
members of its configuration (the same list on every founding node, epoch 0). The node that
makes the first change writes every founding member first, so from then on the log alone
defines placement (a joining node never falls back to its configuration).

State, under ``mb/``::

    b"mb/epoch"            u64 big-endian: the membership epoch
    b"mb/m/" + peer id     msgpack [1, name, p2p, http, state, since (log index)]
                           or [2, ..., since, incarnation] once one is recorded (a member
                           without one still encodes as version 1, byte for byte)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import msgpack

from node.consensus.state_machine import (
    AppEntry,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    StateView,
)
from node.consensus.types import ConfChangeKind
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "ACTIVE",
    "INCARNATION_FEATURE_VERSION",
    "MEMBER_PUT",
    "PREFIX",
    "REJOINING",
    "REMOVED",
    "Member",
    "MemberStore",
    "Members",
    "members_of",
    "next_conf_change",
]

MEMBER_PUT = "member.put"
PREFIX = b"mb/"
EPOCH_KEY = b"mb/epoch"
MEMBER_PREFIX = b"mb/m/"
MEMBER_VALUE_VERSION = 1
MEMBER_VALUE_VERSION_INCARNATION = 2
INCARNATION_FEATURE_VERSION = 5  # incarnations and the rejoining state need it enabled
ACTIVE = "active"
REMOVED = "removed"
REJOINING = "rejoining"
STATES_V1 = (ACTIVE, REMOVED)  # what the log accepts before feature 5
STATES = (ACTIVE, REMOVED, REJOINING)
INCARNATION_HEX_CHARS = 32
PEER_CHARS_MAX = 128
NAME_CHARS_MAX = 64
ADDR_CHARS_MAX = 256


def member_key(peer_id: str) -> bytes:
    return MEMBER_PREFIX + peer_id.encode()


def valid_incarnation(raw: object) -> bool:
    """32 lowercase hex digits (16 random bytes), or empty (none known)."""
    return isinstance(raw, str) and (
        raw == ""
        or (len(raw) == INCARNATION_HEX_CHARS and all(c in "0123456789abcdef" for c in raw))
    )


def _text(raw: Any, what: str, chars_max: int) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= chars_max:
        raise UnsupportedFormat(f"member {what} must be 1..{chars_max} characters")
    return raw


@dataclass(frozen=True, slots=True)
class Member:
    peer_id: str
    name: str
    p2p_addr: str
    http_addr: str
    state: str = ACTIVE
    since: int = 0  # the log index of the change that wrote this (0: founding configuration)
    incarnation: str = ""  # the data directory's life recorded for it ("" = none known)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise InvalidRequest(f"member state must be one of {STATES}")
        if not valid_incarnation(self.incarnation):
            raise InvalidRequest(f"member incarnation must be {INCARNATION_HEX_CHARS} hex digits")

    @property
    def active(self) -> bool:
        """In placement (a rejoining member still is: it is only out of Raft for a while)."""
        return self.state in (ACTIVE, REJOINING)

    @property
    def in_raft(self) -> bool:
        """Wanted in Raft (as a learner, then a voter)."""
        return self.state == ACTIVE

    def to_entry(self) -> AppEntry:
        body = {
            "peer": self.peer_id,
            "name": self.name,
            "p2p": self.p2p_addr,
            "http": self.http_addr,
            "state": self.state,
        }
        if self.incarnation:  # without one the entry is byte for byte what older code wrote
            body["incarnation"] = self.incarnation
        return AppEntry(MEMBER_PUT, body)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], states: tuple[str, ...] = STATES) -> Member:
        state = body.get("state")
        if state not in states:
            raise UnsupportedFormat(f"member state must be one of {states}")
        incarnation = body.get("incarnation", "")
        if not valid_incarnation(incarnation):
            raise UnsupportedFormat(
                f"member incarnation must be {INCARNATION_HEX_CHARS} lowercase hex digits"
            )
        return cls(
            peer_id=_text(body.get("peer"), "peer", PEER_CHARS_MAX),
            name=_text(body.get("name"), "name", NAME_CHARS_MAX),
            p2p_addr=_text(body.get("p2p"), "p2p address", ADDR_CHARS_MAX),
            http_addr=_text(body.get("http"), "http address", ADDR_CHARS_MAX),
            state=str(state),
            incarnation=str(incarnation),
        )

    def encode(self) -> bytes:
        fields: list[object] = [
            MEMBER_VALUE_VERSION,
            self.name,
            self.p2p_addr,
            self.http_addr,
            self.state,
            self.since,
        ]
        if self.incarnation:
            fields[0] = MEMBER_VALUE_VERSION_INCARNATION
            fields.append(self.incarnation)
        raw: bytes = msgpack.packb(fields, use_bin_type=True)
        return raw

    @classmethod
    def decode(cls, peer_id: str, raw: bytes) -> Member:
        fields = msgpack.unpackb(raw, raw=False)
        if isinstance(fields, list) and len(fields) == 6 and fields[0] == MEMBER_VALUE_VERSION:
            _, name, p2p, http, state, since = fields
            return cls(peer_id, name, p2p, http, state, since)
        if (
            isinstance(fields, list)
            and len(fields) == 7
            and fields[0] == MEMBER_VALUE_VERSION_INCARNATION
        ):
            _, name, p2p, http, state, since, incarnation = fields
            return cls(peer_id, name, p2p, http, state, since, incarnation)
        raise UnsupportedFormat(f"unknown member value for {peer_id}")

    def same_as(self, other: Member) -> bool:
        return (self.name, self.p2p_addr, self.http_addr, self.state, self.incarnation) == (
            other.name,
            other.p2p_addr,
            other.http_addr,
            other.state,
            other.incarnation,
        )


@dataclass(frozen=True, slots=True)
class Members:
    """The committed storage membership: every member known, and the epoch."""

    epoch: int
    members: tuple[Member, ...]  # sorted by peer id

    @property
    def active_ids(self) -> tuple[str, ...]:
        return tuple(m.peer_id for m in self.members if m.active)

    def get(self, peer_id: str) -> Member | None:
        return next((m for m in self.members if m.peer_id == peer_id), None)


class MemberStore(Protocol):
    """Read access to applied state, with a prefix scan (the durable storage offers both)."""

    def state_get(self, key: bytes) -> bytes | None: ...

    def state_items(self, prefix: bytes = b"") -> Iterable[tuple[bytes, bytes]]: ...


def members_of(store: MemberStore) -> Members:
    """The committed membership (epoch 0 and no members before the first change)."""
    raw = store.state_get(EPOCH_KEY)
    epoch = int.from_bytes(raw, "big") if raw else 0
    found = [
        Member.decode(key[len(MEMBER_PREFIX) :].decode(), value)
        for key, value in store.state_items(MEMBER_PREFIX)
    ]
    return Members(epoch, tuple(sorted(found, key=lambda m: m.peer_id)))


class MembersMachine:
    """The ``member.put`` state machine (see the module docstring)."""

    prefix = PREFIX
    entry_types: Mapping[str, int] = {MEMBER_PUT: 2}

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        incarnations = Dispatcher.feature_version(view) >= INCARNATION_FEATURE_VERSION
        body = entry.body
        if not incarnations:
            # Exactly what the code before feature 5 did with the same bytes.
            body = {k: v for k, v in body.items() if k != "incarnation"}
        try:
            wanted = Member.from_body(body, STATES if incarnations else STATES_V1)
        except (UnsupportedFormat, InvalidRequest) as exc:
            return ApplyOutcome("malformed", {"reason": exc.detail})
        key = member_key(wanted.peer_id)
        raw_known = view.get(key)
        known = Member.decode(wanted.peer_id, raw_known) if raw_known is not None else None
        raw_epoch = view.get(EPOCH_KEY)
        epoch = int.from_bytes(raw_epoch, "big") if raw_epoch else 0
        if not wanted.incarnation and known is not None:
            wanted = replace(wanted, incarnation=known.incarnation)
        if known is not None and known.same_as(wanted):
            return ApplyOutcome("existing", {"epoch": epoch, "since": known.since})
        stored = replace(wanted, since=position.index)
        epoch += 1
        return ApplyOutcome(
            "created" if known is None else "updated",
            {"epoch": epoch, "since": position.index},
            ((key, stored.encode()), (EPOCH_KEY, epoch.to_bytes(8, "big"))),
        )


def next_conf_change(
    *,
    voters: Iterable[str],
    learners: Iterable[str],
    active: Iterable[str],
    caught_up: Iterable[str],
    leader: str,
    voters_max: int = 5,
) -> tuple[ConfChangeKind, str] | None:
    """The one Raft membership change that brings Raft closer to the storage membership.

    The leader runs this on every reconcile round and proposes what it returns (Raft takes one
    single-server change at a time). Every active member is in Raft; up to ``voters_max`` of
    them vote and the rest are learners (5 voters: a quorum of 3 survives 2 failures, and
    more voters only add a round trip to every commit). Order: drop learners that left, then
    voters that left (the leader last: it hands over by stepping down once removed), then add
    newcomers as learners, then promote learners that have caught up while votes are short.
    Deterministic: ties break by peer id.
    """
    voting, learning, wanted = set(voters), set(learners), set(active)
    # ``active`` is the members wanted in Raft: a rejoining member is left out, so it is
    # removed first and added back (a learner again) once it is recorded active.
    caught = set(caught_up)
    if not wanted:
        return None  # before the first committed membership: nothing to reconcile
    for peer in sorted(learning - wanted):
        return ConfChangeKind.REMOVE_NODE, peer
    leaving = sorted(voting - wanted, key=lambda p: (p == leader, p))
    if leaving and len(voting) > 1:
        return ConfChangeKind.REMOVE_NODE, leaving[0]
    for peer in sorted(wanted - voting - learning):
        return ConfChangeKind.ADD_LEARNER, peer
    if len(voting) < voters_max:
        for peer in sorted((learning & wanted) & caught):
            return ConfChangeKind.PROMOTE_LEARNER, peer
    return None
