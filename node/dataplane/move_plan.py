"""Which shards move after a membership change: the difference between where the record index
says a record's shards are and where rendezvous placement puts them over the new membership.

The "before" side is the index entry itself (its shard -> node map, moves applied), not the
previous membership: a record written under an older membership, or half-way through earlier
moves, is then planned from where its shards really are. With rendezvous hashing
(:func:`node.storage.placement.place_shards`) a record's holder set changes by one node per
single-server change, so a join moves about ``1/(members after)`` of all shards -- one shard
of each record the newcomer outranks -- and a removal moves exactly the removed node's shards.

A shard keeps its index when it moves: the displaced shard indices, in order, pair with the new
holders in rank order, so every node still holds at most one shard of a record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.consensus.record_index import IndexEntry
from node.storage.placement import place_shards

__all__ = ["ShardMove", "plan_moves", "plan_record"]


@dataclass(frozen=True, slots=True)
class ShardMove:
    record_id: bytes
    content_hash: bytes  # the version being moved (the index's)
    shard: int
    from_node: str
    to_node: str


def plan_record(entry: IndexEntry, members: Sequence[str]) -> tuple[ShardMove, ...]:
    """The moves that bring one record to its placement over ``members`` (none if there are
    fewer members than shards: the record then stays where it is)."""
    if len(set(members)) < entry.n:
        return ()
    target = place_shards(entry.record_id, members, entry.n)
    holders = set(entry.shard_nodes)
    wanted = set(target)
    displaced = [i for i, node in enumerate(entry.shard_nodes) if node not in wanted]
    newcomers = [node for node in target if node not in holders]
    return tuple(
        ShardMove(entry.record_id, entry.content_hash, shard, entry.shard_nodes[shard], to_node)
        for shard, to_node in zip(displaced, newcomers, strict=True)
    )


def plan_moves(entries: Iterable[IndexEntry], members: Sequence[str]) -> list[ShardMove]:
    """Every move for ``entries`` over the committed membership ``members``, in entry order."""
    return [move for entry in entries for move in plan_record(entry, members)]
