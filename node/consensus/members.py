"""The storage members of the cluster, as a replicated state machine.

Raft's own membership (voters and learners, changed by conf-change entries) says who votes
and who receives the log. This machine says which nodes *placement* puts new shards on, where
each member listens, and the **membership epoch**: a counter that moves with every change and
is recorded in every record index entry (the placement a record was written under). Both kinds
of change go through the log, so every node switches placement at the same log position.

Entry type ``member.put`` (feature version 2: applied only once the log enables it, see
:mod:`node.consensus.state_machine`), body::

    {"peer": peer id, "name": str, "p2p": multiaddr, "http": "host:port",
     "state": "active" | "removed"}

Apply rules, identical on every node:

* an unchanged entry (same name, addresses and state) is ``existing`` and moves nothing;
* otherwise the member is written with the log index of the change and the epoch goes up by
  one (``created`` for a new member, ``updated`` for a known one);
* a removed member may come back (``active`` again): it is a new placement either way;
* a body that does not decode is ``malformed``; nothing is written.

Before the first ``member.put`` the state is empty and every node places over the founding
members of its configuration (the same list on every founding node, epoch 0). The node that
makes the first change writes every founding member first, so from then on the log alone
defines placement (a joining node never falls back to its configuration).

State, under ``mb/``::

    b"mb/epoch"            u64 big-endian: the membership epoch
    b"mb/m/" + peer id     msgpack [1, name, p2p, http, state, since (log index)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, StateView
from node.consensus.types import ConfChangeKind
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "ACTIVE",
    "MEMBER_PUT",
    "PREFIX",
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
ACTIVE = "active"
REMOVED = "removed"
STATES = (ACTIVE, REMOVED)
PEER_CHARS_MAX = 128
NAME_CHARS_MAX = 64
ADDR_CHARS_MAX = 256


def member_key(peer_id: str) -> bytes:
    return MEMBER_PREFIX + peer_id.encode()


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

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise InvalidRequest(f"member state must be one of {STATES}")

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def to_entry(self) -> AppEntry:
        return AppEntry(
            MEMBER_PUT,
            {
                "peer": self.peer_id,
                "name": self.name,
                "p2p": self.p2p_addr,
                "http": self.http_addr,
                "state": self.state,
            },
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Member:
        state = body.get("state")
        if state not in STATES:
            raise UnsupportedFormat(f"member state must be one of {STATES}")
        return cls(
            peer_id=_text(body.get("peer"), "peer", PEER_CHARS_MAX),
            name=_text(body.get("name"), "name", NAME_CHARS_MAX),
            p2p_addr=_text(body.get("p2p"), "p2p address", ADDR_CHARS_MAX),
            http_addr=_text(body.get("http"), "http address", ADDR_CHARS_MAX),
            state=str(state),
        )

    def encode(self) -> bytes:
        fields = [
            MEMBER_VALUE_VERSION,
            self.name,
            self.p2p_addr,
            self.http_addr,
            self.state,
            self.since,
        ]
        raw: bytes = msgpack.packb(fields, use_bin_type=True)
        return raw

    @classmethod
    def decode(cls, peer_id: str, raw: bytes) -> Member:
        fields = msgpack.unpackb(raw, raw=False)
        if not isinstance(fields, list) or not fields or fields[0] != MEMBER_VALUE_VERSION:
            raise UnsupportedFormat(f"unknown member value for {peer_id}")
        _, name, p2p, http, state, since = fields
        return cls(peer_id, name, p2p, http, state, since)

    def same_as(self, other: Member) -> bool:
        return (self.name, self.p2p_addr, self.http_addr, self.state) == (
            other.name,
            other.p2p_addr,
            other.http_addr,
            other.state,
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
        try:
            wanted = Member.from_body(entry.body)
        except (UnsupportedFormat, InvalidRequest) as exc:
            return ApplyOutcome("malformed", {"reason": exc.detail})
        key = member_key(wanted.peer_id)
        raw_known = view.get(key)
        known = Member.decode(wanted.peer_id, raw_known) if raw_known is not None else None
        raw_epoch = view.get(EPOCH_KEY)
        epoch = int.from_bytes(raw_epoch, "big") if raw_epoch else 0
        if known is not None and known.same_as(wanted):
            return ApplyOutcome("existing", {"epoch": epoch, "since": known.since})
        stored = Member(
            wanted.peer_id,
            wanted.name,
            wanted.p2p_addr,
            wanted.http_addr,
            wanted.state,
            position.index,
        )
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
