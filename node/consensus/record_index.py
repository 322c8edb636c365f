"""The record index: the first state machine on the consensus log.

For every acknowledged record it holds, under ``ri/<record id>``::

    log position (index, term), the leader's timestamp, content hash, k, n, the actual
    shard -> node map, the membership epoch the placement used, the owner partner and the
    body fingerprint

and, once one of its shards has moved, where each moved shard was before (see ``index.move``).

Entry type ``index.put`` (feature version 1). Apply rules, identical on every node:

* **expiry** -- each proposal names the term it was proposed in and the highest log index it
  may land at; outside either it is ``expired`` and changes nothing. A proposal lost in a
  leader change therefore cannot commit late, and the proposer may garbage-collect the shards
  of a record whose proposal expired once the log has passed ``max_index``.
* **idempotency** -- the first entry for a record id wins. A later one with the same owner and
  body fingerprint (a retry, or a racing gateway) is ``existing`` and returns the first one's
  position and content hash; with another fingerprint or owner it is a ``conflict``. Either
  way nothing is written, so the index never changes once written and a local lookup of a
  committed entry needs no consensus round.

Entry type ``index.move`` (feature version 2: applied only once the log has enabled it) commits
one shard's new location after a mover copied and verified it there. It is a compare-and-set:

* ``created`` -- shard ``i`` was on ``from``: it is now on ``to``, and ``from`` is kept as the
  shard's previous location with the move's log index (one per shard index, the latest), so a
  reader falls back to it while the grace lasts and the mover deletes it only after that;
* ``existing`` -- shard ``i`` is already on ``to`` (a retried proposal): nothing changes;
* ``stale`` -- shard ``i`` is on neither (another move won): nothing changes;
* ``unknown_record`` / ``conflict`` -- no such record, another content hash, or ``to`` already
  holds another shard of it.

So an entry only changes where an acknowledged record's shards are, never what they are, and
never loses track of a copy a reader may still need. Moves need no expiry: a late duplicate is
``existing`` or ``stale``. The stored value stays version 1 (byte for byte) until a shard
moves; a moved record is stored as version 2, which adds the previous locations.

Entry type ``index.put_batch`` (feature version 4) carries many records' ``index.put`` bodies
in one log entry, ``{"puts": [<index.put body>, ...]}``: the leader gathers the proposals of
every coordinator into it (node/replication/index_client.py), so one entry, one Append round
and one apply pass serve many records. Its apply is exactly the ``index.put`` rules, record
by record in the order of the list (an earlier record of the same entry is visible to a later
one: a record twice in one entry is ``created`` then ``existing``); the entry's outcome is
``applied`` with one result per record, and the records created share the entry's log
position (index, term): their order within it is the order of their Merkle leaves. A body
that is not such a list, or holds more than :data:`PUT_BATCH_RECORDS_MAX` records, is
``malformed`` as a whole; a record that does not decode is ``malformed`` on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from node.consensus.state_machine import (
    ENTRY_BYTES_MAX_BY_TYPE,
    AppEntry,
    ApplyOutcome,
    LogPosition,
    Overlay,
    StateView,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "BATCH_ENVELOPE_BYTES",
    "BATCH_FEATURE_VERSION",
    "INDEX_MOVE",
    "INDEX_PUT",
    "INDEX_PUT_BATCH",
    "PUT_BATCH_BYTES_MAX",
    "PUT_BATCH_RECORDS_MAX",
    "BatchOutcome",
    "IndexEntry",
    "IndexProposal",
    "MoveProposal",
    "PreviousLocation",
    "RecordIndex",
    "index_key",
]

INDEX_PUT = "index.put"
INDEX_MOVE = "index.move"
INDEX_PUT_BATCH = "index.put_batch"
BATCH_FEATURE_VERSION = 4
# The format's bounds on one index.put_batch entry (the configured ones are at most these): a
# record's body is ~0.4-0.7 KB, so a full entry stays well inside one Raft message (1 MiB).
PUT_BATCH_RECORDS_MAX = 1024
PUT_BATCH_BYTES_MAX = ENTRY_BYTES_MAX_BY_TYPE[INDEX_PUT_BATCH]
# The envelope and list headers around a batch's record bodies (~40 bytes), generously.
BATCH_ENVELOPE_BYTES = 1024
PREFIX = b"ri/"
RECORD_VALUE_VERSION = 1
MOVED_VALUE_VERSION = 2  # version 1 plus the previous locations of moved shards
HASH_BYTES = 32
SHARDS_MAX = 255
NODE_ID_CHARS_MAX = 128
PARTNER_CHARS_MAX = 128
# Map keys, integer fields and headers of one encoded index.put body, generously (~90 bytes).
_BODY_OVERHEAD_BYTES = 160


def index_key(record_id: bytes) -> bytes:
    return PREFIX + record_id


def _hash(raw: Any, what: str) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != HASH_BYTES:
        raise UnsupportedFormat(f"{what} must be {HASH_BYTES} bytes")
    return raw


def _int(raw: Any, what: str, low: int = 0) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < low:
        raise UnsupportedFormat(f"{what} must be an integer >= {low}")
    return raw


def _text(raw: Any, what: str, chars_max: int) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= chars_max:
        raise UnsupportedFormat(f"{what} must be 1..{chars_max} characters")
    return raw


@dataclass(frozen=True, slots=True)
class IndexProposal:
    """What a coordinator proposes once a record's shards are stored."""

    record_id: bytes
    content_hash: bytes
    k: int
    n: int
    shard_nodes: tuple[str, ...]  # shard i is on shard_nodes[i]
    membership_epoch: int
    owner: str
    body_fingerprint: bytes
    expiry_term: int
    expiry_max_index: int
    # For the Merkle log's leaf (log feature version 3): SHA-256 of each shard's bytes, and the
    # gateway's salted commitment to the plaintext. Not stored in the index entry itself.
    shard_hashes: tuple[bytes, ...] = ()
    plaintext_commitment: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= SHARDS_MAX or len(self.shard_nodes) != self.n:
            raise InvalidRequest("index proposal: need 1 <= k <= n and one node per shard")
        if self.shard_hashes and len(self.shard_hashes) != self.n:
            raise InvalidRequest("index proposal: one hash per shard")
        if any(len(h) != HASH_BYTES for h in self.shard_hashes) or (
            self.plaintext_commitment is not None and len(self.plaintext_commitment) != HASH_BYTES
        ):
            raise InvalidRequest(f"index proposal: hashes are {HASH_BYTES} bytes")

    @property
    def has_leaf_fields(self) -> bool:
        return bool(self.shard_hashes) and self.plaintext_commitment is not None

    def to_entry(self) -> AppEntry:
        body: dict[str, Any] = {
            "rid": self.record_id,
            "ch": self.content_hash,
            "k": self.k,
            "n": self.n,
            "nodes": list(self.shard_nodes),
            "epoch": self.membership_epoch,
            "owner": self.owner,
            "fp": self.body_fingerprint,
            "exp_term": self.expiry_term,
            "exp_index": self.expiry_max_index,
        }
        if self.has_leaf_fields:
            body["sh"] = list(self.shard_hashes)
            body["pc"] = self.plaintext_commitment
        return AppEntry(INDEX_PUT, body)

    @staticmethod
    def batch_entry(proposals: Sequence[IndexProposal]) -> AppEntry:
        """One ``index.put_batch`` entry carrying ``proposals`` in order."""
        if not 0 < len(proposals) <= PUT_BATCH_RECORDS_MAX:
            raise InvalidRequest(f"a batch entry holds 1..{PUT_BATCH_RECORDS_MAX} records")
        return AppEntry(INDEX_PUT_BATCH, {"puts": [dict(p.to_entry().body) for p in proposals]})

    def encoded_bytes_max(self) -> int:
        """An upper bound on this proposal's share of an encoded batch entry (no encoding)."""
        text = sum(len(n.encode()) + 3 for n in self.shard_nodes) + len(self.owner.encode())
        return _BODY_OVERHEAD_BYTES + text + (HASH_BYTES + 2) * (len(self.shard_hashes) + 4)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IndexProposal:
        nodes = body.get("nodes")
        if not isinstance(nodes, list) or len(nodes) > SHARDS_MAX:
            raise UnsupportedFormat("index proposal: nodes must be a list")
        shard_hashes = body.get("sh", [])
        if not isinstance(shard_hashes, list) or len(shard_hashes) > SHARDS_MAX:
            raise UnsupportedFormat("index proposal: sh must be a list")
        commitment = body.get("pc")
        try:
            return cls(
                record_id=_hash(body.get("rid"), "rid"),
                content_hash=_hash(body.get("ch"), "ch"),
                k=_int(body.get("k"), "k", 1),
                n=_int(body.get("n"), "n", 1),
                shard_nodes=tuple(_text(n, "node id", NODE_ID_CHARS_MAX) for n in nodes),
                membership_epoch=_int(body.get("epoch"), "epoch"),
                owner=_text(body.get("owner"), "owner", PARTNER_CHARS_MAX),
                body_fingerprint=_hash(body.get("fp"), "fp"),
                expiry_term=_int(body.get("exp_term"), "exp_term"),
                expiry_max_index=_int(body.get("exp_index"), "exp_index"),
                shard_hashes=tuple(_hash(h, "shard hash") for h in shard_hashes),
                plaintext_commitment=None if commitment is None else _hash(commitment, "pc"),
            )
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc


@dataclass(frozen=True, slots=True)
class MoveProposal:
    """What a mover proposes once shard ``shard`` is copied to ``to`` and verified there."""

    record_id: bytes
    content_hash: bytes  # the version the mover copied; another one is a conflict
    shard: int
    from_node: str
    to_node: str

    def __post_init__(self) -> None:
        if not 0 <= self.shard < SHARDS_MAX or self.from_node == self.to_node:
            raise InvalidRequest("move proposal: need a shard index and two different nodes")

    def to_entry(self) -> AppEntry:
        return AppEntry(
            INDEX_MOVE,
            {
                "rid": self.record_id,
                "ch": self.content_hash,
                "shard": self.shard,
                "from": self.from_node,
                "to": self.to_node,
            },
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MoveProposal:
        try:
            return cls(
                record_id=_hash(body.get("rid"), "rid"),
                content_hash=_hash(body.get("ch"), "ch"),
                shard=_int(body.get("shard"), "shard"),
                from_node=_text(body.get("from"), "from", NODE_ID_CHARS_MAX),
                to_node=_text(body.get("to"), "to", NODE_ID_CHARS_MAX),
            )
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one record of an ``index.put_batch`` entry did (as an ``index.put``'s outcome)."""

    code: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PreviousLocation:
    """Where shard ``shard`` was until the move committed at log index ``moved_at``."""

    shard: int
    node: str
    moved_at: int


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A committed index record (what ``ri/<record id>`` holds)."""

    record_id: bytes
    index: int
    term: int
    leader_time_ms: int
    content_hash: bytes
    k: int
    n: int
    shard_nodes: tuple[str, ...]
    membership_epoch: int
    owner: str
    body_fingerprint: bytes
    previous: tuple[PreviousLocation, ...] = ()  # sorted by shard, at most one per shard

    def encode(self) -> bytes:
        fields: list[Any] = [
            RECORD_VALUE_VERSION if not self.previous else MOVED_VALUE_VERSION,
            self.index,
            self.term,
            self.leader_time_ms,
            self.content_hash,
            self.k,
            self.n,
            list(self.shard_nodes),
            self.membership_epoch,
            self.owner,
            self.body_fingerprint,
        ]
        if self.previous:
            fields.append([[p.shard, p.node, p.moved_at] for p in self.previous])
        raw: bytes = msgpack.packb(fields, use_bin_type=True)
        return raw

    @classmethod
    def decode(cls, record_id: bytes, raw: bytes) -> IndexEntry:
        try:
            fields = msgpack.unpackb(raw, raw=False)
        except (msgpack.UnpackException, ValueError) as exc:
            raise UnsupportedFormat("index value is not msgpack") from exc
        if not isinstance(fields, list) or not fields:
            raise UnsupportedFormat("index value has the wrong shape")
        shape = {RECORD_VALUE_VERSION: 11, MOVED_VALUE_VERSION: 12}.get(fields[0])
        if shape is None:
            raise UnsupportedFormat(f"unknown index value version {fields[0]!r}")
        if len(fields) != shape:
            raise UnsupportedFormat("index value has the wrong shape")
        nodes = fields[7]
        if not isinstance(nodes, list):
            raise UnsupportedFormat("index value: nodes must be a list")
        return cls(
            record_id=record_id,
            index=_int(fields[1], "index", 1),
            term=_int(fields[2], "term"),
            leader_time_ms=_int(fields[3], "leader_time_ms"),
            content_hash=_hash(fields[4], "content hash"),
            k=_int(fields[5], "k", 1),
            n=_int(fields[6], "n", 1),
            shard_nodes=tuple(_text(n, "node id", NODE_ID_CHARS_MAX) for n in nodes),
            membership_epoch=_int(fields[8], "epoch"),
            owner=_text(fields[9], "owner", PARTNER_CHARS_MAX),
            body_fingerprint=_hash(fields[10], "fingerprint"),
            previous=_previous(fields[11]) if shape == 12 else (),
        )

    def summary(self) -> dict[str, Any]:
        return {"index": self.index, "term": self.term, "content_hash": self.content_hash}


def _previous(raw: Any) -> tuple[PreviousLocation, ...]:
    if not isinstance(raw, list) or not 0 < len(raw) <= SHARDS_MAX:
        raise UnsupportedFormat("index value: previous locations must be a non-empty list")
    out = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise UnsupportedFormat("index value: a previous location is [shard, node, index]")
        out.append(
            PreviousLocation(
                _int(item[0], "shard"),
                _text(item[1], "node id", NODE_ID_CHARS_MAX),
                _int(item[2], "moved_at", 1),
            )
        )
    return tuple(out)


class RecordIndex:
    """The record index state machine (pure: reads a view, returns writes)."""

    prefix = PREFIX
    entry_types: Mapping[str, int] = {
        INDEX_PUT: 1,
        INDEX_MOVE: 2,
        INDEX_PUT_BATCH: BATCH_FEATURE_VERSION,
    }

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        if entry.type == INDEX_MOVE:
            return self._apply_move(entry, position, view)
        if entry.type == INDEX_PUT_BATCH:
            return self._apply_batch(entry, position, view)
        try:
            proposal = IndexProposal.from_body(entry.body)
        except UnsupportedFormat as exc:
            return ApplyOutcome("malformed", {"reason": exc.detail})
        return self.apply_put(proposal, position, view)

    def _apply_batch(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        """Every record's ``index.put`` rules in order, in one pass over one overlay.

        The outcome carries one :class:`BatchOutcome` per record (``results``) and the
        proposals that created a record, in order (``created``: the Merkle log's leaves).
        """
        bodies = entry.body.get("puts")
        if not isinstance(bodies, list) or not 0 < len(bodies) <= PUT_BATCH_RECORDS_MAX:
            reason = f"puts must be a list of 1..{PUT_BATCH_RECORDS_MAX} records"
            return ApplyOutcome("malformed", {"reason": reason})
        layer = Overlay(view)
        results: list[BatchOutcome] = []
        created: list[IndexProposal] = []
        for body in bodies:
            try:
                if not isinstance(body, dict):
                    raise UnsupportedFormat("a record of a batch must be a map")
                proposal = IndexProposal.from_body(body)
            except UnsupportedFormat as exc:
                results.append(BatchOutcome("malformed", {"reason": exc.detail}))
                continue
            outcome = self.apply_put(proposal, position, layer)
            layer.writes.update(outcome.writes)
            if outcome.code == "created":
                created.append(proposal)
            results.append(BatchOutcome(outcome.code, outcome.detail))
        detail = {"results": tuple(results), "created": tuple(created)}
        return ApplyOutcome("applied", detail, tuple(layer.writes.items()))

    @staticmethod
    def apply_put(proposal: IndexProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        if position.term != proposal.expiry_term or position.index > proposal.expiry_max_index:
            return ApplyOutcome(
                "expired", {"term": proposal.expiry_term, "max_index": proposal.expiry_max_index}
            )
        key = index_key(proposal.record_id)
        held = view.get(key)
        if held is not None:
            first = IndexEntry.decode(proposal.record_id, held)
            same = (first.owner, first.body_fingerprint) == (
                proposal.owner,
                proposal.body_fingerprint,
            )
            return ApplyOutcome("existing" if same else "conflict", first.summary())
        record = IndexEntry(
            record_id=proposal.record_id,
            index=position.index,
            term=position.term,
            leader_time_ms=position.leader_time_ms,
            content_hash=proposal.content_hash,
            k=proposal.k,
            n=proposal.n,
            shard_nodes=proposal.shard_nodes,
            membership_epoch=proposal.membership_epoch,
            owner=proposal.owner,
            body_fingerprint=proposal.body_fingerprint,
        )
        return ApplyOutcome("created", record.summary(), ((key, record.encode()),))

    def _apply_move(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        try:
            move = MoveProposal.from_body(entry.body)
        except UnsupportedFormat as exc:
            return ApplyOutcome("malformed", {"reason": exc.detail})
        held = RecordIndex.lookup(view, move.record_id)
        if held is None:
            return ApplyOutcome("unknown_record")
        if held.content_hash != move.content_hash or move.shard >= held.n:
            return ApplyOutcome("conflict", held.summary())
        now_on = held.shard_nodes[move.shard]
        if now_on == move.to_node:
            return ApplyOutcome("existing", {**held.summary(), "moved_at": _moved_at(held, move)})
        if now_on != move.from_node:
            return ApplyOutcome("stale", {**held.summary(), "on": now_on})
        if move.to_node in held.shard_nodes:
            return ApplyOutcome("conflict", held.summary())
        nodes = list(held.shard_nodes)
        nodes[move.shard] = move.to_node
        previous = [p for p in held.previous if p.shard != move.shard]
        previous.append(PreviousLocation(move.shard, move.from_node, position.index))
        moved = replace(
            held,
            shard_nodes=tuple(nodes),
            previous=tuple(sorted(previous, key=lambda p: p.shard)),
        )
        detail = {**moved.summary(), "moved_at": position.index}
        return ApplyOutcome("created", detail, ((index_key(move.record_id), moved.encode()),))

    @staticmethod
    def lookup(view: StateView, record_id: bytes) -> IndexEntry | None:
        raw = view.get(index_key(record_id))
        return IndexEntry.decode(record_id, raw) if raw is not None else None

    @staticmethod
    def lookup_many(view: StateView, record_ids: Sequence[bytes]) -> list[IndexEntry | None]:
        return [RecordIndex.lookup(view, rid) for rid in record_ids]


def _moved_at(held: IndexEntry, move: MoveProposal) -> int:
    """The log index of the move that put ``move.shard`` where it is (0: it was written there)."""
    for p in held.previous:
        if p.shard == move.shard:
            return p.moved_at
    return 0
