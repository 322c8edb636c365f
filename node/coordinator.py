"""The write and read coordinator of a node: erasure-code, place, store, gather, rebuild.

Any node coordinates the records a gateway sends it (asyncio side; talks to peers through a
:class:`ShardTransport`, in production the libp2p :class:`node.p2p.service.P2PNode`).

Write (one record or a batch):
  1. place the record's ``n`` shards on distinct members (rendezvous hashing);
  2. probe the placement nodes for shards of the same record id: a record already decodable
     (>= k shards of one content hash) with the same body fingerprint is returned as-is (an
     idempotent retry); with another fingerprint the write is refused (409). Concurrent
     duplicates are settled for good by the consensus log (a later issue);
  3. erasure-code the blob and send each node its shards;
  4. acknowledge once ``write_quorum`` shards are durable; the remaining puts go on in the
     background and shards that still fail are kept as hints and replayed later.

Shard traffic to a peer is coalesced across concurrent requests (:mod:`node.batcher`): one
``PutShards``, one ``HasRecords`` and one ``GetRecords`` frame carries the shards, probes and
reads of every request that arrived within a few milliseconds. The number of records being
coordinated is bounded (``coordinator_queue_records_max``); past it new work is refused with
:class:`Overloaded` and the depth is reported to gateways so they can back off.

Read: ask the holders of the systematic shards first; if fewer than ``k`` intact shards come
back, ask the others; rebuild; check the content hash; if it does not match (a node served a
wrong shard that passed its checksum), try other shard combinations before giving up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from node.batcher import Batcher
from node.config import ClusterConfig, NodeLimits, NodeTimeouts
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
)
from node.p2p.messages import (
    REQUEST_IDS_MAX,
    ErrorReply,
    GetRecords,
    HasRecords,
    Message,
    MetasReply,
    PutShards,
    PutShardsReply,
    RecordsShardsReply,
)
from node.records import HASH_BYTES, Shard, ShardMeta, content_hash_of
from node.storage.erasure import decode_blob, encode_blob
from node.storage.hints import HintStore
from node.storage.placement import place_shards

__all__ = ["Coordinator", "ReadResult", "ShardTransport", "WriteRequest", "WriteResult"]

log = logging.getLogger("baas.node.coordinator")
T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class WriteResult:
    record_id: bytes
    content_hash: bytes
    created_at_ms: int
    shards_durable: int
    replayed: bool  # True: an earlier write with this idempotency key was returned


@dataclass(frozen=True, slots=True)
class ReadResult:
    meta: ShardMeta  # meta of one shard; index is not meaningful here
    blob: bytes
    shards_used: tuple[int, ...]
    corrupt_shards_seen: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _request_ids(items: Sequence[tuple[object, str]]) -> tuple[str, ...]:
    """The distinct request ids a frame serves, bounded like the frame field."""
    return tuple(dict.fromkeys(tag for _, tag in items if tag))[:REQUEST_IDS_MAX]


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
    ) -> None:
        self._cluster = cluster
        self._limits = limits
        self._timeouts = timeouts
        self._transport = transport
        self._hints = hints
        self._clock_ms = clock_ms
        self._members = cluster.peer_ids
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
        self._puts: Batcher[str, tuple[Shard, str], bool] = Batcher(
            self._put_call,
            items_max=limits.put_batch_shards_max,
            bytes_max=frame_budget,
            size_of=lambda item: len(item[0].data) + 256,
            **shared,  # type: ignore[arg-type]
        )
        self._probes: Batcher[str, tuple[bytes, str], tuple[ShardMeta, ...]] = Batcher(
            self._probe_call,
            items_max=limits.records_per_request_max,
            bytes_max=frame_budget,
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
        return {
            name: {
                "pending": batcher.pending_items,
                "inflight": batcher.inflight_items,
                "calls": batcher.stats.calls,
                "items": batcher.stats.items,
                "dropped_abandoned": batcher.stats.dropped_abandoned,
            }
            for name, batcher in self._batchers()
        }

    def _batchers(self) -> tuple[tuple[str, Batcher[str, Any, Any]], ...]:
        return (("put", self._puts), ("probe", self._probes), ("read", self._reads))

    def _admit(self, records: int) -> None:
        if self.records_in_progress + records > self._limits.coordinator_queue_records_max:
            raise Overloaded(
                f"{self.records_in_progress} records in progress on this node "
                "(coordinator_queue_records_max)"
            )
        self.records_in_progress += records

    # ----------------------------------------------------------- batched calls

    async def _put_call(self, peer_id: str, items: list[tuple[Shard, str]]) -> list[bool]:
        shards = [shard for shard, _ in items]
        reply = await self._ask(peer_id, PutShards(tuple(shards), _request_ids(items)))
        if not isinstance(reply, PutShardsReply) or reply.stored != len(shards):
            raise OperationFailed(f"peer {peer_id} did not store a put batch")
        return [True] * len(shards)

    async def _probe_call(
        self, peer_id: str, items: list[tuple[bytes, str]]
    ) -> list[tuple[ShardMeta, ...]]:
        rids = [rid for rid, _ in items]
        reply = await self._ask(peer_id, HasRecords(tuple(rids), _request_ids(items)))
        if not isinstance(reply, MetasReply):
            raise OperationFailed(f"peer {peer_id} answered a probe with {type(reply).__name__}")
        found: dict[bytes, list[ShardMeta]] = defaultdict(list)
        for meta in reply.metas:
            found[meta.record_id].append(meta)
        return [tuple(found.get(rid, ())) for rid in rids]

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

    def placement(self, record_id: bytes) -> tuple[str, ...]:
        return place_shards(record_id, self._members, self._cluster.n)

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
        if len(request.blob) > self._limits.record_blob_bytes_max:
            raise PayloadTooLarge("record blob exceeds record_blob_bytes_max")
        if not request.partner_id:
            raise InvalidRequest("partner id is empty")

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
        self._admit(len(requests))
        try:
            return await self._write_admitted(requests)
        finally:
            self.records_in_progress -= len(requests)

    async def _write_admitted(
        self, requests: Sequence[WriteRequest]
    ) -> list[WriteResult | BaasError]:
        outcome: list[WriteResult | BaasError | None] = [None] * len(requests)
        existing = await self._find_existing(requests)
        to_write: list[tuple[int, WriteRequest]] = []
        for position, (request, found) in enumerate(zip(requests, existing, strict=True)):
            if found is None:
                to_write.append((position, request))
            else:
                outcome[position] = found
        if to_write:
            written = await self._store_new([r for _, r in to_write])
            for (position, _), result in zip(to_write, written, strict=True):
                outcome[position] = result
        return [r for r in outcome if r is not None]

    async def write_record(self, request: WriteRequest) -> WriteResult:
        (result,) = await self.write_records([request])
        if isinstance(result, BaasError):
            raise result
        return result

    async def _find_existing(
        self, requests: Sequence[WriteRequest]
    ) -> list[WriteResult | BaasError | None]:
        """For each request: an earlier completed write to return, a conflict, or None.

        One ``HasRecords`` probe per placement node covers every record of the batch (coalesced
        with other requests' probes too). A node that does not answer is left out: the remaining
        ones still hold a decodable version of any acknowledged record unless more than n - k
        fail.
        """
        per_peer: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
        for request in requests:
            for peer in self.placement(request.record_id):
                per_peer[peer].append((request.record_id, request.request_id))
        replies, _ = await self._gather(
            {peer: self._probes.run_many(peer, items) for peer, items in per_peer.items()}
        )
        metas_by_record: dict[bytes, list[ShardMeta]] = defaultdict(list)
        for peer, per_record in replies.items():
            for (rid, _), metas in zip(per_peer[peer], per_record, strict=True):
                metas_by_record[rid].extend(metas)
        return [self._earlier_write(r, metas_by_record[r.record_id]) for r in requests]

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

    async def _store_new(self, requests: Sequence[WriteRequest]) -> list[WriteResult | BaasError]:
        created_at_ms = self._clock_ms()
        per_peer: dict[str, list[tuple[Shard, str]]] = defaultdict(list)
        all_shards: list[list[Shard]] = []
        for request in requests:
            shards = self._shards_of(request, created_at_ms)
            all_shards.append(shards)
            for peer, shard in zip(self.placement(request.record_id), shards, strict=True):
                per_peer[peer].append((shard, request.request_id))
        durable: dict[bytes, int] = defaultdict(int)
        quorum = self._cluster.write_quorum
        done = asyncio.Event()
        remaining = len(per_peer)
        needed = {r.record_id for r in requests}

        async def put(peer: str, items: list[tuple[Shard, str]]) -> None:
            nonlocal remaining
            try:
                try:
                    await self._puts.run_many(peer, items)
                except (OperationFailed, PeerError) as exc:
                    self._keep_hints(peer, [shard for shard, _ in items], exc)
                    return
                for shard, _ in items:
                    durable[shard.meta.record_id] += 1
                    if durable[shard.meta.record_id] >= quorum:
                        needed.discard(shard.meta.record_id)
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
        results: list[WriteResult | BaasError] = []
        for request, shards in zip(requests, all_shards, strict=True):
            count = durable[request.record_id]
            if count >= quorum:
                results.append(
                    WriteResult(
                        request.record_id, shards[0].meta.content_hash, created_at_ms, count, False
                    )
                )
            else:
                results.append(
                    QuorumNotReached(
                        f"only {count} of the {quorum} shards needed became durable; retry with "
                        "the same Idempotency-Key"
                    )
                )
        return results

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
                reply = await self._ask(peer, PutShards(tuple(shards)))
            except (OperationFailed, PeerError):
                continue
            if isinstance(reply, PutShardsReply) and reply.stored == len(shards):
                self._hints.remove(peer, shards)
                delivered += len(shards)
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
        placement = self.placement(record_id)
        k = self._cluster.k
        shards: list[Shard] = []
        corrupt = 0
        failed: set[str] = set()
        for wave in (placement[:k], placement[k:]):  # systematic holders first
            replies, failures = await self._gather(
                {peer: self._reads.submit(peer, (record_id, request_id)) for peer in wave}
            )
            failed.update(failures)
            for found, corrupt_here in replies.values():
                shards.extend(found)
                corrupt += corrupt_here
            result = self._rebuild(shards, corrupt)
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

    def _rebuild(self, shards: Sequence[Shard], corrupt: int) -> ReadResult | None:
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
