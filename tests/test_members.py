"""The storage-membership state machine (``member.put``), driven by data (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.consensus.members import (
    ACTIVE,
    MEMBER_PUT,
    REMOVED,
    Member,
    MembersMachine,
    members_of,
    next_conf_change,
)
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.consensus.types import ConfChangeKind
from node.errors import InvalidRequest

FIXTURE = Path(__file__).parent / "fixtures" / "members_v1.json"


class Store:
    """Applied state as the durable storage offers it: get and a prefix scan."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def state_get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def state_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(self.data):
            if key.startswith(prefix):
                yield key, self.data[key]


def member(peer: str, state: str = ACTIVE, port: int = 4001) -> Member:
    return Member(
        peer, f"node-{peer}", f"/ip4/127.0.0.1/tcp/{port}", f"127.0.0.1:{port + 1}", state
    )


def run(
    store: Store, entries: list[AppEntry], first_index: int = 10, feature_version_max: int = 2
) -> list[str]:
    dispatcher = Dispatcher([MembersMachine()], feature_version_max=feature_version_max)
    batch = [
        (LogPosition(first_index + i, 1, 1000 + i), encode_app_entry(e))
        for i, e in enumerate(entries)
    ]
    applied, writes = dispatcher.apply_batch(batch, store)
    for key, value in writes:
        if value is None:
            store.data.pop(key, None)
        else:
            store.data[key] = value
    return [a.outcome.code for a in applied]


def enable() -> AppEntry:
    return AppEntry(FEATURE_ENTRY, {"version": 2})


def test_member_put_needs_feature_two_then_every_change_moves_the_epoch() -> None:
    store = Store()
    assert run(store, [member("a").to_entry()]) == ["feature_not_enabled"]
    assert members_of(store).epoch == 0 and members_of(store).members == ()
    codes = run(
        store,
        [
            enable(),
            member("a").to_entry(),
            member("b").to_entry(),
            member("a").to_entry(),  # unchanged: no new epoch
            member("a", port=5001).to_entry(),  # moved address
            member("b", REMOVED).to_entry(),
            member("b").to_entry(),  # back again
        ],
    )
    assert codes == ["created", "created", "created", "existing", "updated", "updated", "updated"]
    found = members_of(store)
    assert found.epoch == 5
    assert found.active_ids == ("a", "b")
    a = found.get("a")
    assert a is not None and a.p2p_addr == "/ip4/127.0.0.1/tcp/5001" and a.since == 14
    b = found.get("b")
    assert b is not None and b.since == 16


def test_removed_members_leave_placement_but_stay_known() -> None:
    store = Store()
    run(store, [enable(), member("a").to_entry(), member("b").to_entry()])
    run(store, [member("a", REMOVED).to_entry()], first_index=20)
    found = members_of(store)
    assert found.active_ids == ("b",)
    assert [m.peer_id for m in found.members] == ["a", "b"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"peer": "a", "name": "n", "p2p": "x", "http": "y", "state": "gone"},
        {"peer": "", "name": "n", "p2p": "x", "http": "y", "state": ACTIVE},
        {"peer": "a", "name": "n" * 65, "p2p": "x", "http": "y", "state": ACTIVE},
        {"peer": "a", "name": "n", "p2p": 7, "http": "y", "state": ACTIVE},
    ],
)
def test_malformed_member_entries_change_nothing(body: dict[str, object]) -> None:
    store = Store()
    run(store, [enable()])
    before = dict(store.data)
    assert run(store, [AppEntry(MEMBER_PUT, body)]) == ["malformed"]
    assert store.data == before


def test_member_state_is_checked() -> None:
    with pytest.raises(InvalidRequest):
        Member("a", "n", "p", "h", "gone")


def test_v1_fixture_decodes_and_applies_identically() -> None:
    """Guards the entry and value formats: a change here breaks every existing cluster."""
    fixture = json.loads(FIXTURE.read_text())
    store = Store()
    entries = [AppEntry(FEATURE_ENTRY, {"version": 2})] + [
        AppEntry(MEMBER_PUT, body) for body in fixture["entries"]
    ]
    payloads = [encode_app_entry(e).hex() for e in entries[1:]]
    assert payloads == fixture["payloads_hex"]
    assert run(store, entries, first_index=fixture["first_index"]) == fixture["codes"]
    assert {k.hex(): v.hex() for k, v in sorted(store.data.items())} == fixture["state_hex"]


@pytest.mark.parametrize(
    ("voters", "learners", "active", "caught_up", "expected"),
    [
        # nothing committed yet, or already in shape
        ("abc", "", "", "", None),
        ("abcde", "f", "abcdef", "f", None),
        # a newcomer is added as a learner first, promoted once caught up while votes are short
        ("abc", "", "abcd", "", (ConfChangeKind.ADD_LEARNER, "d")),
        ("abc", "d", "abcd", "", None),
        ("abc", "d", "abcd", "d", (ConfChangeKind.PROMOTE_LEARNER, "d")),
        # five voters at most: a sixth member stays a learner
        ("abcde", "", "abcdef", "", (ConfChangeKind.ADD_LEARNER, "f")),
        ("abcde", "f", "abcdef", "f", None),
        # leaving members go, learners before voters, the leader ("a") last
        ("abcde", "f", "abcde", "", (ConfChangeKind.REMOVE_NODE, "f")),
        ("abcde", "f", "bcdf", "f", (ConfChangeKind.REMOVE_NODE, "e")),
        ("abcd", "f", "bcdf", "f", (ConfChangeKind.REMOVE_NODE, "a")),
        # a removed voter's place goes to a caught-up learner
        ("bcd", "f", "bcdf", "f", (ConfChangeKind.PROMOTE_LEARNER, "f")),
    ],
)
def test_next_conf_change_reconciles_raft_with_the_storage_membership(
    voters: str,
    learners: str,
    active: str,
    caught_up: str,
    expected: tuple[ConfChangeKind, str] | None,
) -> None:
    got = next_conf_change(
        voters=voters, learners=learners, active=active, caught_up=caught_up, leader="a"
    )
    assert got == expected
