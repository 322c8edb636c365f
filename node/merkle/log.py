"""The Merkle log: a follower state machine that appends one leaf per record the index creates.

Every ``index.put`` whose outcome is ``created`` (a new record acknowledged by the cluster),
and every record an ``index.put_batch`` or ``ledger.ops`` entry creates (in the order of the
entry; an operation with ledger events gets a v1 leaf of its record for now), appends, in
log order, one leaf (:mod:`node.merkle.leaf`, docs/verifiable-log.md) to an RFC 9162
tree (:mod:`node.merkle.tree`). Retries, conflicts, expired proposals and shard moves add
nothing, so the leaf index of a record never changes and every node computes the same roots.
It follows from log feature version 3 on (enabled at start once every member runs this code).

A ``ledger.ops`` entry (log feature version 6: the dispatcher refuses it before, so no leaf
comes of it earlier) appends one leaf per operation that created its record, in entry order:
leaf data v2, which adds the digest of the operation's outcome, or v1 for a plain record
carried without ledger events. Its outcome detail lists the created records (``created``)
and, aligned with them, their :class:`~business.ledger.outcome.OperationOutcome` or None
(``outcomes``); an operation's outcome was reached at the entry's leader time, so its log time
is the leaf's commit time, and a mismatch is a broken invariant of the ledger machine.

State, under ``ml/`` in the replicated state (so snapshots carry it)::

    ml/size                      -> tree size (8 bytes, big-endian)
    ml/n/<first leaf:8><level:1> -> hash of the complete subtree (level, first leaf >> level),
                                    written once
    ml/l/<leaf index:8>          -> leaf data
    ml/r/<record id>             -> leaf index (8 bytes)

A subtree is keyed by the first leaf it covers, then its level, so the hashes near a leaf lie
next to each other: a proof's low levels (its siblings at levels < l are all within 2**l
leaves of it) come from one LevelDB block of one table, not from one table per level.

Roots, inclusion and consistency proofs at any size up to the current one are read from
``O(log n)`` stored hashes (:class:`MerkleReader`), never by rebuilding the tree.

A stored subtree hash never changes once written: it is a function of committed leaves, the
same on every node and in every snapshot. So a :class:`NodeCache` may keep the top levels of
the tree in memory for as long as the process serves the log: a proof then reads only its low
levels from the database (at 10^6 leaves, ~6 of ~20 hashes). It is bounded by a node count;
when full it drops its lowest level and admits only the levels above from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from business.ledger.ops_entry import LEDGER_OPS
from business.ledger.outcome import OperationOutcome
from node.consensus.record_index import INDEX_PUT, INDEX_PUT_BATCH, IndexProposal
from node.consensus.state_machine import AppEntry, Applied, Overlay, StateView, Write
from node.errors import InvalidRequest, InvariantViolation, NotFound, UnsupportedFormat
from node.merkle.leaf import LeafData
from node.merkle.tree import MerkleTree, NodeStore, leaf_hash

__all__ = [
    "MERKLE_FEATURE_VERSION",
    "NODE_CACHE_NODES_MAX",
    "LeafRecord",
    "MerkleLog",
    "MerkleReader",
    "NodeCache",
    "root_at",
]

MERKLE_FEATURE_VERSION = 3
# Entries whose outcome lists the records they created (``created``), in entry order.
_BATCH_TYPES = frozenset({INDEX_PUT_BATCH, LEDGER_OPS})
PREFIX = b"ml/"
SIZE_KEY = PREFIX + b"size"
NODE_PREFIX = PREFIX + b"n/"
LEAF_PREFIX = PREFIX + b"l/"
RECORD_PREFIX = PREFIX + b"r/"
NODE_CACHE_NODES_MAX = 1 << 16  # ~8 MB; holds every level >= 6 up to 2 * 10^6 leaves


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _node_key(level: int, index: int) -> bytes:
    return NODE_PREFIX + _u64(index << level) + level.to_bytes(1, "big")


def _leaf_key(index: int) -> bytes:
    return LEAF_PREFIX + _u64(index)


def _record_key(record_id: bytes) -> bytes:
    return RECORD_PREFIX + record_id


def _size_of(view: StateView) -> int:
    raw = view.get(SIZE_KEY)
    return int.from_bytes(raw, "big") if raw else 0


class _ViewNodes:
    """The tree's node store over a state view (reads see earlier writes of the batch)."""

    def __init__(self, view: StateView) -> None:
        self._view = view

    def get_node(self, level: int, index: int) -> bytes | None:
        return self._view.get(_node_key(level, index))


class NodeCache:
    """The top levels of the tree, kept once read; :meth:`view` serves reads through it.

    One per process serving a log (never shared between logs): a hash at ``(level, index)``
    is then the same wherever and whenever it is read. Holds at most ``nodes_max`` hashes:
    once over, the lowest level held is dropped and no longer admitted, so the levels kept
    are always the top ones, and the cache keeps only hashes the database returned.
    """

    def __init__(self, nodes_max: int = NODE_CACHE_NODES_MAX) -> None:
        if nodes_max < 1:
            raise InvalidRequest("the node cache holds at least one hash")
        self.nodes_max = nodes_max
        self.level_min = 0  # lower levels are read from the database every time
        self._levels: dict[int, dict[int, bytes]] = {}
        self._count = 0
        # The hashes kept of a level, by index (None: none kept); a proof asks ~log2(n) times.
        self.held: Callable[[int], dict[int, bytes] | None] = self._levels.get

    def __len__(self) -> int:
        return self._count

    def view(self, base: StateView) -> CachedView:
        """``base`` (the applied state) with the tree's nodes read through this cache."""
        return CachedView(base, self)

    def read(self, base: StateView, level: int, index: int) -> bytes | None:
        """A node not in the cache: read it from ``base``; keep it if its level is admitted."""
        found = base.get(_node_key(level, index))
        if found is not None and level >= self.level_min:
            self._levels.setdefault(level, {})[index] = found
            self._count += 1
            while self._count > self.nodes_max:
                lowest = min(self._levels)
                self._count -= len(self._levels.pop(lowest))
                self.level_min = lowest + 1
        return found


class CachedView:
    """A state view whose Merkle tree nodes are read through a :class:`NodeCache`."""

    def __init__(self, base: StateView, cache: NodeCache) -> None:
        self._base = base
        self._cache = cache

    def get(self, key: bytes) -> bytes | None:
        return self._base.get(key)

    def get_node(self, level: int, index: int) -> bytes | None:
        held = self._cache.held(level)
        if held is not None:
            found = held.get(index)
            if found is not None:
                return found
        return self._cache.read(self._base, level, index)


def _nodes_of(view: StateView) -> NodeStore:
    return view if isinstance(view, CachedView) else _ViewNodes(view)


class MerkleLog:
    """The follower: ``follow`` returns the writes that append a created record's leaf."""

    prefix = PREFIX
    feature_version = MERKLE_FEATURE_VERSION

    def follow(self, entry: AppEntry, applied: Applied, view: StateView) -> tuple[Write, ...]:
        created, outcomes = self._created(entry, applied)
        at_ms = applied.position.leader_time_ms
        leaves = [
            (p.record_id, leaf)
            for p, outcome in zip(created, outcomes, strict=True)
            if (leaf := self._leaf_of(p, at_ms, outcome))
        ]
        if not leaves:
            return ()
        # One tree over one overlay for the whole entry: each append sees the nodes the
        # earlier ones wrote, and the size is read once.
        layer = Overlay(view)
        size = _size_of(view)
        tree = MerkleTree(_ViewNodes(layer), size)
        for record_id, leaf in leaves:
            at = tree.size
            for level, index, digest in tree.append(leaf_hash(leaf)):
                layer.writes[_node_key(level, index)] = digest
            layer.writes[_leaf_key(at)] = leaf
            layer.writes[_record_key(record_id)] = _u64(at)
        layer.writes[SIZE_KEY] = _u64(tree.size)
        return tuple(layer.writes.items())

    @staticmethod
    def _created(
        entry: AppEntry, applied: Applied
    ) -> tuple[Sequence[IndexProposal], Sequence[OperationOutcome | None]]:
        """The records the entry created, in entry order, each with its operation's outcome."""
        detail = applied.outcome.detail
        if entry.type == INDEX_PUT_BATCH and applied.outcome.code == "applied":
            # The index passes the proposals it created, already decoded, in entry order.
            created: Sequence[IndexProposal] = detail.get("created", ())
            return created, (None,) * len(created)
        if entry.type == LEDGER_OPS and applied.outcome.code == "applied":
            created = detail.get("created", ())
            outcomes: Sequence[OperationOutcome | None] = detail.get("outcomes", ())
            if len(outcomes) != len(created):
                raise InvariantViolation(
                    f"a {LEDGER_OPS} outcome lists {len(created)} created records and "
                    f"{len(outcomes)} outcomes"
                )
            return created, outcomes
        if entry.type == INDEX_PUT and applied.outcome.code == "created":
            try:
                return (IndexProposal.from_body(entry.body),), (None,)
            except UnsupportedFormat:  # the index applied it, so this cannot happen; stay total
                return (), ()
        return (), ()

    def _leaf_of(
        self, proposal: IndexProposal, committed_at_ms: int, outcome: OperationOutcome | None
    ) -> bytes | None:
        if not proposal.has_leaf_fields:
            return None
        digest = None
        if outcome is not None:
            if outcome.log_time_ms != committed_at_ms:
                raise InvariantViolation(
                    f"record {proposal.record_id.hex()}: its outcome's log time "
                    f"{outcome.log_time_ms} is not the entry's {committed_at_ms}"
                )
            digest = outcome.digest()
        try:
            return self._leaf(proposal, committed_at_ms, digest)
        except InvalidRequest:  # e.g. an owner longer than 128 UTF-8 bytes: refused identically
            return None  # on every node, so the log stays applicable; such a record has no leaf

    @staticmethod
    def _leaf(proposal: IndexProposal, committed_at_ms: int, outcome_digest: bytes | None) -> bytes:
        assert proposal.plaintext_commitment is not None
        return LeafData(
            record_id=proposal.record_id,
            owner=proposal.owner,
            committed_at_ms=committed_at_ms,
            content_hash=proposal.content_hash,
            k=proposal.k,
            n=proposal.n,
            shard_hashes=proposal.shard_hashes,
            plaintext_commitment=proposal.plaintext_commitment,
            outcome_digest=outcome_digest,
        ).encode()


@dataclass(frozen=True, slots=True)
class LeafRecord:
    index: int
    data: bytes


class MerkleReader:
    """Reads of the applied Merkle log: sizes, leaves, roots and proofs.

    Given a :meth:`NodeCache.view`, the tree's top levels come from the cache.
    """

    def __init__(self, view: StateView) -> None:
        self._view = view

    @property
    def size(self) -> int:
        return _size_of(self._view)

    def tree(self) -> MerkleTree:
        """The tree at its current size (reads only; proofs at any smaller size too)."""
        return MerkleTree(_nodes_of(self._view), self.size)

    def leaf_of(self, record_id: bytes) -> LeafRecord:
        raw = self._view.get(_record_key(record_id))
        if raw is None:
            raise NotFound("no leaf for this record", code="leaf_not_found")
        index = int.from_bytes(raw, "big")
        data = self._view.get(_leaf_key(index))
        if data is None:
            raise NotFound("no leaf for this record", code="leaf_not_found")
        return LeafRecord(index, data)

    def leaf_at(self, index: int) -> bytes | None:
        return self._view.get(_leaf_key(index))

    def root(self, size: int | None = None) -> bytes:
        return self.tree().root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree().inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        return self.tree().consistency_proof(old_size, size)


def root_at(view: StateView, size: int) -> bytes | None:
    """The root at ``size`` leaves, or None when the log has fewer (for the anchoring machine)."""
    if size < 1 or size > _size_of(view):
        return None
    return MerkleTree(_ViewNodes(view), _size_of(view)).root(size)
