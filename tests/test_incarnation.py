"""Incarnations (issue 17, part 3): the data directory's life file, the member value and
``member.put`` rules under log feature 5, the start-up decision of a fresh node, and the Raft
core taking a peer id out and back in (how a member that lost its disk comes back)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import msgpack
import pytest
from aiohttp import web
from test_members import Store, member, run

from node.api.wire import INCARNATION_PATH
from node.config import ClusterMember
from node.consensus.cluster import Cluster
from node.consensus.config import RaftConfig
from node.consensus.incarnation import REFUSE, START, WAIT, PeerView, start_decision
from node.consensus.members import (
    ACTIVE,
    MEMBER_PUT,
    REJOINING,
    Member,
    member_key,
    members_of,
    next_conf_change,
)
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    encode_app_entry,
)
from node.consensus.types import ConfChangeKind, EntryKind, Membership
from node.errors import ConfigError, OperationFailed, UnsupportedFormat
from node.incarnation import (
    INCARNATION_FILE,
    confirm_not_former_member,
    establish,
    read_incarnation,
    write_incarnation,
)

FIXTURE = Path(__file__).parent / "fixtures" / "members_v5.json"
OLD = "0" * 31 + "1"
NEW = "ab" * 16


def enable(version: int) -> AppEntry:
    return AppEntry(FEATURE_ENTRY, {"version": version})


def run5(store: Store, entries: list[AppEntry], first_index: int = 10) -> list[str]:
    """Apply as a node that understands log feature 5."""
    return run(store, entries, first_index, feature_version_max=5)


def with_incarnation(peer: str, incarnation: str, state: str = ACTIVE) -> AppEntry:
    body = dict(member(peer, state).to_entry().body)
    body["incarnation"] = incarnation
    return AppEntry(MEMBER_PUT, body)


# -- the file


def test_a_fresh_raft_database_always_gets_a_new_incarnation(tmp_path: Path) -> None:
    first = establish(tmp_path, raft_fresh=True)
    assert read_incarnation(tmp_path) == first and len(first) == 32
    # A wiped raft database next to the leftover file is a new life, not the old one.
    second = establish(tmp_path, raft_fresh=True)
    assert second != first and read_incarnation(tmp_path) == second
    # A restart with its raft state keeps it.
    assert establish(tmp_path, raft_fresh=False) == second
    assert establish(tmp_path, raft_fresh=False) == second


def test_a_node_upgraded_from_before_incarnations_writes_one_and_keeps_it(tmp_path: Path) -> None:
    assert read_incarnation(tmp_path) is None
    made = establish(tmp_path, raft_fresh=False, new_id=lambda: NEW)
    assert made == NEW and establish(tmp_path, raft_fresh=False) == NEW


def test_the_file_is_written_atomically_and_checked(tmp_path: Path) -> None:
    write_incarnation(tmp_path, OLD)
    write_incarnation(tmp_path, NEW)
    # Replaced by a rename: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [INCARNATION_FILE]
    assert read_incarnation(tmp_path) == NEW
    (tmp_path / INCARNATION_FILE).write_text("something else\n")
    with pytest.raises(UnsupportedFormat):
        read_incarnation(tmp_path)


# -- the member value


def test_member_values_v1_and_v2_decode_and_v1_stays_byte_for_byte() -> None:
    plain = Member("a", "n", "/ip4/127.0.0.1/tcp/1", "127.0.0.1:2", ACTIVE, 7)
    legacy = msgpack.packb([1, "n", "/ip4/127.0.0.1/tcp/1", "127.0.0.1:2", "active", 7])
    assert plain.encode() == legacy and Member.decode("a", legacy) == plain
    lived = Member("a", "n", "/ip4/127.0.0.1/tcp/1", "127.0.0.1:2", ACTIVE, 7, NEW)
    raw = lived.encode()
    assert msgpack.unpackb(raw)[0] == 2 and Member.decode("a", raw) == lived
    with pytest.raises(UnsupportedFormat):
        Member.decode("a", msgpack.packb([3, "n", "p", "h", "active", 7, NEW]))
    # Without an incarnation, an entry is what the code before it wrote.
    assert "incarnation" not in plain.to_entry().body
    assert lived.to_entry().body["incarnation"] == NEW


def test_before_feature_five_incarnations_and_rejoining_are_ignored_as_old_code_did() -> None:
    store = Store()
    codes = run5(
        store,
        [
            enable(2),
            with_incarnation("a", NEW),
            member("b").to_entry(),
            with_incarnation("b", NEW, REJOINING),
        ],
    )
    assert codes == ["created", "created", "created", "malformed"]
    # The state old nodes hold for the same entries: no incarnation, v1 values.
    old_store = Store()
    assert run(old_store, [AppEntry(FEATURE_ENTRY, {"version": 2}), member("a").to_entry()]) == [
        "created",
        "created",
    ]
    assert store.data[member_key("a")] == old_store.data[member_key("a")]
    assert members_of(store).get("a") == members_of(old_store).get("a")


def test_from_feature_five_incarnations_are_recorded_and_kept_when_a_body_omits_them() -> None:
    store = Store()
    assert run5(store, [enable(5), with_incarnation("a", OLD)]) == ["created", "created"]
    assert members_of(store).get("a").incarnation == OLD  # type: ignore[union-attr]
    assert run5(store, [with_incarnation("a", OLD)], 20) == ["existing"]
    # An operator changing the address (no incarnation in the body) keeps it.
    moved = AppEntry(MEMBER_PUT, {**member("a").to_entry().body, "http": "127.0.0.1:9"})
    assert run5(store, [moved], 30) == ["updated"]
    found = members_of(store).get("a")
    assert found is not None and found.incarnation == OLD and found.http_addr == "127.0.0.1:9"
    assert run5(store, [AppEntry(MEMBER_PUT, {**moved.body, "incarnation": NEW})], 40) == [
        "updated"
    ]
    assert members_of(store).get("a").incarnation == NEW  # type: ignore[union-attr]
    bad = AppEntry(MEMBER_PUT, {**moved.body, "incarnation": "XYZ"})
    assert run5(store, [bad], 50) == ["malformed"]


def test_a_rejoining_member_stays_in_placement_but_leaves_raft_then_comes_back() -> None:
    store = Store()
    run5(store, [enable(5), *(member(p).to_entry() for p in "abcde")])
    run5(store, [AppEntry(MEMBER_PUT, {**member("c").to_entry().body, "state": REJOINING})], 20)
    found = members_of(store)
    assert found.active_ids == tuple("abcde")  # placement unchanged: no too_few_members
    in_raft = [m.peer_id for m in found.members if m.in_raft]
    assert next_conf_change(
        voters="abcde", learners="", active=in_raft, caught_up="", leader="a"
    ) == (ConfChangeKind.REMOVE_NODE, "c")
    # Once out of Raft it is recorded active again, and added back as a learner first.
    run5(store, [member("c").to_entry()], 30)
    in_raft = [m.peer_id for m in members_of(store).members if m.in_raft]
    assert next_conf_change(
        voters="abde", learners="", active=in_raft, caught_up="", leader="a"
    ) == (ConfChangeKind.ADD_LEARNER, "c")


def test_v5_fixture_decodes_and_applies_identically() -> None:
    """Guards the feature-5 entry and value formats (as members_v1.json does for v1)."""
    fixture = json.loads(FIXTURE.read_text())
    store = Store()
    entries = [enable(5)] + [AppEntry(MEMBER_PUT, body) for body in fixture["entries"]]
    payloads = [encode_app_entry(e).hex() for e in entries[1:]]
    assert payloads == fixture["payloads_hex"]
    assert run5(store, entries, first_index=fixture["first_index"]) == fixture["codes"]
    assert {k.hex(): v.hex() for k, v in sorted(store.data.items())} == fixture["state_hex"]


# -- the start-up decision


def view(peer: str, recorded: str = "", fresh: bool = False) -> PeerView:
    return PeerView(peer, fresh, recorded)


@pytest.mark.parametrize(
    ("answers", "verdict"),
    [
        # a brand new cluster: every other founder answers, all fresh
        ([view(p, fresh=True) for p in "bcde"], START),
        # a peer records another incarnation: this node lived before and lost its disk
        ([view("b", OLD), view("c"), view("d"), view("e")], REFUSE),
        ([view("b", OLD)], REFUSE),
        ([view("b", fresh=True), view("c", OLD)], REFUSE),
        # a majority answered (with this node: 3 of 5), none records it: a founder that never ran
        ([view("b"), view("c")], START),
        ([view("b", fresh=True), view("c")], START),
        # too few answered: wait, never vote while unsure
        ([view("b")], WAIT),
        ([], WAIT),
        # its own incarnation recorded (cannot come from a fresh node, but is not another life)
        ([view("b", NEW), view("c", NEW)], START),
    ],
)
def test_start_decision(answers: list[PeerView], verdict: str) -> None:
    decision = start_decision(incarnation=NEW, founders=5, answers=answers)
    assert decision.verdict == verdict, decision
    if verdict == REFUSE:
        assert decision.recorded == OLD


def test_a_single_founder_starts_alone() -> None:
    assert start_decision(incarnation=NEW, founders=1, answers=[]).verdict == START


# -- the Raft core takes the same peer id out and back in


def test_raft_removes_a_wiped_voter_and_adds_the_same_id_back_as_a_new_member() -> None:
    ids = ["a", "b", "c", "d"]
    cluster = Cluster(ids, rng=random.Random(3), config=lambda n: RaftConfig(n))
    cluster.elect("a")
    cluster.propose("a", b"before")
    cluster.settle(3)
    cluster.crash("d")  # its disk is lost: it must not come back as the voter it was
    core = cluster.core("a")
    core.propose_change(ConfChangeKind.REMOVE_NODE, "d", now_ms=1)
    cluster.settle(3)
    assert core.membership == Membership.of(["a", "b", "c"])
    cluster.join("d")  # a fresh, empty node under the same id (join_existing)
    core.propose_change(ConfChangeKind.ADD_LEARNER, "d", now_ms=2)
    cluster.settle(3)
    assert cluster.core("d").membership == Membership.of(["a", "b", "c"], ["d"])
    core.propose_change(ConfChangeKind.PROMOTE_LEARNER, "d", now_ms=3)
    cluster.settle(3)
    cluster.propose("a", b"after")
    cluster.settle(3)
    applied = [p for _, _, kind, p in cluster.machine("d").applied if kind == EntryKind.NORMAL]
    assert applied == [b"before", b"after"]
    assert cluster.core("d").membership == Membership.of(ids)


# -- the start-up check over HTTP (in process, on loopback)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def founders(count: int) -> list[ClusterMember]:
    return [
        ClusterMember(f"node-{i}", f"peer-{i}", f"/ip4/127.0.0.1/tcp/{port}", f"127.0.0.1:{port}")
        for i, port in enumerate(free_ports(count))
    ]


async def check(me: ClusterMember, members: list[ClusterMember], timeout_s: float = 20.0) -> str:
    decision = await confirm_not_former_member(
        me=me.peer_id,
        incarnation=NEW,
        founders=members,
        http_listen=me.http_addr,
        api_token="t",
        timeout_s=timeout_s,
        retry_s=0.05,
        request_timeout_s=1.0,
    )
    return decision.verdict


async def test_a_brand_new_cluster_whose_nodes_all_check_at_once_starts() -> None:
    members = founders(3)
    verdicts = await asyncio.gather(*(check(m, members) for m in members))
    assert verdicts == [START, START, START]


async def test_a_fresh_node_a_peer_remembers_refuses_and_one_alone_gives_up() -> None:
    members = founders(3)

    async def remembers(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t"
        return web.json_response({"peer_id": "peer-1", "fresh": False, "recorded": OLD})

    app = web.Application()
    app.router.add_get(INCARNATION_PATH + "/{peer}", remembers)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(members[1].http_addr.split(":")[1])).start()
    try:
        with pytest.raises(ConfigError) as refused:
            await check(members[0], members)
        assert refused.value.code == "former_member" and OLD in refused.value.detail
        assert "rejoin-node" in refused.value.detail
    finally:
        await runner.cleanup()
    # Nobody answers: 1 of 3 is no majority; it never starts, and gives up at the deadline.
    with pytest.raises(OperationFailed) as unsure:
        await check(members[0], members, timeout_s=0.5)
    assert unsure.value.code == "former_member_check_timeout"
