"""Placement by rendezvous hashing: distinct nodes, even spread, minimal movement."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from node.storage.placement import place_shards

peer_ids = st.lists(
    st.text(alphabet="0123456789abcdef", min_size=8, max_size=12),
    min_size=5,
    max_size=12,
    unique=True,
)
record_ids = st.binary(min_size=32, max_size=32)


def _records(count: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]


@given(record_ids, peer_ids, st.integers(min_value=1, max_value=5))
def test_shards_land_on_distinct_members(record_id: bytes, members: list[str], n: int) -> None:
    placed = place_shards(record_id, members, n)
    assert len(placed) == n
    assert len(set(placed)) == n
    assert set(placed) <= set(members)


@given(record_ids, peer_ids)
def test_placement_ignores_member_order(record_id: bytes, members: list[str]) -> None:
    assert place_shards(record_id, members, 5) == place_shards(
        record_id, list(reversed(members)), 5
    )


def test_spread_is_even_over_members() -> None:
    members = [f"peer-{i}" for i in range(8)]
    load: Counter[str] = Counter()
    for record_id in _records(4000):
        load.update(place_shards(record_id, members, 5))
    expected = 4000 * 5 / 8
    for member in members:
        assert abs(load[member] - expected) / expected < 0.05, load


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=5, max_value=10))
def test_join_changes_a_holder_set_by_at_most_the_newcomer(node_count: int) -> None:
    members = [f"peer-{i}" for i in range(node_count)]
    joined = [*members, "newcomer"]
    changed = 0
    for record_id in _records(1500):
        before = set(place_shards(record_id, members, 5))
        after = set(place_shards(record_id, joined, 5))
        if before != after:
            changed += 1
            assert after - before == {"newcomer"} and len(before - after) == 1
    # the newcomer should end up in about n/(N+1) of all holder sets: its fair share
    share = changed / 1500
    assert abs(share - 5 / (node_count + 1)) < 0.06, share


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=6, max_value=10), st.integers(min_value=0, max_value=5))
def test_leave_changes_only_the_sets_that_held_the_leaver(
    node_count: int, leaver_index: int
) -> None:
    members = [f"peer-{i}" for i in range(node_count)]
    leaver = members[leaver_index]
    remaining = [m for m in members if m != leaver]
    for record_id in _records(800):
        before = set(place_shards(record_id, members, 5))
        after = set(place_shards(record_id, remaining, 5))
        if leaver in before:
            assert before - after == {leaver} and len(after - before) == 1
        else:
            assert before == after
