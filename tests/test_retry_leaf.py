"""A retried write whose earlier attempt's shards are held but were never indexed (its
proposal was lost: the client saw index_unavailable and retried under the same key): the
coordinator proposes the version it stored itself, so the record's Merkle leaf names exactly
the shards the index points at.

Before the fix, the retry proposed the *earlier* version's content hash with its *own* shard
hashes and plaintext commitment. Scrubbers compare held shards with the leaf: every good
shard of the indexed version "disagreed", was quarantined, rebuilt by repair and quarantined
again, and a 20,000-record repair benchmark lost 12 acknowledged records that way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from test_index_gatherer import FakeLog, _h, client

from node.config import ClusterConfig, ClusterMember, NodeLimits, NodeTimeouts
from node.consensus.record_index import INDEX_PUT_BATCH, IndexProposal
from node.coordinator import Coordinator, WriteRequest, WriteResult
from node.dataplane.scrub_plan import CrossCheck, cross_check
from node.p2p.messages import PutShards, PutShardsReply
from node.records import Shard, content_hash_of
from node.storage.hints import HintStore


class HoldingTransport:
    """Holders that keep every version they are sent, and refuse an exclusive put of a record
    they hold in another version (answering its metas), as the shard service does."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, bytes], list[Shard]] = {}

    async def request(self, peer_id: str, message: Any, *, timeout_s: float | None = None) -> Any:
        assert isinstance(message, PutShards)
        stored, refused, existing = 0, [], []
        for shard in message.shards:
            held = self.held.setdefault((peer_id, shard.meta.record_id), [])
            others = [s for s in held if s.meta.content_hash != shard.meta.content_hash]
            if message.exclusive and others:
                refused.append(shard.meta.record_id)
                existing.extend(s.meta for s in others)
                continue
            held.append(shard)
            stored += 1
        return PutShardsReply(stored, tuple(refused), tuple(existing))


def request(blob: bytes, commitment: bytes) -> WriteRequest:
    return WriteRequest(_h("rid", 7), blob, "shop-a", _h("fp", 7), plaintext_commitment=commitment)


async def test_a_retry_over_an_unindexed_attempt_proposes_its_own_version(tmp_path: Path) -> None:
    members = tuple(
        ClusterMember(f"n{i}", f"peer-{i}", "/ip4/127.0.0.1/tcp/1", "x:1") for i in range(5)
    )
    log = FakeLog()
    index = client(log)
    transport = HoldingTransport()
    hints = HintStore(tmp_path / "hints", hints_max=100)
    coordinator = Coordinator(
        cluster=ClusterConfig("c", 3, 5, 4, members),
        limits=NodeLimits(),
        timeouts=NodeTimeouts(),
        transport=transport,
        hints=hints,
        index=index,
    )
    try:
        # The first attempt: its shards on every placement node, its proposal never applied
        # (sealed again on retry: another salt, so another blob and another commitment).
        first = request(b"first sealing " * 40, _h("pc-first", 7))
        placed = coordinator.placement(first.record_id, [m.peer_id for m in members])
        for peer, shard in zip(placed, coordinator._shards_of(first, 1), strict=True):
            transport.held[(peer, first.record_id)] = [shard]

        retry = request(b"second sealing " * 40, _h("pc-retry", 7))
        (result,) = await coordinator.write_records([retry])
        assert isinstance(result, WriteResult), result

        (entries,) = log.proposed
        (entry,) = entries
        assert entry.type == INDEX_PUT_BATCH
        (proposed,) = [IndexProposal.from_body(put) for put in entry.body["puts"]]
        retry_hash = content_hash_of(retry.blob)
        assert proposed.content_hash == retry_hash == result.content_hash
        assert proposed.plaintext_commitment == retry.plaintext_commitment
        held_retry = {
            shard.meta.index: shard
            for (_, rid), shards in transport.held.items()
            if rid == retry.record_id
            for shard in shards
            if shard.meta.content_hash == retry_hash
        }
        assert len(held_retry) == 5  # stored beside the first attempt's shards
        indexed = index.lookup(retry.record_id)
        assert indexed is not None and indexed.content_hash == retry_hash
        # What a scrubber concludes of every held shard of the indexed version: it agrees.
        for position, shard in held_retry.items():
            verdict = cross_check(
                content_hash=shard.meta.content_hash,
                shard_index=position,
                data_hash=hashlib.sha256(shard.data).digest(),
                indexed_version=indexed.content_hash,
                leaf_content_hash=proposed.content_hash,
                leaf_shard_hashes=proposed.shard_hashes,
            )
            assert verdict is CrossCheck.AGREES
    finally:
        await coordinator.stop()
        await index.stop()
        hints.close()
