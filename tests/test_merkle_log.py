"""The Merkle log follower: one leaf per created record, in log order, identical on every node,
gated by log feature version 3, carried by snapshots; proofs from stored state only."""

from __future__ import annotations

import hashlib
import random

from node.consensus.record_index import IndexProposal, RecordIndex
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Dispatcher,
    LogPosition,
    encode_app_entry,
)
from node.merkle.leaf import LeafData
from node.merkle.log import MerkleLog, MerkleReader, root_at
from node.merkle.tree import EMPTY_ROOT, leaf_hash, node_hash, verify_consistency, verify_inclusion
from node.replication.snapshot import decode_state, encode_state

NODES = ("n1", "n2", "n3", "n4", "n5")


class DictView:
    def __init__(self, data: dict[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def commit(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def _h(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"{tag}{i}".encode()).digest()


def proposal(rid: int, *, fp: int = 1, leaf_fields: bool = True, max_index: int = 10**9) -> bytes:
    return encode_app_entry(
        IndexProposal(
            record_id=_h("rid", rid),
            content_hash=_h("ch", rid),
            k=3,
            n=5,
            shard_nodes=NODES,
            membership_epoch=1,
            owner="shop-a",
            body_fingerprint=bytes([fp]) * 32,
            expiry_term=2,
            expiry_max_index=max_index,
            shard_hashes=tuple(_h(f"s{rid}/", i) for i in range(5)) if leaf_fields else (),
            plaintext_commitment=_h("pc", rid) if leaf_fields else None,
        ).to_entry()
    )


def feature(version: int) -> bytes:
    return encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": version}))


def at(index: int) -> LogPosition:
    return LogPosition(index, 2, 1_700_000_000_000 + index)


def dispatcher() -> Dispatcher:
    return Dispatcher([RecordIndex()], feature_version_max=3, followers=[MerkleLog()])


def naive_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def test_one_leaf_per_created_record_only_once_feature_3_is_enabled() -> None:
    d, view = dispatcher(), DictView()
    rows = [
        (proposal(0), "created", 0),  # feature 1: the index applies it, no leaf yet
        (feature(3), "created", 0),
        (proposal(1), "created", 1),
        (proposal(1), "existing", 1),  # a retry adds nothing
        (proposal(1, fp=9), "conflict", 1),
        (proposal(2, max_index=3), "expired", 1),
        (proposal(3, leaf_fields=False), "created", 1),  # a proposal without leaf fields
        (proposal(4), "created", 2),
    ]
    for index, (payload, code, size_after) in enumerate(rows, start=1):
        (applied,), writes = d.apply_batch([(at(index), payload)], view)
        assert applied.outcome.code == code, (index, applied.outcome)
        view.commit(writes)
        assert MerkleReader(view).size == size_after
    reader = MerkleReader(view)
    first = reader.leaf_of(_h("rid", 1))
    second = reader.leaf_of(_h("rid", 4))
    assert (first.index, second.index) == (0, 1)
    leaf = LeafData.decode(first.data)
    assert leaf.record_id == _h("rid", 1) and leaf.owner == "shop-a"
    assert leaf.committed_at_ms == at(3).leader_time_ms  # the leader's stamp of the entry
    assert leaf.shard_hashes == tuple(_h("s1/", i) for i in range(5))
    assert leaf.plaintext_commitment == _h("pc", 1) and (leaf.k, leaf.n) == (3, 5)
    assert reader.root() == naive_root([first.data, second.data])


def test_roots_and_proofs_match_a_naive_tree_and_batching_does_not_matter() -> None:
    rng = random.Random(5)
    payloads = [feature(3)] + [proposal(rng.randrange(400)) for _ in range(300)]
    views = []
    for batch_max in (1, 7, 300):
        d, view = dispatcher(), DictView()
        index = 1
        while index <= len(payloads):
            batch = [
                (at(i), payloads[i - 1])
                for i in range(index, min(index + batch_max, len(payloads) + 1))
            ]
            _, writes = d.apply_batch(batch, view)
            view.commit(writes)
            index += len(batch)
        views.append(view)
    assert views[0].data == views[1].data == views[2].data  # every node, however it batched
    reader = MerkleReader(views[0])
    leaves = [reader.leaf_at(i) for i in range(reader.size)]
    assert all(leaf is not None for leaf in leaves)
    data = [leaf for leaf in leaves if leaf is not None]
    assert reader.size == len({p for p in payloads[1:]})  # one leaf per distinct record
    for size in (1, 2, 3, 64, 100, reader.size):
        assert reader.root(size) == naive_root(data[:size]) == root_at(views[0], size)
        for index in {0, size // 2, size - 1}:
            proof = reader.inclusion_proof(index, size)
            assert verify_inclusion(leaf_hash(data[index]), index, size, proof, reader.root(size))
        for old in {1, size // 3 or 1, size}:
            proof = reader.consistency_proof(old, size)
            assert verify_consistency(old, size, proof, reader.root(old), reader.root(size))
    assert root_at(views[0], reader.size + 1) is None and root_at(views[0], 0) is None


def test_the_log_survives_a_snapshot_and_keeps_growing_identically() -> None:
    d, view = dispatcher(), DictView()
    _, writes = d.apply_batch(
        [(at(1), feature(3))] + [(at(i), proposal(i)) for i in range(2, 90)], view
    )
    view.commit(writes)
    pieces: list[bytes] = []
    encode_state(sorted(view.data.items()), pieces.append)
    restored = DictView(dict(decode_state(pieces, sum(len(p) for p in pieces))))
    assert MerkleReader(restored).root() == MerkleReader(view).root()
    more = [(at(i), proposal(i)) for i in range(90, 140)]
    for target in (view, restored):
        _, writes = dispatcher().apply_batch(more, target)
        target.commit(writes)
    assert restored.data == view.data
    assert MerkleReader(restored).size == 138


def test_an_owner_too_long_for_a_leaf_gets_no_leaf_and_the_log_stays_applicable() -> None:
    long_owner = encode_app_entry(
        IndexProposal(
            record_id=_h("rid", 7),
            content_hash=_h("ch", 7),
            k=3,
            n=5,
            shard_nodes=NODES,
            membership_epoch=1,
            owner="é" * 100,  # 100 characters (the index takes it), 200 UTF-8 bytes (> 128)
            body_fingerprint=bytes(32),
            expiry_term=2,
            expiry_max_index=10**9,
            shard_hashes=tuple(_h("s7/", i) for i in range(5)),
            plaintext_commitment=_h("pc", 7),
        ).to_entry()
    )
    d, view = dispatcher(), DictView()
    applied, writes = d.apply_batch(
        [(at(1), feature(3)), (at(2), long_owner), (at(3), proposal(8))], view
    )
    assert [a.outcome.code for a in applied] == ["created", "created", "created"]
    view.commit(writes)
    assert MerkleReader(view).size == 1 and MerkleReader(view).leaf_of(_h("rid", 8)).index == 0
