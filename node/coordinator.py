"""The write and read coordinator of a node: erasure-code, place, store, gather, rebuild.

Any node coordinates the records a gateway sends it (asyncio side; talks to peers through a
:class:`ShardTransport`, in production the libp2p :class:`node.p2p.service.P2PNode`).

Write (one record or a batch):
  1. place the record's ``n`` shards on distinct members (rendezvous hashing);
  2. erasure-code the blob and send each node its shards as *exclusive* puts: a node that
     already holds another version of the record stores nothing for it and answers with the
     metas it holds instead;
  3. acknowledge once ``write_quorum`` shards are durable; the remaining puts go on in the
     background and shards that still fail are kept as hints and replayed later;
  4. a record short of its quorum because nodes refused it is an earlier write: with ``k`` or
     more shards of one version reported, it is returned as-is when the body fingerprint
     matches (an idempotent retry) and refused with 409 otherwise; with fewer (an earlier
     write that failed), the refused shards are sent again, non-exclusively.

  Why this is safe without a separate probe: an acknowledged version holds ``write_quorum``
  nodes, so another version can land on at most ``n - write_quorum`` of them, and the config
  requires ``write_quorum > n - k``: such leftovers are never decodable and never reach a
  quorum. Concurrent writes of two versions are settled node by node in each node's single
  committer, and for good by the consensus log (a later issue).

Shard traffic to a peer is coalesced across concurrent requests (:mod:`node.batcher`): one
``PutShards`` and one ``GetRecords`` frame carries the shards and reads of every request that
arrived within a few milliseconds. The number of records being coordinated is bounded
(``coordinator_queue_records_max``); past it new work is refused with :class:`Overloaded` and
the depth is reported to gateways so they can back off.

Read: ask the holders of the systematic shards first; if fewer than ``k`` intact shards come
back, ask the others; rebuild; check the content hash; if it does not match (a node served a
wrong shard that passed its checksum), try other shard combinations before giving up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from business.bridge.wire import decode_request as decode_bridge_request
from business.ledger.outcome import OperationOutcome
from business.payments.model import PAYMENTS_FEATURE_VERSION
from business.payments.wire import decode_request as decode_payments_request
from node.batcher import Batcher
from node.config import ClusterConfig, NodeLimits, NodeTimeouts
from node.consensus.bridge_ops import BRIDGE_FEATURE_VERSION
from node.consensus.ledger_ops import (
    APPROVALS_BYTES_MAX,
    Operation,
    chain_open,
    check_proposer,
    operation_events,
)
from node.consensus.record_index import IndexEntry, IndexProposal
from node.errors import (
    BaasError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    OperationFailed,
    Overloaded,
    PayloadTooLarge,
    PeerError,
    QuorumNotReached,
    RecordUnavailable,
    UnsupportedFormat,
)
from node.p2p.messages import (
    REQUEST_IDS_MAX,
    DeletedReply,
    DeleteShards,
    ErrorReply,
    GetRecords,
    HasRecords,
    Message,
    MetasReply,
    PutShards,
    PutShardsReply,
    RecordsShardsReply,
)
from node.records import HASH_BYTES, Shard, ShardKey, ShardMeta, content_hash_of
from node.storage.erasure import decode_blob, encode_blob
from node.storage.hints import HintStore
from node.storage.placement import place_shards

__all__ = ["Coordinator", "ReadResult", "ShardTransport", "WriteRequest", "WriteResult"]

log = logging.getLogger("baas.node.coordinator")
T = TypeVar("T")
Placement = tuple[int, tuple[str, ...]]  # (membership epoch, the active members' peer ids)


class IndexPort(Protocol):
    """The record index as the coordinator uses it (node/replication/index_client.py)."""

    def lookup(self, record_id: bytes) -> IndexEntry | None: ...

    async def lookup_confirmed(self, record_id: bytes) -> IndexEntry | None: ...

    async def propose(self, proposals: Sequence[Operation]) -> list[dict[str, Any]]: ...

    def outcome(self, record_id: bytes) -> OperationOutcome | None:
        """The applied first ledger outcome of the operation that created ``record_id``."""
        ...

    def ledger_enabled(self) -> bool:
        """Whether the log takes ledger operations (feature version 6)."""
        ...

    def feature_version(self) -> int:
        """The log's applied feature version (Bridge requests from 8, payments from 9)."""
        ...

    def stamp(self) -> tuple[int, int]:
        """(term, max log index) a proposal made now may commit at, at most."""
        ...

    def admit(self, records: int) -> None:
        """Raise Overloaded while index proposals back up (before any shard is stored)."""
        ...


class ShardTransport(Protocol):
    async def request(
        self, peer_id: str, message: Message, *, timeout_s: float | None = None
    ) -> Message: ...


@dataclass(frozen=True, slots=True)
class WriteRequest:
    record_id: bytes
    blob: bytes
    partner_id: str
    body_fingerprint: bytes
    request_id: str = ""  # the gateway request this record came in (for the logs)
    # The gateway's salted commitment to the plaintext: goes into the record's Merkle leaf.
    plaintext_commitment: bytes | None = None
    # A ledger operation: its events (wire form, business/ledger/wire.py), applied with the
    # record's index entry as one unit (node/consensus/ledger_ops.py), and opaque approvals.
    events: bytes | None = None
    approvals: bytes | None = None
    # Who proposes the operation, as the gateway authenticated it (never the client): the
    # partner id (16 bytes; 16 zeros for the platform), the mode, and the linked users' refs
    # it may credit. Checked by the state machine from log feature 7 on.
    proposer: bytes | None = None
    mode: int | None = None
    user_refs: tuple[bytes, ...] = ()
    # A Bridge request (log feature 8, business/bridge/wire.py) instead of events: its op id
    # is the record id; the state machine makes its ledger events (node/consensus/bridge_ops.py).
    bridge: bytes | None = None
    # A payments or Market request (log feature 9, business/payments/wire.py) instead of
    # events: as ``bridge`` (node/consensus/payments_ops.py).
    payments: bytes | None = None
    # A vault deposit credit (log feature 10, node/consensus/deposit_ops.py): built only by
    # this node's deposit watcher (node/chain/deposit_service.py), never taken from the API.
    deposit: bytes | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    record_id: bytes
    content_hash: bytes
    created_at_ms: int
    shards_durable: int
    replayed: bool  # True: an earlier write with this idempotency key was returned
    # What the ledger did with the operation's events (OperationOutcome.summary()): the first
    # outcome, for a retry too. None for a plain record.
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    meta: ShardMeta  # meta of one shard; index is not meaningful here
    blob: bytes
    shards_used: tuple[int, ...]
    corrupt_shards_seen: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _request_ids(items: Sequence[tuple[Any, ...]]) -> tuple[str, ...]:
    """The distinct request ids a frame serves, bounded like the frame field."""
    return tuple(dict.fromkeys(item[1] for item in items if item[1]))[:REQUEST_IDS_MAX]


# One shard to put: the shard, the request it serves, and the log index after which the
# record's index proposal has expired (0: none; the holder then keeps no pending marker).
PutItem = tuple[Shard, str, int]


def _decodable_versions(metas: Sequence[ShardMeta]) -> dict[bytes, list[ShardMeta]]:
    """Group metas by content hash, keeping only versions with >= k distinct shard indexes."""
    by_hash: dict[bytes, dict[int, ShardMeta]] = defaultdict(dict)
    for meta in metas:
        by_hash[meta.content_hash][meta.index] = meta
    return {
        ch: list(found.values())
        for ch, found in by_hash.items()
        if len(found) >= next(iter(found.values())).k
    }


def _first_version(versions: dict[bytes, list[ShardMeta]]) -> ShardMeta | None:
    """The version a reader settles on when several are decodable: earliest, then lowest hash."""
    if not versions:
        return None
    return min(
        (metas[0] for metas in versions.values()), key=lambda m: (m.created_at_ms, m.content_hash)
    )


@dataclass(slots=True)
class _PutOutcome:
    durable: defaultdict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    refused: defaultdict[bytes, list[str]] = field(default_factory=lambda: defaultdict(list))
    existing: defaultdict[bytes, list[ShardMeta]] = field(default_factory=lambda: defaultdict(list))


class Coordinator:
    def __init__(
        self,
        *,
        cluster: ClusterConfig,
        limits: NodeLimits,
        timeouts: NodeTimeouts,
        transport: ShardTransport,
        hints: HintStore,
        clock_ms: Callable[[], int] = _now_ms,
        index: IndexPort | None = None,
        membership: Callable[[], Placement] | None = None,
    ) -> None:
        self._index = index
        # The committed storage membership (node/membership.py); the configured members,
        # epoch 0, until the cluster's first membership change.
        self._membership = membership or (lambda: (0, cluster.peer_ids))
        self._cluster = cluster
        self._limits = limits
        self._timeouts = timeouts
        self._transport = transport
        self._hints = hints
        self._clock_ms = clock_ms
        self._background: set[asyncio.Task[None]] = set()
        self.hints_written = 0
        self.hints_replayed = 0
        self.records_in_progress = 0
        shared = {
            "window_s": timeouts.coalesce_window_s,
            "inflight_max": limits.coalesce_inflight_per_peer_max,
            # Bounded by the admission check in _admit; this is a second, looser fence.
            "pending_max": limits.coordinator_queue_records_max * cluster.n,
        }
        frame_budget = limits.p2p_frame_bytes_max // 2
        self._puts: Batcher[tuple[str, bool], PutItem, tuple[ShardMeta, ...] | None] = Batcher(
            self._put_call,
            items_max=limits.put_batch_shards_max,
            bytes_max=frame_budget,
            size_of=lambda item: len(item[0].data) + 256,
            **shared,  # type: ignore[arg-type]
        )
        self._reads: Batcher[str, tuple[bytes, str], tuple[tuple[Shard, ...], int]] = Batcher(
            self._read_call,
            items_max=limits.read_batch_records_max,
            bytes_max=frame_budget,
            **shared,  # type: ignore[arg-type]
        )

    @property
    def queue_max(self) -> int:
        return self._limits.coordinator_queue_records_max

    def batcher_stats(self) -> dict[str, dict[str, int]]:
        return {name: batcher.snapshot() for name, batcher in self._batchers()}

    def _batchers(self) -> tuple[tuple[str, Batcher[Any, Any, Any]], ...]:
        return (("put", self._puts), ("read", self._reads))

    def _admit(self, records: int, *, writes: bool = False) -> None:
        if self.records_in_progress + records > self._limits.coordinator_queue_records_max:
            raise Overloaded(
                f"{self.records_in_progress} records in progress on this node "
                "(coordinator_queue_records_max)"
            )
        if writes and self._index is not None:
            self._index.admit(records)  # refused up front, not after the shards are stored
        self.records_in_progress += records

    # ----------------------------------------------------------- batched calls

    async def _put_call(
        self, key: tuple[str, bool], items: list[PutItem]
    ) -> list[tuple[ShardMeta, ...] | None]:
        """One PutShards frame; per item None (stored) or the metas of the version held."""
        peer_id, exclusive = key
        shards = [shard for shard, _, _ in items]
        expiries = tuple(expiry for _, _, expiry in items)
        message = PutShards(
            tuple(shards), _request_ids(items), exclusive, expiries if any(expiries) else ()
        )
        reply = await self._ask(peer_id, message)
        if not isinstance(reply, PutShardsReply):
            raise OperationFailed(f"peer {peer_id} answered a put with {type(reply).__name__}")
        refused = set(reply.refused)
        if reply.stored != sum(1 for s in shards if s.meta.record_id not in refused):
            raise OperationFailed(f"peer {peer_id} did not store a put batch")
        held: dict[bytes, list[ShardMeta]] = defaultdict(list)
        for meta in reply.existing:
            held[meta.record_id].append(meta)
        return [
            tuple(held[s.meta.record_id]) if s.meta.record_id in refused else None for s in shards
        ]

    async def _read_call(
        self, peer_id: str, items: list[tuple[bytes, str]]
    ) -> list[tuple[tuple[Shard, ...], int]]:
        rids = [rid for rid, _ in items]
        reply = await self._ask(peer_id, GetRecords(tuple(rids), _request_ids(items)))
        if not isinstance(reply, RecordsShardsReply):
            raise OperationFailed(f"peer {peer_id} answered a read with {type(reply).__name__}")
        found: dict[bytes, list[Shard]] = defaultdict(list)
        for shard in reply.shards:
            found[shard.meta.record_id].append(shard)
        corrupt: dict[bytes, int] = defaultdict(int)
        for rid in reply.corrupt_record_ids:
            corrupt[rid] += 1
        return [(tuple(found.get(rid, ())), corrupt[rid]) for rid in rids]

    # ----------------------------------------------------------------- helpers

    def placement(self, record_id: bytes, members: Sequence[str] | None = None) -> tuple[str, ...]:
        if members is None:
            members = self._membership()[1]
        return place_shards(record_id, members, self._cluster.n)

    async def _ask(self, peer_id: str, message: Message) -> Message:
        reply = await self._transport.request(
            peer_id, message, timeout_s=self._timeouts.p2p_request_s
        )
        if isinstance(reply, ErrorReply):
            raise OperationFailed(f"peer {peer_id} refused: {reply.code}: {reply.detail}")
        return reply

    @staticmethod
    async def _gather(
        calls: dict[str, Awaitable[T]],
    ) -> tuple[dict[str, T], dict[str, BaasError]]:
        peers = list(calls)
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        replies: dict[str, T] = {}
        failures: dict[str, BaasError] = {}
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, OperationFailed | PeerError):
                failures[peer] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                replies[peer] = result
        return replies, failures

    def _validate(self, request: WriteRequest) -> None:
        if len(request.record_id) != HASH_BYTES or len(request.body_fingerprint) != HASH_BYTES:
            raise InvalidRequest("record id and body fingerprint must be 32 bytes")
        commitment = request.plaintext_commitment
        if commitment is not None and len(commitment) != HASH_BYTES:
            raise InvalidRequest("the plaintext commitment must be 32 bytes")
        if len(request.blob) > self._limits.record_blob_bytes_max:
            raise PayloadTooLarge("record blob exceeds record_blob_bytes_max")
        if not request.partner_id:
            raise InvalidRequest("partner id is empty")
        carried = [r for r in _REQUEST_KINDS if getattr(request, r.attribute) is not None]
        if request.deposit is not None and (request.events is not None or carried):
            raise InvalidRequest(
                "a deposit credit carries no ledger events, Bridge or payments request"
            )
        if carried:
            self._validate_request(request, carried)
        elif request.events is not None or request.approvals is not None:
            self._validate_operation(request)
        if request.proposer is not None or request.mode is not None or request.user_refs:
            try:
                check_proposer(request.proposer, request.mode, request.user_refs)
            except InvalidRequest as exc:
                raise InvalidRequest(exc.detail, code="invalid_proposer", param="pt") from exc

    def _validate_request(self, request: WriteRequest, carried: list[_RequestKind]) -> None:
        """Refuse a Bridge or payments request the log would call malformed, before any shard
        is stored: not before its log feature (503, retry), not with ledger events or another
        request, one that does not decode, or whose op id is not its record id (400)."""
        kind = carried[0]
        version = 0 if self._index is None else self._index.feature_version()
        if version < kind.feature:
            raise OperationFailed(
                f"the cluster's log has not enabled {kind.name} requests (feature version "
                f"{kind.feature}) yet; retry shortly",
                code=f"{kind.problem}_not_enabled",
            )
        invalid = f"invalid_{kind.problem}_request"
        if request.events is not None or len(carried) > 1:
            raise InvalidRequest(
                "an operation carries ledger events, a Bridge or a payments request: one",
                code=invalid,
                param=kind.param,
            )
        _check_approvals_size(request)
        try:
            decoded = kind.decode(getattr(request, kind.attribute))
        except UnsupportedFormat as exc:
            raise InvalidRequest(
                f"{kind.name} request: {exc.detail}", code=invalid, param=kind.param
            ) from exc
        if decoded.op != request.record_id:
            raise InvalidRequest(
                f"a {kind.name} request's op id must be its record id",
                code=invalid,
                param=kind.param,
            )

    def _validate_operation(self, request: WriteRequest) -> None:
        """Refuse a ledger operation the log would refuse, before any shard is stored."""
        if self._index is None or not self._index.ledger_enabled():
            raise OperationFailed(
                "the cluster's log has not enabled ledger operations (feature version 6) yet; "
                "retry shortly",
                code="ledger_not_enabled",
            )
        _check_approvals_size(request)
        try:
            events = operation_events(request.events)
        except UnsupportedFormat as exc:
            raise InvalidRequest(
                f"ledger events: {exc.detail}", code="invalid_ledger_events", param="ev"
            ) from exc
        if len(events) > self._limits.ledger_op_events_max:
            raise InvalidRequest(
                f"an operation carries at most {self._limits.ledger_op_events_max} ledger events "
                "(limits.ledger_op_events_max)",
                code="invalid_ledger_events",
                param="ev",
            )
        if chain_open(events):
            raise InvalidRequest(
                "the operation's events end inside a linked chain (the last one is linked)",
                code="linked_event_chain_open",
                param="ev",
            )

    # ----------------------------------------------------------------- writes

    async def write_records(
        self, requests: Sequence[WriteRequest]
    ) -> list[WriteResult | BaasError]:
        """Write a batch; each record succeeds or fails on its own."""
        if len(requests) > self._limits.records_per_request_max:
            raise PayloadTooLarge("too many records in one request")
        for request in requests:
            self._validate(request)
        if len({r.record_id for r in requests}) != len(requests):
            raise InvalidRequest("a batch repeats an idempotency key", code="duplicate_in_batch")
        self._admit(len(requests), writes=True)
        try:
            return await self._write_admitted(requests)
        finally:
            self.records_in_progress -= len(requests)

    async def _write_admitted(
        self, requests: Sequence[WriteRequest]
    ) -> list[WriteResult | BaasError]:
        results: list[WriteResult | BaasError | None] = [None] * len(requests)
        # 0. The committed index answers retries without touching any shard.
        to_store: list[tuple[int, WriteRequest]] = []
        for position, request in enumerate(requests):
            known = self._index.lookup(request.record_id) if self._index is not None else None
            if known is None:
                to_store.append((position, request))
            else:
                results[position] = self._from_index(request, known)
        if to_store:
            stored = await self._store([r for _, r in to_store])
            for (position, _), result in zip(to_store, stored, strict=True):
                results[position] = result
        return [r for r in results if r is not None]

    def _from_index(self, request: WriteRequest, known: IndexEntry) -> WriteResult | BaasError:
        if (known.owner, known.body_fingerprint) != (request.partner_id, request.body_fingerprint):
            return IdempotencyConflict(
                "this Idempotency-Key was already used with a different body"
            )
        return WriteResult(
            request.record_id,
            known.content_hash,
            known.leader_time_ms,
            self._cluster.write_quorum,
            replayed=True,
            outcome=self._first_outcome(request),
        )

    def _first_outcome(self, request: WriteRequest) -> dict[str, Any] | None:
        """A retried operation's applied first outcome (a plain record has none; a ledger
        operation carries events, a Bridge operation its request)."""
        plain = all(
            getattr(request, name) is None for name in ("events", "bridge", "payments", "deposit")
        )
        if plain or self._index is None:
            return None
        first = self._index.outcome(request.record_id)
        return first.summary() if first is not None else None

    async def _store(self, requests: Sequence[WriteRequest]) -> list[WriteResult | BaasError]:
        """1. store shards (exclusive puts), 2. commit the index entries through the leader."""
        created_at_ms = self._clock_ms()
        # One membership for the whole call: the shards go where the index entry says.
        epoch, members = self._membership()
        # The proposal's expiry, stamped before any shard is stored and kept by every holder:
        # once the log passes it, a record still not indexed never will be, and its shards
        # are collected (node/storage/orphans.py).
        stamp = self._index.stamp() if self._index is not None else (0, 0)
        all_shards = [self._shards_of(request, created_at_ms) for request in requests]
        outcome = await self._put_all(
            requests, all_shards, members, exclusive=True, expiry=stamp[1]
        )
        results: list[WriteResult | BaasError] = []
        for request, shards in zip(requests, all_shards, strict=True):
            rid = request.record_id
            if outcome.durable[rid] < self._cluster.write_quorum and outcome.refused[rid]:
                earlier = self._earlier_write(request, outcome.existing[rid])
                if isinstance(earlier, BaasError) or (self._index is None and earlier is not None):
                    results.append(earlier)
                    continue
                # An earlier write holds some nodes: store there too, beside it (reads settle
                # on the indexed version). With the index, this request's own version is what
                # it proposes, never the earlier one this node's index does not know: a
                # proposal carries the leaf of the shards it stored (their hashes, the
                # plaintext's salted commitment), and the earlier version's leaf would then
                # name other bytes; scrubbers quarantined its good shards as corrupt, repair
                # rebuilt them and they were quarantined again, until records were lost. If
                # the earlier version was indexed meanwhile, the index answers `existing` with
                # it, and this one's shards are orphans (node/storage/orphans.py).
                again = await self._put_all(
                    [request], [shards], members, exclusive=False, only=outcome, expiry=stamp[1]
                )
                outcome.durable[rid] += again.durable[rid]
            results.append(self._result_of(request, shards, created_at_ms, outcome.durable[rid]))
        if self._index is None:
            return results
        shard_hashes = {
            request.record_id: tuple(hashlib.sha256(shard.data).digest() for shard in shards)
            for request, shards in zip(requests, all_shards, strict=True)
        }
        return await self._commit_index(requests, results, epoch, members, stamp, shard_hashes)

    async def _commit_index(
        self,
        requests: Sequence[WriteRequest],
        stored: list[WriteResult | BaasError],
        epoch: int,
        members: Sequence[str],
        stamp: tuple[int, int],
        shard_hashes: dict[bytes, tuple[bytes, ...]],
    ) -> list[WriteResult | BaasError]:
        """Acknowledge only what the consensus log has indexed (applied on the leader)."""
        assert self._index is not None
        pending = [
            (position, request, result)
            for position, (request, result) in enumerate(zip(requests, stored, strict=True))
            if isinstance(result, WriteResult)
        ]
        if not pending:
            return stored
        proposals = [
            Operation(
                IndexProposal(
                    record_id=request.record_id,
                    content_hash=result.content_hash,
                    k=self._cluster.k,
                    n=self._cluster.n,
                    shard_nodes=self.placement(request.record_id, members),
                    membership_epoch=epoch,
                    owner=request.partner_id,
                    body_fingerprint=request.body_fingerprint,
                    expiry_term=stamp[0],
                    expiry_max_index=stamp[1],
                    shard_hashes=shard_hashes[request.record_id]
                    if request.plaintext_commitment is not None
                    else (),
                    plaintext_commitment=request.plaintext_commitment,
                ),
                request.events,
                request.approvals,
                request.proposer,
                request.mode,
                request.user_refs,
                bridge=request.bridge,
                payments=request.payments,
                deposit=request.deposit,
            )
            for _, request, result in pending
        ]
        final: list[WriteResult | BaasError] = list(stored)
        try:
            outcomes = await self._index.propose(proposals)
        except OperationFailed as exc:
            for position, _, _ in pending:
                final[position] = OperationFailed(
                    f"shards stored but not yet indexed ({exc.detail}); retry with the same "
                    "Idempotency-Key",
                    code="index_unavailable",
                )
            return final
        for (position, request, result), got in zip(pending, outcomes, strict=True):
            final[position] = self._indexed_result(request, result, got)
        return final

    @staticmethod
    def _indexed_result(
        request: WriteRequest, stored: WriteResult, got: dict[str, Any]
    ) -> WriteResult | BaasError:
        code = got.get("code")
        outcome = got.get("outcome") if isinstance(got.get("outcome"), dict) else None
        if code == "created":
            return dataclasses.replace(stored, created_at_ms=int(got["ts"]), outcome=outcome)
        if code == "existing":  # a racing retry indexed its own version first: that one stands
            first_ch = got.get("first_ch")
            return dataclasses.replace(
                stored,
                content_hash=bytes(first_ch) if first_ch else stored.content_hash,
                replayed=True,
                outcome=outcome,
            )
        if code == "conflict":
            return IdempotencyConflict(
                "this Idempotency-Key was already used with a different body"
            )
        return OperationFailed(
            f"the index entry was not applied ({code}); retry with the same Idempotency-Key",
            code="index_unavailable",
        )

    def _result_of(
        self, request: WriteRequest, shards: list[Shard], created_at_ms: int, durable: int
    ) -> WriteResult | BaasError:
        quorum = self._cluster.write_quorum
        if durable >= quorum:
            return WriteResult(
                request.record_id, shards[0].meta.content_hash, created_at_ms, durable, False
            )
        return QuorumNotReached(
            f"only {durable} of the {quorum} shards needed became durable; retry with "
            "the same Idempotency-Key"
        )

    async def write_record(self, request: WriteRequest) -> WriteResult:
        (result,) = await self.write_records([request])
        if isinstance(result, BaasError):
            raise result
        return result

    @staticmethod
    def _earlier_write(
        request: WriteRequest, metas: Sequence[ShardMeta]
    ) -> WriteResult | BaasError | None:
        versions = _decodable_versions(metas)
        first = _first_version(versions)
        if first is None:
            return None
        if (
            first.body_fingerprint != request.body_fingerprint
            or first.partner_id != request.partner_id
        ):
            return IdempotencyConflict(
                "this Idempotency-Key was already used with a different body"
            )
        return WriteResult(
            record_id=request.record_id,
            content_hash=first.content_hash,
            created_at_ms=first.created_at_ms,
            shards_durable=len(versions[first.content_hash]),
            replayed=True,
        )

    def _shards_of(self, request: WriteRequest, created_at_ms: int) -> list[Shard]:
        k, n = self._cluster.k, self._cluster.n
        content_hash = content_hash_of(request.blob)
        pieces = encode_blob(request.blob, k, n)
        return [
            Shard(
                ShardMeta(
                    record_id=request.record_id,
                    content_hash=content_hash,
                    index=index,
                    k=k,
                    n=n,
                    blob_bytes=len(request.blob),
                    partner_id=request.partner_id,
                    body_fingerprint=request.body_fingerprint,
                    created_at_ms=created_at_ms,
                ),
                piece,
            )
            for index, piece in enumerate(pieces)
        ]

    async def _put_all(
        self,
        requests: Sequence[WriteRequest],
        all_shards: Sequence[list[Shard]],
        members: Sequence[str],
        *,
        exclusive: bool,
        only: _PutOutcome | None = None,
        expiry: int = 0,
    ) -> _PutOutcome:
        """Send every shard to its placement node; return once each record has its quorum or
        every node has answered. ``only``: resend just the shards ``only`` saw refused."""
        per_peer: dict[str, list[PutItem]] = defaultdict(list)
        for request, shards in zip(requests, all_shards, strict=True):
            refused_by = set(only.refused[request.record_id]) if only is not None else None
            placed = self.placement(request.record_id, members)
            for peer, shard in zip(placed, shards, strict=True):
                if refused_by is None or peer in refused_by:
                    per_peer[peer].append((shard, request.request_id, expiry))
        outcome = _PutOutcome()
        quorum = self._cluster.write_quorum
        done = asyncio.Event()
        remaining = len(per_peer)
        needed = {r.record_id for r in requests}
        if not per_peer:
            return outcome

        async def put(peer: str, items: list[PutItem]) -> None:
            nonlocal remaining
            try:
                try:
                    replies = await self._puts.run_many((peer, exclusive), items)
                except (OperationFailed, PeerError) as exc:
                    self._keep_hints(peer, [shard for shard, _, _ in items], exc)
                    return
                for (shard, _, _), held in zip(items, replies, strict=True):
                    rid = shard.meta.record_id
                    if held is None:
                        outcome.durable[rid] += 1
                        if outcome.durable[rid] >= quorum:
                            needed.discard(rid)
                    else:
                        outcome.refused[rid].append(peer)
                        outcome.existing[rid].extend(held)
                if not needed:
                    done.set()
            finally:
                remaining -= 1
                if remaining == 0:
                    done.set()

        tasks = []
        for peer, items in per_peer.items():
            task = asyncio.create_task(put(peer, items))
            tasks.append(task)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            await done.wait()
        except asyncio.CancelledError:
            # The caller gave up (deadline or client gone): shards not yet sent are dropped;
            # shards already in a frame are stored and become orphans until consensus GC.
            for task in tasks:
                task.cancel()
            raise
        return outcome

    def _keep_hints(self, peer: str, shards: list[Shard], cause: BaseException | None) -> None:
        log.info("peer %s missed %d shards (%s); keeping hints", peer, len(shards), cause)
        try:
            self._hints.add(peer, shards)
            self.hints_written += len(shards)
        except OperationFailed as exc:
            log.warning("cannot keep hints for %s: %s", peer, exc)

    async def replay_hints_once(self) -> int:
        """Send waiting hints to their nodes; return how many were delivered."""
        delivered = 0
        for peer in self._hints.peers():
            shards = self._hints.pending(peer, self._limits.hint_replay_batch_max)
            if not shards:
                continue
            try:
                # Exclusive: a node that meanwhile holds another version of a record keeps it;
                # the hint is dropped (the acknowledged version has its quorum elsewhere).
                reply = await self._ask(peer, PutShards(tuple(shards), exclusive=True))
            except (OperationFailed, PeerError):
                continue
            if isinstance(reply, PutShardsReply):
                self._hints.remove(peer, shards)  # stored, or refused for another version held
                delivered += reply.stored
        self.hints_replayed += delivered
        return delivered

    async def replay_hints_forever(self) -> None:
        while True:
            await asyncio.sleep(self._timeouts.hint_replay_interval_s)
            try:
                await self.replay_hints_once()
            except BaasError as exc:  # keep the loop alive; the next round retries
                log.warning("hint replay failed: %s", exc)

    async def stop(self) -> None:
        for _, batcher in self._batchers():
            await batcher.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # ----------------------------------------------------------------- reads

    async def read_records(
        self, record_ids: Sequence[bytes], request_ids: Sequence[str] = ()
    ) -> list[ReadResult | BaasError]:
        """Read many records at once (their shard reads share frames); each fails on its own."""
        if len(record_ids) > self._limits.records_per_request_max:
            raise PayloadTooLarge("too many records in one request")
        tags = list(request_ids) if len(request_ids) == len(record_ids) else [""] * len(record_ids)
        results = await asyncio.gather(
            *(self.read_record(rid, tag) for rid, tag in zip(record_ids, tags, strict=True)),
            return_exceptions=True,
        )
        out: list[ReadResult | BaasError] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BaasError):
                raise result
            out.append(result)
        return out

    async def read_record(self, record_id: bytes, request_id: str = "") -> ReadResult:
        if len(record_id) != HASH_BYTES:
            raise InvalidRequest("record id must be 32 bytes")
        self._admit(1)
        try:
            return await self._read_admitted(record_id, request_id)
        finally:
            self.records_in_progress -= 1

    async def _read_admitted(self, record_id: bytes, request_id: str) -> ReadResult:
        if self._index is None:
            placement = self.placement(record_id)
            return await self._read_waves(record_id, placement, (), None, request_id)
        # Only indexed (acknowledged) records are served, from the shard map the index
        # recorded; a local miss is confirmed through the leader before saying 404.
        known = await self._index.lookup_confirmed(record_id)
        if known is None:
            raise NotFound("no record with this id", code="record_not_found")
        return await self.read_indexed(known, request_id)

    async def read_indexed(self, entry: IndexEntry, request_id: str = "") -> ReadResult:
        """Read the indexed version from the holders the index names; a shard that moved is
        also looked for where it was (after the others: the old copy may be gone)."""
        previous = tuple(dict.fromkeys(p.node for p in entry.previous))
        fallback = tuple(n for n in previous if n not in entry.shard_nodes)
        return await self._read_waves(
            entry.record_id, entry.shard_nodes, fallback, entry.content_hash, request_id
        )

    async def _read_waves(
        self,
        record_id: bytes,
        placement: Sequence[str],
        fallback: Sequence[str],
        version: bytes | None,
        request_id: str,
    ) -> ReadResult:
        k = self._cluster.k
        shards: list[Shard] = []
        corrupt = 0
        failed: set[str] = set()
        waves = [placement[:k], placement[k:]]  # systematic holders first
        if fallback:
            waves.append(fallback)
        for wave in waves:
            replies, failures = await self._gather(
                {peer: self._reads.submit(peer, (record_id, request_id)) for peer in wave}
            )
            failed.update(failures)
            for found, corrupt_here in replies.values():
                shards.extend(found)
                corrupt += corrupt_here
            result = self._rebuild(shards, corrupt, version)
            if result is not None:
                return result
        if not shards and self._cluster.write_quorum - len(failed) > 0:
            # Every acknowledged record has >= write_quorum shards on its placement nodes; with
            # fewer nodes unreachable than that, seeing none means there is no such record.
            raise NotFound("no record with this id", code="record_not_found")
        raise RecordUnavailable(
            f"fewer than k={k} intact shards reachable ({len(failed)} of {len(placement)} "
            f"placement nodes unreachable, {corrupt} corrupt shards seen)"
        )

    # ----------------------------------------------------------------- shard moves

    @staticmethod
    def reencode_shard(result: ReadResult, index: int) -> Shard:
        """Shard ``index`` of a record rebuilt (and checked against its content hash)."""
        meta = result.meta
        pieces = encode_blob(result.blob, meta.k, meta.n)
        return Shard(dataclasses.replace(meta, index=index), pieces[index])

    async def store_shard(self, peer_id: str, shard: Shard, request_id: str) -> None:
        """Store one shard on ``peer_id`` (exclusive: refused if it holds another version)."""
        if await self.store_shards(peer_id, [shard], request_id):
            raise OperationFailed(f"peer {peer_id} holds another version of the record")

    async def store_shards(
        self, peer_id: str, shards: Sequence[Shard], request_id: str
    ) -> frozenset[bytes]:
        """Store shards on ``peer_id`` (exclusive; coalesced into few frames); returns the
        record ids refused because the peer holds another version of them."""
        items = [(shard, request_id, 0) for shard in shards]
        replies = await self._puts.run_many((peer_id, True), items)
        return frozenset(
            shard.meta.record_id
            for shard, held in zip(shards, replies, strict=True)
            if held is not None and all(m.content_hash != shard.meta.content_hash for m in held)
        )

    async def held_shards(self, peer_id: str, record_ids: Sequence[bytes]) -> frozenset[ShardKey]:
        """Which shards of these records ``peer_id`` holds intact (an inventory: metas only,
        in frames of at most ``records_per_request_max`` records; corrupt entries are not
        listed)."""
        held: set[ShardKey] = set()
        step = self._limits.records_per_request_max
        for start in range(0, len(record_ids), step):
            chunk = tuple(record_ids[start : start + step])
            reply = await self._ask(peer_id, HasRecords(chunk))
            if not isinstance(reply, MetasReply):
                raise OperationFailed(f"peer {peer_id} answered has with {type(reply).__name__}")
            held.update(meta.key for meta in reply.metas)
        return frozenset(held)

    async def shard_digest(
        self, peer_id: str, record_id: bytes, index: int, version: bytes
    ) -> bytes | None:
        """SHA-256 of shard ``index`` of ``version`` as ``peer_id`` holds it (None: missing)."""
        (reply,) = await self._reads.run_many(peer_id, [(record_id, "move-verify")])
        found, _ = reply
        for shard in found:
            if shard.meta.index == index and shard.meta.content_hash == version:
                return hashlib.sha256(shard.data).digest()
        return None

    async def delete_shard(self, peer_id: str, key: ShardKey) -> None:
        """Remove exactly this shard (record, version, index) from ``peer_id``."""
        reply = await self._ask(peer_id, DeleteShards((key,)))
        if not isinstance(reply, DeletedReply):
            raise OperationFailed(f"peer {peer_id} answered a delete with {type(reply).__name__}")

    def _rebuild(
        self, shards: Sequence[Shard], corrupt: int, version: bytes | None = None
    ) -> ReadResult | None:
        if version is not None:  # the indexed version only: other versions are leftovers
            shards = [s for s in shards if s.meta.content_hash == version]
        by_hash: dict[bytes, dict[int, Shard]] = defaultdict(dict)
        for shard in shards:
            by_hash[shard.meta.content_hash][shard.meta.index] = shard
        versions = _decodable_versions([s.meta for s in shards])
        first = _first_version(versions)
        if first is None:
            return None
        found = by_hash[first.content_hash]
        indexes = sorted(found)
        systematic_first = sorted(indexes, key=lambda i: (i >= first.k, i))
        combos = itertools.chain(
            [tuple(sorted(systematic_first[: first.k]))], itertools.combinations(indexes, first.k)
        )
        for combo in combos:
            try:
                blob = decode_blob(
                    {i: found[i].data for i in combo}, first.k, first.n, first.blob_bytes
                )
            except RecordUnavailable:
                continue  # a shard of the wrong size: try another combination
            if content_hash_of(blob) == first.content_hash:
                return ReadResult(first, blob, combo, corrupt)
        log.warning(
            "record %s: no shard combination matches its content hash", first.record_id.hex()
        )
        return None


@dataclass(frozen=True, slots=True)
class _RequestKind:
    """A request an operation may carry instead of ledger events, as the API takes it."""

    attribute: str  # the WriteRequest field
    param: str  # its node wire field (the problem's param)
    name: str  # in messages
    problem: str  # problem codes: <problem>_not_enabled, invalid_<problem>_request
    feature: int  # the log feature version that takes it
    decode: Callable[[bytes], Any]  # its wire decoder (UnsupportedFormat when malformed)


_REQUEST_KINDS = (
    _RequestKind("bridge", "br", "Bridge", "bridge", BRIDGE_FEATURE_VERSION, decode_bridge_request),
    _RequestKind(
        "payments", "pm", "payments", "payments", PAYMENTS_FEATURE_VERSION, decode_payments_request
    ),
)


def _check_approvals_size(request: WriteRequest) -> None:
    """The approvals blob's bound, the same for ledger operations and Bridge and payments
    requests."""
    if request.approvals is not None and len(request.approvals) > APPROVALS_BYTES_MAX:
        raise InvalidRequest(
            f"approvals are at most {APPROVALS_BYTES_MAX} bytes", code="invalid_approvals",
            param="ap",
        )  # fmt: skip
