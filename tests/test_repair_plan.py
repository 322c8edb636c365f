"""The repair planner (node/dataplane/repair_plan.py) as tables: what is healthy, what is
rebuilt in place, relocated, left waiting or reported lost, in which order and how much."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence, Set

import pytest

from node.consensus.record_index import IndexEntry, PreviousLocation
from node.dataplane.repair_plan import RepairPlan, RepairRules, ShardRebuild, plan_repairs
from node.errors import InvalidRequest
from node.records import ShardKey
from node.storage.placement import place_shards

NODES = ("n1", "n2", "n3", "n4", "n5", "n6")
RULES = RepairRules(
    node_down_repair_after_ms=60_000, fresh_record_ms=1_000, shards_per_round_max=100,
    grace_entries=10,
)  # fmt: skip
NOW_MS = 1_000_000
FP = b"f" * 32


def rid(i: int) -> bytes:
    return hashlib.sha256(b"record-%d" % i).digest()


def entry(i: int, leader_time_ms: int = 0) -> IndexEntry:
    record_id = rid(i)
    nodes = place_shards(record_id, NODES[:5], 5)
    content_hash = hashlib.sha256(record_id).digest()
    return IndexEntry(record_id, 1, 1, leader_time_ms, content_hash, 3, 5, nodes, 1, "p", FP)


def holding(
    entries: Iterable[IndexEntry], missing: Set[tuple[int, int]] = frozenset()
) -> dict[str, frozenset[ShardKey]]:
    """Every node's inventory when every shard is where the index says, except ``missing``
    (entry position, shard index)."""
    held: dict[str, set[ShardKey]] = {n: set() for n in NODES}
    for pos, e in enumerate(entries):
        for i, node in enumerate(e.shard_nodes):
            if (pos, i) not in missing:
                held[node].add(ShardKey(e.record_id, e.content_hash, i))
    return {n: frozenset(keys) for n, keys in held.items()}


def plan(
    entries: Sequence[IndexEntry],
    inventories: Mapping[str, frozenset[ShardKey]],
    *,
    down: Mapping[str, int] | None = None,
    members: Sequence[str] = NODES[:5],
    applied: int = 100,
    rules: RepairRules = RULES,
    deficit_min: int = 1,
) -> RepairPlan:
    return plan_repairs(
        entries, inventories, down or {}, members, now_ms=NOW_MS, applied_index=applied,
        rules=rules, deficit_min=deficit_min,
    )  # fmt: skip


def test_nothing_to_do_while_every_copy_exists() -> None:
    entries = [entry(i) for i in range(20)]
    result = plan(entries, holding(entries))
    assert result.repairs == () and result.lost == () and dict(result.backlog) == {}
    assert result.deferred == 0 and result.waiting == 0


def test_a_wiped_holder_gets_its_shards_back_in_place() -> None:
    entries = [entry(i) for i in range(10)]
    inventories = holding(entries)
    inventories["n3"] = frozenset()  # came back empty, same placement position
    result = plan(entries, inventories)
    expected = {
        e.record_id: (ShardRebuild(e.shard_nodes.index("n3"), "n3"),)
        for e in entries
        if "n3" in e.shard_nodes
    }
    assert {r.entry.record_id: r.rebuild for r in result.repairs} == expected
    assert all(r.relocate == () and r.healthy == 4 for r in result.repairs)
    assert dict(result.backlog) == {4: len(expected)}


@pytest.mark.parametrize(
    ("missing", "healthy", "rebuilt", "lost"),
    [
        ({0}, 4, 1, False),
        ({0, 3}, 3, 2, False),  # exactly k healthy: still rebuildable
        ({0, 1, 4}, 2, 0, True),  # below k: lost, not "repaired"
        (set(), 5, 0, False),
    ],
)
def test_healthy_counts_rebuilds_and_lost(
    missing: set[int], healthy: int, rebuilt: int, lost: bool
) -> None:
    entries = [entry(7)]
    result = plan(entries, holding(entries, {(0, i) for i in missing}))
    assert result.lost == ((rid(7),) if lost else ())
    assert sum(len(r.rebuild) for r in result.repairs) == rebuilt
    assert all(r.healthy == healthy for r in result.repairs)
    assert dict(result.backlog) == ({} if healthy == 5 else {healthy: 1})


def test_a_corrupt_or_other_version_shard_counts_as_missing() -> None:
    entries = [entry(1)]
    inventories = holding(entries)
    node = entries[0].shard_nodes[2]
    other = ShardKey(rid(1), b"\x01" * 32, 2)  # another version of shard 2, not the indexed one
    inventories[node] = frozenset({other})  # the corrupt entry is simply not listed
    (repair,) = plan(entries, inventories).repairs
    assert repair.rebuild == (ShardRebuild(2, node),)


def test_most_endangered_first_and_the_round_bound() -> None:
    entries = [entry(i) for i in range(6)]
    # records 0-2 miss one shard, record 4 misses two, record 5 misses two
    missing = {(0, 0), (1, 1), (2, 2), (4, 0), (4, 1), (5, 3), (5, 4)}
    result = plan(entries, holding(entries, missing))
    order = [(r.healthy, r.entry.record_id) for r in result.repairs]
    assert order == sorted(order) and [h for h, _ in order] == [3, 3, 4, 4, 4]
    bounded = plan(entries, holding(entries, missing), rules=_rules(shards_per_round_max=5))
    # 2 + 2 fit, then 1: five shards; the last two single-shard records are deferred
    assert [r.healthy for r in bounded.repairs] == [3, 3, 4]
    assert bounded.deferred == 2 and sum(r.shards for r in bounded.repairs) == 5
    tight = plan(entries, holding(entries, missing), rules=_rules(shards_per_round_max=1))
    # the most endangered needs two: nothing less endangered jumps it
    assert tight.repairs == () and tight.deferred == 5
    assert dict(tight.backlog) == {3: 2, 4: 3}


def test_down_time_threshold_waits_then_relocates() -> None:
    entries = [entry(i) for i in range(12)]
    inventories = holding(entries)
    del inventories["n2"]  # did not answer
    on_n2 = [e for e in entries if "n2" in e.shard_nodes]
    members = NODES  # six active members: a candidate to move to exists
    brief = plan(entries, inventories, down={"n2": 59_999}, members=members)
    assert brief.repairs == () and brief.waiting == len(on_n2)
    assert dict(brief.backlog) == {4: len(on_n2)}
    long = plan(entries, inventories, down={"n2": 60_000}, members=members)
    assert len(long.repairs) == len(on_n2) and long.waiting == 0
    for repair in long.repairs:
        (move,) = repair.relocate
        e = repair.entry
        assert move.from_node == "n2" and move.shard == e.shard_nodes.index("n2")
        assert move.to_node not in e.shard_nodes
        assert move.to_node in place_shards(e.record_id, [m for m in NODES if m != "n2"], 5)
        assert repair.rebuild == ()


def test_no_relocation_without_enough_members() -> None:
    entries = [entry(i) for i in range(5)]
    inventories = holding(entries)
    del inventories["n2"]
    result = plan(entries, inventories, down={"n2": 10**9}, members=NODES[:5])
    assert result.repairs == () and result.waiting == len(entries)


def test_fresh_records_and_non_members_are_left_alone() -> None:
    fresh = entry(1, leader_time_ms=NOW_MS - 999)
    old = entry(2, leader_time_ms=NOW_MS - 1_000)
    inventories = holding([fresh, old], {(0, 0), (1, 0)})
    result = plan([fresh, old], inventories)
    assert [r.entry.record_id for r in result.repairs] == [rid(2)]
    leaving = old.shard_nodes[0]
    members = tuple(n for n in NODES if n != leaving)
    assert plan([old], holding([old], {(0, 0)}), members=members).waiting == 1


def test_an_old_copy_past_its_grace_is_listed_for_deletion() -> None:
    e = entry(3)
    moved_from = "n6"
    moved = dataclasses.replace(e, previous=(PreviousLocation(1, moved_from, 50),))
    inventories = holding([moved])
    key = ShardKey(e.record_id, e.content_hash, 1)
    inventories[moved_from] = frozenset({key})
    assert plan([moved], inventories, applied=59).stale_copies == ()  # grace not over
    assert plan([moved], inventories, applied=60).stale_copies == ((moved_from, key),)
    # a placement node holding another shard of the record: the copy can only leak, it goes
    inside = e.shard_nodes[0]
    back = dataclasses.replace(e, previous=(PreviousLocation(1, inside, 50),))
    again = holding([back])
    again[inside] = again[inside] | {key}
    assert plan([back], again, applied=60).stale_copies == ((inside, key),)
    # a placement node holding none: the mover brings the shard back there, it stays
    members = (*NODES[:5], "n6")
    away = next(n for n in place_shards(e.record_id, members, 5) if n not in e.shard_nodes)
    assert away == "n6"  # n6 outranks one of the five for this record
    home = dataclasses.replace(e, previous=(PreviousLocation(1, away, 50),))
    held = holding([home])
    held[away] = frozenset({key})
    kept = plan([home], held, applied=60, members=members)
    assert kept.stale_copies == () and kept.returnable == 1
    assert plan([home], held, applied=60).stale_copies == ((away, key),)  # n6 not a member
    # not while the indexed holder lacks it: the old copy may be the one a reader needs
    inventories[e.shard_nodes[1]] = frozenset()
    assert plan([moved], inventories, applied=60).stale_copies == ()


def _rules(**kw: int) -> RepairRules:
    values = {
        "node_down_repair_after_ms": RULES.node_down_repair_after_ms,
        "fresh_record_ms": RULES.fresh_record_ms,
        "shards_per_round_max": RULES.shards_per_round_max,
        "grace_entries": RULES.grace_entries,
    }
    values.update(kw)
    return RepairRules(**values)


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(InvalidRequest):
        _rules(shards_per_round_max=0)
    with pytest.raises(InvalidRequest):
        _rules(node_down_repair_after_ms=-1)


def test_deficit_min_holds_the_less_endangered_back() -> None:
    entries = [entry(i) for i in range(4)]
    # record 0 misses two shards (deficit 2), records 1 and 2 one each, record 3 none
    missing = {(0, 0), (0, 1), (1, 2), (2, 3)}
    inventories = holding(entries, missing)
    top = plan(entries, inventories, deficit_min=2)
    assert [r.entry.record_id for r in top.repairs] == [rid(0)]
    assert (top.held_back, top.held_back_deficit_max, top.deficit_max) == (2, 1, 2)
    assert dict(top.backlog) == {3: 1, 4: 2}  # held-back records are still counted
    rest = plan(entries, inventories, deficit_min=1)
    assert rest.repairs[0].entry.record_id == rid(0)
    assert len(rest.repairs) == 3 and rest.held_back == 0 and rest.held_back_deficit_max == 0
    healthy = plan(entries, holding(entries), deficit_min=2)
    assert (healthy.held_back, healthy.held_back_deficit_max, healthy.deficit_max) == (0, 0, 0)
