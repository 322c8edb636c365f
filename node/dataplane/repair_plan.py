"""Repair planning: which shards of a page of indexed records must be rebuilt, and where.

Theory of operation
-------------------
The leader's repairer (:mod:`node.repair`) walks the record index a page at a time and asks
every holder the page names which shards it really holds, intact (an inventory: the shard
store lists only entries that pass their checksum, so a corrupt shard is a missing one). This
core turns one page, those inventories and what the repairer knows of each node's liveness
into a plan. For shard ``i`` of a record, held per the index by ``node``:

* **healthy** -- ``node`` answered and holds ``(record, indexed version, i)``;
* **repair in place** -- ``node`` answered, is an active member and lacks it (a wiped or
  replaced node that came back at the same placement position, a corrupt or lost entry):
  rebuild shard ``i`` from ``k`` healthy shards and put it back on ``node``; the index does
  not change, so no log entry is needed;
* **relocate** -- ``node`` has not answered for at least ``node_down_repair_after_ms``: the
  shard moves to the next placement candidate over the active members without the gone
  nodes (an ``index.move`` through the log, as the mover's moves: it is a
  :class:`~node.dataplane.move_plan.ShardMove`);
* **waiting** -- ``node`` has not answered for a shorter time (a restart, a blip): nothing yet.

Shards whose holder is not an active member are the mover's business (a leaving node drains
through moves) and are left alone here; so are records younger than ``fresh_record_ms`` by
the leader's clock, whose last shards may still be on their way (background puts after the
write quorum, hinted handoff): a hint that lands later is the same bytes under the same key,
so a repair racing it would only rewrite an identical entry, but it would be wasted work.

A record with fewer than ``k`` healthy shards cannot be rebuilt from what answered: it is
reported **lost** (not repaired; it may come back when a waiting node does). Records below
``n`` are planned fewest healthy first (the most endangered), and a plan holds at most
``shards_per_round_max`` shard rebuilds; what did not fit is ``deferred`` (the repairer plans
the same page again). ``backlog`` counts every record of the page below ``n`` by its healthy
count, planned or not.

Most endangered first across the whole index, not just within a page: a record's *deficit*
is ``n - healthy``; only records whose deficit is at least ``deficit_min`` are planned, the
others are ``held_back`` (``held_back_deficit_max`` is the largest deficit among them) and
``deficit_max`` is the largest deficit among the records with work. The repairer starts a
pass at 1, raises ``deficit_min`` when a page shows a larger deficit (from then on nothing
less endangered is rebuilt in the pass), and runs the next pass at once with the held-back
records' largest deficit.

Old copies: a node may still hold a shard the index moved away from it (a mover's old copy
whose deletion a former leader forgot). Once the move's grace is over (``grace_entries`` past
it at ``applied_index``) and the shard is healthy on its indexed holder, the copy is listed in
``stale_copies`` for deletion, so it is not leaked -- unless the node is in the record's
placement over the active members and holds no other shard of it (a relocation's source that
came back): the mover brings the shard back there, onto the same key; such copies are
counted as ``returnable`` so that the repairer can ask the mover for a pass.

Pure: no I/O, no clock (``now_ms`` and the down times are inputs), no randomness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.consensus.record_index import IndexEntry
from node.dataplane.move_plan import ShardMove, plan_record
from node.dataplane.shard_move import delete_due
from node.errors import InvalidRequest
from node.records import ShardKey
from node.storage.placement import place_shards

__all__ = [
    "RecordRepair",
    "RepairPlan",
    "RepairRules",
    "ShardRebuild",
    "plan_repairs",
]


@dataclass(frozen=True, slots=True)
class RepairRules:
    node_down_repair_after_ms: int  # a holder silent this long has its shards relocated
    fresh_record_ms: int  # records younger than this (leader time) are not planned yet
    shards_per_round_max: int  # shard rebuilds (in place + relocations) in one plan
    grace_entries: int  # as the mover's: an old copy outlives its move by this many positions

    def __post_init__(self) -> None:
        if self.node_down_repair_after_ms < 0 or self.fresh_record_ms < 0:
            raise InvalidRequest("repair rules: times are >= 0")
        if self.shards_per_round_max < 1 or self.grace_entries < 0:
            raise InvalidRequest("repair rules: shards_per_round_max >= 1, grace_entries >= 0")


@dataclass(frozen=True, slots=True)
class ShardRebuild:
    """Rebuild shard ``shard`` of the indexed version and put it on ``node`` (its holder)."""

    shard: int
    node: str


@dataclass(frozen=True, slots=True)
class RecordRepair:
    entry: IndexEntry
    healthy: int  # shards held intact where the index says
    rebuild: tuple[ShardRebuild, ...]  # in place, the index unchanged
    relocate: tuple[ShardMove, ...]  # off a node gone too long, through index.move

    @property
    def shards(self) -> int:
        return len(self.rebuild) + len(self.relocate)


@dataclass(frozen=True, slots=True)
class RepairPlan:
    repairs: tuple[RecordRepair, ...]  # fewest healthy first, at most shards_per_round_max
    lost: tuple[bytes, ...]  # record ids with fewer than k healthy shards
    waiting: int  # records below n only because a holder is briefly away
    deferred: int  # records with work left out by the bound (plan the page again)
    held_back: int  # records with work whose deficit is below deficit_min
    held_back_deficit_max: int  # the largest deficit among them (0: none)
    deficit_max: int  # the largest deficit among the records with work (0: none)
    backlog: Mapping[int, int]  # healthy count -> records of the page below n
    stale_copies: tuple[tuple[str, ShardKey], ...]  # (node, shard) old copies to delete
    # Old copies kept on a placement node holding no shard of their record: the mover should
    # bring the shard back there (a pass over the index is due).
    returnable: int = 0


def plan_repairs(
    entries: Sequence[IndexEntry],
    inventories: Mapping[str, frozenset[ShardKey]],
    down_for_ms: Mapping[str, int],
    members: Sequence[str],
    *,
    now_ms: int,
    applied_index: int,
    rules: RepairRules,
    deficit_min: int = 1,
) -> RepairPlan:
    """Plan one page. ``inventories``: per node that answered, the intact shards it holds of
    the page's records; ``down_for_ms``: per node that did not, how long it has been silent;
    ``members``: the active storage members; ``deficit_min``: plan only records missing at
    least this many shards."""
    active = frozenset(members)
    gone = frozenset(n for n, ms in down_for_ms.items() if ms >= rules.node_down_repair_after_ms)
    candidates: list[RecordRepair] = []
    lost: list[bytes] = []
    waiting = 0
    backlog: dict[int, int] = {}
    stale: list[tuple[str, ShardKey]] = []
    returnable = 0
    for entry in entries:
        if now_ms - entry.leader_time_ms < rules.fresh_record_ms:
            continue
        healthy_idx = {
            i
            for i, node in enumerate(entry.shard_nodes)
            if ShardKey(entry.record_id, entry.content_hash, i) in inventories.get(node, ())
        }
        placed = _placement(entry, members)
        found, kept = _stale_copies(entry, healthy_idx, placed, inventories, applied_index, rules)
        stale.extend(found)
        returnable += kept
        healthy = len(healthy_idx)
        if healthy >= entry.n:
            continue
        backlog[healthy] = backlog.get(healthy, 0) + 1
        if healthy < entry.k:
            lost.append(entry.record_id)
            continue
        rebuild = tuple(
            ShardRebuild(i, node)
            for i, node in enumerate(entry.shard_nodes)
            if i not in healthy_idx and node in active and node in inventories
        )
        relocate = _relocations(entry, gone, active, members)
        if not rebuild and not relocate:
            waiting += 1
            continue
        candidates.append(RecordRepair(entry, healthy, rebuild, relocate))
    deficits = [r.entry.n - r.healthy for r in candidates]
    held = [d for d in deficits if d < deficit_min]
    candidates = [r for r, d in zip(candidates, deficits, strict=True) if d >= deficit_min]
    candidates.sort(key=lambda r: (r.healthy - r.entry.n, r.entry.record_id))
    chosen: list[RecordRepair] = []
    budget = rules.shards_per_round_max
    for repair in candidates:
        if repair.shards > budget:
            break  # keep the order strict: a later, less endangered record does not jump it
        chosen.append(repair)
        budget -= repair.shards
    return RepairPlan(
        repairs=tuple(chosen),
        lost=tuple(lost),
        waiting=waiting,
        deferred=len(candidates) - len(chosen),
        held_back=len(held),
        held_back_deficit_max=max(held, default=0),
        deficit_max=max(deficits, default=0),
        backlog=backlog,
        stale_copies=tuple(stale),
        returnable=returnable,
    )


def _relocations(
    entry: IndexEntry, gone: frozenset[str], active: frozenset[str], members: Sequence[str]
) -> tuple[ShardMove, ...]:
    """Moves of the shards on gone holders to the next placement candidates (none when too
    few members are left to hold ``n`` distinct shards)."""
    if not gone.intersection(entry.shard_nodes):
        return ()
    staying = [m for m in members if m not in gone]
    moves = plan_record(entry, staying)
    # Only the gone holders' shards: any other difference is the mover's (an epoch change).
    return tuple(m for m in moves if m.from_node in gone and m.to_node in active)


def _placement(entry: IndexEntry, members: Sequence[str]) -> tuple[str, ...]:
    """Where the mover wants the record's shards (every member when it cannot place them)."""
    if not entry.previous:
        return ()  # nothing moved: no old copy to judge
    if len(set(members)) < entry.n:
        return tuple(members)
    return place_shards(entry.record_id, members, entry.n)


def _stale_copies(
    entry: IndexEntry,
    healthy_idx: set[int],
    placed: Sequence[str],
    inventories: Mapping[str, frozenset[ShardKey]],
    applied_index: int,
    rules: RepairRules,
) -> tuple[list[tuple[str, ShardKey]], int]:
    """(old copies to delete, old copies kept for the mover to bring their shard back)."""
    found = []
    kept = 0
    for p in entry.previous:
        key = ShardKey(entry.record_id, entry.content_hash, p.shard)
        if (
            p.shard in healthy_idx
            and p.node != entry.shard_nodes[p.shard]
            and key in inventories.get(p.node, ())
            and delete_due(p.moved_at, applied_index, rules.grace_entries)
        ):
            # A placement node holding no shard of the record is where the mover would bring
            # one back (onto this very key): leave it. Elsewhere the copy can only leak.
            if p.node in placed and p.node not in entry.shard_nodes:
                kept += 1
            else:
                found.append((p.node, key))
    return found, kept
