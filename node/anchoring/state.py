"""The anchoring state machine: who anchors, and every anchor's intent, result and fate.

Theory of operation
-------------------

Anchoring commits ``(tree size, Merkle root)`` of the record log to the ``AnchorRegistry``
contract, one transaction per batch. Sending a transaction is an irreversible side effect, so
every step is committed to the consensus log first and the chain is only ever asked to do
what the log already says:

1. **lease** -- one node at a time (the *holder*) acts on the chain. It takes the lease with
   an ``anchor.lease`` entry and renews it before it expires; expiry is judged at each entry's
   ``leader_time_ms``, never by a local clock, so every node reaches the same verdict.
2. **intent** -- the holder signs the transaction for batch ``b`` (``anchor(b, size, root)``
   with its next nonce) and commits the signed bytes in an ``anchor.intent`` entry *before*
   sending them. Whoever holds the lease from then on (the same node after a restart, or
   another after expiry) sends *those bytes* again, never a new transaction for ``b``: a
   transaction can land at most once, so the batch lands at most once.
3. **result** -- once the transaction is mined, its receipt goes into an ``anchor.result``
   entry: status 1 records where it landed (chain id, contract, block number and hash);
   status 0 (reverted) marks the batch ``failed``.
4. **final** -- once the block has enough confirmations, ``anchor.final``.
5. **reorg** -- if the block of an included or final batch vanished, ``anchor.reorg`` sends
   that batch *and every later batch* back to ``intent``: their same signed transactions are
   sent again (a reorg drops a suffix of the chain, and later batches landed in the same or
   later blocks, because the contract takes batch ids in order). Each batch sent back counts
   as one re-anchor. A *failed* batch whose revert's block vanished goes back to ``intent``
   alone (its nonce is unspent again: sending it again spends it, so the sender's later
   transactions are not stuck behind a gap).

A batch whose transaction can never land -- it reverted, or its nonce was used by another
transaction and it is not on the chain -- is the only case for a *replacement intent*: same
batch id, tree size and root; a new nonce and transaction, naming the hash it replaces
(compare-and-set, so two replacements never both win).

Order. The contract takes batch ids consecutively, so batches land on the chain in id order,
and the log records them in that order too: a status-1 result is accepted only for the batch
right after the last included one, a ``final`` only right after the last final one. The
applied state is therefore a prefix structure, kept in ``an/next``::

    1 .. final_through                      final
    final_through + 1 .. included_through   included (mined, not yet deep enough)
    included_through + 1 .. next - 1        intent or failed (at most OPEN_BATCHES_MAX)

Tree sizes strictly grow with the batch id (and a batch's size never changes), which lets
:func:`first_anchor_covering` binary-search the ids. Every entry but ``anchor.lease`` names
its proposer (``holder``) and is accepted only from the current lease holder: a late entry
from a former holder is ``not_holder`` and changes nothing.

State, under ``an/`` (values msgpack, first field the value version)::

    an/lease                 [1, holder, granted_ms, renewed_ms, expires_ms, ttl_ms, epoch]
    an/next                  [1, next_batch_id, included_through, final_through]
    an/counters              [1, size_triggered, interval_triggered, reanchors,
                              replacements, reverted, finals, leases_granted]
    an/b/<batch id: u64 BE>  [1, tree_size, root, trigger, holder, sender, nonce, raw_tx,
                              tx_hash, intent_index, intent_ms, attempt, state,
                              inclusion | nil, final | nil, reorgs]

where ``inclusion`` is ``[chain_id, contract, block_number, block_hash, status,
result_index, included_ms]`` and ``final`` is ``[confirmations, final_index, final_ms]``.

Result codes: ``created`` (an entry changed the state), ``renewed`` / ``released`` (lease),
``existing`` (a retried entry: nothing to do), ``held`` (the lease belongs to another node),
``not_holder``, ``stale`` (about a transaction, block or state that is no longer current),
``out_of_order`` (a result or final ahead of an earlier batch), ``too_many_open``,
``unknown_batch``, ``rejected`` (the entry contradicts the log: wrong batch id, a tree that
did not grow, a root that is not the log's), ``malformed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, StateView, Write
from node.errors import UnsupportedFormat

__all__ = [
    "ANCHORING_FEATURE_VERSION",
    "ANCHOR_FINAL",
    "ANCHOR_INTENT",
    "ANCHOR_LEASE",
    "ANCHOR_REORG",
    "ANCHOR_RESULT",
    "FAILED",
    "FINAL",
    "INCLUDED",
    "INTENT",
    "OPEN_BATCHES_MAX",
    "PREFIX",
    "RAW_TX_BYTES_MAX",
    "AnchorCounters",
    "AnchorLog",
    "Batch",
    "BatchFinal",
    "FinalProposal",
    "Inclusion",
    "IntentProposal",
    "Lease",
    "LeaseProposal",
    "Progress",
    "ReorgProposal",
    "ResultProposal",
    "RootAt",
    "batch",
    "batch_key",
    "batches",
    "counters",
    "first_anchor_covering",
    "latest_anchored",
    "latest_final",
    "lease_of",
    "progress_of",
]

ANCHORING_FEATURE_VERSION = 3
ANCHOR_LEASE = "anchor.lease"
ANCHOR_INTENT = "anchor.intent"
ANCHOR_RESULT = "anchor.result"
ANCHOR_FINAL = "anchor.final"
ANCHOR_REORG = "anchor.reorg"

PREFIX = b"an/"
LEASE_KEY = b"an/lease"
NEXT_KEY = b"an/next"
COUNTERS_KEY = b"an/counters"
BATCH_PREFIX = b"an/b/"
VALUE_VERSION = 1

# Batch states.
INTENT = "intent"  # signed transaction committed; (re)broadcast until it is mined
INCLUDED = "included"  # mined with status 1 in block (number, hash)
FINAL = "final"  # that block is deep enough
FAILED = "failed"  # mined with status 0: a replacement intent follows
STATES = (INTENT, INCLUDED, FINAL, FAILED)

# Why an intent was made: the two triggers of a new batch, the two reasons for a replacement.
SIZE = "size"
INTERVAL = "interval"
REVERTED = "reverted"
NONCE_USED = "nonce_used"
TRIGGERS = (SIZE, INTERVAL)
REPLACE_REASONS = (REVERTED, NONCE_USED)

OPEN_BATCHES_MAX = 64  # batches after the last included one; the driver keeps far fewer
RAW_TX_BYTES_MAX = 4096  # an anchor transaction is ~250 bytes (100 of them calldata)
LEASE_TTL_MS_MIN = 1_000
LEASE_TTL_MS_MAX = 3_600_000
NODE_ID_CHARS_MAX = 128
HASH_BYTES = 32
ADDRESS_BYTES = 20
U64_MAX = 2**64 - 1

RootAt = Callable[[StateView, int], bytes | None]


# ---------------------------------------------------------------------- strict field decoding


def _int(raw: Any, what: str, low: int = 0, high: int = U64_MAX) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        raise UnsupportedFormat(f"{what} must be an integer in {low}..{high}")
    return raw


def _bytes(raw: Any, what: str, size: int) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != size:
        raise UnsupportedFormat(f"{what} must be {size} bytes")
    return raw


def _text(raw: Any, what: str, chars_max: int = NODE_ID_CHARS_MAX) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= chars_max:
        raise UnsupportedFormat(f"{what} must be 1..{chars_max} characters")
    return raw


def _choice(raw: Any, what: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise UnsupportedFormat(f"{what} must be one of {allowed}")
    return str(raw)


def _raw_tx(raw: Any) -> bytes:
    if not isinstance(raw, bytes) or not 0 < len(raw) <= RAW_TX_BYTES_MAX:
        raise UnsupportedFormat(f"raw transaction must be 1..{RAW_TX_BYTES_MAX} bytes")
    return raw


def _body(body: Mapping[str, Any], keys: tuple[str, ...], what: str) -> Mapping[str, Any]:
    if set(body) != set(keys):
        raise UnsupportedFormat(f"{what} body must have exactly the fields {sorted(keys)}")
    return body


def _fields(raw: bytes, what: str, count: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError) as exc:
        raise UnsupportedFormat(f"{what} value is not msgpack") from exc
    if not isinstance(fields, list) or not fields:
        raise UnsupportedFormat(f"{what} value has the wrong shape")
    if type(fields[0]) is not int or fields[0] != VALUE_VERSION:
        raise UnsupportedFormat(f"unknown {what} value version {fields[0]!r:.20}")
    if len(fields) != count:
        raise UnsupportedFormat(f"{what} value has the wrong shape")
    return fields


def _pack(fields: list[Any]) -> bytes:
    raw: bytes = msgpack.packb(fields, use_bin_type=True)
    return raw


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def batch_key(batch_id: int) -> bytes:
    return BATCH_PREFIX + _u64(batch_id)


# ---------------------------------------------------------------------- stored values


@dataclass(frozen=True, slots=True)
class Lease:
    """``an/lease``: who may act on the chain, until ``expires_ms`` (leader time)."""

    holder: str
    granted_ms: int
    renewed_ms: int
    expires_ms: int
    ttl_ms: int
    epoch: int  # +1 whenever the lease is granted anew (a new holder, or after a lapse)

    def held_by(self, node_id: str, at_ms: int) -> bool:
        return self.holder == node_id and at_ms < self.expires_ms

    def free_at(self, at_ms: int) -> bool:
        return at_ms >= self.expires_ms

    def encode(self) -> bytes:
        return _pack(
            [
                VALUE_VERSION,
                self.holder,
                self.granted_ms,
                self.renewed_ms,
                self.expires_ms,
                self.ttl_ms,
                self.epoch,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Lease:
        f = _fields(raw, "lease", 7)
        return cls(
            holder=_text(f[1], "lease holder"),
            granted_ms=_int(f[2], "granted_ms"),
            renewed_ms=_int(f[3], "renewed_ms"),
            expires_ms=_int(f[4], "expires_ms"),
            ttl_ms=_int(f[5], "ttl_ms"),
            epoch=_int(f[6], "epoch", 1),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """``an/next``: the next batch id and the ends of the included and final prefixes."""

    next_batch_id: int = 1
    included_through: int = 0
    final_through: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.final_through <= self.included_through < self.next_batch_id:
            raise UnsupportedFormat("anchoring progress: need final <= included < next")

    @property
    def open_count(self) -> int:
        """Batches not yet included (intent or failed)."""
        return self.next_batch_id - 1 - self.included_through

    def encode(self) -> bytes:
        return _pack([VALUE_VERSION, self.next_batch_id, self.included_through, self.final_through])

    @classmethod
    def decode(cls, raw: bytes) -> Progress:
        f = _fields(raw, "anchoring progress", 4)
        return cls(
            next_batch_id=_int(f[1], "next_batch_id", 1),
            included_through=_int(f[2], "included_through"),
            final_through=_int(f[3], "final_through"),
        )


@dataclass(frozen=True, slots=True)
class AnchorCounters:
    """``an/counters``: what anchoring did, for metrics (every node counts the same)."""

    size_triggered: int = 0
    interval_triggered: int = 0
    reanchors: int = 0  # batches sent back to intent by a reorg (each lands again)
    replacements: int = 0  # replacement intents (a new transaction for the same batch)
    reverted: int = 0  # status-0 receipts
    finals: int = 0
    leases_granted: int = 0

    def encode(self) -> bytes:
        return _pack(
            [
                VALUE_VERSION,
                self.size_triggered,
                self.interval_triggered,
                self.reanchors,
                self.replacements,
                self.reverted,
                self.finals,
                self.leases_granted,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> AnchorCounters:
        f = _fields(raw, "anchoring counters", 8)
        return cls(*(_int(value, "counter") for value in f[1:]))


@dataclass(frozen=True, slots=True)
class Inclusion:
    """Where a batch's transaction was mined (``status`` 1) or reverted (0)."""

    chain_id: int
    contract: bytes  # 20-byte address
    block_number: int
    block_hash: bytes
    status: int
    result_index: int  # the log index of the anchor.result entry
    included_ms: int  # its leader time

    def to_list(self) -> list[Any]:
        return [
            self.chain_id,
            self.contract,
            self.block_number,
            self.block_hash,
            self.status,
            self.result_index,
            self.included_ms,
        ]

    @classmethod
    def from_list(cls, raw: Any) -> Inclusion:
        if not isinstance(raw, list) or len(raw) != 7:
            raise UnsupportedFormat("batch inclusion has the wrong shape")
        return cls(
            chain_id=_int(raw[0], "chain_id", 1),
            contract=_bytes(raw[1], "contract", ADDRESS_BYTES),
            block_number=_int(raw[2], "block_number"),
            block_hash=_bytes(raw[3], "block_hash", HASH_BYTES),
            status=_int(raw[4], "status", 0, 1),
            result_index=_int(raw[5], "result_index", 1),
            included_ms=_int(raw[6], "included_ms"),
        )


@dataclass(frozen=True, slots=True)
class BatchFinal:
    confirmations: int
    final_index: int
    final_ms: int

    def to_list(self) -> list[Any]:
        return [self.confirmations, self.final_index, self.final_ms]

    @classmethod
    def from_list(cls, raw: Any) -> BatchFinal:
        if not isinstance(raw, list) or len(raw) != 3:
            raise UnsupportedFormat("batch finality has the wrong shape")
        return cls(
            confirmations=_int(raw[0], "confirmations", 1),
            final_index=_int(raw[1], "final_index", 1),
            final_ms=_int(raw[2], "final_ms"),
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """``an/b/<id>``: one anchor, from its committed intent to its finality."""

    batch_id: int
    tree_size: int
    root: bytes
    trigger: str  # "size" or "interval": what made the batch (kept through replacements)
    holder: str  # the node that committed the current transaction
    sender: bytes  # 20-byte address that signed it
    nonce: int
    raw_tx: bytes
    tx_hash: bytes
    intent_index: int  # log index of the batch's first intent
    intent_ms: int  # its leader time (the anchoring interval runs from here)
    attempt: int  # 0 for the first transaction, +1 per replacement
    state: str
    inclusion: Inclusion | None = None  # set in included, final and failed
    final: BatchFinal | None = None  # set in final
    reorgs: int = 0  # times a reorg sent this batch back to intent

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UnsupportedFormat(f"batch state must be one of {STATES}")
        has_inclusion = self.state in (INCLUDED, FINAL, FAILED)
        if (self.inclusion is not None) != has_inclusion or (self.final is not None) != (
            self.state == FINAL
        ):
            raise UnsupportedFormat(f"batch in state {self.state} has the wrong parts")
        if self.inclusion is not None and self.inclusion.status != (self.state != FAILED):
            raise UnsupportedFormat("batch receipt status does not match its state")

    @property
    def block_hash(self) -> bytes | None:
        return self.inclusion.block_hash if self.inclusion is not None else None

    @property
    def anchored(self) -> bool:
        """Mined with status 1 (included or final)."""
        return self.state in (INCLUDED, FINAL)

    def encode(self) -> bytes:
        return _pack(
            [
                VALUE_VERSION,
                self.tree_size,
                self.root,
                self.trigger,
                self.holder,
                self.sender,
                self.nonce,
                self.raw_tx,
                self.tx_hash,
                self.intent_index,
                self.intent_ms,
                self.attempt,
                self.state,
                None if self.inclusion is None else self.inclusion.to_list(),
                None if self.final is None else self.final.to_list(),
                self.reorgs,
            ]
        )

    @classmethod
    def decode(cls, batch_id: int, raw: bytes) -> Batch:
        f = _fields(raw, "batch", 16)
        return cls(
            batch_id=batch_id,
            tree_size=_int(f[1], "tree_size", 1),
            root=_bytes(f[2], "root", HASH_BYTES),
            trigger=_choice(f[3], "trigger", TRIGGERS),
            holder=_text(f[4], "holder"),
            sender=_bytes(f[5], "sender", ADDRESS_BYTES),
            nonce=_int(f[6], "nonce"),
            raw_tx=_raw_tx(f[7]),
            tx_hash=_bytes(f[8], "tx_hash", HASH_BYTES),
            intent_index=_int(f[9], "intent_index", 1),
            intent_ms=_int(f[10], "intent_ms"),
            attempt=_int(f[11], "attempt"),
            state=_choice(f[12], "state", STATES),
            inclusion=None if f[13] is None else Inclusion.from_list(f[13]),
            final=None if f[14] is None else BatchFinal.from_list(f[14]),
            reorgs=_int(f[15], "reorgs"),
        )


# ---------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class LeaseProposal:
    """``anchor.lease``: take or renew (``release`` False) or give up (True) the lease."""

    node_id: str
    ttl_ms: int
    release: bool = False

    def __post_init__(self) -> None:
        if not LEASE_TTL_MS_MIN <= self.ttl_ms <= LEASE_TTL_MS_MAX:
            raise UnsupportedFormat(f"lease ttl must be {LEASE_TTL_MS_MIN}..{LEASE_TTL_MS_MAX} ms")

    def to_entry(self) -> AppEntry:
        return AppEntry(
            ANCHOR_LEASE, {"node": self.node_id, "ttl_ms": self.ttl_ms, "release": self.release}
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LeaseProposal:
        _body(body, ("node", "ttl_ms", "release"), ANCHOR_LEASE)
        if not isinstance(body["release"], bool):
            raise UnsupportedFormat("release must be a boolean")
        return cls(_text(body["node"], "node"), _int(body["ttl_ms"], "ttl_ms"), body["release"])


@dataclass(frozen=True, slots=True)
class IntentProposal:
    """``anchor.intent``: the signed transaction of a batch, committed before it is sent.

    ``why`` is ``size`` or ``interval`` for a new batch; ``reverted`` or ``nonce_used`` for a
    replacement, which names the transaction it replaces in ``replaces``.
    """

    holder: str
    batch_id: int
    tree_size: int
    root: bytes
    sender: bytes
    nonce: int
    raw_tx: bytes
    tx_hash: bytes
    why: str
    replaces: bytes | None = None

    def __post_init__(self) -> None:
        if (self.why in REPLACE_REASONS) != (self.replaces is not None):
            raise UnsupportedFormat("a replacement intent (and only one) names what it replaces")
        if self.replaces == self.tx_hash:
            raise UnsupportedFormat("a replacement needs another transaction")

    @property
    def is_replacement(self) -> bool:
        return self.replaces is not None

    def to_entry(self) -> AppEntry:
        return AppEntry(
            ANCHOR_INTENT,
            {
                "holder": self.holder,
                "batch": self.batch_id,
                "size": self.tree_size,
                "root": self.root,
                "sender": self.sender,
                "nonce": self.nonce,
                "raw": self.raw_tx,
                "tx": self.tx_hash,
                "why": self.why,
                "replaces": self.replaces,
            },
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IntentProposal:
        keys = ("holder", "batch", "size", "root", "sender", "nonce", "raw", "tx", "why")
        _body(body, (*keys, "replaces"), ANCHOR_INTENT)
        replaces = body["replaces"]
        return cls(
            holder=_text(body["holder"], "holder"),
            batch_id=_int(body["batch"], "batch", 1),
            tree_size=_int(body["size"], "size", 1),
            root=_bytes(body["root"], "root", HASH_BYTES),
            sender=_bytes(body["sender"], "sender", ADDRESS_BYTES),
            nonce=_int(body["nonce"], "nonce"),
            raw_tx=_raw_tx(body["raw"]),
            tx_hash=_bytes(body["tx"], "tx", HASH_BYTES),
            why=_choice(body["why"], "why", TRIGGERS + REPLACE_REASONS),
            replaces=None if replaces is None else _bytes(replaces, "replaces", HASH_BYTES),
        )


@dataclass(frozen=True, slots=True)
class ResultProposal:
    """``anchor.result``: the receipt of a batch's transaction."""

    holder: str
    batch_id: int
    tx_hash: bytes
    chain_id: int
    contract: bytes
    block_number: int
    block_hash: bytes
    status: int

    def to_entry(self) -> AppEntry:
        return AppEntry(
            ANCHOR_RESULT,
            {
                "holder": self.holder,
                "batch": self.batch_id,
                "tx": self.tx_hash,
                "chain": self.chain_id,
                "contract": self.contract,
                "block": self.block_number,
                "bhash": self.block_hash,
                "status": self.status,
            },
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ResultProposal:
        keys = ("holder", "batch", "tx", "chain", "contract", "block", "bhash", "status")
        _body(body, keys, ANCHOR_RESULT)
        return cls(
            holder=_text(body["holder"], "holder"),
            batch_id=_int(body["batch"], "batch", 1),
            tx_hash=_bytes(body["tx"], "tx", HASH_BYTES),
            chain_id=_int(body["chain"], "chain", 1),
            contract=_bytes(body["contract"], "contract", ADDRESS_BYTES),
            block_number=_int(body["block"], "block"),
            block_hash=_bytes(body["bhash"], "bhash", HASH_BYTES),
            status=_int(body["status"], "status", 0, 1),
        )


@dataclass(frozen=True, slots=True)
class FinalProposal:
    """``anchor.final``: the batch's block is still there, ``confirmations`` deep."""

    holder: str
    batch_id: int
    block_hash: bytes
    confirmations: int

    def to_entry(self) -> AppEntry:
        return AppEntry(
            ANCHOR_FINAL,
            {
                "holder": self.holder,
                "batch": self.batch_id,
                "bhash": self.block_hash,
                "conf": self.confirmations,
            },
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> FinalProposal:
        _body(body, ("holder", "batch", "bhash", "conf"), ANCHOR_FINAL)
        return cls(
            holder=_text(body["holder"], "holder"),
            batch_id=_int(body["batch"], "batch", 1),
            block_hash=_bytes(body["bhash"], "bhash", HASH_BYTES),
            confirmations=_int(body["conf"], "conf", 1),
        )


@dataclass(frozen=True, slots=True)
class ReorgProposal:
    """``anchor.reorg``: the block ``vanished`` that held batch ``batch_id`` is gone."""

    holder: str
    batch_id: int
    vanished: bytes

    def to_entry(self) -> AppEntry:
        return AppEntry(
            ANCHOR_REORG, {"holder": self.holder, "batch": self.batch_id, "bhash": self.vanished}
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ReorgProposal:
        _body(body, ("holder", "batch", "bhash"), ANCHOR_REORG)
        return cls(
            holder=_text(body["holder"], "holder"),
            batch_id=_int(body["batch"], "batch", 1),
            vanished=_bytes(body["bhash"], "bhash", HASH_BYTES),
        )


# ---------------------------------------------------------------------- reads


def lease_of(view: StateView) -> Lease | None:
    raw = view.get(LEASE_KEY)
    return Lease.decode(raw) if raw is not None else None


def progress_of(view: StateView) -> Progress:
    raw = view.get(NEXT_KEY)
    return Progress.decode(raw) if raw is not None else Progress()


def counters(view: StateView) -> AnchorCounters:
    raw = view.get(COUNTERS_KEY)
    return AnchorCounters.decode(raw) if raw is not None else AnchorCounters()


def batch(view: StateView, batch_id: int) -> Batch | None:
    if not 1 <= batch_id <= U64_MAX:
        return None
    raw = view.get(batch_key(batch_id))
    return Batch.decode(batch_id, raw) if raw is not None else None


def batches(view: StateView, from_id: int, limit: int) -> list[Batch]:
    """Up to ``limit`` batches from ``from_id`` on, in id order."""
    end = min(progress_of(view).next_batch_id, max(from_id, 1) + max(limit, 0))
    found = [batch(view, i) for i in range(max(from_id, 1), end)]
    return [b for b in found if b is not None]


def latest_final(view: StateView) -> Batch | None:
    return batch(view, progress_of(view).final_through)


def latest_anchored(view: StateView) -> Batch | None:
    """The latest batch mined with status 1 (included or final)."""
    return batch(view, progress_of(view).included_through)


def first_anchor_covering(
    view: StateView, leaf_index: int, *, final_only: bool = False
) -> Batch | None:
    """The first anchored batch whose tree holds leaf ``leaf_index`` (``tree_size >
    leaf_index``), by binary search over the ids (sizes grow with the id); None when no
    anchored (or, with ``final_only``, final) batch covers it yet."""
    progress = progress_of(view)
    high = progress.final_through if final_only else progress.included_through
    if leaf_index < 0 or high == 0:
        return None
    low, found = 1, None
    while low <= high:
        middle = (low + high) // 2
        candidate = batch(view, middle)
        if candidate is None:  # the prefix below included_through is never missing
            raise UnsupportedFormat(f"anchoring state misses batch {middle}")
        if candidate.tree_size > leaf_index:
            found, high = candidate, middle - 1
        else:
            low = middle + 1
    return found


# ---------------------------------------------------------------------- the state machine


class AnchorLog:
    """The anchoring state machine (pure: reads a view, returns writes).

    ``root_at(view, size)`` is the record log's Merkle root at ``size`` leaves, or None when
    the log is smaller (injected, so this module does not depend on the Merkle log).
    """

    prefix = PREFIX
    entry_types: Mapping[str, int] = {
        ANCHOR_LEASE: ANCHORING_FEATURE_VERSION,
        ANCHOR_INTENT: ANCHORING_FEATURE_VERSION,
        ANCHOR_RESULT: ANCHORING_FEATURE_VERSION,
        ANCHOR_FINAL: ANCHORING_FEATURE_VERSION,
        ANCHOR_REORG: ANCHORING_FEATURE_VERSION,
    }

    def __init__(self, root_at: RootAt) -> None:
        self._root_at = root_at

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        try:
            if entry.type == ANCHOR_LEASE:
                return self._lease(LeaseProposal.from_body(entry.body), position, view)
            if entry.type == ANCHOR_INTENT:
                return self._intent(IntentProposal.from_body(entry.body), position, view)
            if entry.type == ANCHOR_RESULT:
                return self._result(ResultProposal.from_body(entry.body), position, view)
            if entry.type == ANCHOR_FINAL:
                return self._final(FinalProposal.from_body(entry.body), position, view)
            if entry.type == ANCHOR_REORG:
                return self._reorg(ReorgProposal.from_body(entry.body), position, view)
        except UnsupportedFormat as exc:
            return ApplyOutcome("malformed", {"reason": exc.detail})
        return ApplyOutcome("unknown_type")

    # -- lease

    def _lease(self, p: LeaseProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        now = position.leader_time_ms
        lease = lease_of(view)
        held = lease is not None and not lease.free_at(now)
        if p.release:
            if lease is None or not lease.held_by(p.node_id, now):
                return ApplyOutcome("not_holder", _lease_detail(lease))
            released = replace(lease, renewed_ms=now, expires_ms=now)
            return ApplyOutcome("released", _lease_detail(released), _lease_writes(released))
        if lease is not None and held and lease.holder != p.node_id:
            return ApplyOutcome("held", _lease_detail(lease))
        if lease is not None and held:  # the holder renews
            renewed = replace(lease, renewed_ms=now, expires_ms=now + p.ttl_ms, ttl_ms=p.ttl_ms)
            return ApplyOutcome("renewed", _lease_detail(renewed), _lease_writes(renewed))
        granted = Lease(
            holder=p.node_id,
            granted_ms=now,
            renewed_ms=now,
            expires_ms=now + p.ttl_ms,
            ttl_ms=p.ttl_ms,
            epoch=(lease.epoch + 1) if lease is not None else 1,
        )
        count = counters(view)
        writes = (
            *_lease_writes(granted),
            (COUNTERS_KEY, replace(count, leases_granted=count.leases_granted + 1).encode()),
        )
        return ApplyOutcome("created", _lease_detail(granted), writes)

    def _holding(self, holder: str, position: LogPosition, view: StateView) -> bool:
        lease = lease_of(view)
        return lease is not None and lease.held_by(holder, position.leader_time_ms)

    # -- intent

    def _intent(self, p: IntentProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        if not self._holding(p.holder, position, view):
            return ApplyOutcome("not_holder", _lease_detail(lease_of(view)))
        progress = progress_of(view)
        if p.batch_id < progress.next_batch_id:
            return self._replacement(p, position, view)
        if p.batch_id > progress.next_batch_id or p.is_replacement:
            return ApplyOutcome("rejected", {"reason": "batch_id", "next": progress.next_batch_id})
        if progress.open_count >= OPEN_BATCHES_MAX:
            return ApplyOutcome("too_many_open", {"open": progress.open_count})
        previous = batch(view, p.batch_id - 1)
        previous_size = previous.tree_size if previous is not None else 0
        if p.tree_size <= previous_size:
            return ApplyOutcome("rejected", {"reason": "tree_not_grown", "size": previous_size})
        if self._root_at(view, p.tree_size) != p.root:
            return ApplyOutcome("rejected", {"reason": "root_mismatch", "size": p.tree_size})
        created = Batch(
            batch_id=p.batch_id,
            tree_size=p.tree_size,
            root=p.root,
            trigger=p.why,
            holder=p.holder,
            sender=p.sender,
            nonce=p.nonce,
            raw_tx=p.raw_tx,
            tx_hash=p.tx_hash,
            intent_index=position.index,
            intent_ms=position.leader_time_ms,
            attempt=0,
            state=INTENT,
        )
        count = counters(view)
        count = (
            replace(count, size_triggered=count.size_triggered + 1)
            if p.why == SIZE
            else replace(count, interval_triggered=count.interval_triggered + 1)
        )
        next_progress = replace(progress, next_batch_id=p.batch_id + 1)
        return ApplyOutcome(
            "created",
            _batch_detail(created),
            (
                (batch_key(p.batch_id), created.encode()),
                (NEXT_KEY, next_progress.encode()),
                (COUNTERS_KEY, count.encode()),
            ),
        )

    def _replacement(
        self, p: IntentProposal, position: LogPosition, view: StateView
    ) -> ApplyOutcome:
        held = batch(view, p.batch_id)
        if held is None:
            return ApplyOutcome("unknown_batch")
        if p.tx_hash == held.tx_hash:
            return ApplyOutcome("existing", _batch_detail(held))  # a retried proposal
        if not p.is_replacement or p.replaces != held.tx_hash:
            return ApplyOutcome("stale", _batch_detail(held))
        if (p.why, held.state) not in ((REVERTED, FAILED), (NONCE_USED, INTENT)):
            return ApplyOutcome("stale", _batch_detail(held))
        if (p.tree_size, p.root) != (held.tree_size, held.root):
            return ApplyOutcome("rejected", {"reason": "replacement_changes_anchor"})
        replaced = replace(
            held,
            holder=p.holder,
            sender=p.sender,
            nonce=p.nonce,
            raw_tx=p.raw_tx,
            tx_hash=p.tx_hash,
            attempt=held.attempt + 1,
            state=INTENT,
            inclusion=None,
        )
        count = counters(view)
        return ApplyOutcome(
            "created",
            _batch_detail(replaced),
            (
                (batch_key(p.batch_id), replaced.encode()),
                (COUNTERS_KEY, replace(count, replacements=count.replacements + 1).encode()),
            ),
        )

    # -- result

    def _result(self, p: ResultProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        if not self._holding(p.holder, position, view):
            return ApplyOutcome("not_holder", _lease_detail(lease_of(view)))
        held = batch(view, p.batch_id)
        if held is None:
            return ApplyOutcome("unknown_batch")
        if p.tx_hash != held.tx_hash:
            return ApplyOutcome("stale", _batch_detail(held))
        if held.state != INTENT:
            same = held.block_hash == p.block_hash and (held.state != FAILED) == bool(p.status)
            return ApplyOutcome("existing" if same else "stale", _batch_detail(held))
        progress = progress_of(view)
        if p.status == 1 and p.batch_id != progress.included_through + 1:
            return ApplyOutcome("out_of_order", {"included_through": progress.included_through})
        inclusion = Inclusion(
            chain_id=p.chain_id,
            contract=p.contract,
            block_number=p.block_number,
            block_hash=p.block_hash,
            status=p.status,
            result_index=position.index,
            included_ms=position.leader_time_ms,
        )
        count = counters(view)
        if p.status == 0:
            failed = replace(held, state=FAILED, inclusion=inclusion)
            return ApplyOutcome(
                "created",
                _batch_detail(failed),
                (
                    (batch_key(p.batch_id), failed.encode()),
                    (COUNTERS_KEY, replace(count, reverted=count.reverted + 1).encode()),
                ),
            )
        included = replace(held, state=INCLUDED, inclusion=inclusion)
        return ApplyOutcome(
            "created",
            _batch_detail(included),
            (
                (batch_key(p.batch_id), included.encode()),
                (NEXT_KEY, replace(progress, included_through=p.batch_id).encode()),
            ),
        )

    # -- final

    def _final(self, p: FinalProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        if not self._holding(p.holder, position, view):
            return ApplyOutcome("not_holder", _lease_detail(lease_of(view)))
        held = batch(view, p.batch_id)
        if held is None:
            return ApplyOutcome("unknown_batch")
        if not held.anchored or held.block_hash != p.block_hash:
            return ApplyOutcome("stale", _batch_detail(held))
        if held.state == FINAL:
            return ApplyOutcome("existing", _batch_detail(held))
        progress = progress_of(view)
        if p.batch_id != progress.final_through + 1:
            return ApplyOutcome("out_of_order", {"final_through": progress.final_through})
        final = replace(
            held,
            state=FINAL,
            final=BatchFinal(p.confirmations, position.index, position.leader_time_ms),
        )
        count = counters(view)
        return ApplyOutcome(
            "created",
            _batch_detail(final),
            (
                (batch_key(p.batch_id), final.encode()),
                (NEXT_KEY, replace(progress, final_through=p.batch_id).encode()),
                (COUNTERS_KEY, replace(count, finals=count.finals + 1).encode()),
            ),
        )

    # -- reorg

    def _reorg(self, p: ReorgProposal, position: LogPosition, view: StateView) -> ApplyOutcome:
        if not self._holding(p.holder, position, view):
            return ApplyOutcome("not_holder", _lease_detail(lease_of(view)))
        held = batch(view, p.batch_id)
        if held is None:
            return ApplyOutcome("unknown_batch")
        if held.inclusion is None or held.block_hash != p.vanished:
            return ApplyOutcome("stale", _batch_detail(held))
        count = counters(view)
        if held.state == FAILED:
            # Its reverted transaction is off the chain with its nonce unspent: send it
            # again (a replacement behind an unspent nonce would never be mined).
            back = replace(held, state=INTENT, inclusion=None, reorgs=held.reorgs + 1)
            return ApplyOutcome(
                "created",
                {"batch": p.batch_id, "sent_back": 1},
                (
                    (batch_key(p.batch_id), back.encode()),
                    (COUNTERS_KEY, replace(count, reanchors=count.reanchors + 1).encode()),
                ),
            )
        progress = progress_of(view)
        writes: list[Write] = []
        # Every anchored batch from this one on landed in the same or a later block: all of
        # them are gone with it (see the module docstring).
        for batch_id in range(p.batch_id, progress.included_through + 1):
            gone = batch(view, batch_id)
            if gone is None or not gone.anchored:
                raise UnsupportedFormat(f"anchoring state: batch {batch_id} is not anchored")
            back = replace(gone, state=INTENT, inclusion=None, final=None, reorgs=gone.reorgs + 1)
            writes.append((batch_key(batch_id), back.encode()))
        sent_back = len(writes)
        after = Progress(
            next_batch_id=progress.next_batch_id,
            included_through=p.batch_id - 1,
            final_through=min(progress.final_through, p.batch_id - 1),
        )
        writes += [
            (NEXT_KEY, after.encode()),
            (COUNTERS_KEY, replace(count, reanchors=count.reanchors + sent_back).encode()),
        ]
        return ApplyOutcome("created", {"batch": p.batch_id, "sent_back": sent_back}, tuple(writes))


def _lease_writes(lease: Lease) -> tuple[Write, ...]:
    return ((LEASE_KEY, lease.encode()),)


def _lease_detail(lease: Lease | None) -> dict[str, Any]:
    if lease is None:
        return {}
    return {"holder": lease.holder, "expires_ms": lease.expires_ms, "epoch": lease.epoch}


def _batch_detail(b: Batch) -> dict[str, Any]:
    return {"batch": b.batch_id, "state": b.state, "tx": b.tx_hash, "attempt": b.attempt}
