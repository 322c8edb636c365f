"""The data plane's sans-IO cores: write quorum decisions, move planning, the move lifecycle."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus.record_index import IndexEntry, PreviousLocation
from node.dataplane import (
    MovePhase,
    MoveRules,
    MoveState,
    ShardMove,
    WriteQuorum,
    WriteTally,
    WriteVerdict,
    plan_moves,
    plan_record,
    read_order,
    step,
)
from node.dataplane.shard_move import Committed, Copied, CopyFailed, Deleted, LogAt, ReadBack
from node.errors import InvalidRequest
from node.storage.placement import place_shards

NODES = ("n1", "n2", "n3", "n4", "n5")


# -- the write quorum


@pytest.mark.parametrize(
    ("k", "n", "write_quorum"),
    [(3, 5, 2), (3, 5, 6), (0, 5, 3), (2, 5, 3), (1, 3, 2)],  # below k, above n, k=0, <= n-k
)
def test_write_quorum_refuses_unsafe_settings(k: int, n: int, write_quorum: int) -> None:
    with pytest.raises(InvalidRequest):
        WriteQuorum(k, n, write_quorum)


def test_write_tally_decides_ack_wait_fail() -> None:
    tally = WriteTally(WriteQuorum(3, 5, 4), NODES)
    rows = [
        ("stored", 0, WriteVerdict.WAIT),
        ("stored", 0, WriteVerdict.WAIT),  # a duplicate answer counts once
        ("refused", 1, WriteVerdict.WAIT),
        ("stored", 2, WriteVerdict.WAIT),
        ("stored", 3, WriteVerdict.WAIT),  # 3 stored: k, but below the write quorum
        ("refused", 0, WriteVerdict.WAIT),  # a late refusal cannot undo a durable shard
        ("stored", 4, WriteVerdict.ACK),
    ]
    for answer, shard, verdict in rows:
        tally = tally.on_stored(shard) if answer == "stored" else tally.on_refused(shard)
        assert tally.verdict is verdict, (answer, shard)
    assert tally.unanswered == () and tally.refused == frozenset({1})


def test_write_tally_fails_once_the_quorum_is_out_of_reach() -> None:
    tally = WriteTally(WriteQuorum(3, 5, 4), NODES).on_stored(0).on_refused(1)
    assert tally.verdict is WriteVerdict.WAIT and tally.unanswered == (2, 3, 4)
    assert tally.on_refused(2).verdict is WriteVerdict.FAIL
    assert tally.on_stored(1).refused == frozenset()  # a retry that stored wins
    with pytest.raises(InvalidRequest):
        tally.on_stored(5)
    with pytest.raises(InvalidRequest):
        WriteTally(WriteQuorum(3, 5, 4), ("n1", "n1", "n2", "n3", "n4"))


# -- move planning


def entry(record_id: bytes, nodes: tuple[str, ...], k: int = 3) -> IndexEntry:
    return IndexEntry(
        record_id, 1, 1, 0, hashlib.sha256(record_id).digest(), k, len(nodes), nodes, 0, "p", b""
    )


def placed(count: int, members: tuple[str, ...], n: int) -> list[IndexEntry]:
    rids = [hashlib.sha256(b"r%d" % i).digest() for i in range(count)]
    return [entry(rid, place_shards(rid, members, n)) for rid in rids]


def test_a_sixth_node_moves_about_a_sixth_of_the_shards() -> None:
    entries = placed(3000, NODES, 5)
    moves = plan_moves(entries, (*NODES, "n6"))
    fraction = len(moves) / (3000 * 5)
    assert abs(fraction - 1 / 6) < 0.02, fraction
    assert all(m.to_node == "n6" for m in moves)
    assert len({m.record_id for m in moves}) == len(moves)  # one shard per record at most


def test_a_join_on_a_larger_cluster_moves_about_one_over_members() -> None:
    members = tuple(f"n{i}" for i in range(1, 9))
    entries = placed(3000, members, 5)
    moves = plan_moves(entries, (*members, "n9"))
    assert abs(len(moves) / (3000 * 5) - 1 / 9) < 0.02


def test_a_removal_moves_exactly_the_removed_nodes_shards() -> None:
    members = (*NODES, "n6", "n7")
    entries = placed(500, members, 5)
    after = tuple(m for m in members if m != "n4")
    moves = plan_moves(entries, after)
    held = sum("n4" in e.shard_nodes for e in entries)
    assert len(moves) == held and all(m.from_node == "n4" for m in moves)
    for m in moves:
        source = next(e for e in entries if e.record_id == m.record_id)
        assert source.shard_nodes[m.shard] == "n4"
        assert m.to_node not in source.shard_nodes


def test_records_already_in_place_and_too_small_memberships_move_nothing() -> None:
    (one,) = placed(1, NODES, 5)
    assert plan_record(one, NODES) == ()
    assert plan_record(one, NODES[:4]) == ()  # 4 members cannot hold 5 shards: stay put


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=3, max_size=9, unique=True),
    st.integers(1, 4),
    st.binary(min_size=1, max_size=8),
    st.integers(0, 30),
)
def test_applying_a_plan_reaches_the_placement_and_keeps_holders_distinct(
    ids: list[int], n_less: int, rid: bytes, newcomer: int
) -> None:
    before = tuple(f"m{i}" for i in ids)
    n = max(1, len(before) - n_less)
    start = entry(rid, place_shards(rid, before, n), k=1)
    after = tuple(sorted({*before[1:], f"m{newcomer}"}))
    nodes = list(start.shard_nodes)
    for m in plan_record(start, after):
        assert nodes[m.shard] == m.from_node
        nodes[m.shard] = m.to_node
    if len(after) >= n:
        assert set(nodes) == set(place_shards(rid, after, n))
    assert len(set(nodes)) == n


# -- the move lifecycle

RULES = MoveRules(grace_entries=5, attempts_max=3)
MOVE = ShardMove(b"r" * 32, b"c" * 32, 2, "n3", "n6")


def run(events: list[object], state: MoveState | None = None) -> MoveState:
    state = state or MoveState(MOVE)
    for event in events:
        state = step(state, event, RULES)  # type: ignore[arg-type]
    return state


def test_a_move_goes_copy_verify_commit_grace_delete_done() -> None:
    phases = []
    state = MoveState(MOVE)
    for event in [
        Copied(b"h"),
        ReadBack(b"h"),
        Committed("created", 40),
        LogAt(44),  # the grace is not over: the old copy stays
        LogAt(45),
        Deleted(),
    ]:
        state = step(state, event, RULES)
        phases.append(state.phase)
    assert phases == [
        MovePhase.VERIFY,
        MovePhase.COMMIT,
        MovePhase.GRACE,
        MovePhase.GRACE,
        MovePhase.DELETE,
        MovePhase.DONE,
    ]
    assert state.moved_at == 40 and state.finished


def test_events_out_of_phase_change_nothing() -> None:
    state = MoveState(MOVE)
    for event in [ReadBack(b"h"), Committed("created", 3), LogAt(100), Deleted()]:
        assert step(state, event, RULES) == state  # the old copy is never deleted early
    grace = run([Copied(b"h"), ReadBack(b"h"), Committed("created", 40)])
    assert step(grace, Deleted(), RULES) == grace
    assert step(grace, Copied(b"x"), RULES) == grace


def test_a_bad_read_back_copies_again_and_attempts_run_out() -> None:
    state = run([Copied(b"h"), ReadBack(b"other")])
    assert state.phase is MovePhase.COPY and state.attempts == 1
    state = run([CopyFailed("fewer than k intact shards")], state)
    assert state.phase is MovePhase.COPY and state.attempts == 2
    state = run([CopyFailed("the target did not answer")], state)
    assert state.phase is MovePhase.ABANDONED and state.attempts == 3  # re-planned later


@pytest.mark.parametrize(
    ("code", "phase"),
    [
        ("existing", MovePhase.GRACE),  # a retried proposal: committed all the same
        ("stale", MovePhase.ABANDONED),
        ("conflict", MovePhase.ABANDONED),
        ("feature_not_enabled", MovePhase.ABANDONED),
        ("lost", MovePhase.COMMIT),  # no outcome in time: propose again
    ],
)
def test_commit_outcomes(code: str, phase: MovePhase) -> None:
    state = run([Copied(b"h"), ReadBack(b"h"), Committed(code, 9)])
    assert state.phase is phase


def test_readers_fall_back_to_the_previous_location_during_the_grace() -> None:
    moved = IndexEntry(
        b"r" * 32,
        1,
        1,
        0,
        b"c" * 32,
        3,
        5,
        ("n1", "n2", "n6", "n4", "n5"),
        0,
        "p",
        b"",
        (PreviousLocation(2, "n3", 40),),
    )
    assert read_order(moved, 2, applied_index=44, grace_entries=5) == ("n6", "n3")
    assert read_order(moved, 2, applied_index=45, grace_entries=5) == ("n6",)
    assert read_order(moved, 0, applied_index=41, grace_entries=5) == ("n1",)
